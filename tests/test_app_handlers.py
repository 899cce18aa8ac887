"""The app's handlers and HTML without a browser, on the tiny random checkpoint."""

from __future__ import annotations

import json
import os

import pytest

import engine
from app import handlers, render
from app.handlers import AppConfig, Limits, ModelSlot, Studio, UserError, settings_from_form
from app.views import model_messages
from app.store import Message, Store, StoreError

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
    values = dict(num_steps=16, adaptive=True, criterion="kl", exit_threshold="0.0005 (default)", min_steps=2,
                  warm_start=False, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, seed=-1,
                  max_new_tokens=64)
    values.update(kw)
    return settings_from_form(Limits(), values)


def test_form_builds_engine_settings():
    s = form()
    assert (s.num_steps, s.criterion, s.exit_threshold, s.min_steps, s.seed) == (16, "kl", 5e-4, 2, None)
    assert form(adaptive=False).criterion == "none"
    assert form(seed=7).seed == 7


@pytest.mark.parametrize("kw, field", [
    (dict(num_steps=129), "num_steps"), (dict(max_new_tokens=10**6), "max_new_tokens"),
    (dict(exit_threshold="lots"), "exit_threshold"), (dict(top_p=0), "top_p"), (dict(num_steps=2.5), "num_steps"),
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
    session = studio.conversations.new_session()
    updates = run(studio.chat.send(session, "Hello", "Be brief.", fixed(steps=4, tokens=6)))
    session = updates[-1][0]
    assert len(updates) >= 3 and "generating…" in updates[1].live and "generating…" not in updates[-1].transcript
    assert all(u.transcript is None for u in updates[1:-1]) and updates[-1].live == ""
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    computed = [t for t in answer.tokens if t["steps"]]  # the rest is held-back text released at the end
    assert answer.status == "complete" and 0 < answer.stats["tokens"] == len(computed) <= 6
    assert {t["steps"] for t in computed} == {4}
    assert answer.stats["materialized_parameters"] == studio.slot.pair[0].config.materialized_parameters(4)
    assert answer.extra["system"] == "Be brief."
    assert answer.settings["num_steps"] == 4
    # Reopening shows the same heatmap from the store.
    _, html = studio.conversations.open(studio.conversations.new_session(), session.conversation_id)
    assert html == updates[-1].transcript


def test_a_second_turn_reuses_the_first_and_says_so(studio):
    """The slot's prompt cache: the second turn's answer equals the same turn in a fresh app without the cache."""
    session = run(studio.chat.send(studio.conversations.new_session(), "Hello", "", fixed(steps=4, tokens=6)))[-1][0]
    session, html, _ = run(studio.chat.send(session, "And more?", "", fixed(steps=4, tokens=6)))[-1]
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    reused = answer.stats["reused_tokens"]
    assert 0 < reused < answer.stats["prompt_tokens"]
    assert f"{reused} of {answer.stats['prompt_tokens']} prompt tokens from the cache" in html
    first = studio.store.thread(session.owner, session.conversation_id)[1]
    assert [t["id"] for t in first.tokens if "id" in t] and reused >= first.stats["prompt_tokens"] + 1
    model, tok = studio.slot.pair
    messages = model_messages(studio.store.thread(session.owner, session.conversation_id)[:-1], "")
    assert messages[1]["token_ids"] == [t["id"] for t in first.tokens if "id" in t]
    alone = list(engine.stream(model, tok, messages, fixed(steps=4, tokens=6)))[-1]
    assert alone.reused_tokens == 0 and alone.text == answer.content


def test_stop_keeps_the_partial_answer(studio):
    session = studio.conversations.new_session()
    gen = studio.chat.send(session, "Tell me everything", "", fixed(steps=8, tokens=200))
    for i, (session, *_) in enumerate(gen):
        if i == 3:
            studio.chat.stop(session)
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert answer.status == "cancelled" and answer.stats["stop_reason"] == "cancelled"
    assert 0 < answer.stats["tokens"] < 200
    assert answer.content == "".join(t["text"] for t in answer.tokens)


def test_regenerate_and_edit_make_siblings_and_the_user_can_move_between_them(studio):
    session = run(studio.chat.send(studio.conversations.new_session(), "Question one", "", fixed()))[-1][0]
    owner, cid = session.owner, session.conversation_id
    first = studio.store.thread(owner, cid)[-1]
    session, html, _ = run(studio.chat.regenerate(session, "", fixed(steps=2)))[-1]
    second = studio.store.thread(owner, cid)[-1]
    assert second.parent_id == first.parent_id and second.id != first.id
    assert "2 / 2" in html
    html = studio.conversations.select_sibling(session, first.id)
    assert f'data-id="{first.id}"' in html and f'data-id="{second.id}"' not in html

    session, text = studio.chat.start_edit(session)
    assert text == "Question one"
    session = run(studio.chat.send(session, "Question one, edited", "", fixed()))[-1][0]
    thread = studio.store.thread(owner, cid)
    edited = thread[-2]
    assert edited.content == "Question one, edited" and edited.parent_id is None
    assert [m.id for m in studio.store.siblings(owner, edited.id)] == [first.parent_id, edited.id]


def test_empty_and_oversized_messages_are_refused(studio):
    with pytest.raises(UserError, match="Type a message"):
        run(studio.chat.send(studio.conversations.new_session(), "   ", "", fixed()))
    small = Studio(studio.slot, studio.store, AppConfig(limits=Limits(max_prompt_chars=10)))
    with pytest.raises(UserError, match="limit here is 10"):
        run(small.chat.send(small.conversations.new_session(), "x" * 11, "", fixed()))


def test_a_failing_generation_is_recorded_and_does_not_break_other_sessions(studio, monkeypatch):
    real_stream = engine.stream

    def broken(*args, **kwargs):
        yield from (e for e, _ in zip(real_stream(*args, **kwargs), range(2)))
        raise RuntimeError("GPU fell over")

    monkeypatch.setattr(engine, "stream", broken)
    session, html, _ = run(studio.chat.send(studio.conversations.new_session(), "Hi", "", fixed()))[-1]
    failed = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert failed.status == "failed" and "GPU fell over" in failed.error and "GPU fell over" in html
    monkeypatch.setattr(engine, "stream", real_stream)
    other = run(studio.chat.send(studio.conversations.new_session(), "Hi", "", fixed()))[-1][0]
    assert studio.store.thread(other.owner, other.conversation_id)[-1].status == "complete"


def test_owners_see_only_their_own_conversations(studio):
    mine = run(studio.chat.send(studio.conversations.new_session(), "Private note", "", fixed()))[-1][0]
    stranger = handlers.Session("someone-else")
    assert studio.conversations.choices(stranger) == []
    assert studio.conversations.choices(mine, "Private")[0][1] == mine.conversation_id
    with pytest.raises(Exception, match="not found"):
        studio.conversations.open(stranger, mine.conversation_id)


def test_rename_delete_export_import(studio, tmp_path):
    session = run(studio.chat.send(studio.conversations.new_session(), "Export me", "", fixed()))[-1][0]
    studio.conversations.rename(session, "Renamed chat")
    assert studio.conversations.choices(session)[0][0] == "Renamed chat"
    path = studio.conversations.export(session, "json", everything=False)
    data = json.loads(open(path, encoding="utf-8").read())
    assert data["conversations"][0]["title"] == "Renamed chat"
    assert "Export me" in open(studio.conversations.export(session, "md", everything=True), encoding="utf-8").read()
    session, _ = studio.conversations.delete(session)
    assert studio.conversations.choices(session) == []
    session, html, count = studio.conversations.import_file(session, path)
    assert count == 1 and "Export me" in html and 'class="tok' in html


def test_a_conversation_deleted_in_another_tab_is_named_and_send_starts_a_new_one(studio):
    conversations = studio.conversations
    tab = run(studio.chat.send(conversations.new_session(), "Doomed question", "", fixed()))[-1][0]
    other, _ = conversations.open(conversations.new_session(), tab.conversation_id)  # a second tab, same owner
    assert other.owner == tab.owner and other.tab != tab.tab
    conversations.delete(other)

    # Every action on the open conversation says plainly what happened (not "conversation 1 not found").
    for action in (lambda: run(studio.chat.regenerate(tab, "", fixed())), lambda: studio.chat.start_edit(tab),
                   lambda: conversations.rename(tab, "New title"), lambda: conversations.export(tab, "md", False),
                   lambda: conversations.select_sibling(tab, 1), lambda: conversations.delete(tab)):
        with pytest.raises(UserError, match="This conversation was deleted, perhaps in another tab"):
            action()
    assert conversations.export(tab, "json", everything=True)  # everything still exports

    # Send starts a new conversation; the edit the tab had open is dropped with the old one.
    after = run(studio.chat.send(tab.replace(edit_id=1), "Still here?", "", fixed()))[-1][0]
    assert after.conversation_id is not None and after.edit_id is None  # SQLite may give it the deleted one's id
    assert [m.role for m in studio.store.thread(after.owner, after.conversation_id)] == ["user", "assistant"]
    assert studio.store.thread(after.owner, after.conversation_id)[0].content == "Still here?"
    assert [cid for _, cid in conversations.choices(after)] == [after.conversation_id]
    # A reload of the first tab opens the newest conversation, not an error.
    reloaded, html, _ = conversations.open_latest(tab)
    assert reloaded.conversation_id == after.conversation_id and "Still here?" in html


# ---- arena and API ------------------------------------------------------------------------------------------------

def test_compare_columns_agreement_and_saving(studio):
    base = fixed(steps=8, tokens=5)
    settings = handlers.arena_settings(base, ["2", "8", "adaptive"], Limits())
    assert [s.label() for s in settings] == ["r=2", "r=8", "kl<0.0005, r<=8"]
    assert handlers.arena_settings(base, ["32", "adaptive"], Limits())[1].num_steps == 32
    result = studio.arena.compare("Hi", "", settings)
    cols = result["columns"]
    assert len(cols) == 3 and all(0 < c["stats"]["tokens"] <= 5 for c in cols)
    assert cols[1]["stats"]["agreement"] == 1.0  # r=8 is the deepest fixed run here
    assert {t["steps"] for t in cols[0]["tokens"]} - {0} == {2}
    session, html = studio.arena.save(studio.conversations.new_session(), result)
    saved = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert saved.kind == "comparison" and len(saved.extra["columns"]) == 3
    assert html.count('class="col"') == 3


def test_arena_limits():
    with pytest.raises(UserError, match="at least one"):
        handlers.arena_settings(fixed(), [], Limits())
    with pytest.raises(UserError, match="at most 2"):
        handlers.arena_settings(fixed(), ["4", "8", "16"], Limits(max_compare_settings=2))


def test_api_handlers_validate_settings(studio):
    out = studio.chat.chat_api("Hi", {"num_steps": 3, "max_new_tokens": 4, "seed": 0})
    assert out["stats"]["tokens"] == 4 and {t["steps"] for t in out["tokens"]} - {0} == {3}
    with pytest.raises(engine.SettingsError, match="num_steps"):
        studio.chat.chat_api("Hi", {"num_steps": 0})
    with pytest.raises(engine.SettingsError, match="bogus"):
        studio.chat.chat_api("Hi", {"bogus": 1})
    with pytest.raises(UserError, match="non-empty list"):
        studio.arena.compare_api("Hi", [])


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


# ---- damaged records, interrupted answers (issue 16) --------------------------------------------------------------

def damage(db_path, message_id: int, **columns) -> None:
    """Write wrong types straight into a stored row, as a hand-edited file or an old import left them."""
    import sqlite3

    con = sqlite3.connect(db_path)
    with con:
        for column, value in columns.items():
            text = value if isinstance(value, Raw) else json.dumps(value)
            con.execute(f"UPDATE messages SET {column} = ? WHERE id = ?", [text, message_id])
    con.close()


class Raw(str):
    """A column's text written as it is, not as JSON: not JSON at all, as a damaged row can be."""


DAMAGE = [
    dict(stats={"tokens_per_s": "fast", "mean_steps": [1], "tokens": "3"}),
    dict(settings={"num_steps": "abc", "exit_threshold": "lots", "criterion": 5}),
    dict(tokens=[{"text": 5, "steps": "x"}, "token"], settings={"num_steps": 4}),
    dict(tokens={"text": "not a list"}, extra=["not", "an", "object"]),
    dict(tokens=[{"text": "huge", "steps": 30_000_000, "exit_value": 1e308}], settings={"num_steps": 30_000_000}),
    dict(kind="comparison", extra={"columns": [1, 2], "system": 7}),
    dict(kind="comparison", extra={"columns": [{"tokens": [{"text": "a", "steps": 3e7}], "stats": "x",
                                                "settings": {"num_steps": 30_000_000}, "label": 3}]}),
    # Numbers past a float's range: math.isfinite raises OverflowError on them.
    dict(settings={"num_steps": 4, "temperature": 10**400}, stats={"tokens": 1, "tokens_per_s": -10**400},
         tokens=[{"text": "a", "steps": 3, "exit_value": 10**400}]),
    dict(kind="comparison", extra={"columns": [{"tokens": [], "settings": {"exit_threshold": 10**400}}]}),
    # Not JSON at all: a cut-off row, and an int past str()'s 4300-digit limit (json.loads raises on both).
    dict(tokens=Raw('[{"text": "a", "ste'), stats=Raw('{"tokens": 1' + "0" * 5000 + "}"), extra=Raw("{{{")),
]


@pytest.mark.parametrize("columns", DAMAGE, ids=lambda c: ",".join(c))
def test_a_damaged_record_shows_as_damaged_and_the_page_keeps_working(studio, columns, monkeypatch):
    from app.ui import Page, on_load

    session = run(studio.chat.send(studio.conversations.new_session(), "Hello", "", fixed()))[-1][0]
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    kind = columns.pop("kind", None)
    damage(studio.store.path, answer.id, **columns)
    if kind:
        import sqlite3

        with sqlite3.connect(studio.store.path) as con:
            con.execute("UPDATE messages SET kind = ? WHERE id = ?", [kind, answer.id])

    # Drawing costs at most the answer's length (its tokens and the prompt positions it ran), whatever step counts
    # the record claims.
    length = len(answer.tokens) + len((answer.extra or {}).get("prompt", []))
    assert 0 < len(answer.tokens) <= 10
    drawn = []
    real_bucket = render.bucket
    monkeypatch.setattr(render, "bucket", lambda *a: drawn.append(a) or real_bucket(*a))
    fresh, html, listing, system, token = on_load(Page(studio, None), None, None)
    assert fresh.conversation_id == session.conversation_id and len(drawn) <= length
    assert "damaged record" in html and "Hello" in html
    assert "Type a message" not in html and listing["choices"]

    # New conversation and Send still work, and the damaged conversation opens again.
    fresh, html = studio.conversations.new(fresh)
    assert "Ask something" in html
    after = run(studio.chat.send(fresh, "Still here?", "", fixed()))[-1][0]
    assert studio.store.thread(after.owner, after.conversation_id)[-1].status == "complete"
    _, html = studio.conversations.open(after, session.conversation_id)
    assert "damaged record" in html


def test_a_damaged_drawing_falls_back_to_the_escaped_text(monkeypatch):
    view = render.MessageView(id=1, role="assistant", content=PAYLOAD, stats={"tokens": 1})
    monkeypatch.setattr(render, "stats_line", lambda stats: 1 / 0)
    html = render.transcript([view, render.MessageView(id=2, role="user", content="fine")])
    assert "damaged record" in html and "&lt;script&gt;" in html and "fine" in html and "<script" not in html


def test_the_legend_costs_the_same_at_any_scale():
    for scale, first, last in ((1, "1", "1"), (8, "1", "8"), (32, "1–4", "29–32"), (30_000_000, "1–3750000",
                                                                                      "26250001–30000000")):
        legend = render.legend(scale)
        assert f">{first}<" in legend and f">{last}<" in legend and legend.count("swatch d") <= 8


def test_an_answer_left_partial_by_a_stopped_server_shows_as_interrupted(studio):
    session = studio.conversations.new_session()
    cid = studio.store.create_conversation(session.owner).id
    question = studio.store.add_message(session.owner, cid, "user", "Question")
    writer = studio.store.begin_answer(session.owner, cid, question.id, settings={"num_steps": 4})
    writer.add_token("half an ans", 4)
    writer.flush()  # ...and the process is killed here: the answer is never finished

    session, html = studio.conversations.open(session, cid)
    assert "generating…" not in html and "interrupted" in html and "half an ans" in html
    assert 'data-action="regenerate"' in html  # the message's own button clicks the page's Regenerate

    # While this process writes an answer, every tab sees that one generating.
    gen = studio.chat.regenerate(session, "", fixed(tokens=30))
    next(gen)
    assert "generating…" in studio.conversations.open(session, cid)[1]
    gen.close()
    session, html, _ = run(studio.chat.regenerate(session, "", fixed()))[-1]
    assert "interrupted" not in html and "generating…" not in html and "3 / 3" in html


# ---- caps on every event (issue 16, items 7-9 and wrong types) ----------------------------------------------------

HOSTED_LIKE = Limits(max_num_steps=32, max_new_tokens=256, max_prompt_chars=2000, max_system_chars=2000,
                     max_history_messages=8, max_prompt_tokens=600, max_stop_strings=2, max_stop_string_chars=16,
                     max_title_chars=200)


@pytest.fixture()
def capped(studio):
    return Studio(studio.slot, studio.store, AppConfig(limits=HOSTED_LIKE, stream_interval=0.0))


def test_a_huge_system_prompt_is_refused_on_every_event_and_not_stored(capped):
    big = "s" * 3_000_000
    session = capped.conversations.new_session()
    with pytest.raises(UserError, match=r"system_prompt: the system prompt is 3,000,000 characters; the limit"):
        run(capped.chat.send(session, "hi", big, fixed()))
    assert capped.store.list_conversations(session.owner) == []
    session = run(capped.chat.send(session, "hi", "short", fixed()))[-1][0]
    for call in (lambda: run(capped.chat.regenerate(session, big, fixed())),
                 lambda: capped.arena.compare("hi", big, [fixed()]),
                 lambda: capped.chat.chat_api("hi", {"num_steps": 2}, big),
                 lambda: capped.arena.compare_api("hi", [{"num_steps": 2}], big)):
        with pytest.raises(UserError, match="system_prompt: .* limit here is 2,000"):
            call()
    stored = capped.store.messages(session.owner, session.conversation_id)
    assert len(stored) == 2 and all(len(m.content) < 100 and (m.extra or {}).get("system", "") == "short"
                                    for m in stored if m.role == "assistant")


def test_api_history_is_capped_by_messages_and_by_tokens(capped):
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}] * 500
    with pytest.raises(UserError, match="history: 1,000 messages; the limit here is 8"):
        capped.chat.chat_api("hi", {"num_steps": 2}, "", empty)
    long_turns = [{"role": "user", "content": "w" * 400}, {"role": "assistant", "content": "v" * 400}]
    with pytest.raises(UserError, match=r"tokens; the limit here is 600"):
        capped.chat.chat_api("hi", {"num_steps": 2}, "", long_turns)
    out = capped.chat.chat_api("hi", {"num_steps": 2, "max_new_tokens": 3}, "", long_turns[:1])
    assert 1 <= out["stats"]["tokens"] <= 3  # within the caps it answers (the model may end its turn early)


