"""Decode speed against the memory-bandwidth ceiling, for bf16, int8 and nf4 weights, eager and compiled.

    python bench/bench_gpu.py --device cuda --shape huginn-0125     # random weights of the exact 3.5B shape
    python bench/bench_gpu.py --device cpu --shape small             # a smoke run of the same code on the CPU

Batch 1 decoding at r=32 reads every weight of the core block 32 times per token, so it is bandwidth-bound: the
table gives tokens/s, the bytes read per token (weights touched plus KV entries read) and the achieved fraction of
the card's bandwidth. The ceiling is measured with a device-to-device copy, and the data-sheet figure is shown when
the card is known. int8 and nf4 go through the real path: the random weights are saved as a checkpoint and loaded
with ``engine.load(quantization=...)`` (bitsandbytes through transformers). "compiled" rows use ``engine.compile``
(static KV cache, each recurrence of a decoded token one CUDA graph) and come right after the eager row of their
format, with the speedup; a line after each says what ran captured and what fell back. bf16 eager and compiled run
first, then bf16 with the parallel sampler (``engine.parallel``, its default settings, eager), with its ratio to
eager sequential decoding, its serial core passes per token and any fallback (random weights converge slowly, so
this is a floor: a trained model freezes positions sooner). Designed to finish within 5 minutes on one GPU; ``--budget`` skips what would not fit and says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import GenerationSettings, HuginnConfig, HuginnForCausalLM  # noqa: E402
from engine.compile import compile_model  # noqa: E402
from engine.decode import RowPlan, decode  # noqa: E402
from engine.parallel import ParallelParams, ParallelStats, parallel_decode  # noqa: E402
from engine.load import load_weights  # noqa: E402
from engine.plan import bytes_per_weight  # noqa: E402

DATASHEET_GBPS = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "RTX 4090": 1008, "RTX 6000 Ada": 960,
                  "A6000": 768, "RTX 3090": 936}
SHAPES = {
    "huginn-0125": {},
    "small": dict(n_embd=512, n_heads=8, intermediate_size=1536, vocab_size=4096, block_size=1024),
}


def measured_bandwidth(device: torch.device) -> float:
    """GB/s of a large device-to-device copy (read + write), the practical ceiling."""
    size = 1 << 30 if device.type == "cuda" else 1 << 27
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    _sync(device)
    return 2 * 5 * size / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_model(config: HuginnConfig, device: torch.device, dtype: torch.dtype) -> HuginnForCausalLM:
    with torch.device("meta"):
        model = HuginnForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, config.init_values["std"])
    model.tie_weights()
    return model.eval()


def bytes_per_token(model, steps: int, context: int, weight_bytes_per_param: float) -> float:
    """Weights touched once per token (prelude, coda, head), the core block and adapter once per step, plus the KV
    entries every layer-step reads."""
    t = model.transformer
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    once = count(t.prelude) + count(t.coda)
    per_step = count(t.core_block) + t.adapter.weight.numel()
    head = model.config.padded_vocab_size * model.config.n_embd  # the tied head stays in bf16 when quantized
    layer_steps = len(t.prelude) + len(t.coda) + steps * len(t.core_block)
    kv = layer_steps * context * 2 * model.config.n_embd * 2
    return (once + steps * per_step) * weight_bytes_per_param + head * 2 + kv


def decode_rate(model, steps: int, prompt: int, tokens: int, repeats: int, parallel: bool = False
                ) -> tuple[float, ParallelStats | None]:
    """Median tokens/s after the first token, and with ``parallel`` (the parallel sampler) its last run's stats."""
    device = model.transformer.wte.weight.device
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), device=device, generator=torch.Generator(device)
                        .manual_seed(0))
    plan = RowPlan(num_steps=steps, max_new_tokens=tokens, init_scale=0.0)
    rates, stats = [], None
    for _ in range(repeats + 1):
        times = []
        if parallel:
            stats = ParallelStats()
            cache = model.new_cache(1, "compress-layer", capacity=prompt + tokens)
            params = ParallelParams.of(GenerationSettings(sampler="parallel", num_steps=steps))
            steps_iter = parallel_decode(model, ids, plan, params, cache=cache, stats=stats)
        else:
            steps_iter = decode(model, ids, [plan])
        for _ in steps_iter:
            _sync(device)
            times.append(time.perf_counter())
        rates.append((len(times) - 1) / (times[-1] - times[0]))
    return statistics.median(rates[1:]), stats  # the first run warms up (and compiles)


