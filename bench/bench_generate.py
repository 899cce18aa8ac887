"""Generation-API costs on the demo model (or ``--model scaled``): compare() against running each setting alone, stream() against
model.generate at the same settings, and load time / memory of fp32, int8 and nf4.

    python bench/bench_generate.py [--repeats 3] [--load-dir ../shared/reference-goldens/tiny-1-2-1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine import GenerationSettings  # noqa: E402
from engine.load import load_weights  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is 00004821+00003390?"}]
ARENA = [GenerationSettings(num_steps=r, max_new_tokens=16, init_scale=0.0, seed=0) for r in (4, 8, 16, 32)] + [
    GenerationSettings(num_steps=32, criterion="kl", max_new_tokens=16, init_scale=0.0, seed=0)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="demo", choices=["demo", "scaled"],
                        help="the demo model, or a random 512-wide model of the official layout")
    parser.add_argument("--load-dir", default=str(ROOT.parent / "shared" / "reference-goldens" / "tiny-1-2-1"))
    args = parser.parse_args()
    if args.model == "demo":
        model, tok, _ = engine.load(str(engine.DEMO_MODEL), device="cpu")
    else:
        from bench.bench_decode import scaled_official

        model, tok = scaled_official()

    solo = statistics.median(timed(lambda: [list(engine.stream(model, tok, MESSAGES, s)) for s in ARENA])
                             for _ in range(args.repeats))
    batched = statistics.median(timed(lambda: engine.compare(model, tok, MESSAGES, ARENA)) for _ in range(args.repeats))
    results = engine.compare(model, tok, MESSAGES, ARENA)
    same = sum(r.summary.text == list(engine.stream(model, tok, MESSAGES, r.settings))[-1].text for r in results)
    print(f"compare({', '.join(s.label() for s in ARENA)}): {batched:.3f} s batched vs {solo:.3f} s one by one "
          f"({solo / batched:.2f}x), {same}/{len(ARENA)} answers identical to solo runs")

    settings = GenerationSettings(num_steps=32, max_new_tokens=16, init_scale=0.0, seed=0)
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    rates_stream, rates_generate = [], []
    for _ in range(args.repeats):
        summary = list(engine.stream(model, tok, MESSAGES, settings))[-1]
        rates_stream.append(summary.tokens / summary.elapsed_s)
        start = time.perf_counter()
        out = model.generate(ids, num_steps=32, init_scale=0.0, max_new_tokens=16, tokenizer=tok)
        rates_generate.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    print(f"stream {statistics.median(rates_stream):.1f} tok/s vs model.generate "
          f"{statistics.median(rates_generate):.1f} tok/s at r=32, greedy ({summary.tokens} tokens)")

    print(f"\n{'format':<6} {'load s':>7} {'memory bytes':>13}   ({args.load_dir})")
    for quantization in ("none", "int8", "nf4"):
        loaded, weights = load_weights(Path(args.load_dir), quantization, "cpu", torch.float32)
        label = "fp32" if quantization == "none" else quantization
        print(f"{label:<6} {weights.seconds:>7.3f} {loaded.get_memory_footprint():>13,}")
    print(f"summary: compare() {solo / batched:.2f}x faster than one by one; stream/generate "
          f"{statistics.median(rates_stream) / statistics.median(rates_generate):.2f}")


if __name__ == "__main__":
    main()