def test_a_long_stored_history_is_trimmed_to_the_caps_in_few_token_counts(capped, monkeypatch):
    from app import inputs

    thread = [Message(id=i, conversation_id=1, parent_id=i - 1 or None, role=("user", "assistant")[i % 2],
                      kind="message", content=f"turn {i} " + "x " * 20, created="", updated="",
                      status="complete") for i in range(1, 2002)]
    counted = []
    real = capped.chat.count_tokens
    monkeypatch.setattr(capped.chat, "count_tokens", lambda m: counted.append(len(m)) or real(m))
    messages = capped.chat.prompt_messages(thread, "Be brief.")
    assert messages[0]["role"] == "system" and messages[-1]["content"].startswith("turn 2001")
    assert len(messages) <= 1 + HOSTED_LIKE.max_history_messages
    assert capped.chat.count_tokens(messages) <= HOSTED_LIKE.max_prompt_tokens
    # A binary search over at most 8 turns, not one count per dropped turn; then the context policy
    # (app.context.keep_recent): one count of the prompt and, as it outgrows the model's context, one per kept turn
    # and three for the template's fixed parts. Nothing scales with the 2,001 stored messages.
    assert len(counted) <= 2 + 4 + 1 + HOSTED_LIKE.max_history_messages + 3
    # Tokens decide once messages fit: long turns within the message cap are trimmed to the token cap.
    few = inputs.fit_prompt([], [{"role": "user", "content": "y " * 100}] * 6, 600, real)
    assert few[1] > 0 and real(few[0]) <= 600


