"""The app's handlers and HTML without a browser, on the tiny random checkpoint."""

from __future__ import annotations

import json

import pytest

import engine
from app import handlers, render
from app.handlers import AppConfig, Limits, ModelSlot, Studio, UserError, settings_from_form
from app.store import Store

PAYLOAD = '<script>alert(1)</script><img src=x onerror="alert(2)"> ${value} {{this}}'


@pytest.fixture()
def studio(tiny, tmp_path):
    store = Store(tmp_path / "app.db")
    yield Studio(ModelSlot(*tiny, note="tiny"), store, AppConfig(stream_interval=0.0))
    store.close()


def fixed(steps: int = 4, tokens: int = 6, **kw) -> engine.GenerationSettings:
    return engine.GenerationSettings(num_steps=steps, max_new_tokens=tokens, seed=1, **kw)


def run(gen):
    """Drain a streaming handler; return every yielded (session, html)."""
    return list(gen)


# ---- render -------------------------------------------------------------------------------------------------------

def test_heatmap_escapes_text_and_tooltips():
    html = render.heatmap([{"text": PAYLOAD, "steps": 3, "exit_value": 1e-5}], scale=8)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&#36;&#123;value&#125;" in html
    assert 'title="token 1: 3 steps, exit value 1.00e-05"' in html


def test_transcript_escapes_every_text_field():
    view = render.MessageView(id=1, role="assistant", content=PAYLOAD, status="failed", error=PAYLOAD,
                              stats={"tokens": 1, "notice": PAYLOAD}, settings={"num_steps": 4})
    html = render.transcript([view, render.MessageView(id=2, role="user", content=PAYLOAD)])
    assert "<script" not in html and "<img" not in html and "{{" not in html


def test_buckets_span_the_scale_and_legend_labels_ranges():
    assert [render.bucket(s, 8) for s in range(1, 9)] == list(range(8))
    assert render.bucket(1, 32) == 0 and render.bucket(32, 32) == 7 and render.bucket(99, 32) == 7
    legend = render.legend(32)
    assert "1–4" in legend and "29–32" in legend and legend.count("swatch") == 8


def test_stats_line_names_the_materialized_size():
    line = render.stats_line({"tokens": 12, "tokens_per_s": 3.25, "mean_steps": 7.5, "max_steps": 8,
                              "materialized_parameters": 3_530_000_000, "stop_reason": "cancelled"})
    assert "12 tokens · 3.2 tok/s · steps mean 7.5, max 8 · materialized 3.53B params · stopped" in line


def test_agreement():
    assert render.agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert render.agreement([1, 9], [1, 2, 3, 4]) == 0.25


# ---- settings -----------------------------------------------------------------------------------------------------

def form(**kw):
    values = dict(num_steps=16, adaptive=True, criterion="kl", threshold="0.0005 (default)", min_steps=2,
                  warm_start=False, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, seed=-1,
                  max_new_tokens=64)
    values.update(kw)
    return settings_from_form(Limits(), *values.values())


def test_form_builds_engine_settings():
    s = form()
    assert (s.num_steps, s.criterion, s.exit_threshold, s.min_steps, s.seed) == (16, "kl", 5e-4, 2, None)
    assert form(adaptive=False).criterion == "none"
    assert form(seed=7).seed == 7


@pytest.mark.parametrize("kw, field", [
    (dict(num_steps=129), "num_steps"), (dict(max_new_tokens=10**6), "max_new_tokens"),
    (dict(threshold="lots"), "exit_threshold"), (dict(top_p=0), "top_p"), (dict(num_steps=2.5), "num_steps"),
])
def test_bad_form_values_name_the_field(kw, field):
    with pytest.raises(engine.SettingsError) as err:
        form(**kw)
    assert err.value.field == field


def test_threshold_presets_centre_on_the_pinned_default():
    choices, value = handlers.threshold_choices("kl")
    assert value == "0.0005 (default)" and value in choices and len(choices) == 5
    assert handlers.parse_threshold(value) == engine.DEFAULT_THRESHOLDS["kl"]


