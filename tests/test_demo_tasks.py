"""The demo model's task generators: correct answers, tiers that mean what they say, an exact split."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo_tasks as dt  # noqa: E402

QUESTION = re.compile(r"Swap ((?:[123]{2} )*[123]{2}) on ([123]{3})\. Final\?")


def _follow(question: str) -> str:
    """Where the cups end up, tracked cup by cup (not by swapping a list, as the generator does)."""
    m = QUESTION.fullmatch(question)
    assert m, question
    pairs, start = m[1].split(), m[2]
    where = {cup: pos for pos, cup in enumerate(start, 1)}  # cup -> its position
    for pair in pairs:
        a, b = int(pair[0]), int(pair[1])
        for cup, pos in where.items():
            where[cup] = b if pos == a else a if pos == b else pos
    return "".join(sorted(where, key=where.get))


def _is_problem(text: str) -> bool:
    # Chat openers are few and fixed, so training and evaluation share them on purpose; only
    # generated problems are split.
    return bool(QUESTION.fullmatch(text))


@pytest.mark.parametrize("tier", (1, 2, *dt.TIERS["swap"]))
def test_swap_answers_follow_the_cups(tier: int) -> None:
    rng = random.Random(tier)
    for _ in range(200):
        p = dt.make_swap(tier, rng)
        assert p.answer == _follow(p.question)
        pairs = QUESTION.fullmatch(p.question)[1].split()
        assert len(pairs) == tier  # the tier is the number of serial steps
        assert all(a != b for a, b in zip(pairs, pairs[1:]))  # no swap undoes the one before it
        assert sorted(p.answer) == ["1", "2", "3"]


def test_swaps_cover_every_pair_and_start() -> None:
    rng = random.Random(0)
    problems = [dt.make_swap(8, rng) for _ in range(500)]
    pairs = {pair for p in problems for pair in QUESTION.fullmatch(p.question)[1].split()}
    starts = {QUESTION.fullmatch(p.question)[2] for p in problems}
    assert pairs == {"12", "13", "23"}
    assert starts == {"".join(s) for s in itertools.permutations("123")}
    with pytest.raises(ValueError, match="at least one swap"):
        dt.make_swap(0, rng)


def test_format_help_example_is_right() -> None:
    m = re.search(r"like: (Swap .*? Final\?) .* here (\d{3})\.", dt.FORMAT_HELP)
    assert m and _follow(m[1]) == m[2]


def test_heldout_rule_is_the_documented_one() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        q = dt.make_swap(rng.randint(1, 24), rng).question
        digest = hashlib.sha256(q.encode("utf-8")).digest()
        assert dt.is_heldout(q) == (int.from_bytes(digest[:8], "big") % 10 == 0)
    assert dt.is_heldout(" " + q + "\n") == dt.is_heldout(q)


def test_streams_are_seeded() -> None:
    first = list(itertools.islice(dt.train_conversations(7), 50))
    again = list(itertools.islice(dt.train_conversations(7), 50))
    other = list(itertools.islice(dt.train_conversations(8), 50))
    assert first == again
    assert first != other
    assert dt.eval_problems("swap", 12, 20) == dt.eval_problems("swap", 12, 20)


def _training_questions(n: int, **kw) -> list[str]:
    return [m["content"] for conv in itertools.islice(dt.train_conversations(0, **kw), n)
            for m in conv if m["role"] == "user"]


def test_heldout_questions_and_lengths_never_reach_training() -> None:
    heldout = {p.question for tier in dt.TIERS["swap"] for p in dt.eval_problems("swap", tier, 30)}
    assert all(dt.is_heldout(q) for q in heldout)
    questions = _training_questions(4000)
    problems = [q for q in questions if _is_problem(q)]
    assert len(problems) > 3000
    assert not any(dt.is_heldout(q) or q in heldout for q in problems)
    lengths = {len(QUESTION.fullmatch(q)[1].split()) for q in problems}
    assert lengths == set(range(1, dt.TRAIN_MAX_SWAPS + 1))
    assert max(dt.TIERS["swap"]) > dt.TRAIN_MAX_SWAPS  # a tier longer than anything trained


def test_curriculum_caps_the_length() -> None:
    problems = [q for q in _training_questions(500, max_tier=lambda: 3) if _is_problem(q)]
    assert problems and max(len(QUESTION.fullmatch(q)[1].split()) for q in problems) == 3


def test_heldout_split_is_about_one_in_ten() -> None:
    rng = random.Random(0)
    qs = [dt.make_swap(12, rng).question for _ in range(4000)]
    share = sum(map(dt.is_heldout, qs)) / len(qs)
    assert 0.08 < share < 0.12


def test_eval_tiers_have_enough_distinct_problems() -> None:
    for tier in dt.TIERS["swap"]:
        problems = dt.eval_problems("swap", tier, 200)
        assert len({p.question for p in problems}) == len(problems) >= 10


def test_chat_turns_have_short_fixed_replies() -> None:
    rng = random.Random(0)
    replies = {dt.chat_turn(rng)[1] for _ in range(500)}
    assert replies == {reply for _, reply in dt.INTENTS}
    assert all(len(r) < 400 for r in replies)


def test_other_questions_get_the_format_explained() -> None:
    rng = random.Random(0)
    for _ in range(100):
        q, a = dt.other_question_turn(rng)
        assert not _is_problem(q) and a == dt.FORMAT_HELP


def _words(messages: list[dict[str, str]]) -> int:
    """A stand-in for a token count: what the `fits` check of train_chats measures."""
    return sum(len(m["content"].split()) + 2 for m in messages)


def test_long_chats_fill_their_budget_and_carry_over_what_does_not_fit() -> None:
    budget = 120
    chats = list(itertools.islice(dt.train_chats(3, lambda m: _words(m) <= budget), 200))
    assert chats == list(itertools.islice(dt.train_chats(3, lambda m: _words(m) <= budget), 200))  # seeded
    for chat, following in zip(chats, chats[1:]):
        assert _words(chat) <= budget
        turns = [m for m in chat if m["role"] != "system"]
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
        opening = [m for m in following if m["role"] != "system"][:2]
        assert _words(chat + opening) > budget  # the chat stopped because the next exchange did not fit
    questions = [m["content"] for chat in chats for m in chat if m["role"] == "user"]
    problems = [q for q in questions if _is_problem(q)]
    assert sum(len(c) >= 8 for c in chats) > 150  # several exchanges per chat
    assert not any(dt.is_heldout(q) for q in problems)
    assert {len(QUESTION.fullmatch(q)[1].split()) for q in problems} == set(range(1, dt.TRAIN_MAX_SWAPS + 1))
    assert len(problems) < len(questions)  # chat turns are mixed in


def test_long_chats_follow_the_curriculum_and_the_mix() -> None:
    chats = itertools.islice(dt.train_chats(0, lambda m: _words(m) <= 200, mix=dt.swap_mix(6), max_tier=lambda: 3),
                             100)
    lengths = {len(QUESTION.fullmatch(m["content"])[1].split()) for chat in chats for m in chat
               if m["role"] == "user" and _is_problem(m["content"])}
    assert lengths == {1, 2, 3}


def test_swap_start_is_the_order_the_cups_start_in() -> None:
    rng = random.Random(5)
    for tier in (1, 12, 24):
        p = dt.make_swap(tier, rng)
        start = dt.swap_start(p.question)
        assert sorted(start) == ["1", "2", "3"] and p.question.endswith(f" on {start}. Final?")


def _canonical(question: str) -> str:
    """The single-spaced spelling of a respelled swap question."""
    return re.sub(r"(?<=\d)(?:, |  )(?=\d)", " ", question)


def test_respelled_lists_keep_their_swaps_answer_and_split() -> None:
    rng = random.Random(11)
    p = dt.make_swap(16, rng)
    spelled = {dt.respell_swaps(p.question, rng) for _ in range(50)}
    assert len(spelled) > 40 and all(_canonical(q) == p.question for q in spelled)
    assert any(", " in q for q in spelled) and any("  " in q for q in spelled)
    convs = list(itertools.islice(dt.train_conversations(0, spacing=0.5), 3000))
    questions = [m["content"] for c in convs for m in c if m["role"] == "user" and _is_problem(_canonical(m["content"]))]
    respelled = [q for q in questions if not _is_problem(q)]
    assert 0.35 < len(respelled) / len(questions) < 0.65  # the spacing share of the lists (1 in 2 keeps single gaps)
    assert not any(dt.is_heldout(_canonical(q)) for q in questions)  # split on the single-spaced text
    answers = {m["content"] for c in convs for m in c if m["role"] == "assistant"}
    assert all(_follow(_canonical(q)) in answers for q in respelled[:200])


def test_lists_with_no_op_swaps_keep_their_length_and_follow_the_cups() -> None:
    rng = random.Random(12)
    flips = 0
    for _ in range(300):
        p = dt.make_swap(9, rng)
        q = dt.with_identities(p, rng)
        pairs, start = dt.swap_parts(q.question)
        assert len(pairs) == 9 and q.tier == 9 and dt.swap_parts(p.question)[1] == start
        real = [pair for pair in pairs if pair[0] != pair[1]]
        assert q.answer == dt.apply_swaps(start, real)  # a cup swapped with itself stays where it is
        flips += len(real) % 2 != 9 % 2
    assert 50 < flips < 250  # the count of entries often no longer gives the parity
    convs = list(itertools.islice(dt.train_conversations(0, identity=0.5), 2000))
    questions = [m["content"] for c in convs for m in c if m["role"] == "user" and m["content"].startswith("Swap")]
    with_ids = [q for q in questions if any(pair[0] == pair[1] for pair in dt.swap_parts(q)[0])]
    assert 0.3 < len(with_ids) / len(questions) < 0.5  # half the lists, less those where no entry was replaced
    assert all(_is_problem(q) for q in questions)
    assert not any(dt.is_heldout(q) for q in questions if q not in with_ids)  # (evaluation lists have no no-ops)


def test_streams_without_variants_are_those_the_shipped_stages_trained_on() -> None:
    """Fingerprints of the streams from before `spacing` and `identity`: the recorded commands still reproduce."""
    def digest(items) -> str:
        return hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()[:16]

    assert digest(itertools.islice(dt.train_conversations(0), 300)) == "2e8701002da131f1"
    assert digest(itertools.islice(dt.train_chats(0, lambda m: _words(m) <= 200), 100)) == "baa910d662ee7092"


HOPS = re.compile(r"Follow ((?:[1-9]{2} ){8}[1-9]{2}) by ([1-9]) from ([1-9])\. Final\?")


def _parsed(make, tier: int, question: re.Pattern, n: int = 200):
    """`n` problems of `make` at `tier`, each with its question parsed by `question` (which must match)."""
    rng = random.Random(tier)
    for _ in range(n):
        p = make(tier, rng)
        m = question.fullmatch(p.question)
        assert m, p.question
        yield p, m


@pytest.mark.parametrize("tier", dt.TIERS["hops"])
def test_hops_answers_walk_the_links_from_the_start(tier: int) -> None:
    for p, m in _parsed(dt.make_hops, tier, HOPS):
        links = dict(pair for pair in m[1].split())
        assert sorted(links) == sorted(links.values()) == list("123456789")  # each place linked to one other
        assert all(a != b for a, b in links.items()) and int(m[2]) == tier
        here, walked = m[3], ""
        for _ in range(dt.HOP_VALUES):  # walked hop by hop, independently of the generator
            for _ in range(tier):
                here = links[here]
            walked += here
        assert p.answer == walked
        assert dt.hops_parts(p.question) == (links, tier, m[3])
    with pytest.raises(ValueError, match="1 to 9 hops"):
        dt.make_hops(0, random.Random(0))


def test_hops_problems_reach_training_only_as_the_mix_says() -> None:
    mix = dt.walk_mix(0.4, max_swaps=4, max_hops=3)
    assert sum(mix.values()) == pytest.approx(1)
    assert sum(w for (task, _), w in mix.items() if task == "hops") == pytest.approx(0.4)
    assert {t for task, t in mix if task == "hops"} == {1, 2, 3}
    with pytest.raises(ValueError, match="from 0 to 1 together"):
        dt.walk_mix(0.7, stops=0.5)
    seen = [m[0]["content"] for m in itertools.islice(dt.train_conversations(0, mix, chat_fraction=0), 600)
            if m[0]["role"] == "user"]
    hops = [q for q in seen if q.startswith("Follow ")]
    assert 0.3 < len(hops) / len(seen) < 0.5
    assert all(HOPS.fullmatch(q) and int(HOPS.fullmatch(q)[2]) <= 3 for q in hops)
    assert not any(dt.is_heldout(q) for q in hops)
    held = dt.eval_problems("hops", 8, 20)
    assert len(held) == 20 and all(dt.is_heldout(p.question) for p in held)


def test_the_curriculum_lengthens_only_its_own_task() -> None:
    mix = dt.walk_mix(0.5, max_swaps=8, max_hops=6)
    seen = [m[0]["content"] for m in itertools.islice(
        dt.train_conversations(1, mix, chat_fraction=0, max_tier=lambda: 2, curriculum_task="hops"), 800)
        if m[0]["role"] == "user"]
    hops = [int(HOPS.fullmatch(q)[2]) for q in seen if HOPS.fullmatch(q)]
    swaps = [len(QUESTION.fullmatch(q)[1].split()) for q in seen if QUESTION.fullmatch(q)]
    assert set(hops) == {1, 2} and max(swaps) == 8  # hops capped at 2; swaps draw every length


STOPS_Q = re.compile(r"Walk ((?:[1-9]{2} ){8}[1-9]{2}) from ([1-9]) to ((?:[1-9] ){3}[1-9])\. Final\?")


@pytest.mark.parametrize("tier", dt.TIERS["stops"])
def test_stops_answers_are_the_stops_in_the_order_a_walk_meets_them(tier: int) -> None:
    for p, m in _parsed(dt.make_stops, tier, STOPS_Q):
        links, start, stops = dict(m[1].split()), m[2], m[3].split()
        assert stops == sorted(stops) and start not in stops
        here, met, walked = start, "", 0
        while len(met) < len(stops):  # walked link by link, independently of the generator
            here, walked = links[here], walked + 1
            met += here if here in stops else ""
        assert p.answer == met and walked == tier  # the tier is the links from the start to the last stop
        seen, here = set(), start
        for _ in range(9):
            seen.add(here)
            here = links[here]
        assert len(seen) == 9 and here == start  # one cycle through every place
        assert dt.stops_parts(p.question) == (links, start, stops)
    with pytest.raises(ValueError, match="4 to 8 links"):
        dt.make_stops(3, random.Random(0))


CHASE_Q = re.compile(r"Chase ((?:[0-9]{2} ){9}[0-9]{2}) from ([0-9])\. Roots\?")


def _links_to_root(links: dict[str, str], x: str) -> int:
    n = 0
    while links[x] != x:
        x, n = links[x], n + 1
        assert n <= 10, "a cycle that is not a root"
    return n


def _root(links: dict[str, str], x: str) -> str:
    while links[x] != x:
        x = links[x]
    return x


@pytest.mark.parametrize("tier", dt.TIERS["chase"])
def test_chase_answers_are_the_roots_walked_to_from_the_start_and_after_each_root(tier: int) -> None:
    for p, m in _parsed(dt.make_chase, tier, CHASE_Q):
        links, start = dict(m[1].split()), m[2]
        assert sorted(links) == list("0123456789")
        roots = sorted(a for a, b in links.items() if a == b)
        assert len(roots) == dt.CHASE_ROOTS
        trees = {r: [x for x in links if _root(links, x) == r] for r in roots}
        # two trees alike in size and depth: neither names the start's root
        assert [len(t) for t in trees.values()] == [5, 5]
        assert [max(_links_to_root(links, x) for x in t) for t in trees.values()] == [tier, tier]
        assert _links_to_root(links, start) == tier
        here, walked = start, ""
        for _ in range(dt.HOP_VALUES):  # walked link by link, independently of the generator
            while links[here] != here:
                here = links[here]
            walked += here
            here = str((int(here) + 1) % 10)
        assert p.answer == walked
        assert dt.chase_parts(p.question) == (links, start)
    with pytest.raises(ValueError, match="1 to 4 links"):
        dt.make_chase(5, random.Random(0))


def test_either_root_ends_the_first_walk_about_as_often() -> None:
    firsts = [_root(*dt.chase_parts(p.question)) == min(a for a, b in dt.chase_parts(p.question)[0].items() if a == b)
              for p in (dt.make_chase(3, random.Random(i)) for i in range(400))]
    assert 0.4 < sum(firsts) / len(firsts) < 0.6


def test_chase_problems_reach_training_only_as_the_mix_says() -> None:
    mix = dt.walk_mix(0.0, max_swaps=4, chase=0.5, max_chase=3)
    assert sum(mix.values()) == pytest.approx(1)
    assert {t for task, t in mix if task == "chase"} == {1, 2, 3}
    with pytest.raises(ValueError, match="from 0 to 1 together"):
        dt.walk_mix(0.5, chase=0.6)
    with pytest.raises(ValueError, match="1 to 4 links, got 5"):
        dt.walk_mix(0.0, chase=0.5, max_chase=5)
    seen = [m[0]["content"] for m in itertools.islice(
        dt.train_conversations(2, mix, chat_fraction=0, max_tier=lambda: 2, curriculum_task="chase"), 600)
        if m[0]["role"] == "user"]
    chases = [q for q in seen if CHASE_Q.fullmatch(q)]
    expected = (0.5 * 2 / 3) / (0.5 * 2 / 3 + 0.5)  # two of the three chase tiers drawn, at their own weights
    assert abs(len(chases) / len(seen) - expected) < 0.06 and not any(dt.is_heldout(q) for q in chases)
    depths = {max(_links_to_root(links, x) for x in links) for links in (dict(CHASE_Q.fullmatch(q)[1].split())
                                                                          for q in chases)}
    assert depths == {1, 2}  # capped at 2 links