@pytest.mark.parametrize("settings, field", [
    ({"stop_strings": ["a", "b", "c"]}, "stop_strings"), ({"stop_strings": ["x" * 17]}, "stop_strings[0]"),
    ({"stop_strings": "abc"}, "stop_strings"), ({"temperature": 1e-300}, "temperature"),
    ({"num_steps": 64}, "num_steps"), ({"max_new_tokens": 257}, "max_new_tokens"), ({"criterion": "\ud800"}, "settings.criterion"),
    ([{"num_steps": 4}], "settings"), ("num_steps=4", "settings"), ({"num_steps": "4"}, "num_steps"),
])
def test_api_settings_of_the_wrong_type_or_over_the_caps_name_the_field(capped, settings, field):
    with pytest.raises((UserError, engine.SettingsError)) as err:
        capped.chat.chat_api("hi", settings)
    assert str(err.value).startswith(field), str(err.value)


@pytest.mark.parametrize("args, field", [
    (("hi", None, None), "system_prompt"), (("hi", None, 5), "system_prompt"), ((None,), "prompt"),
    (("\ud800 hi",), "prompt"), (("hi", None, "", "history"), "history"),
    (("hi", None, "", [{"role": "system", "content": "x"}]), "history[0].role"),
    (("hi", None, "", [{"role": "user", "content": None}]), "history[0].content"),
    (("hi", None, "", [["user", "x"]]), "history[0]"),
])
def test_api_arguments_of_the_wrong_type_name_the_field(capped, args, field):
    with pytest.raises(UserError) as err:
        capped.chat.chat_api(*args)
    assert str(err.value).startswith(field), str(err.value)


