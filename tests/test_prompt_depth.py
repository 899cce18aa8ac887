"""The prompt's depth: what each prompt position received (steps, exit value, convergence), the prompt's core steps
apart from the answer's, and exits in the prefill (``prompt_exits``) checked against the authors' prefill."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import engine
from engine import TOKEN, GenerationSettings, PromptCache, SettingsError, Summary
from engine.decode import RowPlan, decode

from .test_parallel import demo, golden_model  # noqa: F401 - fixtures

GOLDENS = Path(__file__).parent / "goldens" / "prefill_tiny-1-2-1.json"
SWAPS = [{"role": "user", "content": "Swap 12 23 13 12 23 13 12 23 12 13 23 12 on 312. Final?"}]
ADAPTIVE = GenerationSettings(num_steps=32, criterion="kl", seed=0, max_new_tokens=8)


def answer(pair, messages, settings, **kwargs) -> tuple[list, Summary]:
    events = list(engine.stream(*pair, messages, settings, **kwargs))
    assert isinstance(events[-1], Summary)
    return events[:-1], events[-1]


@pytest.mark.parametrize("case", sorted(json.loads(GOLDENS.read_text())["cases"]))
def test_prompt_exits_take_the_steps_of_the_authors_prefill(golden_model, case):
    golden = json.loads(GOLDENS.read_text())
    spec = golden["cases"][case]
    prompt = torch.tensor([golden["prompt"]])
    plan = RowPlan(num_steps=spec["num_steps"], criterion=spec["criterion"], threshold=spec["threshold"],
                   init_scale=0.0, seed=0, state_seed=0, max_new_tokens=1, prompt_exits=True)
    first = next(decode(golden_model, prompt, [plan], "full", split_prompt=True))
    # their prefill runs every prompt position alone; our last one is the first answer token's step
    assert first.prompt.steps[0] + first.steps == spec["their_steps"]
    assert len(set(spec["their_steps"])) > 2, "the golden should show positions exiting at different depths"


def test_a_full_depth_prompt_reports_every_position_at_the_answers_depth(demo):
    events, summary = answer(demo, SWAPS, GenerationSettings(num_steps=12, seed=0, max_new_tokens=4))
    tokenizer = demo[1]
    ids = engine.generate.build_prompt(tokenizer, SWAPS, 256, 4)[0]
    assert [p["id"] for p in summary.prompt] == ids[:-1]
    assert all(p["steps"] == 12 and p["exit_value"] is None for p in summary.prompt)
    assert summary.prompt_core_steps == 12 * (len(ids) - 1)
    assert summary.core_iterations == 12 * summary.tokens  # the answer's own, the prompt's last position included
    assert summary.stats()["prompt_core_steps"] == summary.prompt_core_steps
    for record in summary.prompt + [e.record() for e in events]:
        assert TOKEN.check(record) == record
        assert record["change"] >= 0 and math.isfinite(record["change"])


def test_a_shallow_prompt_is_still_moving_where_the_swaps_are(demo):
    """Convergence per position: at 4 steps the swap list is not computed yet, at 32 it has settled."""
    _, shallow = answer(demo, SWAPS, GenerationSettings(num_steps=4, seed=0, max_new_tokens=4))
    _, deep = answer(demo, SWAPS, GenerationSettings(num_steps=32, seed=0, max_new_tokens=4))
    assert max(p["change"] for p in deep.prompt) < 0.01 < max(p["change"] for p in shallow.prompt)


def test_prompt_exits_spend_fewer_prompt_steps_and_vary_by_position(demo):
    _, block = answer(demo, SWAPS, ADAPTIVE)
    _, alone = answer(demo, SWAPS, ADAPTIVE.replace(prompt_exits=True))
    assert len(alone.prompt) == len(block.prompt)
    steps = [p["steps"] for p in alone.prompt]
    assert alone.prompt_core_steps == sum(steps) < block.prompt_core_steps == 32 * len(steps)
    assert len(set(steps)) > 3 and min(steps) >= 1
    assert all(p["exit_value"] is not None for p in alone.prompt)
    assert alone.text == block.text  # on this question the answer survives the shallower prompt


def test_prompt_exits_are_ignored_at_fixed_depth(demo):
    _, plain = answer(demo, SWAPS, GenerationSettings(num_steps=8, seed=0, max_new_tokens=4))
    _, asked = answer(demo, SWAPS, GenerationSettings(num_steps=8, seed=0, max_new_tokens=4, prompt_exits=True))
    assert [p["steps"] for p in asked.prompt] == [p["steps"] for p in plain.prompt]
    assert asked.text == plain.text


@pytest.mark.parametrize("value", [1, "yes", None])
def test_prompt_exits_must_be_true_or_false(value):
    with pytest.raises(SettingsError, match="prompt_exits"):
        GenerationSettings(prompt_exits=value)


def test_a_later_turn_reports_only_the_positions_it_ran_and_reuses_only_the_same_exit_rule(demo):
    pool = PromptCache()
    first = SWAPS
    _, one = answer(demo, first, ADAPTIVE.replace(prompt_exits=True), prompt_cache=pool)
    second = first + [{"role": "assistant", "content": one.text}, {"role": "user", "content": "Swap 12 on 123. Final?"}]
    _, two = answer(demo, second, ADAPTIVE.replace(prompt_exits=True), prompt_cache=pool)
    assert two.reused_tokens > 0
    assert len(two.prompt) == two.prompt_tokens - two.reused_tokens - 1
    # the same question from scratch: the reused positions were computed as this turn would have
    _, fresh = answer(demo, second, ADAPTIVE.replace(prompt_exits=True))
    assert fresh.text == two.text
    assert [p["steps"] for p in fresh.prompt][-len(two.prompt):] == [p["steps"] for p in two.prompt]
    # another exit rule does not read positions computed under this one
    _, other = answer(demo, second, ADAPTIVE.replace(prompt_exits=True, exit_threshold=1e-2), prompt_cache=pool)
    assert other.reused_tokens == 0
    # nor does a full-depth prompt
    _, block = answer(demo, second, ADAPTIVE, prompt_cache=pool)
    assert block.reused_tokens == 0


def test_compare_gives_each_column_its_own_prompt_depth(demo):
    model, tok = demo
    results = engine.compare(model, tok, SWAPS, [ADAPTIVE, ADAPTIVE.replace(prompt_exits=True),
                                                  GenerationSettings(num_steps=4, seed=0, max_new_tokens=8)])
    block, alone, shallow = (r.summary for r in results)
    assert {p["steps"] for p in block.prompt} == {32}
    assert len({p["steps"] for p in alone.prompt}) > 3
    assert {p["steps"] for p in shallow.prompt} == {4}
    _, single = answer(demo, SWAPS, ADAPTIVE.replace(prompt_exits=True))
    assert [p["steps"] for p in single.prompt] == [p["steps"] for p in alone.prompt]


def test_the_parallel_and_speculative_samplers_report_their_full_depth_prompt(demo):
    for settings in (GenerationSettings(num_steps=8, seed=0, max_new_tokens=6, sampler="parallel"),
                     GenerationSettings(num_steps=8, seed=0, max_new_tokens=6, draft_steps=2)):
        _, summary = answer(demo, SWAPS, settings)
        assert {p["steps"] for p in summary.prompt} == {8}
        assert len(summary.prompt) == summary.prompt_tokens - 1
        assert summary.prompt_core_steps == 8 * len(summary.prompt)



@pytest.mark.parametrize("prompt_exits", [False, True])
def test_a_traced_answer_traces_its_prompt_positions_too(demo, prompt_exits):
    settings = ADAPTIVE.replace(prompt_exits=prompt_exits, init_scale=0.0)
    _, plain = answer(demo, SWAPS, settings)
    _, traced = answer(demo, SWAPS, settings.replace(trace=True))
    assert traced.text == plain.text and traced.steps == plain.steps  # the lens changes nothing
    lens = traced.trace["prompt"]
    ids = [p["id"] for p in traced.prompt]
    assert [t["index"] for t in lens] == list(range(len(ids)))
    assert [t["token_id"] for t in lens] == ids[1:] + [engine.generate.build_prompt(demo[1], SWAPS, 256, 8)[0][-1]]
    assert [t["exit_step"] for t in lens] == [p["steps"] for p in traced.prompt]
    for t, p in zip(lens, traced.prompt):
        assert t["latent_change"][-1] == pytest.approx(p["change"], rel=1e-3, abs=1e-6)
    if not prompt_exits:  # at full depth the last step's leader is what a plain forward pass predicts there
        model = demo[0]
        with torch.no_grad():
            logits = model(torch.tensor([ids]), num_steps=32, init_scale=0.0).logits[0]
        assert [t["top"][-1][0] for t in lens] == logits.argmax(-1).tolist()


# ---- the page and the store ---------------------------------------------------------------------------------------

@pytest.fixture()
def studio(demo, tmp_path):
    from app.config import AppConfig
    from app.handlers import Studio
    from app.slot import ModelSlot
    from app.store import Store

    store = Store(tmp_path / "app.db")
    yield Studio(ModelSlot(*demo, note="demo"), store, AppConfig(stream_interval=0.0))
    store.close()


def chat(studio, text: str, settings: GenerationSettings):
    session = list(studio.chat.send(studio.conversations.new_session(), text, "", settings))[-1][0]
    return session, studio.store.thread(session.owner, session.conversation_id)[-1]


def test_an_answer_keeps_its_prompts_depth_and_the_page_draws_it(studio):
    question = SWAPS[0]["content"]
    session, answer = chat(studio, question, ADAPTIVE.replace(prompt_exits=True))
    prompt = answer.extra["prompt"]
    assert answer.stats["prompt_core_steps"] == sum(p["steps"] for p in prompt) > 0
    assert len({p["steps"] for p in prompt}) > 3
    assert "".join(p["text"] for p in prompt).count("Swap 12 23 13") == 1
    html = studio.conversations.transcript(session)
    assert "Prompt depth: " in html and f"{answer.stats['prompt_core_steps']:,} core steps" in html
    assert f"core steps: prompt {answer.stats['prompt_core_steps']:,}, answer" in html
    part = html[html.index('class="prompt-depth"'):]
    part = part[:part.index("</details>")]
    assert part.count('data-p="') == sum(1 for p in prompt if p["text"]) and 'data-i="' not in part
    assert "last step moved the state" in part


def test_the_form_sends_prompt_exits_only_with_adaptive_exit():
    from app.inputs import FORM_FIELDS, settings_from_form
    from app.config import Limits

    assert "prompt_exits" in FORM_FIELDS
    on = settings_from_form(Limits(), {"num_steps": 8, "adaptive": True, "criterion": "kl", "prompt_exits": True})
    off = settings_from_form(Limits(), {"num_steps": 8, "adaptive": False, "prompt_exits": True})
    assert on.prompt_exits and not off.prompt_exits


def test_a_damaged_or_hostile_prompt_record_is_named_and_nothing_saved_is_lost(studio, tmp_path):
    import sqlite3

    from app.store import StoreError

    session, answer = chat(studio, "Swap 12 on 123. Final?", GenerationSettings(num_steps=8, seed=0))
    data = studio.store.export_data(session.owner)
    before = data["conversations"]
    for bad, named in (([{"text": "x", "steps": 10**9}], r"extra\.prompt\[0\]\.steps"),
                       ("not a list", r"extra\.prompt"),
                       ([{"text": "x", "steps": 1, "change": -1.0}], r"extra\.prompt\[0\]\.change")):
        hostile = json.loads(json.dumps(data))
        hostile["conversations"][0]["messages"][-1]["extra"]["prompt"] = bad
        path = tmp_path / "hostile.json"
        path.write_text(json.dumps(hostile), encoding="utf-8")
        with pytest.raises(StoreError, match=named):
            studio.conversations.import_file(session, str(path))
        assert studio.store.export_data(session.owner)["conversations"] == before
    with sqlite3.connect(studio.store.path) as con:  # a hand-edited database
        con.execute("UPDATE messages SET extra = ? WHERE id = ?",
                    [json.dumps({"prompt": [{"text": "<b>x</b>", "steps": "many"}]}), answer.id])
    html = studio.conversations.transcript(session)
    assert "damaged record (prompt)" in html and "<b>x</b>" not in html and "Prompt depth" not in html


def test_the_chat_api_returns_the_prompts_depth(studio):
    out = studio.chat.chat_api("Swap 12 23 on 312. Final?", {"num_steps": 6, "seed": 0, "max_new_tokens": 4})
    assert out["stats"]["prompt_core_steps"] == 6 * len(out["prompt"]) > 0
    assert all(TOKEN.check(p) == p for p in out["prompt"])


def test_each_arena_column_shows_its_own_prompt_depth_and_keeps_it_when_saved(studio):
    settings = [GenerationSettings(num_steps=r, seed=0, max_new_tokens=6) for r in (4, 32)]
    result = studio.arena.compare(SWAPS[0]["content"], "", settings)
    shallow, deep = result["columns"]
    assert {p["steps"] for p in shallow["prompt"]} == {4} and {p["steps"] for p in deep["prompt"]} == {32}
    session, html = studio.arena.save(studio.conversations.new_session(), result)
    saved = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert [c["prompt"] for c in saved.extra["columns"]] == [shallow["prompt"], deep["prompt"]]
    assert html.count('class="prompt-depth"') == 2
    assert f"{4 * len(shallow['prompt']):,} core steps" in html and f"{32 * len(deep['prompt']):,} core steps" in html


def test_warm_start_with_prompt_exits_does_not_reuse_a_prefix_it_would_compute_otherwise(demo):
    """Review finding: with warm start each prompt position starts from the previous one's state, which the cache
    does not keep, so a reused prefix would change every later position."""
    settings = ADAPTIVE.replace(prompt_exits=True, warm_start=True, init_scale=0.0)
    pool = PromptCache()
    _, one = answer(demo, SWAPS, settings, prompt_cache=pool)
    second = SWAPS + [{"role": "assistant", "content": one.text}, {"role": "user", "content": "Swap 12 on 123. Final?"}]
    _, cached = answer(demo, second, settings, prompt_cache=pool)
    _, fresh = answer(demo, second, settings)
    assert cached.reused_tokens == 0
    assert [p["steps"] for p in cached.prompt] == [p["steps"] for p in fresh.prompt] and cached.text == fresh.text


def test_a_cancel_in_the_prompt_keeps_the_positions_that_ran(demo):
    from .conftest import cancel_at_core_step

    settings = ADAPTIVE.replace(prompt_exits=True)
    _, whole = answer(demo, SWAPS, settings)
    with cancel_at_core_step(demo[0], 40) as (cancel, _):
        _, cut = answer(demo, SWAPS, settings, cancel=cancel)
    assert cut.stop_reason == "cancelled" and cut.tokens == 0
    assert 0 < len(cut.prompt) < len(whole.prompt)
    assert [p["steps"] for p in cut.prompt] == [p["steps"] for p in whole.prompt][:len(cut.prompt)]
    assert cut.prompt_core_steps == sum(p["steps"] for p in cut.prompt)


def test_traced_columns_share_the_prompts_trace_budget(demo, monkeypatch):
    from engine import decode as decode_module

    monkeypatch.setattr(decode_module, "MAX_TRACED_PROMPT", 12)
    model, tok = demo
    traced = GenerationSettings(num_steps=6, seed=0, max_new_tokens=2, trace=True)
    alone = engine.stream(model, tok, SWAPS, traced)
    *_, summary = alone
    assert [t["index"] for t in summary.trace["prompt"]] == list(range(len(summary.prompt)))[-12:]
    results = engine.compare(model, tok, SWAPS, [traced, traced.replace(num_steps=8), traced.replace(num_steps=4)])
    for r in results:  # three traced rows in one batch: 12 // 3 positions each, the latest ones
        lens = r.summary.trace["prompt"]
        assert [t["index"] for t in lens] == list(range(len(r.summary.prompt)))[-4:]
        assert [t["exit_step"] for t in lens] == [p["steps"] for p in r.summary.prompt][-4:]


def test_an_answer_keeps_the_latest_prompt_positions_and_says_how_many_ran(studio, monkeypatch):
    from app import views

    monkeypatch.setattr(views, "PROMPT_KEPT", 10)
    session, answer_ = chat(studio, SWAPS[0]["content"], GenerationSettings(num_steps=4, seed=0, max_new_tokens=4))
    kept = answer_.extra["prompt"]
    ran = answer_.stats["prompt_tokens"] - 1
    assert len(kept) == 10 < ran and answer_.stats["prompt_core_steps"] == 4 * ran
    html = studio.conversations.transcript(session)
    assert f"Prompt depth: the last 10 of {ran} positions, 40 core steps" in html


def test_a_blocks_traced_positions_are_its_last_ones_whatever_width_is_kept():
    from engine.decode import PromptDepth
    from engine.step import BlockResult

    third, fourth = ("steps of 3", None), ("steps of 4", None)
    block = BlockResult(torch.zeros(1, 1, 2), torch.zeros(1, 5, 2), torch.zeros(1, 5, 2), [3], [[]], 15,
                        change=torch.zeros(1, 5), position_traces=[[third, fourth]])
    assert PromptDepth.of_block(block).traces == [[None, None, None, third, fourth]]
    assert PromptDepth.of_block(block, 4).traces == [[None, None, None, third]]