# ---- chat ---------------------------------------------------------------------------------------------------------

def test_send_streams_and_stores_the_answer_with_its_steps(studio):
    session = studio.new_session()
    updates = run(studio.send(session, "Hello", "Be brief.", fixed(steps=4, tokens=6)))
    session = updates[-1][0]
    assert len(updates) >= 3 and "generating…" in updates[1][1] and "generating…" not in updates[-1][1]
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    computed = [t for t in answer.tokens if t["steps"]]  # the rest is held-back text released at the end
    assert answer.status == "complete" and 0 < answer.stats["tokens"] == len(computed) <= 6
    assert {t["steps"] for t in computed} == {4}
    assert answer.stats["materialized_parameters"] == studio.slot.pair[0].config.materialized_parameters(4)
    assert answer.extra["system"] == "Be brief."
    assert answer.settings["num_steps"] == 4
    # Reopening shows the same heatmap from the store.
    _, html = studio.open_conversation(studio.new_session(), session.conversation_id)
    assert html == updates[-1][1]


def test_stop_keeps_the_partial_answer(studio):
    session = studio.new_session()
    gen = studio.send(session, "Tell me everything", "", fixed(steps=8, tokens=200))
    for i, (session, _) in enumerate(gen):
        if i == 3:
            studio.stop(session)
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert answer.status == "cancelled" and answer.stats["stop_reason"] == "cancelled"
    assert 0 < answer.stats["tokens"] < 200
    assert answer.content == "".join(t["text"] for t in answer.tokens)


def test_regenerate_and_edit_make_siblings_and_the_user_can_move_between_them(studio):
    session = run(studio.send(studio.new_session(), "Question one", "", fixed()))[-1][0]
    owner, cid = session.owner, session.conversation_id
    first = studio.store.thread(owner, cid)[-1]
    session, html = run(studio.regenerate(session, "", fixed(steps=2)))[-1]
    second = studio.store.thread(owner, cid)[-1]
    assert second.parent_id == first.parent_id and second.id != first.id
    assert "2 / 2" in html
    html = studio.select_sibling(session, first.id)
    assert f'data-id="{first.id}"' in html and f'data-id="{second.id}"' not in html

    session, text = studio.start_edit(session)
    assert text == "Question one"
    session = run(studio.send(session, "Question one, edited", "", fixed()))[-1][0]
    thread = studio.store.thread(owner, cid)
    edited = thread[-2]
    assert edited.content == "Question one, edited" and edited.parent_id is None
    assert [m.id for m in studio.store.siblings(owner, edited.id)] == [first.parent_id, edited.id]


def test_empty_and_oversized_messages_are_refused(studio):
    with pytest.raises(UserError, match="Type a message"):
        run(studio.send(studio.new_session(), "   ", "", fixed()))
    small = Studio(studio.slot, studio.store, AppConfig(limits=Limits(max_prompt_chars=10)))
    with pytest.raises(UserError, match="limit here is 10"):
        run(small.send(small.new_session(), "x" * 11, "", fixed()))


def test_a_failing_generation_is_recorded_and_does_not_break_other_sessions(studio, monkeypatch):
    real_stream = engine.stream

    def broken(*args, **kwargs):
        yield from (e for e, _ in zip(real_stream(*args, **kwargs), range(2)))
        raise RuntimeError("GPU fell over")

    monkeypatch.setattr(engine, "stream", broken)
    session, html = run(studio.send(studio.new_session(), "Hi", "", fixed()))[-1]
    failed = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert failed.status == "failed" and "GPU fell over" in failed.error and "GPU fell over" in html
    monkeypatch.setattr(engine, "stream", real_stream)
    other = run(studio.send(studio.new_session(), "Hi", "", fixed()))[-1][0]
    assert studio.store.thread(other.owner, other.conversation_id)[-1].status == "complete"


