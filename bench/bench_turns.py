"""Time to first token over the turns of one conversation, without and with the prompt cache (engine.PromptCache).

    python bench/bench_turns.py                       # both models, 10 turns, 3 rounds
    python bench/bench_turns.py --models scaled --turns 10 --rounds 3 --steps 32

Each turn adds a user message and the model's answer. For every turn both modes run side by side on the same
messages: "before" runs the whole prompt (as every turn did before the prompt cache), "after" reuses what earlier
turns of the conversation computed. Time to first token is the wall time from calling ``engine.stream`` to its first
token event (templating, prefill and the first token's recurrence). Both modes must give the same first token; the
"after" mode's answer becomes the conversation's next assistant message, with the token ids it was generated as (as
the app sends it; ``--text-only`` sends the text alone, as an OpenAI client does). Medians over rounds, each round a
fresh conversation and a fresh pool.

Models: a random model of the official layout at width 512 (2/4/2 layers, the official tokenizer; questions of about
55 tokens and answers of 50, so a turn is about 105 tokens) and the demo model (context 256: turns of about 17
tokens, so that ten fit without dropping old turns).
Fixed depth r (``--steps``, default 32), greedy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402
from engine import GenerationSettings, PromptCache, Summary  # noqa: E402

from bench_decode import scaled_official  # noqa: E402

WORDS = ("the cups move left and right while the ball stays under one of them and we count every swap "
         "that happens before the end of the game so tell me where it is").split()


def question(turn: int, words: int) -> str:
    start = (turn * 7) % len(WORDS)
    return f"Turn {turn + 1}: " + " ".join((WORDS * 4)[start:start + words]) + "?"


def first_token(model, tok, messages, settings, pool, whole: bool = True) -> tuple[float, list[int], Summary]:
    """(seconds to the first token, the answer's token ids, the summary or None) of one answer; ``whole=False``
    stops listening after the first token (the same prompt: trimming reserves room for ``max_new_tokens``)."""
    start = time.perf_counter()
    seconds, ids, summary = None, [], None
    events = engine.stream(model, tok, messages, settings, prompt_cache=pool)
    for event in events:
        if isinstance(event, Summary):
            summary = event
        elif event.token_id >= 0:
            seconds = seconds or time.perf_counter() - start
            ids.append(event.token_id)
            if not whole:
                events.close()
                break
    return seconds, ids, summary


def conversation(model, tok, turns: int, words: int, answer_tokens: int, steps: int,
                 keep_ids: bool = True) -> list[dict]:
    """One conversation's rows: per turn the prompt length, tokens reused and both times to first token."""
    settings = GenerationSettings(num_steps=steps, max_new_tokens=answer_tokens, seed=0)
    pool = PromptCache()
    messages: list[dict[str, str]] = []
    rows = []
    for turn in range(turns):
        messages = messages + [{"role": "user", "content": question(turn, words)}]
        before, first, _ = first_token(model, tok, messages, settings, None, whole=False)
        after, ids, summary = first_token(model, tok, messages, settings, pool)
        if first != ids[:1]:
            raise SystemExit(f"turn {turn + 1}: the first token differs with the prompt cache "
                             f"({first} without, {ids[:1]} with)")
        rows.append({"turn": turn + 1, "prompt": summary.prompt_tokens, "reused": summary.reused_tokens,
                     "answer": summary.tokens, "before": before, "after": after})
        print(f"# {rows[-1]}", file=sys.stderr, flush=True)  # progress; the table comes at the end
        if keep_ids:  # as the app does: the answer goes back with the token ids it was generated as
            messages = messages + [{"role": "assistant", "content": summary.text, "token_ids": ids}]
        else:
            messages = messages + [{"role": "assistant", "content": summary.text}]
    return rows


def report(name: str, rounds: list[list[dict]]) -> None:
    print(f"\n{name}: time to first token in seconds, median of {len(rounds)} round(s)")
    print(f"{'turn':>4} {'prompt':>6} {'reused':>6} {'answer':>6} {'before s':>9} {'after s':>8} {'after/before':>12}")
    medians = []
    for i, row in enumerate(rounds[0]):
        before = statistics.median(r[i]["before"] for r in rounds)
        after = statistics.median(r[i]["after"] for r in rounds)
        medians.append((before, after))
        print(f"{row['turn']:>4} {row['prompt']:>6} {row['reused']:>6} {row['answer']:>6} {before:>9.3f} "
              f"{after:>8.3f} {after / before:>12.2f}")
    (b1, a1), (bn, an) = medians[0], medians[-1]
    print(f"turn {len(medians)} / turn 1: before {bn / b1:.2f}x, after {an / a1:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="scaled,demo", help="comma-separated: scaled, demo")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--text-only", action="store_true",
                        help="earlier answers as text only (an OpenAI client): reused as far as they re-tokenize")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {_cpu_name()}, torch threads "
          f"{torch.get_num_threads()}; r={args.steps}, greedy, full cache; earlier answers "
          f"{'as text' if args.text_only else 'with their token ids'}")
    for name in args.models.split(","):
        if name == "scaled":
            model, tok = scaled_official()
            label, words, answer_tokens = "official-layout-512", 40, 50
        elif name == "demo":
            model, tok, _ = engine.load(str(engine.DEMO_MODEL), device="cpu")
            label, words, answer_tokens = "demo", 1, 4  # ten turns within its 256-token context
        else:
            raise SystemExit(f"unknown model {name!r}: use scaled or demo")
        keep = not args.text_only
        conversation(model, tok, 1, words, answer_tokens, args.steps, keep)  # warm-up, not measured
        rounds = [conversation(model, tok, args.turns, words, answer_tokens, args.steps, keep)
                  for _ in range(args.rounds)]
        report(label, rounds)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