def _cells(formats: list[str], compiled: bool) -> list[tuple[str, str]]:
    """bf16 eager and compiled first (the path compiled decoding is built for), then the other formats."""
    cells = [(fmt, mode) for fmt in formats for mode in ("eager",) + (("compiled",) if compiled else ())
             + (("parallel",) if fmt == "bf16" else ())]
    return sorted(cells, key=lambda cell: cell[0] != "bf16")


def _print_report(report) -> None:
    fell_back = "; ".join(f"{name}: {why.splitlines()[0][:160]}" for name, why in report.fallbacks.items())
    print(f"#   compiled ({report.mode}): {report.core_step_calls} core steps captured whole, layer by layer: "
          f"{dict(report.eager_core_steps)}, fell back: {fell_back or 'nothing'}, graphs run without CUDA graphs: "
          f"{report.cudagraph_skips}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="huginn-0125", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--formats", default="bf16,int8,nf4")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; later cells are skipped past it")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here; use --device cpu --shape small for a smoke run")
    config = HuginnConfig(**SHAPES[args.shape])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    sheet = next((gbps for key, gbps in DATASHEET_GBPS.items() if key in name), None)
    ceiling = measured_bandwidth(device)
    print(f"# {name}: copy bandwidth {ceiling:.0f} GB/s" + (f", data sheet {sheet} GB/s" if sheet else "")
          + f"; shape {args.shape}, r={args.steps}, batch 1, {args.tokens} tokens after a {args.prompt}-token prompt")
    print(f"{'format':<6} {'mode':<9} {'tok/s':>8} {'GB/token':>9} {'GB/s':>8} {'of copy bw':>10} {'of sheet':>9} "
          f"{'speedup':>7}")

    base = random_model(config, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    per_param = {"bf16": bytes_per_weight(config, "none") if device.type == "cuda" else 4.0,  # fp32 on the CPU
                 "int8": bytes_per_weight(config, "int8"), "nf4": bytes_per_weight(config, "nf4")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        for fmt, mode in _cells(args.formats.split(","), not args.no_compile):
            if time.perf_counter() - started > args.budget:
                print(f"{fmt:<6} {mode:<9} skipped: past the {args.budget:.0f} s budget")
                continue
            if fmt == "bf16":
                model = base if mode != "compiled" else random_model(config, device, base.dtype)
                if mode == "compiled":
                    model.load_state_dict(base.state_dict())
            else:
                if checkpoint is None:
                    checkpoint = Path(tmp) / "model"
                    base.save_pretrained(checkpoint)
                dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
                model, _ = load_weights(checkpoint, fmt, args.device, dtype)
            if mode == "compiled":
                compile_model(model)
            rate, stats = decode_rate(model, args.steps, args.prompt, args.tokens, args.repeats, mode == "parallel")
            gb = bytes_per_token(model, args.steps, args.prompt + args.tokens // 2, per_param[fmt]) / 1e9
            results[(fmt, mode)] = rate
            label = fmt if fmt != "bf16" or device.type == "cuda" else "fp32"  # full precision on the CPU
            eager_rate = results.get((fmt, "eager"))
            speedup = f"{rate / eager_rate:>7.2f}" if mode != "eager" and eager_rate else f"{'':>7}"
            print(f"{label:<6} {mode:<9} {rate:>8.2f} {gb:>9.2f} {rate * gb:>8.0f} {rate * gb / ceiling:>10.0%} "
                  + (f"{rate * gb / sheet:>9.0%}" if sheet else f"{'n/a':>9}") + f" {speedup}", flush=True)
            if mode == "compiled":
                _print_report(model.compile_report)
            if stats is not None:
                print(f"#   parallel: {stats.core_passes / args.tokens:.1f} serial core passes per token, "
                      f"{stats.diffusion_steps} diffusion steps, fallback: {stats.fallback or 'none'}", flush=True)
            if model is not base:
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    best = max(results, key=results.get) if results else None
    print(f"summary: best {best[0]} {best[1]} at {results[best]:.2f} tok/s (r={args.steps}) in "
          f"{time.perf_counter() - started:.0f} s" if best else "summary: nothing measured")


if __name__ == "__main__":
    main()
