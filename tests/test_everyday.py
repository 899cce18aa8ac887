"""Everyday use as a new user meets it (issue 24), without a browser: exports of traced answers, no install paths,
conversation titles, search snippets, the scripted API's names and messages, and a remote engine's depths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine
from app import render
from app.handlers import AppConfig, ModelSlot, Studio
from app.inputs import settings_from_dict, settings_from_form
from app.remote import RemoteEngine
from app.store import Store
from app.ui.arena import preset_choices
from tests.test_remote_engine import stand_in_server


@pytest.fixture()
def studio(tiny, tmp_path):
    with Store(tmp_path / "app.db") as store:
        yield Studio(ModelSlot(*tiny, note="tiny"), store, AppConfig(stream_interval=0.0))


def ask(studio: Studio, session, text: str, **settings):
    gen = engine.GenerationSettings(num_steps=3, max_new_tokens=4, seed=1, **settings)
    for session, *_ in studio.chat.send(session, text, "", gen):
        pass
    return session


def test_markdown_export_of_an_answer_with_a_depth_lens_trace(studio):
    session = ask(studio, studio.conversations.new_session(), "What is 2 + 3?", trace=True)
    assert studio.store.traces(session.owner, session.conversation_id)  # the answer has its trace
    text = Path(studio.conversations.export(session, "md", everything=False)).read_text(encoding="utf-8")
    assert "# What is 2 + 3?" in text and "## Assistant" in text
    answer = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert answer.content in text


def test_exports_and_the_model_tab_show_no_install_paths(studio, tiny_dir):
    session = ask(studio, studio.conversations.new_session(), "hi")
    folder = str(Path(tiny_dir).resolve())
    assert engine.model_info(studio.slot.pair[0]).name == folder  # the engine knows where it loaded from
    for fmt in ("json", "md"):
        text = Path(studio.conversations.export(session, fmt, everything=True)).read_text(encoding="utf-8")
        assert folder not in text and "/tmp" not in text.replace("\\/", "/"), fmt
        assert Path(folder).name in text
    assert folder not in studio.model_summary() and Path(folder).name in studio.model_summary()
    result = studio.arena.compare("hi", "", [engine.GenerationSettings(num_steps=2, max_new_tokens=2)], session)
    assert result["model"] == Path(folder).name


def test_chat_titles_are_short_and_tell_conversations_apart(studio):
    owner = studio.conversations.new_session().owner
    titles = []
    for text in ["Explain recurrent depth in language models to a curious ten year old, please",
                 "Explain recurrent depth in language models to a curious ten year old, please", "hi", "hi", "hi"]:
        cid = studio.store.create_conversation(owner).id
        studio.store.add_message(owner, cid, "user", text)
        titles.append(studio.store.get_conversation(owner, cid).title)
    assert titles[0] == "Explain recurrent depth in language models to a…"
    assert titles[1] == titles[0] + " (2)"
    assert titles[2:] == ["hi", "hi (2)", "hi (3)"]
    assert len(set(titles)) == len(titles) and all(len(t) <= 52 for t in titles)


def test_search_snippets_carry_no_bracket_marks(studio):
    session = ask(studio, studio.conversations.new_session(), "ravens are clever birds")
    labels = [label for label, _ in studio.conversations.choices(session, "clever")]
    assert labels and all("[" not in label and "]" not in label for label in labels), labels
    assert "clever" in labels[0]


def test_compare_columns_name_their_text_as_chat_does(studio):
    chat = studio.chat.chat_api("Name a bird.", {"num_steps": 2, "max_new_tokens": 4})
    columns = studio.arena.compare_api("Name a bird.", [{"num_steps": 2, "max_new_tokens": 4},
                                                  {"num_steps": 4, "max_new_tokens": 4}])
    assert columns[0]["text"] == chat["text"]  # same prompt and settings, same answer, under the same name
    assert all(c["text"] == c["content"] == "".join(t["text"] for t in c["tokens"]) for c in columns)
    # Saved into a conversation, the comparison keeps the store's own format.
    session, _ = studio.arena.save(studio.conversations.new_session(), studio.arena.compare(
        "Name a bird.", "", [engine.GenerationSettings(num_steps=2, max_new_tokens=2)]))
    saved = studio.store.thread(session.owner, session.conversation_id)[-1]
    assert saved.kind == "comparison" and "content" in saved.extra["columns"][0]


def test_num_steps_errors_state_the_servers_real_cap(studio):
    cap = studio.limits.max_num_steps
    for bad in (0, cap + 1, 300):
        with pytest.raises(engine.SettingsError, match=f"num_steps: must be from 1 to {cap} here, got {bad}"):
            settings_from_dict(studio.limits, {"num_steps": bad})
    with pytest.raises(engine.SettingsError, match=f"from 1 to {cap} here"):
        settings_from_form(studio.limits, {"num_steps": 300})
    with pytest.raises(Exception, match=f"from 1 to {cap} here"):
        studio.chat.chat_api("hi", {"num_steps": 999})


def test_step_counts_are_singular_for_one():
    tip = render.heatmap([{"text": "a", "steps": 1, "exit_value": None}], 8)
    assert "1 step," in tip and "1 steps" not in tip
    assert preset_choices(["1", "4", "adaptive"]) == [("1 step", "1"), ("4 steps", "4"), ("adaptive exit", "adaptive")]


def test_a_server_without_depth_refuses_the_depth_lens_by_name():
    with stand_in_server() as (base, seen):
        remote = RemoteEngine(base)
        with pytest.raises(engine.SettingsError, match="trace: .*no depth lens"):
            list(remote.stream([{"role": "user", "content": "hi"}], engine.GenerationSettings(trace=True)))
        assert not seen  # refused before anything was sent
        assert remote.info().suggested_depths == ()