def test_compare_api_entries_of_the_wrong_type_name_their_place(capped):
    with pytest.raises(UserError, match=r"^settings\[0\]: must be an object"):
        capped.arena.compare_api("hi", [1, 2])
    with pytest.raises(UserError, match=r"^settings\[1\]: must be an object"):
        capped.arena.compare_api("hi", [{"num_steps": 2}, "deep"])


def test_page_values_from_a_script_are_checked(capped):
    session = run(capped.chat.send(capped.conversations.new_session(), "hi", "", fixed()))[-1][0]
    for bad in ("1; DROP TABLE", [1], None and 0, True, -3, 2**70):
        with pytest.raises(UserError, match="not a valid id"):
            capped.conversations.select_sibling(session, bad)
    with pytest.raises(UserError, match="conversation: not a valid id"):
        capped.conversations.open(session, {"id": 1})
    with pytest.raises(UserError, match="title: the text is 201"):
        capped.conversations.rename(session, "t" * 201)
    with pytest.raises(UserError, match="search: the search is"):
        capped.conversations.choices(session, "q" * 1001)
    with pytest.raises(UserError, match="presets"):
        handlers.arena_settings(fixed(), ["4", "<b>"], HOSTED_LIKE)
    with pytest.raises(engine.SettingsError, match="temperature: must be a number"):
        form(temperature="hot")


