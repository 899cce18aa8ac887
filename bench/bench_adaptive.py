"""Adaptive exit against fixed depth on the demo model's held-out evaluation problems, batch 1, greedy.

    python bench/bench_adaptive.py [--per-tier 10] [--criterion kl] [--threshold 5e-4]

For every problem: ``engine.stream`` at fixed r=32, then with the exit criterion (at most 32 steps). Reports mean
core steps per token, decode tokens/s and how many answers changed, per task and tier and in total.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import engine  # noqa: E402
from demo_tasks import TIERS, eval_problems  # noqa: E402
from engine import GenerationSettings  # noqa: E402


def answer(model, tok, question: str, settings: GenerationSettings) -> tuple[str, list[int], float]:
    start = time.perf_counter()
    summary = list(engine.stream(model, tok, [{"role": "user", "content": question}], settings))[-1]
    return summary.text.strip(), summary.steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(engine.DEMO_MODEL))
    parser.add_argument("--per-tier", type=int, default=10)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--criterion", default="kl", choices=[c for c in engine.CRITERIA if c != "none"])
    parser.add_argument("--threshold", type=float, default=None, help="default: the engine's pinned value")
    args = parser.parse_args()
    model, tok, _ = engine.load(args.model, device="cpu")
    fixed = GenerationSettings(num_steps=args.steps, max_new_tokens=24, init_scale=0.0, seed=0)
    adaptive = fixed.replace(criterion=args.criterion, exit_threshold=args.threshold, cache_strategy=None)
    print(f"# {args.model}: fixed r={args.steps} vs {adaptive.label()}, {args.per_tier} held-out problems per tier")
    print(f"{'task':<6} {'tier':>4} {'fixed steps':>11} {'adaptive steps':>14} {'fixed tok/s':>11} "
          f"{'adaptive tok/s':>14} {'changed':>8}")
    totals = {"fixed_steps": [], "adaptive_steps": [], "fixed_time": 0.0, "adaptive_time": 0.0,
              "fixed_tokens": 0, "adaptive_tokens": 0, "changed": 0, "n": 0}
    for task, tiers in TIERS.items():
        for tier in tiers:
            problems = eval_problems(task, tier, args.per_tier)
            row = {"fs": [], "as": [], "ft": 0.0, "at": 0.0, "fn": 0, "an": 0, "changed": 0}
            for problem in problems:
                text_f, steps_f, time_f = answer(model, tok, problem.question, fixed)
                text_a, steps_a, time_a = answer(model, tok, problem.question, adaptive)
                row["fs"] += steps_f
                row["as"] += steps_a
                row["ft"] += time_f
                row["at"] += time_a
                row["fn"] += len(steps_f)
                row["an"] += len(steps_a)
                row["changed"] += text_f != text_a
            print(f"{task:<6} {tier:>4} {statistics.mean(row['fs']):>11.2f} {statistics.mean(row['as']):>14.2f} "
                  f"{row['fn'] / row['ft']:>11.1f} {row['an'] / row['at']:>14.1f} "
                  f"{row['changed']:>4}/{len(problems):<3}", flush=True)
            totals["fixed_steps"] += row["fs"]
            totals["adaptive_steps"] += row["as"]
            totals["fixed_time"] += row["ft"]
            totals["adaptive_time"] += row["at"]
            totals["fixed_tokens"] += row["fn"]
            totals["adaptive_tokens"] += row["an"]
            totals["changed"] += row["changed"]
            totals["n"] += len(problems)
    saved = 1 - statistics.mean(totals["adaptive_steps"]) / statistics.mean(totals["fixed_steps"])
    speed = (totals["adaptive_tokens"] / totals["adaptive_time"]) / (totals["fixed_tokens"] / totals["fixed_time"])
    unchanged = 1 - totals["changed"] / totals["n"]
    print(f"summary: {adaptive.label()} uses {saved:.0%} fewer core steps than r={args.steps} "
          f"({statistics.mean(totals['adaptive_steps']):.1f} vs {statistics.mean(totals['fixed_steps']):.1f} per "
          f"token), {speed:.2f}x the tokens/s, {unchanged:.0%} of {totals['n']} answers unchanged")


if __name__ == "__main__":
    main()
