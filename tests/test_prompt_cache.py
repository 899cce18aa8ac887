"""The prompt cache across turns: every turn's output equals the same turn run without it, while the tokens an
earlier turn computed are not run again."""

from __future__ import annotations

import threading

import pytest
import torch

import engine
from engine import GenerationSettings, PromptCache, Summary
from engine.cache import RecurrentCache
from engine.prompt_cache import ReuseKey

from .conftest import make_checkpoint

QUESTIONS = ["Hi, who are you?", "More on cups.", "And 1-2, 2-3?"]

SETTINGS = {
    "fixed": GenerationSettings(num_steps=6, max_new_tokens=8, seed=3),
    "fixed-init0": GenerationSettings(num_steps=5, max_new_tokens=8, seed=3, init_scale=0.0),
    "sampled": GenerationSettings(num_steps=4, max_new_tokens=8, seed=11, temperature=0.9, top_k=20),
    "kl": GenerationSettings(num_steps=8, criterion="kl", exit_threshold=1e-2, max_new_tokens=8, seed=3),
    "latent-diff-skip": GenerationSettings(num_steps=8, criterion="latent-diff", exit_threshold=0.2,
                                           cache_strategy="skip", max_new_tokens=8, seed=3),
    "warm": GenerationSettings(num_steps=6, warm_start=True, max_new_tokens=8, seed=3),
    "speculative": GenerationSettings(num_steps=6, draft_steps=2, lookahead=3, max_new_tokens=8, seed=3),
    "compressed": GenerationSettings(num_steps=6, cache_strategy="latest-m4-compress-s2", max_new_tokens=8, seed=3),
}


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    """The goldens' layout (1/2/1), the official layer counts (2/4/2) and the demo model, loaded once each."""
    loaded = {"tiny-1-2-1": tiny}

    def get(name: str):
        if name not in loaded:
            if name == "demo":
                loaded[name] = engine.load(engine.DEMO_MODEL)[:2]
            else:
                folder = make_checkpoint(tmp_path_factory.mktemp("tiny242") / "model", seed=1, n_layers_in_prelude=2,
                                         n_layers_in_recurrent_block=4, n_layers_in_coda=2)
                loaded[name] = engine.load(str(folder))[:2]
        return loaded[name]
    return get


@pytest.fixture(params=["tiny-1-2-1", "demo"])
def pair(request, models):
    return models(request.param)


def answer(pair, messages, settings, prompt_cache=None, owner=""):
    model, tok = pair
    events = list(engine.stream(model, tok, messages, settings, prompt_cache=prompt_cache, cache_owner=owner))
    summary = events[-1]
    assert isinstance(summary, Summary)
    return [e.token_id for e in events[:-1] if e.token_id >= 0], summary


def first_turn(pair, settings, pool):
    """A new conversation's first question, answered through ``pool``: (messages, answer tokens, summary)."""
    first = [{"role": "user", "content": QUESTIONS[0]}]
    tokens, summary = answer(pair, first, settings, pool)
    return first, tokens, summary


def follow_up(messages, summary, question: str = QUESTIONS[1], **answer_fields):
    """The conversation with ``summary``'s answer (and any extra fields, e.g. token_ids) and a next question."""
    return messages + [{"role": "assistant", "content": summary.text, **answer_fields},
                       {"role": "user", "content": question}]


def same(a, b) -> None:
    (tokens_a, sum_a), (tokens_b, sum_b) = a, b
    assert tokens_a == tokens_b
    assert sum_a.text == sum_b.text and sum_a.steps == sum_b.steps and sum_a.stop_reason == sum_b.stop_reason


EVERY_TURN = ([(m, name) for m in ("tiny-1-2-1", "demo") for name in SETTINGS]
              + [("tiny-2-4-2", name) for name in ("fixed", "kl", "compressed")])


@pytest.mark.parametrize("model_name, name", EVERY_TURN)
def test_every_turn_equals_the_turn_without_reuse(models, model_name, name):
    pair = models(model_name)
    settings = SETTINGS[name]
    pool = PromptCache()
    messages: list[dict[str, str]] = []
    reused = []
    for turn, question in enumerate(QUESTIONS):
        messages = messages + [{"role": "user", "content": question}]
        plain = answer(pair, messages, settings)
        cached = answer(pair, messages, settings, pool)
        same(plain, cached)
        summary = cached[1]
        reused.append(summary.reused_tokens)
        assert summary.reused_tokens < summary.prompt_tokens
        messages = messages + [{"role": "assistant", "content": summary.text}]
    assert reused[0] == 0
    if name == "compressed":
        assert reused == [0] * len(QUESTIONS)  # write sharing cannot be reused exactly
    else:
        assert all(r > 0 for r in reused[1:]), reused