# ---- the hostile-import corpus through the page's handler (issue 16) ----------------------------------------------

@pytest.mark.slow
def test_each_hostile_import_gets_a_clear_message_and_the_app_keeps_serving(studio, tmp_path):
    import html as html_lib
    import re

    import gradio as gr

    from app.ui import Page, on_load
    from app.ui.common import friendly
    from tests.hostile_corpus import cases

    session = run(studio.chat.send(studio.conversations.new_session(), "Before the files", "", fixed()))[-1][0]
    saved = studio.store.export_data(session.owner)["conversations"]
    on_import = friendly(studio.conversations.import_file)
    corpus = list(cases())
    for i, case in enumerate(corpus):
        path = tmp_path / f"case-{i}.json"
        path.write_bytes(case.data)
        if case.error is None:  # hostile text that is valid data: imported, drawn escaped
            imported, html, count = on_import(session, str(path))
            assert count >= 1 and "<script" not in html and "<img" not in html, case.name
            studio.conversations.delete(imported)
        else:
            with pytest.raises(gr.Error) as err:
                on_import(session, str(path))
            message = html_lib.unescape(err.value.message)
            assert re.search(case.error, message), (case.name, message)
            assert "<" not in err.value.message and "Traceback" not in message, case.name
        assert studio.store.export_data(session.owner)["conversations"] == saved, case.name
        fresh, html, listing, _, _ = on_load(Page(studio, None), None, None)
        assert fresh.conversation_id == session.conversation_id and "could not be shown" not in html, case.name
        assert "Before the files" in html and [cid for _, cid in listing["choices"]] == [session.conversation_id]
    after = run(studio.chat.send(studio.conversations.new_session(), "Still serving?", "", fixed()))[-1][0]
    assert studio.store.thread(after.owner, after.conversation_id)[-1].status == "complete"
    assert len(corpus) > 100


