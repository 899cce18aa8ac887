"""Accuracy of the demo model by task, tier and recurrence depth, on held-out problems.

Every answer is generated greedily through the engine's own decode loop (the one the app uses), at
fixed depths r = 1, 2, 4, 8, 16, 32, 64 and with adaptive exit (the KL criterion at the engine's
default threshold, capped at the engine's default depth of 32 steps, with the latest-m4 cache),
where the mean steps per generated token are reported too. A problem counts as solved when the answer matches exactly.

    python scripts/eval_demo_model.py            # table, 200 problems per tier
    python scripts/eval_demo_model.py --json     # the same as JSON
    python scripts/eval_demo_model.py --quick    # 24 problems per tier, well under two minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import demo_tasks  # noqa: E402

DEPTHS = (1, 2, 4, 8, 16, 32, 64)
ADAPTIVE_CRITERION = "kl"
# With "full", a KV entry that an early-exiting token never wrote is skipped, so a prompt that exited
# after 3 steps is invisible to a later token at step 10. "latest-m4" (the official model card's
# choice for adaptive compute) reads the deepest entry that token reached instead.
ADAPTIVE_CACHE = "latest-m4"
DEFAULT_MODEL = ROOT / "assets" / "demo-model"


def load(path: Path | str = DEFAULT_MODEL) -> tuple[Any, Any]:
    """Model and tokenizer through the standard transformers path, as the app loads any checkpoint."""
    import engine  # noqa: F401  (registers huginn_raven)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def generate_answers(
    model, tok, questions: Sequence[str], num_steps: int, criterion: str | None = None,
    max_new_tokens: int = 16, seed: int = 0, cache_strategy: str = "full",
) -> tuple[list[str], list[float]]:
    """Greedy answers to single-turn questions, in batches of equal prompt length.

    Returns the answer texts and, per answer, the mean recurrence steps per generated token.
    """
    from engine.decode import RowPlan, decode
    from engine.exits import resolve_threshold
    from engine.generate import build_prompt, stop_token_ids

    stops = stop_token_ids(model, tok)
    prompts = [build_prompt(tok, [{"role": "user", "content": q}], model.config.block_size, max_new_tokens)[0]
               for q in questions]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    texts: list[str] = [""] * len(questions)
    mean_steps: list[float] = [0.0] * len(questions)
    for idxs in by_len.values():
        plans = [
            RowPlan(
                num_steps=num_steps,
                criterion=criterion,
                threshold=resolve_threshold(criterion, None) if criterion else 0.0,
                max_new_tokens=max_new_tokens,
                seed=seed + i,
            )
            for i in idxs
        ]
        ids = torch.tensor([prompts[i] for i in idxs])
        out_tokens: list[list[int]] = [[] for _ in idxs]
        out_steps: list[list[int]] = [[] for _ in idxs]
        for step in decode(model, ids, plans, cache_strategy, stop_ids=stops):
            for r, token in enumerate(step.tokens):
                if token >= 0:
                    out_steps[r].append(step.steps[r])
                    if token not in stops:
                        out_tokens[r].append(token)
        for r, i in enumerate(idxs):
            texts[i] = tok.decode(out_tokens[r], skip_special_tokens=True).strip()
            mean_steps[i] = sum(out_steps[r]) / max(len(out_steps[r]), 1)
    return texts, mean_steps


def evaluate(
    model, tok, tasks: Sequence[str], per_tier: int, depths: Sequence[int] = DEPTHS, adaptive: bool = True
) -> dict[str, Any]:
    adaptive_cap = _adaptive_cap()
    results: dict[str, Any] = {}
    for task in tasks:
        results[task] = {}
        for tier in demo_tasks.TIERS[task]:
            problems = demo_tasks.eval_problems(task, tier, per_tier)
            questions = [p.question for p in problems]
            answers = [p.answer for p in problems]
            max_new = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) + 1

            def accuracy(texts: list[str]) -> float:
                return round(sum(t == a for t, a in zip(texts, answers)) / len(answers), 4)

            row: dict[str, Any] = {"name": demo_tasks.TIER_NAMES[task][tier], "n": len(problems), "acc": {}}
            for r in depths:
                texts, _ = generate_answers(model, tok, questions, r, max_new_tokens=max_new)
                row["acc"][str(r)] = accuracy(texts)
            if adaptive:
                texts, steps = generate_answers(model, tok, questions, adaptive_cap, ADAPTIVE_CRITERION,
                                                max_new_tokens=max_new, cache_strategy=ADAPTIVE_CACHE)
                row["adaptive"] = {"acc": accuracy(texts), "mean_steps": round(sum(steps) / len(steps), 2)}
            results[task][str(tier)] = row
    return results


def markdown_table(report: dict[str, Any]) -> str:
    depths = report["depths"]
    head = "| task | tier | n | " + " | ".join(f"r={r}" for r in depths) + " | adaptive kl | mean steps |"
    lines = [head, "|" + "---|" * (len(depths) + 5)]
    for task, tiers in report["results"].items():
        for tier, row in tiers.items():
            cells = [f"{100 * row['acc'][str(r)]:.1f}" for r in depths]
            ad = row.get("adaptive", {})
            lines.append(
                f"| {task} | {tier}: {row['name']} | {row['n']} | " + " | ".join(cells)
                + f" | {100 * ad.get('acc', float('nan')):.1f} | {ad.get('mean_steps', float('nan')):.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    ap.add_argument("--quick", action="store_true", help="a small sample per tier (24 problems)")
    ap.add_argument("--per-tier", type=int, default=None, help="problems per tier (default 200, quick 24)")
    ap.add_argument("--tasks", default="add", help="comma-separated, from: " + ",".join(demo_tasks.TASKS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    per_tier = args.per_tier or (24 if args.quick else 200)
    model, tok = load(args.model)
    t0 = time.time()
    report = {
        "model": str(args.model),
        "per_tier": per_tier,
        "depths": list(DEPTHS),
        "adaptive": {"criterion": ADAPTIVE_CRITERION, "threshold": _default_threshold(),
                     "max_steps": _adaptive_cap(), "cache_strategy": ADAPTIVE_CACHE},
        "results": evaluate(model, tok, args.tasks.split(","), per_tier),
    }
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report, indent=2) if args.json else markdown_table(report))


def _adaptive_cap() -> int:
    from engine.settings import GenerationSettings

    return GenerationSettings().num_steps


def _default_threshold() -> float:
    from engine.exits import DEFAULT_THRESHOLDS

    return DEFAULT_THRESHOLDS[ADAPTIVE_CRITERION]


if __name__ == "__main__":
    main()