def test_owners_see_only_their_own_conversations(studio):
    mine = run(studio.send(studio.new_session(), "Private note", "", fixed()))[-1][0]
    stranger = handlers.Session("someone-else")
    assert studio.conversation_choices(stranger) == []
    assert studio.conversation_choices(mine, "Private")[0][1] == mine.conversation_id
    with pytest.raises(Exception, match="not found"):
        studio.open_conversation(stranger, mine.conversation_id)


def test_rename_delete_export_import(studio, tmp_path):
    session = run(studio.send(studio.new_session(), "Export me", "", fixed()))[-1][0]
    studio.rename(session, "Renamed chat")
    assert studio.conversation_choices(session)[0][0] == "Renamed chat"
    path = studio.export(session, "json", everything=False)
    data = json.loads(open(path, encoding="utf-8").read())
    assert data["conversations"][0]["title"] == "Renamed chat"
    assert "Export me" in open(studio.export(session, "md", everything=True), encoding="utf-8").read()
    session, _ = studio.delete(session)
    assert studio.conversation_choices(session) == []
    session, html, count = studio.import_file(session, path)
    assert count == 1 and "Export me" in html and 'class="tok' in html


# ---- arena and API ------------------------------------------------------------------------------------------------

def test_compare_columns_agreement_and_saving(studio):
    base = fixed(steps=8, tokens=5)
    settings = handlers.arena_settings(base, ["2", "8", "adaptive"], Limits())
    assert [s.label() for s in settings] == ["r=2", "r=8", "kl<0.0005, r<=8"]
    assert handlers.arena_settings(base, ["32", "adaptive"], Limits())[1].num_steps == 32
    result = studio.compare("Hi", "", settings)
    cols = result["columns"]
    assert len(cols) == 3 and all(0 < c["stats"]["tokens"] <= 5 for c in cols)
    assert cols[1]["stats"]["agreement"] == 1.0  # r=8 is the deepest fixed run here
    assert {t["steps"] for t in cols[0]["tokens"]} - {0} == {2}
    session, html = studio.save_comparison(studio.new_session(), result)
    saved = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert saved.kind == "comparison" and len(saved.extra["columns"]) == 3
    assert html.count('class="col"') == 3


def test_arena_limits():
    with pytest.raises(UserError, match="at least one"):
        handlers.arena_settings(fixed(), [], Limits())
    with pytest.raises(UserError, match="at most 2"):
        handlers.arena_settings(fixed(), ["4", "8", "16"], Limits(max_compare_settings=2))


def test_api_handlers_validate_settings(studio):
    out = studio.chat_api("Hi", {"num_steps": 3, "max_new_tokens": 4, "seed": 0})
    assert out["stats"]["tokens"] == 4 and {t["steps"] for t in out["tokens"]} - {0} == {3}
    with pytest.raises(engine.SettingsError, match="num_steps"):
        studio.chat_api("Hi", {"num_steps": 0})
    with pytest.raises(engine.SettingsError, match="bogus"):
        studio.chat_api("Hi", {"bogus": 1})
    with pytest.raises(UserError, match="non-empty list"):
        studio.compare_api("Hi", [])


def test_model_slot_loads_another_model_and_explains_failures(studio, tiny_dir):
    with pytest.raises(engine.LoadError, match="does not exist"):
        studio.slot.load("/no/such/model", "none")
    assert "tiny" == studio.slot.note  # a failed load keeps the current model
    info = studio.slot.load(str(tiny_dir), "none")
    assert info.name == str(tiny_dir) and f"Running {tiny_dir}." == studio.slot.note
    assert "parameters" in studio.model_summary()


def test_build_demo_exposes_chat_and_compare(studio):
    from app.ui import build_demo

    demo = build_demo(studio)
    names = {dep.get("api_name") for dep in demo.config["dependencies"] if dep.get("api_visibility") == "public"}
    assert {"chat", "compare"} <= names
