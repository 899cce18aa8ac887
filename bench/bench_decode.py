"""Decode speed of ``engine.stream`` at r in {4, 16, 32}, batch 1, and optionally of the authors' code on the same
weights in the same process.

    python bench/bench_decode.py                                   # ours only
    python bench/bench_decode.py --reference-dir ~/src/recurrent-pretraining   # plus the authors' generate_minimal
    python bench/bench_decode.py --compile --steps 4,32              # eager and compiled (engine.compile) side by side

Models: the demo model (assets/demo-model) and a random model of the official layout scaled down (2/4/2 layers,
hidden 512, the official 65,536-token vocabulary and tokenizer). Decode speed is measured between the first and the
last generated token (prefill excluded), greedy, init_scale 0 so both implementations produce the same tokens.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402
from engine import GenerationSettings, HuginnConfig, HuginnForCausalLM  # noqa: E402

OFFICIAL_TOKENIZER = Path(__file__).resolve().parent.parent.parent / "shared" / "huginn-0125"
PROMPT = [{"role": "user", "content": "Tell me about the recurrent depth of your thinking, step by step."}]
HISTORY_TURN = [{"role": "user", "content": "What is 00004821+00003390?"}, {"role": "assistant", "content": "000008211"}]


def chat(context: int, tok) -> list[dict[str, str]]:
    """The benchmark prompt after earlier turns, growing until the rendered chat is about ``context`` tokens."""
    messages = list(PROMPT)
    while len(tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"]) < context:
        messages = HISTORY_TURN + messages
    return messages


def scaled_official(seed: int = 0):
    """The official layout at a CPU-friendly width, with random weights and the official tokenizer."""
    from transformers import AutoTokenizer

    if not (OFFICIAL_TOKENIZER / "tokenizer.json").is_file():
        raise SystemExit(f"the official tokenizer is expected in {OFFICIAL_TOKENIZER}")
    torch.manual_seed(seed)
    config = HuginnConfig(n_embd=512, n_heads=8, intermediate_size=1536, n_layers_in_prelude=2,
                          n_layers_in_recurrent_block=4, n_layers_in_coda=2)
    return HuginnForCausalLM(config).eval(), AutoTokenizer.from_pretrained(OFFICIAL_TOKENIZER)


def models(names: list[str]):
    for name in names:
        if name == "demo":
            if not (engine.DEMO_MODEL / "config.json").is_file():
                print(f"# skipping the demo model: {engine.DEMO_MODEL} has no weights yet", file=sys.stderr)
                continue
            yield "demo", *engine.load(str(engine.DEMO_MODEL), device="cpu")[:2]
        elif name == "scaled":
            yield "official-layout-512", *scaled_official()


def ours_decode_rate(model, tok, steps: int, new_tokens: int, context: int = 0) -> tuple[float, int]:
    settings = GenerationSettings(num_steps=steps, max_new_tokens=new_tokens, init_scale=0.0, seed=0)
    messages = chat(context, tok)
    times = [e.seconds for e in engine.stream(model, tok, messages, settings) if isinstance(e, engine.TokenEvent)]
    return (len(times) - 1) / (times[-1] - times[0]), len(times)


class _Clock:
    """A streamer that timestamps every token the reference emits (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def reference_decode_rate(theirs, model, tok, steps: int, new_tokens: int, context: int = 0) -> tuple[float, int]:
    from transformers import GenerationConfig

    ids = tok.apply_chat_template(chat(context, tok), add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    stops = list(engine.generate.stop_token_ids(model, tok))
    config = GenerationConfig(do_sample=False, eos_token_id=stops, max_length=ids["input_ids"].shape[1] + new_tokens)
    clock = _Clock()
    with torch.no_grad():
        theirs.generate_minimal(ids["input_ids"], config, streamer=clock, num_steps=steps, init_scale=0.0,
                                max_new_tokens=new_tokens)
    times = clock.times
    return (len(times) - 1) / (times[-1] - times[0]), len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", help="a checkout of seal-rg/recurrent-pretraining (never committed here)")
    parser.add_argument("--models", default="demo,scaled", help="comma list of: demo, scaled")
    parser.add_argument("--steps", default="4,16,32")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per run")
    parser.add_argument("--context", type=int, default=0,
                        help="grow the chat with earlier turns to about this many prompt tokens")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--compile", action="store_true", help="also measure engine.compile (torch.compile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    module = None
    if args.reference_dir:
        from bench.reference import import_reference

        module = import_reference(args.reference_dir)

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU decode, batch 1, greedy, "
          f"{args.tokens} new tokens after a prompt of about {max(args.context, 20)} tokens")
    header = f"{'model':<20} {'r':>3} {'ours tok/s':>11} {'ms/step':>8}"
    if args.compile:
        header += f" {'compiled':>9} {'ms/step':>8} {'speedup':>7}"
    if module:
        header += f" {'ref tok/s':>10} {'ms/step':>8} {'ratio':>6}"
    print(header)
    ratios = {}
    for name, model, tok in models(args.models.split(",")):
        theirs = compiled = None
        if args.compile:
            from engine.compile import compile_model

            compiled = copy.deepcopy(model)
            compile_model(compiled)
        if module:
            from bench.reference import reference_model

            theirs = reference_model(module, model)
        for steps in (int(s) for s in args.steps.split(",")):
            ours_decode_rate(model, tok, steps, 4)  # warm-up
            ours = statistics.median(ours_decode_rate(model, tok, steps, args.tokens, args.context)[0] for _ in range(args.repeats))
            line = f"{name:<20} {steps:>3} {ours:>11.2f} {1000 / ours / steps:>8.3f}"
            if compiled is not None:
                ours_decode_rate(compiled, tok, steps, 4)  # compiles on first use
                fast = statistics.median(ours_decode_rate(compiled, tok, steps, args.tokens, args.context)[0]
                                         for _ in range(args.repeats))
                line += f" {fast:>9.2f} {1000 / fast / steps:>8.3f} {fast / ours:>7.2f}"
                ours = max(ours, fast)
            if theirs is not None:
                ref = statistics.median(reference_decode_rate(theirs, model, tok, steps, args.tokens, args.context)[0]
                                        for _ in range(args.repeats))
                ratios[(name, steps)] = ours / ref
                line += f" {ref:>10.2f} {1000 / ref / steps:>8.3f} {ours / ref:>6.2f}"
            print(line, flush=True)
        if compiled is not None:
            report = compiled.compile_report
            print(f"# {name} compiled: {report.core_step_calls} core steps captured whole, layer by layer: "
                  f"{dict(report.eager_core_steps)}, fell back: {sorted(report.fallbacks) or 'nothing'}", flush=True)
    if ratios:
        worst = min(ratios, key=ratios.get)
        print(f"summary: engine.stream{' (best of eager and compiled)' if args.compile else ''} is "
              f"{min(ratios.values()):.2f}x to {max(ratios.values()):.2f}x the authors' generate_minimal in decode "
              f"tokens/s (lowest: {worst[0]} at r={worst[1]})")
    else:
        print("summary: ours only; pass --reference-dir to compare with the authors' code")


if __name__ == "__main__":
    main()
