"""Accuracy of the demo model by task, tier and recurrence depth, on held-out problems.

Every answer is generated greedily through the engine, prefilled the way the app prefills
(`decode(split_prompt=True)`), at fixed depths r = 1, 2, 4, 8, 16, 32, 64 and with adaptive exit (the
KL criterion at the engine's default threshold, capped at the engine's default depth of 32 steps, with
the latest-m4 cache), where the mean steps per answer token are reported too. A problem counts as
solved when the answer matches exactly. Each figure is the mean over three initial-state seeds (the
latent state starts from noise), with a 95 % Wilson interval over the problems, whose seed-averaged
score is the success fraction. Every tier is printed beside two trivial baselines (a right-parity
guess, the start order). `--baseline` adds a model of the same layers trained and run at depth 1.
The `split` section runs the prompt and the answer at different depths; the `chats` section asks
ten questions in one chat through `engine.stream`, with the prompt cache and a context policy.

    python scripts/eval_demo_model.py                  # every section, 200 problems per tier
    python scripts/eval_demo_model.py --json           # the same as JSON (--merge prints several)
    python scripts/eval_demo_model.py --quick          # tiers 4 and 16 at r = 1, 4, 32, two short chats
    python scripts/eval_demo_model.py --sampler parallel --per-tier 64   # r=32 sequential beside parallel

`--sampler parallel` evaluates r = 32 sequential decoding and the parallel sampler (engine.parallel, its default
settings) on the same problems and seeds, one answer at a time for the parallel sampler (it runs batch 1).
"""

from __future__ import annotations

import argparse
import json
import math
import random
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
# Prompt depth and answer depth apart: on the hardest trained tier and the first one beyond training.
SPLIT_DEPTHS = (1, 2, 4, 8, 16, 32)
SPLIT_TIERS = (demo_tasks.TRAIN_MAX_SWAPS, 24)
# latest-m4: an answer step deeper than the prompt (or shallower) reads each prompt position's deepest entry.
SPLIT_CACHE = "latest-m4"
# Chats: ten questions each, at the depth of the targets; the new-token budget is engine.stream's reserve.
MULTI_TURN_TIERS = (4, 8, 12, demo_tasks.TRAIN_MAX_SWAPS)
MULTI_TURN_CHATS = 16
MULTI_TURN_QUESTIONS = 10
MULTI_TURN_DEPTH = 32
MULTI_TURN_NEW_TOKENS = 16
POLICIES = ("blocks", "minimal")
QUICK_CHATS = (8, 2, 6)  # --quick: tier, chats, questions (long enough to overflow the context)
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
    max_new_tokens: int = 16, seed: int = 0, cache_strategy: str = "full", prompt_steps: int | None = None,
) -> tuple[list[str], list[float], list[list[int]]]:
    """Greedy answers to single-turn questions, in batches of equal prompt length, prefilled as the app does.

    The prompt but its last token runs as one block with no exits (`decode(split_prompt=True)`, what
    `engine.stream` does), at `num_steps`, or at `prompt_steps` when given (the prompt's depth P apart
    from the answer's depth A; use a `latest-m4` cache then, so an answer step deeper or shallower than
    the prompt reads the prompt's deepest entries). Returns the answer texts, per answer the mean
    recurrence steps per answer token, and per answer the steps of each token (the stop token that ends
    the turn is not counted).
    """
    from engine.decode import RowPlan, decode
    from engine.exits import resolve_threshold
    from engine.generate import build_prompt, stop_token_ids
    from engine.step import run_block

    stops = stop_token_ids(model, tok)
    prompts = [build_prompt(tok, [{"role": "user", "content": q}], model.config.block_size, max_new_tokens)[0]
               for q in questions]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    texts: list[str] = [""] * len(questions)
    token_steps: list[list[int]] = [[] for _ in questions]
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
        cache = None
        if prompt_steps is not None:
            cache = model.new_cache(len(idxs), cache_strategy, capacity=ids.shape[1] + max_new_tokens)
            body = [RowPlan(num_steps=prompt_steps, exit_in_prefill=False, seed=p.seed) for p in plans]
            with torch.inference_mode():
                run_block(model, ids[:, :-1], body, cache)
        out_tokens: list[list[int]] = [[] for _ in idxs]
        for step in decode(model, ids, plans, cache_strategy, stop_ids=stops, cache=cache,
                           split_prompt=prompt_steps is None):
            for r, token in enumerate(step.tokens):
                if token >= 0 and token not in stops:
                    out_tokens[r].append(token)
                    token_steps[idxs[r]].append(step.steps[r])
        for r, i in enumerate(idxs):
            texts[i] = tok.decode(out_tokens[r], skip_special_tokens=True).strip()
    mean_steps = [sum(st) / max(len(st), 1) for st in token_steps]
    return texts, mean_steps, token_steps


