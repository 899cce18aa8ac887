"""Self-speculative decoding against plain greedy decoding at the same depth, on the demo model's held-out problems.

    python bench/bench_speculative.py [--steps 32] [--draft 4] [--lookahead 4] [--per-tier 3]

Both run through ``engine.stream``, batch 1, greedy. Reports decode tokens/s of each (median over problems), the
ratio, the acceptance rate of drafted tokens, and whether every output was identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import engine  # noqa: E402
from demo_tasks import TIERS, eval_problems  # noqa: E402
from engine import GenerationSettings  # noqa: E402


def run(model, tok, question: str, settings: GenerationSettings) -> tuple[str, int, float, float | None]:
    """Text, decoded tokens after the first, the time they took, and the acceptance rate."""
    events = list(engine.stream(model, tok, [{"role": "user", "content": question}], settings))
    times = [e.seconds for e in events[:-1] if e.token_id >= 0]
    return events[-1].text, len(times) - 1, times[-1] - times[0], events[-1].acceptance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(engine.DEMO_MODEL))
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--draft", type=int, default=4)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--per-tier", type=int, default=3)
    args = parser.parse_args()
    model, tok, _ = engine.load(args.model, device="cpu")
    plain = GenerationSettings(num_steps=args.steps, max_new_tokens=32, init_scale=0.0, seed=0)
    spec = plain.replace(draft_steps=args.draft, lookahead=args.lookahead)
    print(f"# {args.model}: plain r={args.steps} vs draft r={args.draft}, lookahead {args.lookahead}")
    print(f"{'task':<6} {'tier':>4} {'plain tok/s':>11} {'spec tok/s':>10} {'ratio':>6} {'accept':>7} {'same':>6}")
    totals = {"plain_tokens": 0, "plain_time": 0.0, "spec_tokens": 0, "spec_time": 0.0}
    acceptances, same, total = [], 0, 0
    for task, tiers in TIERS.items():
        for tier in tiers:
            row = dict.fromkeys(totals, 0)
            accept, equal = [], 0
            problems = eval_problems(task, tier, args.per_tier)
            for problem in problems:
                text_p, tokens_p, time_p, _ = run(model, tok, problem.question, plain)
                text_s, tokens_s, time_s, acceptance = run(model, tok, problem.question, spec)
                row["plain_tokens"] += tokens_p
                row["plain_time"] += time_p
                row["spec_tokens"] += tokens_s
                row["spec_time"] += time_s
                accept.append(acceptance or 0.0)
                equal += text_p == text_s
            for key in totals:
                totals[key] += row[key]
            acceptances += accept
            same += equal
            total += len(problems)
            plain_rate, spec_rate = row["plain_tokens"] / row["plain_time"], row["spec_tokens"] / row["spec_time"]
            print(f"{task:<6} {tier:>4} {plain_rate:>11.1f} {spec_rate:>10.1f} {spec_rate / plain_rate:>6.2f} "
                  f"{statistics.mean(accept):>7.0%} {equal:>3}/{len(problems)}", flush=True)
    ratio = (totals["spec_tokens"] / totals["spec_time"]) / (totals["plain_tokens"] / totals["plain_time"])
    print(f"summary: speculative decoding (draft r={args.draft}, lookahead {args.lookahead}) runs at "
          f"{ratio:.2f}x the decode tokens/s of plain r={args.steps} (all problems), acceptance "
          f"{statistics.mean(acceptances):.0%}, {same}/{total} outputs identical")


if __name__ == "__main__":
    main()
