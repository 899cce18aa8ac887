"""The demo model's task generators: correct answers, tiers that mean what they say, an exact split."""

from __future__ import annotations

import itertools
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo_tasks as dt  # noqa: E402


def _is_problem(text: str) -> bool:
    # Chat openers are few and fixed, so training and evaluation share them on purpose; only
    # generated problems are split.
    return bool(re.fullmatch(r"What is \d{8}\+\d{8}\?", text)) or ". What is " in text


def _resolve_vars(question: str) -> str:
    body, query = question.split(". What is ")
    env: dict[str, str] = {}
    for stmt in body.split("; "):
        name, value = stmt.split("=")
        env[name] = value if value.isdigit() else env[value]
    return env[query.rstrip("?")]


@pytest.mark.parametrize("tier", dt.TIERS["add"])
def test_addition_answers_are_right_and_fixed_width(tier: int) -> None:
    rng = random.Random(tier)
    for _ in range(200):
        p = dt.make_add(tier, rng)
        m = re.fullmatch(r"What is (\d{8})\+(\d{8})\?", p.question)
        assert m, p.question
        a, b = int(m[1]), int(m[2])
        assert p.answer == str(a + b).zfill(9)


def test_addition_tiers_control_size_and_carry_chains() -> None:
    rng = random.Random(0)
    small = [dt.make_add(1, rng) for _ in range(100)]
    assert all(p.question.count("00000") == 2 for p in small)
    for _ in range(200):
        p = dt.make_add(4, rng)
        a, b = map(int, p.question[len("What is "):-1].split("+"))
        assert 4 <= dt.carry_chain_length(a, b) <= 7


def test_carry_chain_length() -> None:
    assert dt.carry_chain_length(0, 0) == 0
    assert dt.carry_chain_length(1, 9) == 0  # a carry, but nothing to propagate it through
    assert dt.carry_chain_length(991, 9) == 2  # 1+9 carries through 9 and 9
    assert dt.carry_chain_length(4500, 5400) == 0  # sums of 9 without an incoming carry do not count
    assert dt.carry_chain_length(9999999999, 1) == 9


@pytest.mark.parametrize("tier", dt.TIERS["vars"])
def test_variable_tracking_answers_follow_the_chain(tier: int) -> None:
    rng = random.Random(tier)
    for _ in range(100):
        p = dt.make_vars(tier, rng)
        assert p.answer == _resolve_vars(p.question)
        assert p.question.count("=") == 2 * (tier + 1)


def test_streams_are_seeded() -> None:
    first = list(itertools.islice(dt.train_conversations(7), 50))
    again = list(itertools.islice(dt.train_conversations(7), 50))
    other = list(itertools.islice(dt.train_conversations(8), 50))
    assert first == again
    assert first != other
    assert dt.eval_problems("add", 4, 20) == dt.eval_problems("add", 4, 20)


def test_heldout_questions_never_reach_training() -> None:
    heldout = {p.question for task in dt.TASKS for tier in dt.TIERS[task] for p in dt.eval_problems(task, tier, 30)}
    assert all(dt.is_heldout(q) for q in heldout)
    seen_train = 0
    for conv in itertools.islice(dt.train_conversations(0), 3000):
        for m in conv:
            if m["role"] == "user":
                if _is_problem(m["content"]):
                    assert not dt.is_heldout(m["content"])
                assert m["content"] not in heldout
                seen_train += 1
    assert seen_train > 3000


def test_heldout_split_is_about_one_in_twenty() -> None:
    rng = random.Random(0)
    qs = [dt.make_add(3, rng).question for _ in range(4000)]
    share = sum(map(dt.is_heldout, qs)) / len(qs)
    assert 0.03 < share < 0.07


def test_chat_turns_have_short_fixed_replies() -> None:
    rng = random.Random(0)
    replies = {dt.chat_turn(rng)[1] for _ in range(500)}
    assert replies == {reply for _, reply in dt.INTENTS}
    assert all(len(r) < 400 for r in replies)


def test_unpadded_sums_get_the_format_explained() -> None:
    rng = random.Random(0)
    for _ in range(50):
        q, a = dt.unpadded_sum_turn(rng)
        assert not _is_problem(q) and a == dt.FORMAT_HELP