def parallel_answers(model, tok, questions: Sequence[str], num_steps: int, max_new_tokens: int = 16,
                     seed: int = 0) -> tuple[list[str], list[float], list[list[int]]]:
    """Greedy answers from the parallel sampler at its default settings, with the initial states keyed as
    ``generate_answers`` keys them (by seed + question index); returns what ``generate_answers`` returns."""
    from engine import GenerationSettings
    from engine.decode import RowPlan
    from engine.generate import build_prompt, cache_strategy_for, stop_token_ids
    from engine.parallel import ParallelParams, parallel_decode

    defaults = GenerationSettings(sampler="parallel")
    params = ParallelParams.of(defaults)
    stops = stop_token_ids(model, tok)
    texts, token_steps = [], []
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
        token_steps.append(steps)
    return texts, [sum(st) / max(len(st), 1) for st in token_steps], token_steps


BASELINE_LABELS = {"parity": "parity guess", "start": "start order", "one_hop": "one hop per value",
                   "stay": "the start for every value", "listed": "the stops as listed",
                   "repeat": "the first root for every value", "chance": "chance"}


def trivial_baselines(problems: Sequence[demo_tasks.Problem]) -> dict[str, float]:
    """What answering without doing the task's serial work scores on these problems.

    Swaps: `parity`, a random order of the right parity (the parity of the number of swaps is all one
    needs to know), right 1 time in 3 in expectation; `start`, always answering the start order.
    Hops: `one_hop`, every value one link on from the one before (ignoring the hop count; not given at
    one hop, where it is the task); `stay`, the start for every value; `chance`, a random place for each.
    Stops: `listed`, the stops in the order the question lists them; `chance`, a random order of them.
    Chase: `one_hop`, the place one link on from the start, then from the place after each value (not
    given at one link, where it is the task); `repeat`, the right first root for every value; `chance`,
    a random root for each value.
    """
    task = problems[0].task if problems else "swap"
    n = max(len(problems), 1)

    def share(hit) -> float:
        return round(sum(map(hit, problems)) / n, 4)

    if task == "hops":
        def one(p):
            links, _, start = demo_tasks.hops_parts(p.question)
            return demo_tasks.walk(links, start, 1) == p.answer

        base = {"stay": share(lambda p: demo_tasks.hops_parts(p.question)[2] * demo_tasks.HOP_VALUES == p.answer),
                "chance": round(demo_tasks.HOP_PLACES ** -demo_tasks.HOP_VALUES, 4)}
        # at one hop per value, one hop is the task itself, not a baseline
        return base if problems[0].tier == 1 else {"one_hop": share(one), **base}
    if task == "chase":
        def one_link(p):
            links, here = demo_tasks.chase_parts(p.question)
            out = []
            for _ in range(demo_tasks.HOP_VALUES):
                here = links[here]
                out.append(here)
                here = demo_tasks.successor(here)
            return "".join(out) == p.answer

        base = {"repeat": share(lambda p: p.answer[0] * len(p.answer) == p.answer),
                "chance": round(demo_tasks.CHASE_ROOTS ** -demo_tasks.HOP_VALUES, 4)}
        return base if problems[0].tier == 1 else {"one_hop": share(one_link), **base}
    if task == "stops":
        return {"listed": share(lambda p: "".join(demo_tasks.stops_parts(p.question)[2]) == p.answer),
                "chance": round(1 / math.factorial(demo_tasks.STOPS), 4)}
    return {"parity": round(1 / 3, 4), "start": share(lambda p: demo_tasks.swap_start(p.question) == p.answer)}


def by_value(texts: Sequence[str], problems: Sequence[demo_tasks.Problem]) -> list[float]:
    """Share of the answers right at each value (digit) of the answer; a hops answer's first value is
    chosen by the prompt's last position, every later one by an answer token."""
    width = max(len(p.answer) for p in problems)
    return [sum(len(t) > i and len(p.answer) > i and t[i] == p.answer[i] for t, p in zip(texts, problems))
            / max(len(problems), 1) for i in range(width)]