def test_a_speculative_answer_shows_and_stores_its_acceptance(studio):
    """Issue 21, bug 5: the acceptance stat was defined in the store but never reached the page."""
    session = studio.conversations.new_session()
    *_, (session, html, _) = run(studio.chat.send(session, "hello", "", fixed(8, 10, draft_steps=2, lookahead=3)))
    [_, answer] = studio.store.thread(session.owner, session.conversation_id)
    assert 0 <= answer.stats["acceptance"] <= 1
    assert f"{answer.stats['acceptance']:.0%} of drafted tokens kept" in html


def test_the_arena_adaptive_column_exits_as_the_chat_does(studio):
    """Issue 21, bug 1: the arena's adaptive column is the panel's fixed settings with a criterion; it must run with
    the adaptive answer's cache (latest-m4), as the chat's adaptive answers do."""
    base = fixed(8, 8)
    [column] = handlers.arena_settings(base, ["adaptive"], studio.limits)
    chat = base.replace(criterion="kl")
    session = studio.conversations.new_session()
    *_, (session, _, _) = run(studio.chat.send(session, "hello", "", chat))
    [_, answer] = studio.store.thread(session.owner, session.conversation_id)
    result = studio.arena.compare("hello", "", [column])
    [col] = result["columns"]
    assert col["stats"]["cache_strategy"] == answer.stats["cache_strategy"] == "latest-m4"
    assert [t["steps"] for t in col["tokens"]] == [t["steps"] for t in answer.tokens]


