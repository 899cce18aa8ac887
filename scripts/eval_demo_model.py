"""Accuracy of the demo model by task, tier and recurrence depth, on held-out problems.

Every answer is generated greedily through the engine's own decode loop (the one the app uses), at
fixed depths r = 1, 2, 4, 8, 16, 32, 64 and with adaptive exit (the KL criterion at the engine's
default threshold, capped at the engine's default depth of 32 steps, with the latest-m4 cache),
where the mean steps per answer token are reported too. A problem counts as solved when the answer
matches exactly. Each figure is the mean over three initial-state seeds (the latent state starts
from noise), with a 95 % Wilson interval over the problems, whose seed-averaged score is the
success fraction. `--baseline` adds a model of the same layers trained and run at depth 1.

    python scripts/eval_demo_model.py --baseline DIR   # the model card's table, 200 problems per tier
    python scripts/eval_demo_model.py --json           # the same as JSON
    python scripts/eval_demo_model.py --quick          # 24 problems, tiers 4 and 12, 1 seed, r = 1, 4, 32
    python scripts/eval_demo_model.py --sampler parallel --per-tier 64   # r=32 sequential beside parallel

`--sampler parallel` evaluates r = 32 sequential decoding and the parallel sampler (engine.parallel, its default
settings) on the same problems and seeds, one answer at a time for the parallel sampler (it runs batch 1).
"""

from __future__ import annotations

import argparse
import json
import math
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
QUICK_DEPTHS = (1, 4, 32)
QUICK_PER_TIER = 24
QUICK_TIERS = (4, demo_tasks.TRAIN_MAX_SWAPS)  # the easiest tier and the hardest trained one
# Initial-state seeds: the latent state starts from noise, so every figure is averaged over these.
SEEDS = (0, 1, 2)
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

    Returns the answer texts and, per answer, the mean recurrence steps per answer token (the stop
    token that ends the turn is not counted).
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
                if token >= 0 and token not in stops:
                    out_tokens[r].append(token)
                    out_steps[r].append(step.steps[r])
        for r, i in enumerate(idxs):
            texts[i] = tok.decode(out_tokens[r], skip_special_tokens=True).strip()
            mean_steps[i] = sum(out_steps[r]) / max(len(out_steps[r]), 1)
    return texts, mean_steps


def parallel_answers(model, tok, questions: Sequence[str], num_steps: int, max_new_tokens: int = 16,
                     seed: int = 0) -> tuple[list[str], list[float]]:
    """Greedy answers from the parallel sampler at its default settings, with the initial states keyed as
    ``generate_answers`` keys them (by seed + question index); returns texts and mean core steps per token."""
    from engine import GenerationSettings
    from engine.decode import RowPlan
    from engine.generate import build_prompt, cache_strategy_for, stop_token_ids
    from engine.parallel import ParallelParams, parallel_decode

    defaults = GenerationSettings(sampler="parallel")
    params = ParallelParams.of(defaults)
    stops = stop_token_ids(model, tok)
    texts, mean_steps = [], []
    for i, q in enumerate(questions):
        ids = build_prompt(tok, [{"role": "user", "content": q}], model.config.block_size, max_new_tokens)[0]
        plan = RowPlan(num_steps=num_steps, max_new_tokens=max_new_tokens, seed=seed + i)
        cache = model.new_cache(1, cache_strategy_for(defaults), capacity=len(ids) + max_new_tokens)
        out, steps = [], []
        for step in parallel_decode(model, torch.tensor([ids]), plan, params, stops, cache=cache):
            if step.tokens[0] >= 0 and step.tokens[0] not in stops:
                out.append(step.tokens[0])
                steps.append(step.steps[0])
        texts.append(tok.decode(out, skip_special_tokens=True).strip())
        mean_steps.append(sum(steps) / max(len(steps), 1))
    return texts, mean_steps


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval for a success fraction `p` measured on `n` problems."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(per_seed: list[list[bool]]) -> dict[str, Any]:
    """Accuracy over problems of the seed-averaged score, with its interval and the per-seed figures."""
    n = len(per_seed[0])
    per_problem = [sum(seed[i] for seed in per_seed) / len(per_seed) for i in range(n)]
    acc = sum(per_problem) / n
    lo, hi = wilson(acc, n)
    return {"acc": round(acc, 4), "lo": round(lo, 4), "hi": round(hi, 4),
            "per_seed": [round(sum(seed) / n, 4) for seed in per_seed]}


