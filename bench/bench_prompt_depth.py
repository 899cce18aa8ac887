"""Where the demo model's work happens, and what exits in the prompt cost and save.

    python bench/bench_prompt_depth.py [--per-tier 12] [--tiers 4,8,12,16] [--num-steps 32]

Held-out swap problems (``scripts/demo_tasks.py``) answered greedily through ``engine.stream`` (the app's path) at
fixed depth, with adaptive KL exit on the answer only (the prompt as one block at full depth, the app's default),
and with ``prompt_exits`` (every prompt position run alone, exiting by the same criterion). Per tier and setting:
accuracy, mean core steps spent on the prompt and on the answer, and the median wall time of an answer. Then the
depth lens's cost on the prompt: time to the first token of one long question untraced and traced (the prompt's last
positions are traced too), medians of ``--rounds``, side by side in one run.
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
sys.path.insert(0, str(ROOT / "scripts"))

import demo_tasks  # noqa: E402
import engine  # noqa: E402
from engine import GenerationSettings  # noqa: E402


def settings_of(num_steps: int) -> dict[str, GenerationSettings]:
    adaptive = GenerationSettings(num_steps=num_steps, criterion="kl", seed=0, max_new_tokens=8)
    return {f"fixed r={num_steps}": GenerationSettings(num_steps=num_steps, seed=0, max_new_tokens=8),
            "adaptive kl, prompt at full depth": adaptive,
            "adaptive kl, prompt_exits": adaptive.replace(prompt_exits=True)}


def answer(model, tok, question: str, settings: GenerationSettings) -> tuple[engine.Summary, float]:
    start = time.perf_counter()
    *_, summary = engine.stream(model, tok, [{"role": "user", "content": question}], settings)
    return summary, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=engine.DEMO_MODEL)
    parser.add_argument("--per-tier", type=int, default=12)
    parser.add_argument("--tiers", default="4,8,12,16")
    parser.add_argument("--num-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, _ = engine.load(args.model)
    print(f"model {args.model}, {args.per_tier} held-out problems per tier, torch threads {args.threads}\n")
    print("| tier | setting | accuracy | prompt core steps | answer core steps | median s / answer |")
    print("|---|---|---|---|---|---|")
    for tier in map(int, args.tiers.split(",")):
        problems = demo_tasks.eval_problems("swap", tier, args.per_tier)
        for name, settings in settings_of(args.num_steps).items():
            runs = [answer(model, tok, p.question, settings) for p in problems]
            right = sum(s.text.strip() == p.answer for (s, _), p in zip(runs, problems))
            prompt = statistics.mean(s.prompt_core_steps for s, _ in runs)
            core = statistics.mean(s.core_iterations for s, _ in runs)
            wall = statistics.median(t for _, t in runs)
            print(f"| {tier} | {name} | {right}/{len(runs)} | {prompt:.0f} | {core:.1f} | {wall:.3f} |")
    question = demo_tasks.eval_problems("swap", 16, 1)[0].question
    base = GenerationSettings(num_steps=args.num_steps, seed=0, max_new_tokens=1)
    times = {"untraced": [], "traced (prompt and answer)": []}
    for _ in range(args.rounds):
        for label, settings in (("untraced", base), ("traced (prompt and answer)", base.replace(trace=True))):
            times[label].append(answer(model, tok, question, settings)[1])
    plain = statistics.median(times["untraced"])
    print("\n| first token of a 16-swap question | median s | ratio |\n|---|---|---|")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.3f} | {statistics.median(values) / plain:.2f}x |")


if __name__ == "__main__":
    main()