@pytest.mark.parametrize("name", ["fixed", "speculative"])
def test_a_fixed_depth_turn_reuses_the_previous_answer_too(pair, name):
    model, tok = pair
    settings = SETTINGS[name]
    pool = PromptCache()
    first, tokens, summary = first_turn(pair, settings, pool)
    second = follow_up(first, summary)
    prompt, _ = engine.generate.build_prompt(tok, second, model.config.block_size, 16)
    before, _ = engine.generate.build_prompt(tok, first, model.config.block_size, 16)
    _, again = answer(pair, second, settings, pool)
    # Everything the first turn ran (its prompt and answer, up to where the second prompt's tokens differ) is reused.
    computed = before + tokens[:-1]
    shared = next((i for i, (a, b) in enumerate(zip(computed, prompt)) if a != b), min(len(computed), len(prompt)))
    assert again.reused_tokens == shared > len(before)


def test_an_adaptive_turn_reuses_the_prompt_but_not_the_answer(pair):
    model, tok = pair
    settings = SETTINGS["kl"]
    pool = PromptCache()
    first, _, summary = first_turn(pair, settings, pool)
    _, again = answer(pair, follow_up(first, summary), settings, pool)
    assert again.reused_tokens == summary.prompt_tokens - 1  # the prompt's last token ran like an answer token


def test_regenerate_and_an_edited_question_reuse_the_shared_prefix_and_keep_the_branch(pair):
    settings = SETTINGS["sampled"]
    pool = PromptCache()
    first = [{"role": "user", "content": QUESTIONS[0]}]
    _, one = answer(pair, first, settings, pool)
    history = first + [{"role": "assistant", "content": one.text}]
    turn = history + [{"role": "user", "content": QUESTIONS[1]}]
    _, two = answer(pair, turn, settings, pool)

    other_seed = settings.replace(seed=99)  # Regenerate: the same prompt, another seed
    regenerated = answer(pair, turn, other_seed, pool)
    same(answer(pair, turn, other_seed), regenerated)
    assert regenerated[1].reused_tokens == two.prompt_tokens - 1

    edited = history + [{"role": "user", "content": QUESTIONS[1].replace("cups", "coins")}]
    edit = answer(pair, edited, settings, pool)
    same(answer(pair, edited, settings), edit)
    assert one.prompt_tokens <= edit[1].reused_tokens < edit[1].prompt_tokens - 1

    # The original branch is still in the pool: its next turn reuses all it computed.
    branch = turn + [{"role": "assistant", "content": two.text}, {"role": "user", "content": QUESTIONS[2]}]
    continued = answer(pair, branch, settings, pool)
    same(answer(pair, branch, settings), continued)
    assert continued[1].reused_tokens >= two.prompt_tokens


def test_owners_do_not_share_and_a_new_model_empties_the_pool(pair, tiny):
    settings = SETTINGS["fixed"]
    pool = PromptCache()
    turn = [{"role": "user", "content": QUESTIONS[0]}]
    answer(pair, turn, settings, pool, owner="alice")
    assert answer(pair, turn, settings, pool, owner="bob")[1].reused_tokens == 0
    assert answer(pair, turn, settings, pool, owner="alice")[1].reused_tokens > 0
    other = tiny if pair is not tiny else engine.load(engine.DEMO_MODEL)[:2]
    answer(other, turn, settings, pool, owner="alice")
    assert len(pool) == 1  # only the other model's entry


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_an_interrupted_answer_leaves_a_cache_the_next_turn_can_trust(pair, how):
    model, tok = pair
    settings = SETTINGS["fixed"].replace(max_new_tokens=12)
    pool = PromptCache()
    first = [{"role": "user", "content": QUESTIONS[0]}]
    cancel = threading.Event()
    events = engine.stream(model, tok, first, settings, cancel, prompt_cache=pool)
    pieces = []
    for event in events:
        if isinstance(event, Summary):
            break
        pieces.append(event.text)
        if len(pieces) == 3:
            if how == "cancel":
                cancel.set()  # the next block stops before its first recurrence step
            else:
                events.close()  # the client went away
                break
    assert len(pool) == 1
    second = first + [{"role": "assistant", "content": "".join(pieces)}, {"role": "user", "content": QUESTIONS[1]}]
    cached = answer(pair, second, settings, pool)
    same(answer(pair, second, settings), cached)
    assert cached[1].reused_tokens > 0


