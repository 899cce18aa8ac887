"""Teacher-forced accuracy of each answer value of a walk task, by depth: does more depth help a value?

    python scripts/probe_answer_values.py --model CHECKPOINT --task chase

One forward pass per depth over held-out problems (`demo_tasks.eval_problems`), argmax right at each
answer position given the right answer before it. The first value is chosen by the prompt's last
position, the later ones by answer tokens. For chase the rows are grouped by the links each value's own
walk takes (0: the place is a root already), so a model that walks shows accuracy rising with depth on
the longer walks; for hops and stops by tier and value. The probes in docs/demo-model.md ("Serial work in
the answer") were measured with it.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

import demo_tasks
import train_demo_model
from eval_demo_model import load

DEPTHS = (1, 2, 4, 8, 16, 32)


def chase_walks(problem: demo_tasks.Problem) -> list[int]:
    """Links each answer value's walk takes."""
    links, here = demo_tasks.chase_parts(problem.question)
    out = []
    for value in problem.answer:
        n = 0
        while here != value:
            here, n = links[here], n + 1
        out.append(n)
        here = demo_tasks.successor(value)
    return out


@torch.no_grad()
def probe(model, tok, task: str, per_tier: int, depths=DEPTHS) -> dict[tuple[str, int], dict[int, float]]:
    """(group, key) -> {depth: share right}; group "first" or "later" (chase, key = walk length) or
    f"value {i}" (hops, stops; key = tier)."""
    hits: dict[tuple[str, int], dict[int, list[int]]] = collections.defaultdict(
        lambda: {r: [0, 0] for r in depths})
    for tier in demo_tasks.TIERS[task]:
        problems = demo_tasks.eval_problems(task, tier, per_tier)
        ids, labels = train_demo_model.collate(
            [train_demo_model.encode_conversation(tok, p.messages()) for p in problems], tok.pad_token_id)
        positions = [(row != train_demo_model.IGNORE).nonzero().flatten().tolist() for row in labels]
        for r in depths:
            pred = model(ids, num_steps=r).logits.argmax(-1)
            for i, p in enumerate(problems):
                walks = chase_walks(p) if task == "chase" else None
                for j in range(len(p.answer)):
                    key = (("first" if j == 0 else "later"), walks[j]) if walks else (f"value {j + 1}", tier)
                    cell = hits[key][r]
                    cell[0] += int(pred[i, positions[i][j]] == labels[i, positions[i][j]])
                    cell[1] += 1
    return {k: {r: h / n for r, (h, n) in row.items()} for k, row in sorted(hits.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--task", choices=[t for t in demo_tasks.TIERS if t != "swap"], default="chase")
    ap.add_argument("--per-tier", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    model.eval()
    label = "walk, links: {}" if args.task == "chase" else "tier {}"
    for (group, key), row in probe(model, tok, args.task, args.per_tier).items():
        print(f"{group:8s} {label.format(key):18s} " + "  ".join(f"r={r}: {100 * v:5.1f} %" for r, v in row.items()))


if __name__ == "__main__":
    main()