def odd(start: str, order: str) -> bool:
    """Whether `order` is an odd permutation of `start` (an odd number of swaps leads there)."""
    where = [start.index(c) for c in order]
    return sum(where[i] > where[j] for i in range(len(where)) for j in range(i + 1, len(where))) % 2 == 1


def wrong_parity(texts: Sequence[str], problems: Sequence[demo_tasks.Problem]) -> float:
    """Share of the answers that are an order of the cups of the wrong parity.

    Such an answer got the parity of the number of swaps wrong, whatever else it got right; a wrong
    order of the right parity went wrong in composing the swaps.
    """
    bad = 0
    for text, p in zip(texts, problems):
        if p.task != "swap":
            continue
        start = demo_tasks.swap_start(p.question)
        bad += sorted(text) == sorted(start) and odd(start, text) != odd(start, p.answer)
    return bad / max(len(problems), 1)


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
    split_tiers: Sequence[int] = (), split_depths: Sequence[int] = SPLIT_DEPTHS, parallel: bool = False,
) -> dict[str, Any]:
    """Accuracy per task, tier and depth, each over every initial-state seed in `seeds`.

    Every tier also gets the trivial baselines (`trivial_baselines`). `baseline`, a model trained at a
    fixed depth of 1, is run at that depth on the same problems. `tiers` restricts the tiers (default:
    all of each task's). On `split_tiers` the prompt's depth P and the answer's depth A are varied
    apart: P over `split_depths` with A = 1, and A over them with P = 1.
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

            parity_errors: list[float] = []  # of the last run
            values: list[list[float]] = []  # of the last run, per seed

            def run(m, r: int, answer=generate_answers, **kw: Any) -> tuple[list[list[bool]], list[list[int]]]:
                hits, steps = [], []
                parity_errors.clear()
                values.clear()
                for seed in seeds:
                    texts, _, st = answer(m, tok, questions, r, max_new_tokens=max_new, seed=seed, **kw)
                    hits.append([t == a for t, a in zip(texts, answers)])
                    parity_errors.append(wrong_parity(texts, problems))
                    values.append(by_value(texts, problems))
                    steps += st
                return hits, steps

            def by_value_cell() -> dict[str, Any]:
                if task == "swap":
                    return {}
                return {"by_value": [round(sum(v[i] for v in values) / len(values), 4) for i in range(len(values[0]))]}

            row: dict[str, Any] = {"name": demo_tasks.TIER_NAMES[task][tier], "n": len(problems), "acc": {},
                                   "baselines": trivial_baselines(problems)}
            for r in depths:
                row["acc"][str(r)] = {**_cell(run(model, r)[0]), **by_value_cell()}
                if task == "swap":
                    row["acc"][str(r)]["wrong_parity"] = round(sum(parity_errors) / len(parity_errors), 4)
            if adaptive:
                hits, steps = run(model, adaptive_cap, criterion=ADAPTIVE_CRITERION, cache_strategy=ADAPTIVE_CACHE)
                flat = [s for st in steps for s in st]
                width = max(len(st) for st in steps)
                by_position = [[st[i] for st in steps if len(st) > i] for i in range(width)]
                row["adaptive"] = {**_cell(hits), **by_value_cell(),
                                   "mean_steps": round(sum(flat) / max(len(flat), 1), 2),
                                   "steps_by_position": [round(sum(c) / len(c), 2) for c in by_position]}
            if task == "swap" and tier in split_tiers:
                row["prompt_depth"] = {str(d): _cell(run(model, 1, prompt_steps=d, cache_strategy=SPLIT_CACHE)[0])
                                       for d in split_depths}
                row["answer_depth"] = {str(d): _cell(run(model, d, prompt_steps=1, cache_strategy=SPLIT_CACHE)[0])
                                       for d in split_depths}
            if baseline is not None:
                row["baseline"] = _cell(run(baseline, baseline.config.mean_recurrence)[0])
            if parallel:
                hits, steps = run(model, adaptive_cap, answer=parallel_answers)
                flat = [s for st in steps for s in st]
                row["parallel"] = {**_cell(hits), "mean_steps": round(sum(flat) / max(len(flat), 1), 2)}
            results[task][str(tier)] = row
    return results


def conversation_problems(tier: int, chats: int, questions: int) -> list[list[demo_tasks.Problem]]:
    """`chats` conversations of `questions` held-out problems of one tier. Where the tier has fewer
    distinct held-out problems than needed (4 swaps: 13), each chat draws its own order of them."""
    pool = demo_tasks.eval_problems("swap", tier, chats * questions)
    if len(pool) >= chats * questions:
        return [pool[c * questions:(c + 1) * questions] for c in range(chats)]
    rng = random.Random(f"chats-{tier}")
    return [[pool[i % len(pool)] for i in rng.sample(range(len(pool) * questions), questions)]
            for _ in range(chats)]


def multi_turn(model, tok, tier: int, chats: int, questions: int, num_steps: int = MULTI_TURN_DEPTH,
               seeds: Sequence[int] = SEEDS, policy: str = "blocks") -> dict[str, Any]:
    """Accuracy of the k-th question of a chat of `questions` swap problems, asked one after another.

    Each turn goes through `engine.stream` as in the app: the chat template, the model's own earlier
    answers with their token ids, the prompt cache, the split prefill. `policy` decides which old turns
    go when the chat outgrows the context: "minimal" leaves out as few as fit (`engine.build_prompt`),
    "blocks" leaves out a block of them at once (`app.context.keep_recent`). Also returns, per turn,
    the mean prompt tokens and the mean of them reused from the prompt cache.
    """
    from app.context import keep_recent
    from engine.generate import stream
    from engine.prompt_cache import PromptCache
    from engine.settings import GenerationSettings

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    reserve = MULTI_TURN_NEW_TOKENS  # what engine.stream keeps free for the answer
    budget = model.config.block_size - reserve

    def count(messages: list[dict[str, Any]]) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))

    convs = conversation_problems(tier, chats, questions)
    hits = [[[False] * chats for _ in range(questions)] for _ in seeds]
    reused, prompt = [[] for _ in range(questions)], [[] for _ in range(questions)]
    for s, seed in enumerate(seeds):
        settings = GenerationSettings(num_steps=num_steps, seed=0, state_seed=seed,
                                      max_new_tokens=MULTI_TURN_NEW_TOKENS)
        for c, conv in enumerate(convs):
            pool, messages = PromptCache(max_entries=1), []
            for k, problem in enumerate(conv):
                messages.append({"role": "user", "content": problem.question})
                sent = keep_recent([], messages, budget, count)[0] if policy == "blocks" else messages
                ids = []
                for event in stream(model, tok, sent, settings, prompt_cache=pool):
                    if hasattr(event, "token_id"):
                        if event.token_id >= 0:
                            ids.append(event.token_id)
                    else:
                        summary = event
                hits[s][k][c] = summary.text.strip() == problem.answer
                reused[k].append(summary.reused_tokens)
                prompt[k].append(summary.prompt_tokens)
                messages.append({"role": "assistant", "content": summary.text, "token_ids": ids})
    flat = [p for conv in convs for p in conv]
    return {"name": demo_tasks.TIER_NAMES["swap"][tier], "chats": chats, "questions": questions, "depth": num_steps,
            "policy": policy, "seeds": list(seeds), "baselines": trivial_baselines(flat),
            "by_question": [_cell([hits[s][k] for s in range(len(seeds))]) for k in range(questions)],
            "prompt_tokens": [round(sum(p) / len(p), 1) for p in prompt],
            "reused_tokens": [round(sum(r) / len(r), 1) for r in reused]}


def _fmt(cell: dict[str, Any]) -> str:
    return f"{100 * cell['acc']:.1f} [{100 * cell['lo']:.0f}–{100 * cell['hi']:.0f}]"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The depth table: one row per tier, trivial baselines beside it."""
    depths = report["depths"]
    rows = [row for tiers in report["results"].values() for row in tiers.values() if row.get("acc")]
    if not rows:
        return ""
    extra = (["adaptive kl", "mean steps"] if any("adaptive" in row for row in rows) else []) + (
        ["no recurrence (r=1 trained)"] if report.get("baseline") else []) + (
        [f"parallel r={_adaptive_cap()}", "its mean steps"] if any("parallel" in row for row in rows) else [])
    trivial = [k for k in BASELINE_LABELS if any(k in row["baselines"] for row in rows)]  # each task has its own
    extra += [BASELINE_LABELS[k] for k in trivial]
    head = "| task | tier | n | " + " | ".join([f"r={r}" for r in depths] + extra) + " |"
    lines = [head, "|" + "---|" * (len(depths) + len(extra) + 3)]
    for task, tiers in report["results"].items():
        for tier, row in tiers.items():
            if not row.get("acc"):
                continue
            cells = [_fmt(row["acc"][str(r)]) for r in depths]
            if "adaptive" in row:
                cells += [_fmt(row["adaptive"]), f"{row['adaptive']['mean_steps']:.1f}"]
            if "baseline" in row:
                cells.append(_fmt(row["baseline"]))
            if "parallel" in row:
                cells += [_fmt(row["parallel"]), f"{row['parallel']['mean_steps']:.1f}"]
            cells += [_pct(row["baselines"][k]) if k in row["baselines"] else "–" for k in trivial]
            lines.append(f"| {task} | {row['name']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_table(report: dict[str, Any]) -> str:
    """Accuracy with the prompt's depth P and the answer's depth A apart (empty without split tiers)."""
    rows = [(row, key) for tiers in report["results"].values() for row in tiers.values()
            for key in ("prompt_depth", "answer_depth") if key in row]
    if not rows:
        return ""
    depths = list(rows[0][0]["prompt_depth"])
    label = {"prompt_depth": "prompt depth P (answer A = 1)", "answer_depth": "answer depth A (prompt P = 1)"}
    lines = ["| tier | varied | " + " | ".join(depths) + " | parity guess | start order |",
             "|" + "---|" * (len(depths) + 4)]
    for row, key in rows:
        cells = [_fmt(row[key][d]) for d in depths]
        lines.append(f"| {row['name']} | {label[key]} | " + " | ".join(cells) + f" | {_pct(row['baselines']['parity'])}"
                     f" | {_pct(row['baselines']['start'])} |")
    return "\n".join(lines)


def multi_turn_table(report: dict[str, Any]) -> str:
    """Accuracy of the k-th question of a chat, and the prompt cache's reuse per turn (empty without chats)."""
    chats = report.get("multi_turn") or []
    if not chats:
        return ""
    k = chats[0]["questions"]
    lines = ["| tier | chats × seeds | policy | " + " | ".join(f"q{i}" for i in range(1, k + 1)) +
             " | parity guess | start order |", "|" + "---|" * (k + 5)]
    for chat in chats:
        cells = [_fmt(c) for c in chat["by_question"]]
        lines.append(f"| {chat['name']} | {chat['chats']} × {len(chat.get('seeds', [0]))} | {chat['policy']} | " +
                     " | ".join(cells) +
                     f" | {_pct(chat['baselines']['parity'])} | {_pct(chat['baselines']['start'])} |")
    lines += ["", "| tier | policy | per turn | " + " | ".join(f"q{i}" for i in range(1, k + 1)) + " |",
              "|" + "---|" * (k + 3)]
    for chat in chats:
        for key, what in (("prompt_tokens", "prompt tokens"), ("reused_tokens", "reused from the cache")):
            lines.append(f"| {chat['name']} | {chat['policy']} | {what} | " +
                         " | ".join(f"{x:.0f}" for x in chat[key]) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    tables = (markdown_table(report), split_table(report), multi_turn_table(report),
              "\n".join(f"- {line}" for line in findings(report)))
    return "\n\n".join(t for t in tables if t)


def _first_depth(row: dict[str, Any], at_least: float) -> str:
    """The smallest evaluated depth whose accuracy reaches `at_least`, as text ("none" if no depth does)."""
    hits = [int(r) for r, cell in row["acc"].items() if cell["acc"] >= at_least]
    return f"r = {min(hits)}" if hits else "no evaluated depth"


def findings(report: dict[str, Any]) -> list[str]:
    """The card's sentences with numbers, each computed from the report (no number is typed by hand)."""
    out: list[str] = []
    every = {int(t): row for t, row in report["results"].get("swap", {}).items()}
    rows = {t: row for t, row in every.items() if row.get("acc")}
    trained = [t for t in rows if t <= demo_tasks.TRAIN_MAX_SWAPS]
    beyond = [t for t in rows if t > demo_tasks.TRAIN_MAX_SWAPS]
    depths = [int(r) for r in report["depths"]]

    def acc(t: int, r: int) -> float:
        return 100 * rows[t]["acc"][str(r)]["acc"]

    def best_trivial(t: int) -> float:
        return 100 * max(rows[t]["baselines"].values())

    if trained:
        firsts = ", ".join(f"{_first_depth(rows[t], 0.9)} for {t}" for t in trained)
        out.append(f"First depth at which at least 90 % of the problems are solved: {firsts} swaps.")
        top = max(trained)
        if 4 in depths and 16 in depths:
            out.append(f"The longest trained list ({top} swaps) is {acc(top, 4):.1f} % right at r = 4 and "
                       f"{acc(top, 16):.1f} % at r = 16; a trivial baseline gets {best_trivial(top):.1f} % "
                       f"(the better of a right-parity guess and the start order).")
        if 32 in depths:
            low = min(acc(t, 32) for t in trained)
            out.append(f"At r = 32 every trained tier is at least {low:.1f} % right.")
    for t in beyond:
        if 8 in depths and 64 in depths:
            out.append(f"{t} swaps ({t / demo_tasks.TRAIN_MAX_SWAPS:.2g}× the longest trained list): "
                       f"{acc(t, 8):.1f} % at r = 8, {acc(t, 32):.1f} % at r = 32, {acc(t, 64):.1f} % at r = 64, "
                       f"against {best_trivial(t):.1f} % for the better trivial baseline.")
    for t in beyond:
        deepest = str(max(depths))
        cell = rows[t]["acc"][deepest]
        if "wrong_parity" in cell and cell["acc"] < 1:
            wrong = 100 * (1 - cell["acc"])
            out.append(f"{t} swaps at r = {deepest}: {100 * cell['wrong_parity']:.1f} % of the answers are an order "
                       f"of the wrong parity, out of {wrong:.1f} % wrong answers.")
    if 32 in depths and 64 in depths and rows:
        gap = max(abs(acc(t, 64) - acc(t, 32)) for t in rows)
        out.append(f"r = 64 differs from r = 32 by at most {gap:.1f} points on any tier.")
    adaptive = {t: row["adaptive"] for t, row in rows.items() if "adaptive" in row}
    if adaptive and 32 in depths:
        diffs = ", ".join(f"{100 * adaptive[t]['acc'] - acc(t, 32):+.1f} ({t})" for t in adaptive)
        out.append(f"Adaptive kl minus r = 32, in points per tier (swaps): {diffs}.")
        easy, hard = min(adaptive), max(t for t in adaptive if t <= demo_tasks.TRAIN_MAX_SWAPS) if trained else max(adaptive)
        e, h = adaptive[easy]["mean_steps"], adaptive[hard]["mean_steps"]
        out.append(f"Mean steps per answer token with adaptive exit: {e:.2f} at {easy} swaps, {h:.2f} at {hard} "
                   f"({h / e:.2f}×); by answer position at {hard} swaps: "
                   + ", ".join(f"{x:.1f}" for x in adaptive[hard]["steps_by_position"]) + ".")
    spreads = [100 * (max(c["per_seed"]) - min(c["per_seed"])) for t in trained for r, c in rows[t]["acc"].items()
               if int(r) >= 8 and len(c["per_seed"]) > 1]
    if spreads:
        out.append(f"Across the {len(report['seeds'])} initial-state seeds, trained tiers at r ≥ 8 differ by at most "
                   f"{max(spreads):.1f} points.")
    if any("baseline" in row for row in rows.values()):
        worst = ", ".join(f"{100 * row['baseline']['acc']:.1f} % ({t})" for t, row in rows.items() if "baseline" in row)
        out.append(f"The same layers trained and run at one core step: {worst}.")
    for t, row in every.items():
        if "prompt_depth" in row:
            p = {int(d): 100 * c["acc"] for d, c in row["prompt_depth"].items()}
            a = {int(d): 100 * c["acc"] for d, c in row["answer_depth"].items()}
            out.append(f"{t} swaps with the prompt and the answer at different depths: prompt at P = {max(p)} with "
                       f"one answer step {p[max(p)]:.1f} %, prompt at P = {min(p)} with answer steps up to A = "
                       f"{max(a)} at most {max(a.values()):.1f} %.")
    out += [line for task in ("hops", "stops", "chase") for line in walk_findings(report, task)]
    for chat in report.get("multi_turn") or []:
        by_q = [100 * c["acc"] for c in chat["by_question"]]
        reuse = sum(chat["reused_tokens"]) / sum(chat["prompt_tokens"])
        out.append(f"Chats of {chat['questions']} questions of {chat['name']} at r = {chat['depth']} ({chat['policy']} "
                   f"policy): question 1 {by_q[0]:.1f} %, question {chat['questions']} {by_q[-1]:.1f} %, lowest "
                   f"{min(by_q):.1f} %; {100 * reuse:.0f} % of the prompt tokens came from the prompt cache.")
    return out


def walk_findings(report: dict[str, Any], task: str) -> list[str]:
    """The sentences of a walk task's tiers (hops, stops, chase): accuracy by depth, by answer value, and the adaptive
    steps per answer token."""
    rows = {int(t): row for t, row in report["results"].get(task, {}).items() if row.get("acc")}
    out: list[str] = []
    deepest = str(max(int(r) for r in report["depths"])) if report["depths"] else None
    for t, row in rows.items():
        curve = ", ".join(f"r = {r}: {100 * c['acc']:.1f} %" for r, c in row["acc"].items())
        values = ", ".join(f"{100 * v:.1f}" for v in row["acc"][deepest].get("by_value", []))
        best = max(row["baselines"], key=row["baselines"].get)
        out.append(f"{row['name']}: {curve}; right by answer value at r = {deepest}: {values} % (the first value is "
                   f"chosen by the prompt, the later ones by answer tokens); {BASELINE_LABELS[best]} baseline "
                   f"{100 * row['baselines'][best]:.1f} %.")
    adaptive = {t: row["adaptive"] for t, row in rows.items() if "adaptive" in row}
    if len(adaptive) > 1:
        easy, hard = min(adaptive), max(adaptive)
        e, h = adaptive[easy]["mean_steps"], adaptive[hard]["mean_steps"]
        out.append(f"{task.capitalize()}, mean steps per answer token with adaptive exit: {e:.2f} at "
                   f"{rows[easy]['name']}, {h:.2f} at {rows[hard]['name']} ({h / e:.2f}×); by answer position there: "
                   + ", ".join(f"{x:.1f}" for x in adaptive[hard]["steps_by_position"]) + ".")
    return out


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from several of the same model and seeds (other tiers or other sections, run side by side)."""
    merged = dict(reports[0], results={}, multi_turn=[])
    for report in reports:  # a chat carries its own seeds; the depth tables must agree on theirs
        if report["results"] and merged["results"] and (report["depths"], report["seeds"]) != (
                merged["depths"], merged["seeds"]):
            raise SystemExit("--merge: the reports were run with different depths or seeds")
        if report["results"]:
            merged["depths"], merged["seeds"] = report["depths"], report["seeds"]
        for task, tiers in report["results"].items():
            for tier, row in tiers.items():
                into = merged["results"].setdefault(task, {}).setdefault(tier, {})
                if into.get("n", row["n"]) != row["n"]:  # one row has one n and one set of baselines
                    raise SystemExit(f"--merge: {task} tier {tier} was run on {into['n']} and on {row['n']} problems")
                # a split-only row has an empty "acc": it must not hide the depth table's
                into.update({k: v for k, v in row.items() if v != {}})
        merged["multi_turn"] += report.get("multi_turn") or []
        merged["baseline"] = merged.get("baseline") or report.get("baseline")
    for task, tiers in merged["results"].items():
        merged["results"][task] = dict(sorted(tiers.items(), key=lambda kv: int(kv[0])))
    merged["seconds"] = sum(r.get("seconds", 0) for r in reports)
    return merged


SECTIONS = ("single", "split", "chats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a model trained at depth 1 (train_demo_model.py --fixed-depth 1), run at its depth")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_PER_TIER} problems of tiers {QUICK_TIERS}, one seed, depths "
                         f"{', '.join(map(str, QUICK_DEPTHS))}, no adaptive run; {QUICK_CHATS[1]} chats of "
                         f"{QUICK_CHATS[2]} questions of tier {QUICK_CHATS[0]}")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated, from: single (the depth table), split (prompt and answer depth apart), "
                         "chats (the k-th question of a chat)")
    ap.add_argument("--per-tier", type=int, default=None, help="problems per tier (default 200)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="initial-state seeds (default 3)")
    ap.add_argument("--tasks", default=",".join(demo_tasks.TASKS),
                    help="comma-separated, from: " + ",".join(demo_tasks.TIERS) + " (default: the shipped model's, "
                         + ",".join(demo_tasks.TASKS) + ")")
    ap.add_argument("--tiers", default=None, help="comma-separated tiers of the depth table (default: all; --quick: "
                    + ",".join(map(str, QUICK_TIERS)) + ")")
    ap.add_argument("--split-tiers", default=",".join(map(str, SPLIT_TIERS)))
    ap.add_argument("--chat-tiers", default=",".join(map(str, MULTI_TURN_TIERS)))
    ap.add_argument("--chats", type=int, default=MULTI_TURN_CHATS, help="chats per tier")
    ap.add_argument("--questions", type=int, default=MULTI_TURN_QUESTIONS, help="questions per chat")
    ap.add_argument("--chat-depth", type=int, default=MULTI_TURN_DEPTH)
    ap.add_argument("--policy", default="blocks", help="comma-separated, from: " + ",".join(POLICIES))
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="print the tables of these --json reports (run side by side) and exit")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sampler", choices=["sequential", "parallel"], default="sequential",
                    help="parallel: r=32 sequential beside the parallel sampler, and no other depths")
    args = ap.parse_args()
    if args.merge:
        print(markdown(merge_reports([json.loads(p.read_text()) for p in args.merge])))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    tasks = args.tasks.split(",")
    if not set(tasks) <= set(demo_tasks.TIERS):
        raise SystemExit(f"--tasks: unknown {sorted(set(tasks) - set(demo_tasks.TIERS))}; choose from "
                         f"{tuple(demo_tasks.TIERS)}")
    policies = args.policy.split(",")
    if not set(policies) <= set(POLICIES):
        raise SystemExit(f"--policy: choose from {POLICIES}, got {args.policy!r}")
    per_tier = args.per_tier or (QUICK_PER_TIER if args.quick else 200)
    seeds = SEEDS[:1] if args.quick else tuple(range(args.seeds))
    depths = QUICK_DEPTHS if args.quick else DEPTHS
    parallel = args.sampler == "parallel"
    depths = (_adaptive_cap(),) if parallel else depths
    tiers = [int(t) for t in args.tiers.split(",")] if args.tiers else QUICK_TIERS if args.quick else None
    model, tok = load(args.model)
    baseline = load(args.baseline)[0] if args.baseline else None
    t0 = time.time()
    results: dict[str, Any] = {}
    if "single" in sections or "split" in sections:
        split = [int(t) for t in args.split_tiers.split(",")] if "split" in sections and not args.quick else []
        if "single" in sections:
            results = evaluate(model, tok, tasks, per_tier, depths, not (args.quick or parallel),
                               seeds, baseline, tiers, split, parallel=parallel)
        else:  # only the split rows
            results = evaluate(model, tok, tasks, per_tier, (), False, seeds, None, split, split)
    chats = []
    if "chats" in sections:
        if args.quick:
            chats = [multi_turn(model, tok, QUICK_CHATS[0], QUICK_CHATS[1], QUICK_CHATS[2], args.chat_depth, seeds)]
        else:
            chats = [multi_turn(model, tok, t, args.chats, args.questions, args.chat_depth, seeds, policy)
                     for policy in policies for t in map(int, args.chat_tiers.split(","))]
    report = {
        "model": str(args.model),
        "baseline": str(args.baseline) if args.baseline else None,
        "per_tier": per_tier,
        "seeds": list(seeds),
        "depths": list(depths),
        "adaptive": {"criterion": ADAPTIVE_CRITERION, "threshold": _default_threshold(),
                     "max_steps": _adaptive_cap(), "cache_strategy": ADAPTIVE_CACHE},
        "sampler": args.sampler,
        "results": results,
        "multi_turn": chats,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(report, indent=2) if args.json else markdown(report))


def _adaptive_cap() -> int:
    from engine.settings import GenerationSettings

    return GenerationSettings().num_steps


def _default_threshold() -> float:
    from engine.exits import DEFAULT_THRESHOLDS

    return DEFAULT_THRESHOLDS[ADAPTIVE_CRITERION]


if __name__ == "__main__":
    main()