def test_delete_all_removes_the_owners_export_files(studio):
    """Issue 21, bug 4: exports stayed on disk after "Delete all my conversations" (a new temporary folder per
    export, never removed); Gradio's own copies are removed by the page's delete_cache."""
    session = run(studio.chat.send(studio.conversations.new_session(), "Export me", "", fixed()))[-1][0]
    other = run(studio.chat.send(handlers.Session("someone-else"), "Keep mine", "", fixed()))[-1][0]
    paths = [studio.conversations.export(session, fmt, everything) for fmt in ("json", "md") for everything in
             (True, False)]
    kept = studio.conversations.export(other, "json", True)
    assert all(os.path.exists(p) for p in paths + [kept])
    assert len({os.path.dirname(p) for p in paths}) == 1 and session.owner not in paths[0]
    studio.conversations.delete_all(session)
    assert not any(os.path.exists(p) for p in paths) and os.path.exists(kept)


def test_the_page_removes_gradios_copies_of_downloads(studio):
    from app.ui import EXPORT_CACHE_HOSTED, build_demo

    assert build_demo(studio).delete_cache == (3600, 86_400)
    assert EXPORT_CACHE_HOSTED[1] <= 300


def test_the_depth_form_is_read_by_field_name():
    """Issue 21: the form was a 14-item positional list on both sides; by name, order cannot shift a value into
    another field, a missing field keeps the engine's default and an unknown one is named."""
    shuffled = dict(reversed(list(dict(num_steps=12, adaptive=False, temperature=0.5, seed=7).items())))
    s = settings_from_form(Limits(), shuffled)
    assert (s.num_steps, s.temperature, s.seed, s.criterion) == (12, 0.5, 7, "none")
    assert s.max_new_tokens == engine.GenerationSettings().max_new_tokens
    with pytest.raises(engine.SettingsError) as err:
        settings_from_form(Limits(), {"num_steps": 4, "nmu_steps": 5})
    assert err.value.field == "nmu_steps"


