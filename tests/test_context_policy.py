"""The context policy for long chats: old turns leave in blocks, so the kept prefix (and its cache) lasts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.context import block_start, keep_recent

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _chat(turns: int, length: int = 30) -> tuple[list[int], list[bool]]:
    return [length] * (2 * turns), [i % 2 == 0 for i in range(2 * turns)]


def test_nothing_is_dropped_while_the_chat_fits() -> None:
    lengths, users = _chat(4)
    assert block_start(lengths, users, budget=240) == 0
    assert block_start(lengths[:1], users[:1], budget=10) == 0  # the last message always stays


def test_an_overflow_drops_whole_exchanges_down_to_half_the_budget() -> None:
    lengths, users = _chat(5)  # 300 tokens in a 240-token budget
    start = block_start(lengths, users, budget=240)
    assert users[start] and sum(lengths[start:]) <= 120
    assert sum(lengths[start - 2:]) > 120  # not more than needed


def test_the_start_stays_put_for_several_turns_then_moves_in_one_block() -> None:
    lengths, users = _chat(20)
    starts = [block_start(lengths[:end], users[:end], budget=240) for end in range(1, len(lengths) + 1, 2)]
    assert starts == sorted(starts)
    moves = [i for i, (a, b) in enumerate(zip(starts, starts[1:])) if a != b]
    assert len(moves) >= 3 and all(b - a >= 2 for a, b in zip(moves, moves[1:]))  # kept for 2+ turns each time
    # The fewest-dropped rule moves the start at every turn once the chat is full.
    fewest = [next(s for s in range(end) if sum(lengths[s:end]) <= 240) for end in range(1, len(lengths) + 1, 2)]
    assert sum(a != b for a, b in zip(fewest, fewest[1:])) > 2 * len(moves)


def test_uneven_lengths_still_fit_and_start_at_a_question() -> None:
    lengths = [5, 200, 7, 9, 120, 3, 60, 60, 10]
    users = [True, False] * 4 + [True]
    start = block_start(lengths, users, budget=200)
    assert users[start] and sum(lengths[start:]) <= 200


@pytest.mark.parametrize("args, match", [(([1, 2], [True], 10), "2 lengths for 1 roles"),
                                         (([1], [True], 10, 0.0), "refill")])
def test_bad_arguments_are_named(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        block_start(*args)


def test_keep_recent_counts_with_the_real_chat_template() -> None:
    from transformers import AutoTokenizer

    import demo_tasks

    tok = AutoTokenizer.from_pretrained(str(ROOT / "assets" / "demo-model"))

    def count(messages):
        return len(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))

    import random

    rng = random.Random(0)
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    turns = [m for _ in range(12) for m in demo_tasks.make_swap(12, rng).messages()]
    kept, dropped = keep_recent(system, turns[:3], 240, count)
    assert (kept, dropped) == (turns[:3], 0)
    prefixes = []
    for end in range(1, len(turns), 2):
        kept, dropped = keep_recent(system, turns[:end], 240, count)
        assert kept == turns[dropped:end] and kept[0]["role"] == "user"
        assert count(system + kept) <= 240  # the estimate from single messages is exact here
        prefixes.append(dropped)
    assert max(prefixes) > 0 and len(set(prefixes)) < len(prefixes) / 2  # the same start for several turns