def test_reused_entries_equal_a_fresh_prefill(pair):
    """The keys and values a later turn reads from the pool are those a prefill of the same tokens computes."""
    model, tok = pair
    settings = SETTINGS["fixed"]
    pool = PromptCache()
    first_turn(pair, settings, pool)
    (entry,) = pool._entries
    fresh = model.new_cache(1, "full", capacity=len(entry.ids))
    plan = engine.generate._plan(settings, settings.seed, 1)
    with torch.inference_mode():
        engine.step.run_block(model, torch.tensor([entry.ids]), [plan], fresh)
        for key, slot in entry.cache._slots.items():
            twin = fresh._slots[key]
            n = len(entry.ids)
            torch.testing.assert_close(slot.k[:, :, :n], twin.k[:, :, :n], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(slot.v[:, :, :n], twin.v[:, :, :n], atol=1e-5, rtol=1e-4)


def test_the_pool_evicts_the_least_recently_used(tiny):
    model, _ = tiny
    key = ReuseKey(4, 1.0, 0, "full")

    def cache_of(n: int) -> RecurrentCache:
        cache = model.new_cache(1, "full", capacity=n)
        with torch.inference_mode():
            engine.step.run_block(model, torch.arange(n)[None], [engine.step.RowPlan(num_steps=4)], cache)
        return cache

    pool = PromptCache(max_entries=2)
    for first in (1, 2, 3):
        pool.put(model, key, [first] * 4, cache_of(4))
    assert [e.ids[0] for e in pool._entries] == [2, 3]
    assert pool.take(model, key, [1] * 6, 8) is None
    taken, n = pool.take(model, key, [3] * 4 + [5], 8)
    assert n == 4 and taken.seq_len == 4 and len(pool) == 1

    small = PromptCache(max_bytes=cache_of(4).allocated_bytes() * 3 // 2)
    small.put(model, key, [1] * 4, cache_of(4))
    small.put(model, key, [2] * 4, cache_of(4))
    assert [e.ids[0] for e in small._entries] == [2]
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(max_entries=0)


def test_an_answer_sent_back_with_its_token_ids_is_reused_whole(pair):
    """As the app sends history: each answer with the ids it was generated as, even where its text would
    re-tokenize differently (the chat template trims it)."""
    model, tok = pair
    settings = SETTINGS["fixed"]
    pool = PromptCache()
    first, ids, one = first_turn(pair, settings, pool)
    second = follow_up(first, one, token_ids=ids)
    plain, cached = answer(pair, second, settings), answer(pair, second, settings, pool)
    same(plain, cached)
    assert cached[1].reused_tokens == one.prompt_tokens + len(ids) - 1  # all but the last token ran in turn one


def test_token_ids_that_do_not_spell_the_answer_are_ignored_and_malformed_ones_refused(tiny):
    model, tok = tiny
    build = engine.generate.build_prompt
    text = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"}]
    plain, _ = build(tok, text, 256, 16)
    hello = tok("hello", add_special_tokens=False)["input_ids"]
    for ids in ([1, 2, 3], [10**9], [-1], hello + [tok.convert_tokens_to_ids("x")]):
        hostile = [dict(m) for m in text]
        hostile[1]["token_ids"] = ids
        assert build(tok, hostile, 256, 16)[0] == plain, ids
    spliced = [dict(m) for m in text]
    spliced[1]["token_ids"] = hello + [tok.eos_token_id]  # the end token is the template's to add
    assert build(tok, spliced, 256, 16)[0] == plain  # these ids are the text's own tokenization
    for bad in ("12", [1.5], [True], list(range(40_000))):
        broken = [dict(m) for m in text]
        broken[1]["token_ids"] = bad
        with pytest.raises(engine.PromptError, match="message 1 token_ids"):
            build(tok, broken, 256, 16)
    on_user = [dict(m) for m in text]
    on_user[0]["token_ids"] = [1]
    with pytest.raises(engine.PromptError, match="message 0 token_ids"):
        build(tok, on_user, 256, 16)


def test_the_official_template_trims_an_answer_and_its_token_ids_survive(official_dir):
    """Huginn's chat template trims each message, so an answer that starts with a space token would come back as
    other ids; sent with its ids it comes back exactly."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(official_dir)
    ids = tok(" Beyond the cups", add_special_tokens=False)["input_ids"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " Beyond the cups"},
                {"role": "user", "content": "more"}]
    as_text, _ = engine.generate.build_prompt(tok, messages, 4096, 16)
    messages[1]["token_ids"] = ids
    with_ids, _ = engine.generate.build_prompt(tok, messages, 4096, 16)
    assert not _contains(as_text, ids) and _contains(with_ids, ids)
    assert tok.decode(with_ids).replace(" Beyond", "Beyond") == tok.decode(as_text)


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))