def test_an_import_refuses_a_system_prompt_the_page_would_refuse(studio, tmp_path):
    """A system prompt kept with an answer comes back into the page's box: an import holds it to the page's cap."""
    session = run(studio.chat.send(studio.conversations.new_session(), "Keep my system", "Be brief.", fixed()))[-1][0]
    data = studio.store.export_data(session.owner)
    answer = data["conversations"][0]["messages"][-1]
    assert answer["extra"]["system"] == "Be brief."
    answer["extra"]["system"] = "s" * 3_000_000
    path = tmp_path / "big-system.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    before = studio.store.export_data(session.owner)["conversations"]
    with pytest.raises(StoreError, match=r"extra\.system: the system prompt is 3,000,000 characters; the limit "
                                         r"here is 100,000"):
        studio.conversations.import_file(session, str(path))
    assert studio.store.export_data(session.owner)["conversations"] == before


def test_after_the_hostile_corpus_a_restarted_app_still_serves_its_owner(tiny, tmp_path):
    """Issue 16's worst case, re-checked for issue 22: a file that bricked the app for its owner across restarts.
    Every corpus file goes through the page's import handler, then the app starts again on the same database."""
    import gradio as gr

    from app.ui import Page, on_load
    from app.ui.common import friendly
    from tests.hostile_corpus import cases

    db = tmp_path / "restart.db"
    with Store(db) as store:
        studio = Studio(ModelSlot(*tiny, note="tiny"), store, AppConfig(stream_interval=0.0))
        session = run(studio.chat.send(studio.conversations.new_session(), "Before the files", "", fixed()))[-1][0]
        on_import = friendly(studio.conversations.import_file)
        kept = 0
        for i, case in enumerate(cases()):
            path = tmp_path / f"case-{i}.json"
            path.write_bytes(case.data)
            try:
                kept += on_import(session, str(path))[2]  # what is accepted stays, to be drawn after the restart
            except gr.Error:
                assert case.error is not None, case.name
    assert kept > 0
    with Store(db) as store:  # the next start
        studio = Studio(ModelSlot(*tiny, note="tiny"), store, AppConfig(stream_interval=0.0))
        fresh, html, listing, _, _ = on_load(Page(studio, None), None, None)
        assert fresh.owner == session.owner and fresh.conversation_id is not None
        assert "could not be shown" not in html and len(listing["choices"]) == kept + 1
        for _, cid in listing["choices"]:  # every conversation, the hostile ones included, opens and draws
            _, html = studio.conversations.open(fresh, cid)
            assert "<script" not in html and "Traceback" not in html
        after = run(studio.chat.send(studio.conversations.new_session(), "Still serving?", "", fixed()))[-1][0]
        assert store.thread(after.owner, after.conversation_id)[-1].status == "complete"
