"""The parallel sampler against sequential decoding and self-speculative decoding at the same depth, side by side.

    python bench/bench_parallel.py [--models demo scaled] [--steps 32] [--rounds 3] [--new-tokens 48] [--threads 1]

Every prompt runs through ``engine.stream`` (batch 1, greedy, init_scale 0) once per round in each mode, the modes
interleaved so that a change of machine load hits them alike. Reported per model: the median over prompts and
rounds of decode tokens/s (the tokens after the first over the time from the first to the last), the serial core
passes per token (``Summary.core_passes_per_token``), the ratio to sequential decoding, the share of answers equal to
sequential decoding's, and any fallback. Models: the demo model (chat prompts, whose answers run tens of tokens),
and the official layout at width 512 with random weights (``bench_decode.scaled_official``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import engine  # noqa: E402
from bench_decode import models  # noqa: E402
from engine import GenerationSettings  # noqa: E402

PROMPTS = ["Hello! Tell me something.", "Who are you?", "What can you do?", "Swap 12 23 13 31 12 23 on 312. Final?"]


def modes(steps: int, new_tokens: int) -> dict[str, GenerationSettings]:
    sequential = GenerationSettings(num_steps=steps, max_new_tokens=new_tokens, init_scale=0.0, seed=0)
    return {
        f"sequential r={steps}": sequential,
        "speculative draft 4": sequential.replace(draft_steps=4, lookahead=4),
        "parallel (defaults)": sequential.replace(sampler="parallel"),
    }


def run(model, tok, prompt: str, settings: GenerationSettings) -> dict:
    events = list(engine.stream(model, tok, [{"role": "user", "content": prompt}], settings))
    summary = events[-1]
    times = [e.seconds for e in events[:-1] if e.token_id >= 0]
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 and times[-1] > times[0] else float("nan")
    return {"rate": rate, "passes": summary.core_passes_per_token, "text": summary.text, "tokens": summary.tokens,
            "fallback": summary.fallback}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, " \
           f"load average {load:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "scaled"], choices=["demo", "scaled"])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N prompts only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {machine()}")
    for name, model, tok in models(args.models):
        settings = modes(args.steps, args.new_tokens)
        results: dict[str, list[dict]] = {mode: [] for mode in settings}
        for _ in range(args.rounds):
            for prompt in PROMPTS[:args.prompts]:
                for mode, s in settings.items():
                    results[mode].append(run(model, tok, prompt, s))
        baseline_rate = statistics.median(r["rate"] for r in results[next(iter(settings))])
        reference = [r["text"] for r in results[next(iter(settings))]]
        print(f"\n## {name}: {args.prompts} prompts x {args.rounds} rounds, up to {args.new_tokens} tokens, "
              f"r={args.steps}, greedy")
        print("| mode | decode tok/s (median) | vs sequential | core passes / token | same answer | fallbacks |")
        print("|---|---:|---:|---:|---:|---|")
        for mode, rows in results.items():
            rate = statistics.median(r["rate"] for r in rows)
            passes = statistics.median(r["passes"] for r in rows)
            same = sum(r["text"] == t for r, t in zip(rows, reference)) / len(rows)
            fallbacks = sorted({r["fallback"].split(":")[0] for r in rows if r["fallback"]}) or ["none"]
            print(f"| {mode} | {rate:.1f} | {rate / baseline_rate:.2f}x | {passes:.1f} | {same:.0%} | "
                  f"{', '.join(fallbacks)} |")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