def evaluate(
    model, tok, tasks: Sequence[str], per_tier: int, depths: Sequence[int] = DEPTHS, adaptive: bool = True,
    seeds: Sequence[int] = SEEDS, baseline: Any = None, tiers: Sequence[int] | None = None,
    parallel: bool = False,
) -> dict[str, Any]:
    """Accuracy per task, tier and depth, each over every initial-state seed in `seeds`.

    `baseline`, a model trained at a fixed depth of 1, is run at that depth on the same problems.
    `tiers` restricts the tiers (default: all of each task's).
    """
    adaptive_cap = _adaptive_cap()
    results: dict[str, Any] = {}
    for task in tasks:
        results[task] = {}
        for tier in demo_tasks.TIERS[task]:
            if tiers is not None and tier not in tiers:
                continue
            problems = demo_tasks.eval_problems(task, tier, per_tier)
            questions = [p.question for p in problems]
            answers = [p.answer for p in problems]
            max_new = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) + 1

            def run(m, r: int, answer=generate_answers, **kw: Any) -> tuple[list[list[bool]], list[float]]:
                hits, steps = [], []
                for seed in seeds:
                    texts, st = answer(m, tok, questions, r, max_new_tokens=max_new, seed=seed, **kw)
                    hits.append([t == a for t, a in zip(texts, answers)])
                    steps += st
                return hits, steps

            row: dict[str, Any] = {"name": demo_tasks.TIER_NAMES[task][tier], "n": len(problems), "acc": {}}
            for r in depths:
                row["acc"][str(r)] = _cell(run(model, r)[0])
            if adaptive:
                hits, steps = run(model, adaptive_cap, criterion=ADAPTIVE_CRITERION, cache_strategy=ADAPTIVE_CACHE)
                row["adaptive"] = {**_cell(hits), "mean_steps": round(sum(steps) / len(steps), 2)}
            if baseline is not None:
                row["baseline"] = _cell(run(baseline, baseline.config.mean_recurrence)[0])
            if parallel:
                hits, steps = run(model, adaptive_cap, answer=parallel_answers)
                row["parallel"] = {**_cell(hits), "mean_steps": round(sum(steps) / len(steps), 2)}
            results[task][str(tier)] = row
    return results


def _fmt(cell: dict[str, Any]) -> str:
    return f"{100 * cell['acc']:.1f} [{100 * cell['lo']:.0f}–{100 * cell['hi']:.0f}]"


def markdown_table(report: dict[str, Any]) -> str:
    depths = report["depths"]
    rows = [row for tiers in report["results"].values() for row in tiers.values()]
    extra = (["adaptive kl", "mean steps"] if any("adaptive" in row for row in rows) else []) + (
        ["no recurrence (r=1 trained)"] if report.get("baseline") else []) + (
        [f"parallel r={_adaptive_cap()}", "its mean steps"] if any("parallel" in row for row in rows) else [])
    head = "| task | tier | n | " + " | ".join([f"r={r}" for r in depths] + extra) + " |"
    lines = [head, "|" + "---|" * (len(depths) + len(extra) + 3)]
    for task, tiers in report["results"].items():
        for tier, row in tiers.items():
            cells = [_fmt(row["acc"][str(r)]) for r in depths]
            if "adaptive" in row:
                cells += [_fmt(row["adaptive"]), f"{row['adaptive']['mean_steps']:.1f}"]
            if "baseline" in row:
                cells.append(_fmt(row["baseline"]))
            if "parallel" in row:
                cells += [_fmt(row["parallel"]), f"{row['parallel']['mean_steps']:.1f}"]
            lines.append(f"| {task} | {row['name']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from several over disjoint tiers of the same model and settings, tiers in order."""
    merged = dict(reports[0], results={})
    for report in reports:
        if report["depths"] != merged["depths"] or report["seeds"] != merged["seeds"]:
            raise SystemExit("--merge: the reports were run with different depths or seeds")
        for task, tiers in report["results"].items():
            merged["results"].setdefault(task, {}).update(tiers)
    for task, tiers in merged["results"].items():
        merged["results"][task] = dict(sorted(tiers.items(), key=lambda kv: int(kv[0])))
    merged["seconds"] = sum(r.get("seconds", 0) for r in reports)
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a model trained at depth 1 (train_demo_model.py --fixed-depth 1), run at its depth")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_PER_TIER} problems of tiers {QUICK_TIERS}, one seed, depths "
                         f"{', '.join(map(str, QUICK_DEPTHS))}, no adaptive run")
    ap.add_argument("--per-tier", type=int, default=None, help="problems per tier (default 200)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="initial-state seeds (default 3)")
    ap.add_argument("--tasks", default=",".join(demo_tasks.TASKS),
                    help="comma-separated, from: " + ",".join(demo_tasks.TASKS))
    ap.add_argument("--tiers", default=None, help="comma-separated tiers (default: all; --quick: "
                    + ",".join(map(str, QUICK_TIERS)) + ")")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="print the table of these --json reports (e.g. one per tier, run side by side) and exit")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sampler", choices=["sequential", "parallel"], default="sequential",
                    help="parallel: r=32 sequential beside the parallel sampler, and no other depths")
    args = ap.parse_args()
    if args.merge:
        print(markdown_table(merge_reports([json.loads(p.read_text()) for p in args.merge])))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    per_tier = args.per_tier or (QUICK_PER_TIER if args.quick else 200)
    seeds = SEEDS[:1] if args.quick else tuple(range(args.seeds))
    depths = QUICK_DEPTHS if args.quick else DEPTHS
    parallel = args.sampler == "parallel"
    depths = (_adaptive_cap(),) if parallel else depths
    model, tok = load(args.model)
    baseline = load(args.baseline)[0] if args.baseline else None
    t0 = time.time()
    report = {
        "model": str(args.model),
        "baseline": str(args.baseline) if args.baseline else None,
        "per_tier": per_tier,
        "seeds": list(seeds),
        "depths": list(depths),
        "adaptive": {"criterion": ADAPTIVE_CRITERION, "threshold": _default_threshold(),
                     "max_steps": _adaptive_cap(), "cache_strategy": ADAPTIVE_CACHE},
        "sampler": args.sampler,
        "results": evaluate(model, tok, args.tasks.split(","), per_tier, depths, not (args.quick or parallel), seeds,
                            baseline, [int(t) for t in args.tiers.split(",")] if args.tiers else
                            QUICK_TIERS if args.quick else None, parallel),
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
