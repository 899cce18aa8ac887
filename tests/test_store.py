"""Tests of app.store against real SQLite files in tmp_path."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app import store as store_module
from app.store import (
    ENV_VAR,
    EXPORT_FORMAT,
    SCHEMA_VERSION,
    ImportInvalid,
    InvalidData,
    NotFound,
    RecordLimits,
    Store,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreLocationError,
    default_db_path,
    new_owner_key,
)
from app.store import quota
from app.views import STORE_LIMITS
from tests.store_crash_writer import damage, kill_mid_stream

REPO = Path(__file__).resolve().parent.parent
OWNER = "alice"

SETTINGS = {
    "num_steps": 32,
    "criterion": "kl",
    "exit_threshold": 5e-4,
    "min_steps": 4,
    "warm_start": True,
    "cache_strategy": "latest-m4",
    "max_new_tokens": 256,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
    "min_p": 0.0,
    "repetition_penalty": 1.1,
    "seed": 1234,
}
TOKENS = [
    {"text": "Four", "steps": 12, "exit_value": 3.5e-4},
    {"text": ".", "steps": 4, "exit_value": None},
    {"text": " Done", "steps": 32, "exit_value": 0.25},
]
STATS = {
    "tokens": 3,
    "tokens_per_s": 21.5,
    "mean_steps": 16.0,
    "min_steps": 4,
    "max_steps": 32,
    "core_iterations": 48,
    "kv_cache_bytes": 1_048_576,
    "elapsed_s": 0.14,
    "stop_reason": "eos",
    "notice": None,
}
HOSTILE = (
    "<script>alert('x')</script><img src=x onerror=alert(1)> &amp; \"quotes\" 'single'\n"
    "\x00NUL\x01\x02\x07\x08\x0b\x0c\x1b[31mANSI\x1b[0m\x7f\r\n\t"
    "\u202eRTL override\u202c \u2028line sep\u2029 \ufeffBOM zero\u200bwidth "
    "e\u0301 combining 😀👩‍👩‍👧 emoji \U0010ffff max code point; '); DROP TABLE messages; --"
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "studio.db"


@pytest.fixture
def store(db_path: Path):
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture
def app_store(db_path: Path):
    """A store that checks records as the app's does: against the engine's definitions (engine.records)."""
    s = Store(db_path, limits=STORE_LIMITS)
    yield s
    s.close()


def answer(store: Store, conv_id: int, parent_id="leaf", content="Four. Done", **kw):
    values = dict(
        parent_id=parent_id,
        model_id="tomg-group-umd/huginn-0125",
        model_revision="2a364bd",
        quantization="bf16",
        settings=SETTINGS,
        tokens=TOKENS,
        stats=STATS,
    )
    values.update(kw)
    return store.add_message(OWNER, conv_id, "assistant", content, **values)


def conversation_with_branches(store: Store):
    """root user -> answer a1 (regenerated as a2) ; user edited as a second root u2 -> a3."""
    conv = store.create_conversation(OWNER)
    u1 = store.add_message(OWNER, conv.id, "user", "What is 2+2?")
    a1 = answer(store, conv.id)
    a2 = answer(store, conv.id, parent_id=u1.id, content="4", settings={**SETTINGS, "num_steps": 8})
    u2 = store.add_message(OWNER, conv.id, "user", "What is 3+3?", parent_id=None)
    a3 = answer(store, conv.id, status="cancelled", content="Six")
    return conv, u1, a1, a2, u2, a3


# ------------------------------------------------------------------------------ open, schema
def test_open_sets_up_wal_foreign_keys_busy_timeout_and_schema_version(store: Store, db_path: Path):
    db = store.file.db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"conversations", "messages", "messages_fts", "conversations_fts", "meta"} <= set(
        db.table_names()
    )
    assert store.integrity_check() == "ok"
    assert store.recovered_from is None


def test_reopen_keeps_data_and_does_not_rerun_migrations(db_path: Path):
    with Store(db_path) as s:
        conv = s.create_conversation(OWNER, "kept")
        s.add_message(OWNER, conv.id, "user", "hello")
    with Store(db_path) as s:
        assert [c.title for c in s.list_conversations(OWNER)] == ["kept"]
        assert [m.content for m in s.thread(OWNER, conv.id)] == ["hello"]


def test_database_and_its_wal_and_shm_are_private(tmp_path: Path):
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.db"
        with Store(fresh) as s:
            s.create_conversation(OWNER, "secret")
            files = [fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o600" for f in files}
        older = tmp_path / "older.db"  # a file an earlier version made world-readable
        with Store(older):
            pass
        for f in (older, Path(f"{older}-wal"), Path(f"{older}-shm")):
            if f.exists():
                f.chmod(0o644)
        with Store(older) as s:
            s.create_conversation(OWNER, "secret")
            assert oct(older.stat().st_mode & 0o777) == "0o600"
            assert oct(Path(f"{older}-wal").stat().st_mode & 0o777) == "0o600"
    finally:
        os.umask(old_umask)


def test_newer_schema_and_foreign_database_are_refused_untouched(tmp_path: Path):
    newer = tmp_path / "newer.db"
    with Store(newer):
        pass
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = newer.read_bytes()
    with pytest.raises(StoreLocationError, match="newer Huginn Studio"):
        Store(newer)
    assert newer.read_bytes() == before

    foreign = tmp_path / "other-app.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(StoreLocationError, match="another program.*invoices"):
        Store(foreign)
    assert foreign.read_bytes() == before


def test_default_path_uses_user_data_dir_unless_env_var_set(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    path = default_db_path()
    assert path.name == "huginn-studio.db" and "huginn-studio" in path.parent.name
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.db"))
    assert default_db_path() == tmp_path / "env.db"
    with Store() as s:
        assert s.path == tmp_path / "env.db"
    assert (tmp_path / "env.db").exists()


def test_closed_store_refuses_calls(db_path: Path):
    s = Store(db_path)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.list_conversations(OWNER)


# ---------------------------------------------------------------------- conversations, messages
def test_conversation_and_answer_round_trip_every_field(store: Store):
    conv = store.create_conversation(OWNER, "Arithmetic", extra={"pinned": True})
    system = store.add_message(OWNER, conv.id, "system", "Be brief.")
    user = store.add_message(OWNER, conv.id, "user", "What is 2+2?")
    msg = answer(store, conv.id, error=None, extra={"note": "first try"})

    got = store.get_message(OWNER, msg.id)
    assert got == msg
    assert got.parent_id == user.id and user.parent_id == system.id and system.parent_id is None
    assert got.role == "assistant" and got.kind == "message" and got.status == "complete"
    assert got.model_id == "tomg-group-umd/huginn-0125"
    assert (got.model_revision, got.quantization) == ("2a364bd", "bf16")
    assert got.settings == SETTINGS and list(got.settings) == list(SETTINGS)
    assert got.tokens == TOKENS and got.stats == STATS and got.extra == {"note": "first try"}
    conv = store.get_conversation(OWNER, conv.id)
    assert conv.current_leaf == msg.id and conv.extra == {"pinned": True}
    assert conv.title == "Arithmetic"  # an explicit title is never replaced by the auto-title


def test_list_newest_first_rename_and_delete_with_messages(store: Store):
    a = store.create_conversation(OWNER, "a")
    b = store.create_conversation(OWNER, "b")
    c = store.create_conversation(OWNER, "c")
    assert [x.id for x in store.list_conversations(OWNER)] == [c.id, b.id, a.id]
    store.add_message(OWNER, a.id, "user", "bump a")
    assert [x.id for x in store.list_conversations(OWNER)] == [a.id, c.id, b.id]
    assert [x.id for x in store.list_conversations(OWNER, limit=2, offset=1)] == [c.id, b.id]

    renamed = store.rename_conversation(OWNER, b.id, "Bee")
    assert renamed.title == "Bee" and store.get_conversation(OWNER, b.id).title == "Bee"

    store.add_message(OWNER, a.id, "user", "zebra crossing")
    answer(store, a.id, content="zebra answer")
    store.delete_conversation(OWNER, a.id)
    with pytest.raises(NotFound):
        store.get_conversation(OWNER, a.id)
    db = store.file.db()
    assert db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", [a.id]).fetchone()[0] == 0
    assert store.search(OWNER, "zebra") == []
    assert [x.id for x in store.list_conversations(OWNER)] == [b.id, c.id]
    with pytest.raises(NotFound):
        store.delete_conversation(OWNER, a.id)


def chain_export(length: int, title: str = "long chat") -> dict:
    """An export of one conversation whose messages form a single reply chain ``length`` deep."""
    stamp = "2026-01-01T00:00:00.000000+00:00"
    messages = [
        {"id": i, "parent_id": i - 1 or None, "role": "user" if i % 2 else "assistant",
         "content": f"turn {i} chainword", "created": stamp, "updated": stamp}
        for i in range(1, length + 1)
    ]  # fmt: skip
    conv = {"title": title, "created": stamp, "updated": stamp, "current_leaf": length, "messages": messages}
    return {"format": EXPORT_FORMAT, "version": 1, "conversations": [conv]}


def test_a_reply_chain_of_5000_messages_deletes(store: Store):
    keep = store.create_conversation(OWNER, "kept")
    store.add_message(OWNER, keep.id, "user", "still here chainword")
    [conv] = store.import_json(OWNER, chain_export(5000))
    assert len(store.thread(OWNER, conv.id)) == 5000
    store.delete_conversation(OWNER, conv.id)  # "too many levels of trigger recursion" before
    with pytest.raises(NotFound):
        store.get_conversation(OWNER, conv.id)
    db = store.file.db()
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    assert [h.conversation_id for h in store.search(OWNER, "chainword")] == [keep.id]
    assert db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')").rowcount != 0
    assert store.integrity_check() == "ok"


def test_auto_title_from_first_user_message_only(store: Store):
    conv = store.create_conversation(OWNER)
    assert conv.title == store_module.DEFAULT_TITLE
    store.add_message(OWNER, conv.id, "system", "system prompt is not a title")
    store.add_message(OWNER, conv.id, "user", "\n  \x1b[1mExplain\x00   recurrent\tdepth " + "x" * 100)
    title = store.get_conversation(OWNER, conv.id).title
    assert title == "[1mExplain recurrent depth…"  # cut at a word
    store.add_message(OWNER, conv.id, "user", "second question")
    assert store.get_conversation(OWNER, conv.id).title == title

    renamed = store.create_conversation(OWNER)
    store.rename_conversation(OWNER, renamed.id, "Mine")
    store.add_message(OWNER, renamed.id, "user", "hello")
    assert store.get_conversation(OWNER, renamed.id).title == "Mine"


def test_editing_and_regenerating_make_sibling_branches(store: Store):
    conv, u1, a1, a2, u2, a3 = conversation_with_branches(store)
    assert [m.id for m in store.siblings(OWNER, a1.id)] == [a1.id, a2.id]
    assert [m.id for m in store.siblings(OWNER, u1.id)] == [u1.id, u2.id]
    assert [m.id for m in store.children(OWNER, u1.id)] == [a1.id, a2.id]
    # current leaf follows the newest message
    assert store.get_conversation(OWNER, conv.id).current_leaf == a3.id
    assert [m.id for m in store.thread(OWNER, conv.id)] == [u2.id, a3.id]
    assert [m.id for m in store.thread(OWNER, conv.id, a1.id)] == [u1.id, a1.id]
    # nothing was overwritten
    assert len(store.messages(OWNER, conv.id)) == 5
    assert store.get_message(OWNER, a1.id).content == "Four. Done"

    leaf = store.set_current_leaf(OWNER, conv.id, u1.id)
    assert leaf.id == a2.id  # descends along the newest child
    assert [m.id for m in store.thread(OWNER, conv.id)] == [u1.id, a2.id]
    leaf = store.set_current_leaf(OWNER, conv.id, u1.id, descend=False)
    assert leaf.id == u1.id and store.get_conversation(OWNER, conv.id).current_leaf == u1.id
    # appending goes under the current leaf
    a4 = answer(store, conv.id, content="third try")
    assert a4.parent_id == u1.id
    assert [m.id for m in store.siblings(OWNER, a4.id)] == [a1.id, a2.id, a4.id]


def test_tree_links_cannot_cross_conversations(store: Store):
    one = store.create_conversation(OWNER)
    two = store.create_conversation(OWNER)
    m1 = store.add_message(OWNER, one.id, "user", "in one")
    with pytest.raises(InvalidData, match="another conversation"):
        store.add_message(OWNER, two.id, "user", "x", parent_id=m1.id)
    with pytest.raises(NotFound):
        store.set_current_leaf(OWNER, two.id, m1.id)
    with pytest.raises(NotFound):
        store.thread(OWNER, two.id, m1.id)
    assert store.messages(OWNER, two.id) == []
    assert store.thread(OWNER, two.id) == []


def test_invalid_arguments_are_refused_and_write_nothing(app_store: Store):
    store = app_store
    conv = store.create_conversation(OWNER)
    bad_calls = [
        dict(role="robot", content="x"),
        dict(role="user", content=b"bytes"),
        dict(role="user", content="x", status="done"),
        dict(role="assistant", content="x", settings=["not", "a", "dict"]),
        dict(role="assistant", content="x", settings={"seed": object()}),
        dict(role="assistant", content="x", tokens=[{"text": "a", "steps": -1, "exit_value": 0}]),
        dict(role="assistant", content="x", tokens=[{"text": "a", "steps": True, "exit_value": 0}]),
        dict(role="assistant", content="x", tokens=[{"text": 1, "steps": 1, "exit_value": 0}]),
        dict(role="assistant", content="x", tokens=[{"text": "a", "steps": 1, "exit_value": "hi"}]),
        dict(role="assistant", content="x", stats="fast"),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidData):
            store.add_message(OWNER, conv.id, call.pop("role"), call.pop("content"), **call)
    assert store.messages(OWNER, conv.id) == []
    with pytest.raises(NotFound):
        store.add_message(OWNER, 999, "user", "x")
    with pytest.raises(NotFound):
        store.get_message(OWNER, 999)


def test_array_scalars_from_the_engine_are_stored_as_numbers(store: Store):
    class Scalar:  # stands in for a numpy/torch scalar without importing either
        def __init__(self, v):
            self.v = v

        def item(self):
            return self.v

    conv = store.create_conversation(OWNER)
    msg = answer(store, conv.id, stats={"tokens_per_s": Scalar(12.5), "tokens": Scalar(3)})
    assert store.get_message(OWNER, msg.id).stats == {"tokens_per_s": 12.5, "tokens": 3}


# ------------------------------------------------------------------------------------ hostile
def test_hostile_text_round_trips_byte_for_byte(store: Store, tmp_path: Path):
    big = (HOSTILE * (1_048_576 // len(HOSTILE) + 1))[:1_048_576]
    conv = store.create_conversation(OWNER, HOSTILE)
    user = store.add_message(OWNER, conv.id, "user", big)
    msg = answer(
        store,
        conv.id,
        content=HOSTILE,
        tokens=[{"text": HOSTILE, "steps": 1, "exit_value": None}],
        settings={HOSTILE: HOSTILE},
    )
    assert store.get_message(OWNER, user.id).content.encode() == big.encode()
    got = store.get_message(OWNER, msg.id)
    assert got.content == HOSTILE and got.tokens[0]["text"] == HOSTILE and got.settings == {HOSTILE: HOSTILE}
    # A title is one line: control and format characters go, joiners stay (test_titles_are_one_clean_line).
    title = store.get_conversation(OWNER, conv.id).title
    assert title.startswith("<script>alert('x')</script>")
    assert "'single' NUL [31mANSI[0m RTL override line sep" in title
    assert not {"\n", "\r", "\x00", "\x1b", "\u202e", "\u2028", "\ufeff", "\u200b"} & set(title)
    assert "😀👩\u200d👩\u200d👧 emoji" in title
    assert [h.conversation_id for h in store.search(OWNER, "RTL override")] == [conv.id]

    with Store(tmp_path / "other.db") as other:
        [copy_] = other.import_json(OWNER, store.export_json(OWNER))
        copied = other.thread(OWNER, copy_.id)
        assert [m.content for m in copied] == [big, HOSTILE]
        assert copy_.title == title
    assert HOSTILE in store.export_markdown(OWNER)


def test_invalid_unicode_and_oversized_content_are_refused(store: Store):
    conv = store.create_conversation(OWNER)
    with pytest.raises(InvalidData, match="lone surrogate at position 3"):
        store.add_message(OWNER, conv.id, "user", "abc\ud800def")
    with pytest.raises(InvalidData, match="limit is 10,485,760 bytes"):
        store.add_message(OWNER, conv.id, "user", "x" * (store_module.MAX_CONTENT_BYTES + 1))
    with pytest.raises(InvalidData, match="title"):
        store.rename_conversation(OWNER, conv.id, "\udfff")
    assert store.messages(OWNER, conv.id) == []


# ------------------------------------------------------------------------------------- search
def test_full_text_search_titles_and_messages(store: Store):
    a = store.create_conversation(OWNER, "Recurrent depth notes")
    store.add_message(OWNER, a.id, "user", "How does adaptive exit work?")
    b = store.create_conversation(OWNER, "Cooking")
    store.add_message(OWNER, b.id, "user", "A recipe for bread")
    answer(store, b.id, content="Knead the dough; the exit criterion does not apply to bread.")

    hits = store.search(OWNER, "exit")
    assert {h.conversation_id for h in hits} == {a.id, b.id}
    assert all("[exit]" in h.snippet for h in hits)
    [title_hit] = store.search(OWNER, "recurrent")
    assert (title_hit.conversation_id, title_hit.message_id) == (a.id, None)
    assert title_hit.title == "Recurrent depth notes"
    [bread] = store.search(OWNER, "knead dough")
    assert bread.conversation_id == b.id and bread.message_id is not None
    assert store.search(OWNER, "adapt")[0].conversation_id == a.id  # last word is a prefix
    assert store.search(OWNER, "absent") == []


def test_search_finds_every_conversation_when_one_has_many_matches(store: Store):
    other = store.create_conversation(OWNER, "Cups")
    store.add_message(OWNER, other.id, "user", "Can you swap these two cups for me, then tell me the order?")
    stamp = "2026-01-01T00:00:00.000000+00:00"
    messages = [{"id": i + 1, "parent_id": i or None, "role": ("user", "assistant")[i % 2],
                 "content": "Swap 12 23 on 312" if i % 2 == 0 else f"swap done {i}", "created": stamp,
                 "updated": stamp} for i in range(260)]  # fmt: skip
    doc = {"format": EXPORT_FORMAT, "version": 1, "conversations": [
        {"title": "Puzzles", "created": stamp, "updated": stamp, "current_leaf": 260, "messages": messages}]}
    [busy] = store.import_json(OWNER, doc)  # 130 pairs: the demo model's "Swap ..." asked over and over
    stranger = store.create_conversation("mallory", "swap")
    store.add_message("mallory", stranger.id, "user", "swap swap swap")

    hits = store.search(OWNER, "swap")
    assert sorted(h.conversation_id for h in hits) == sorted([busy.id, other.id])
    assert all(h.message_id is not None and "[swap]" in h.snippet.lower() for h in hits)
    assert [h.conversation_id for h in store.search(OWNER, "swap cups")] == [other.id]
    assert len(store.search(OWNER, "swap", limit=1)) == 1
    [titled] = store.search(OWNER, "puzzles")
    assert (titled.conversation_id, titled.message_id) == (busy.id, None)


@pytest.mark.parametrize(
    "query",
    ['"foo', "AND OR (", "NOT", "*", "title:x", "a NEAR b", '""', "   ", "", "(((", "^", "-x", "'", "\x00", "😀", "NEAR(", "x OR"],
)
def test_search_accepts_any_user_input(store: Store, query: str):
    conv = store.create_conversation(OWNER, "AND OR NOT")
    store.add_message(OWNER, conv.id, "user", 'he said "foo" (and) NEAR x OR y')
    hits = store.search(OWNER, query)
    assert isinstance(hits, list)
    if query in ('"foo', "AND OR (", "x OR"):
        assert [h.conversation_id for h in hits] == [conv.id]


# ------------------------------------------------------------------------------ export/import
def test_json_export_import_is_lossless(store: Store, tmp_path: Path):
    conv, *_ = conversation_with_branches(store)
    conv = store.get_conversation(OWNER, conv.id)
    store.add_message(
        OWNER,
        conv.id,
        "assistant",
        "depth arena",
        kind="comparison",
        extra={"rows": [{"num_steps": 4, "text": "5"}, {"num_steps": 32, "text": "6"}]},
    )
    store.set_current_leaf(OWNER, conv.id, store.thread(OWNER, conv.id)[0].id)
    first = store.export_data(OWNER)
    assert first["format"] == EXPORT_FORMAT and first["version"] == 1

    with Store(tmp_path / "elsewhere.db") as other:
        imported = other.import_json("bob", store.export_json(OWNER, [conv.id]))
        again = other.export_data("bob")
        assert len(imported) == 1 and imported[0].owner == "bob"
        assert [c["title"] for c in other.export_data("bob")["conversations"]] == [conv.title]
    first.pop("exported"), again.pop("exported")
    assert again == first

    orig_tree = {m.id: m for m in store.messages(OWNER, conv.id)}
    new_tree = store.messages(OWNER, store.import_json(OWNER, first)[0].id)
    assert len(new_tree) == len(orig_tree)
    for old, new in zip(sorted(orig_tree.values(), key=lambda m: m.id), new_tree):
        assert (old.content, old.settings, old.tokens, old.stats, old.status, old.kind, old.extra) == (
            new.content, new.settings, new.tokens, new.stats, new.status, new.kind, new.extra
        )


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as a strict parser (a browser's JSON.parse) does."""
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_imported_times_are_kept_in_utc_with_microseconds(store: Store):
    doc = answer_export()
    conv = doc["conversations"][0]
    conv["created"], conv["updated"] = "2026-01-01T05:30:00+05:30", "2026-01-02T00:00:00Z"
    conv["messages"][0]["created"] = "2025-12-31T19:00:00.5-05:00"
    [imported] = store.import_json(OWNER, doc)
    assert (imported.created, imported.updated) == ("2026-01-01T00:00:00.000000+00:00",
                                                    "2026-01-02T00:00:00.000000+00:00")
    assert store.thread(OWNER, imported.id)[0].created == "2026-01-01T00:00:00.500000+00:00"
    assert "*Created 2026-01-01 00:00:00 UTC" in store.export_markdown(OWNER, [imported.id])
    # the store's own exports keep importing, unchanged
    first = store.export_data(OWNER, [imported.id])
    [again] = store.import_json(OWNER, store.export_json(OWNER, [imported.id]))
    assert store.export_data(OWNER, [again.id])["conversations"] == first["conversations"]
    newest = store.create_conversation(OWNER, "made now")
    assert store.list_conversations(OWNER)[0].id == newest.id
    # other ISO forms (an earlier version stored them as given, so its exports hold them) are read as UTC
    for given, stored in (("2024-05-01T10:00:00", "2024-05-01T10:00:00.000000+00:00"),
                          ("2024-05-01", "2024-05-01T00:00:00.000000+00:00"),
                          ("2024-W01-1", "2024-01-01T00:00:00.000000+00:00"),
                          ("20240101T120000", "2024-01-01T12:00:00.000000+00:00")):
        conv["messages"][0]["created"] = given
        [old] = store.import_json(OWNER, doc)
        assert store.thread(OWNER, old.id)[0].created == stored, given


def test_nan_and_infinity_are_refused_and_every_export_is_strict_json(store: Store, db_path: Path):
    with pytest.raises(InvalidData, match="extra holds NaN or Infinity; numbers must be finite"):
        store.create_conversation(OWNER, "x", extra={"score": float("nan")})
    conv = store.create_conversation(OWNER, "kept", extra={"score": 1.5})
    with pytest.raises(InvalidData, match="extra holds NaN or Infinity"):
        store.add_message(OWNER, conv.id, "user", "hi", extra={"deep": [{"x": float("inf")}]})
    with pytest.raises(InvalidData, match="extra holds NaN or Infinity"):
        store.begin_answer(OWNER, conv.id, extra={"x": float("-inf")})
    with pytest.raises(InvalidData, match="extra holds an integer of 1,329 bits; numbers must fit a float"):
        store.add_message(OWNER, conv.id, "user", "hi", extra={"deep": [{"x": 10**400}]})
    with pytest.raises(InvalidData, match="extra holds an integer of 16,610 bits"):  # past str()'s digit limit
        store.create_conversation(OWNER, "x", extra={"n": -(10**5000)})
    assert store.messages(OWNER, conv.id) == []
    # a value some older version let in reads as null, so the export still parses and imports
    answer(store, conv.id)
    raw = sqlite3.connect(db_path)
    with raw:
        raw.execute("UPDATE conversations SET extra = ? WHERE id = ?", ['{"score": NaN}', conv.id])
        raw.execute("UPDATE messages SET extra = ? WHERE conversation_id = ?", ['{"x": [Infinity]}', conv.id])
    raw.close()
    text = store.export_json(OWNER)
    [exported] = strict_json(text)["conversations"]
    assert exported["extra"] == {"score": None} and exported["messages"][0]["extra"] == {"x": [None]}
    assert strict_json(store.export_json(OWNER, [store.import_json(OWNER, text)[0].id]))


def test_titles_are_one_clean_line(store: Store, db_path: Path):
    conv = store.create_conversation(OWNER, "first\nsecond")
    assert conv.title == "first second"
    renamed = store.rename_conversation(OWNER, conv.id, "  a\x00b\u202ec\u2066\ufeff\r\nd\x1b[31m\t e\u200d ")
    assert renamed.title == "abc d[31m e\u200d"  # a joiner stays: emoji sequences and Persian need it
    assert [c.title for c in store.list_conversations(OWNER)] == ["abc d[31m e\u200d"]
    assert store.export_markdown(OWNER).startswith("# abc d[31m e\u200d\n\n*Created")
    with pytest.raises(InvalidData, match="title has no visible characters"):
        store.rename_conversation(OWNER, conv.id, "\u202e\x00\n\u200b")
    assert store.get_conversation(OWNER, conv.id).title == "abc d[31m e\u200d"
    [imported] = store.import_json(OWNER, {**store.export_data(OWNER), "conversations": [
        {**store.export_data(OWNER)["conversations"][0], "title": "line one\n# line two\u202e"}]})
    assert imported.title == "line one # line two"
    raw = sqlite3.connect(db_path)  # a title an older version stored as given
    with raw:
        raw.execute("UPDATE conversations SET title = ? WHERE id = ?", ["old\n## not a heading", imported.id])
    raw.close()
    assert store.export_markdown(OWNER, [imported.id]).startswith("# old ## not a heading\n\n*Created")


def test_owner_caps_refuse_the_next_conversation_or_import_and_keep_what_was_saved(db_path: Path):
    with Store(db_path, limits=RecordLimits(max_owner_conversations=2, max_owner_bytes=7_000)) as store:
        a = store.create_conversation(OWNER, "one")
        store.add_message(OWNER, a.id, "user", "x" * 2_000)
        b = store.create_conversation(OWNER, "two")
        store.create_conversation("bob", "his")  # the caps are per owner
        saved = store.export_data(OWNER)["conversations"]
        with pytest.raises(StoreFull, match=r"^this visitor's space holds at most 2 conversations \(2 now\); "
                                            r"delete some first$"):
            store.create_conversation(OWNER, "three")
        with pytest.raises(StoreFull, match="at most 2 conversations"):
            store.import_json(OWNER, answer_export())
        store.add_message(OWNER, b.id, "user", "y" * 2_500)
        # each row counts its text and ROW_OVERHEAD (200): 2 x (200 + 3) + (200 + 7 + 2_000) + (200 + 7 + 2_500)
        with pytest.raises(StoreFull, match=r"at most 7.0 kB of conversations \(5.3 kB used, this needs 2.2 kB more"):
            store.add_message(OWNER, b.id, "user", "z" * 2_000)
        store.add_message(OWNER, a.id, "user", "w" * 1_400)  # 6.9 kB
        saved = store.export_data(OWNER)["conversations"]
        with pytest.raises(StoreFull, match="at most 7.0 kB"):
            answer(store, b.id)  # the records count too
        assert store.export_data(OWNER)["conversations"] == saved
        assert [m.content for m in store.messages(OWNER, b.id)] == ["y" * 2_500]

        store.delete_conversation(OWNER, a.id)  # deleting makes room
        [c] = store.import_json(OWNER, answer_export())
        assert [m.role for m in store.thread(OWNER, c.id)] == ["user", "assistant"]
        with pytest.raises(StoreFull, match="at most 2 conversations .*this would add 2"):
            store.import_json(OWNER, {**answer_export(), "conversations": answer_export()["conversations"] * 2})
        assert len(store.list_conversations(OWNER)) == 2 and store.integrity_check() == "ok"
    with Store(db_path, limits=RecordLimits(max_owner_bytes=20_000)) as store:  # no row is free
        empty = store.create_conversation("eve", "")
        with pytest.raises(StoreFull, match="at most 20.0 kB"):
            for _ in range(200):  # empty messages with long model ids: 200 of them would be 0 bytes of content
                store.add_message("eve", empty.id, "assistant", "", model_id="m" * 200, quantization="q" * 32)
        assert 20_000 - 640 < store.file.read(lambda db: quota.stored_bytes(db, "eve")) <= 20_000
    with Store(db_path) as unlimited:  # no caps by default (a local store)
        assert len([unlimited.create_conversation(OWNER) for _ in range(3)]) == 3


def _valid_export(store: Store) -> dict:
    conversation_with_branches(store)
    return store.export_data(OWNER)


def _mutations():
    def at(doc, *path):
        node = doc
        for p in path[:-1]:
            node = node[p]
        return node, path[-1]

    def set_(path, value):
        def apply(doc):
            node, key = at(doc, *path)
            node[key] = value

        return apply

    def delete(path):
        def apply(doc):
            node, key = at(doc, *path)
            del node[key]

        return apply

    msgs = ("conversations", 1, "messages")
    return [
        (set_(("format",), "chatgpt"), "not a Huginn Studio export"),
        (set_(("version",), 99), "unsupported export version"),
        (set_(("conversations",), {}), "conversations must be a list"),
        (set_(("conversations", 1), "x"), r"conversations\[1\] must be an object"),
        (delete(("conversations", 1, "title")), r"conversations\[1\]\.title is missing"),
        (set_(("conversations", 1, "current_leaf"), 77), "current_leaf 77 is not one of its messages"),
        (set_(("conversations", 1, "surprise"), 1), "unknown fields: 'surprise'"),
        (set_((*msgs, 1, "role"), "robot"), r"conversations\[1\]\.messages\[1\]\.role must be one of"),
        (set_((*msgs, 1, "parent_id"), 42), "has parent 42, which is not in the file"),
        (set_((*msgs, 0, "parent_id"), 2), "cycle"),
        (set_((*msgs, 1, "id"), 1), "is used twice"),
        (set_((*msgs, 1, "id"), True), "must be int"),
        (set_((*msgs, 1, "content"), None), "content must be str"),
        (set_((*msgs, 1, "tokens"), [{"text": "a"}]), r"tokens\[0\]\.steps must be an integer from 0 to 256"),
        (set_((*msgs, 1, "settings"), "fast"), "settings must be an object"),
        (set_((*msgs, 1, "status"), "halfway"), "status must be one of"),
        (set_((*msgs, 1, "content"), "\ud800"), "lone surrogate"),
        (delete((*msgs, 1, "created")), "created is missing"),
    ]


@pytest.mark.parametrize("mutate,message", _mutations())
def test_import_rejects_malformed_file_and_writes_nothing(app_store: Store, mutate, message):
    store = app_store
    doc = _valid_export(store)
    before = store.export_data(OWNER)["conversations"]
    bad = copy.deepcopy(doc)
    bad["conversations"].append(copy.deepcopy(doc["conversations"][0]))  # a valid one comes first
    mutate(bad)
    with pytest.raises(ImportInvalid, match=message):
        store.import_json(OWNER, json.dumps(bad))
    assert store.export_data(OWNER)["conversations"] == before


def answer_export() -> dict:
    """An export of [question, comparison answer] with every record the app writes."""
    stamp = "2026-01-01T00:00:00.000000+00:00"
    column = {"label": "r=4", "settings": dict(SETTINGS, num_steps=4), "tokens": TOKENS,
              "content": "Four. Done", "stats": dict(STATS, agreement=0.5)}
    messages = [
        {"id": 1, "parent_id": None, "role": "user", "content": "2+2?", "created": stamp, "updated": stamp},
        {"id": 2, "parent_id": 1, "role": "assistant", "content": "Four. Done", "created": stamp,
         "updated": stamp, "kind": "comparison", "settings": SETTINGS, "tokens": TOKENS, "stats": STATS,
         "extra": {"columns": [column, column], "system": "Be brief."}},
    ]  # fmt: skip
    conv = {"title": "records", "created": stamp, "updated": stamp, "current_leaf": 2, "messages": messages}
    return json.loads(json.dumps({"format": EXPORT_FORMAT, "version": 1, "conversations": [conv]}))


ANSWER = ("conversations", 0, "messages", 1)
COLUMN = (*ANSWER, "extra", "columns", 0)
RECORD_MUTATIONS = [
    ((*ANSWER, "stats", "tokens_per_s"), "fast", r"messages\[1\]\.stats\.tokens_per_s must be a number"),
    ((*ANSWER, "stats", "tokens"), 10**12, r"stats\.tokens must be an integer from 0 to 32768, got 1e\+12"),
    ((*ANSWER, "stats", "mean_steps"), float("nan"), r"stats\.mean_steps must be a number .*got nan"),
    ((*ANSWER, "stats", "stop_reason"), ["x"], r"stats\.stop_reason must be a string"),
    ((*ANSWER, "stats", "novel"), {"a": 1}, r"stats\.novel must be a string, number"),
    ((*ANSWER, "settings", "exit_threshold"), "5e-4", r"settings: exit_threshold: must be a number"),
    ((*ANSWER, "settings", "num_steps"), "abc", r"settings: num_steps: must be an integer from 1 to 256"),
    ((*ANSWER, "settings", "num_steps"), 10**9, r"settings: num_steps: must be from 1 to 256"),
    ((*ANSWER, "settings", "criterion"), 5, r"settings: criterion: 5 is not one of"),
    ((*ANSWER, "settings", "warm_start"), "yes", r"settings: warm_start: must be true or false"),
    ((*ANSWER, "tokens", 0, "steps"), 3e7, r"messages\[1\]\.tokens\[0\]\.steps must be an integer .*not float"),
    ((*ANSWER, "tokens", 0, "steps"), 30_000_000, r"tokens\[0\]\.steps must be an integer from 0 to 256, got 3e\+07"),
    ((*ANSWER, "tokens", 0, "exit_value"), float("inf"), r"tokens\[0\]\.exit_value must be a number"),
    ((*ANSWER, "tokens", 0, "surprise"), 1, r"tokens\[0\] has unknown fields: 'surprise'"),
    ((*ANSWER, "extra", "columns"), [1, 2], r"extra\.columns\[0\] must be an object"),
    ((*ANSWER, "extra", "columns"), "all", r"extra\.columns must be a list"),
    ((*ANSWER, "extra", "system"), 5, r"extra\.system must be a string"),
    ((*COLUMN, "tokens", 1, "steps"), 3e7, r"extra\.columns\[0\]\.tokens\[1\]\.steps must be an integer"),
    ((*COLUMN, "stats", "agreement"), 2, r"columns\[0\]\.stats\.agreement must be a number from 0 to 1"),
    ((*COLUMN, "settings", "num_steps"), "deep", r"columns\[0\]\.settings: num_steps: must be an integer"),
    ((*COLUMN, "label"), {"x": 1}, r"columns\[0\]\.label must be a string"),
    ((*COLUMN, "surprise"), 1, r"columns\[0\] has unknown fields: 'surprise'"),
    ((*ANSWER, "created"), "yesterday", r"messages\[1\]\.created is not an ISO 8601 date and time"),
    (("conversations", 0, "updated"), "soon", r"conversations\[0\]\.updated is not an ISO 8601 date and time"),
    # a date that would sort first forever, and a day that does not exist (other ISO forms are read as UTC)
    (("conversations", 0, "updated"), "9999-12-31", r"conversations\[0\]\.updated must be a time from 2000 to now"),
    ((*ANSWER, "created"), "2024-02-30T00:00:00Z", r"messages\[1\]\.created is not an ISO 8601 date and time"),
    (("conversations", 0, "updated"), "9999-12-31T00:00:00+00:00", r"updated must be a time from 2000 to now"),
    (("conversations", 0, "created"), "1970-01-01T00:00:00Z", r"created must be a time from 2000 to now"),
    ((*ANSWER, "extra", "note"), float("nan"), r"messages\[1\]\.extra holds NaN or Infinity"),
    (("conversations", 0, "extra"), {"x": [float("-inf")]}, r"conversations\[0\]\.extra holds NaN or Infinity"),
]


@pytest.mark.parametrize("path,value,message", RECORD_MUTATIONS, ids=[m[2][:40] for m in RECORD_MUTATIONS])
def test_import_checks_every_record_field_and_writes_nothing(app_store: Store, path, value, message):
    store = app_store
    before = store.export_data(OWNER)["conversations"]
    [ok] = store.import_json(OWNER, answer_export())  # the unchanged file is accepted
    before = store.export_data(OWNER)["conversations"]
    doc = copy.deepcopy(answer_export())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ImportInvalid, match=message):
        store.import_json(OWNER, json.dumps(doc))
    assert store.export_data(OWNER)["conversations"] == before


def test_writes_are_checked_against_the_same_record_definitions(app_store: Store):
    store = app_store
    conv = store.create_conversation(OWNER)
    with pytest.raises(InvalidData, match="stats.tokens_per_s must be a number"):
        store.add_message(OWNER, conv.id, "assistant", "x", stats={"tokens_per_s": "fast"})
    with pytest.raises(InvalidData, match=r"extra\.columns\[0\] must be an object"):
        store.add_message(OWNER, conv.id, "assistant", "x", kind="comparison", extra={"columns": [1]})
    writer = store.begin_answer(OWNER, conv.id)
    with pytest.raises(InvalidData, match=r"token\[0\]\.steps must be an integer from 0 to 256"):
        writer.add_token("x", 30_000_000)
    with pytest.raises(InvalidData, match="stats.mean_steps"):
        writer.finish("complete", {"mean_steps": "many"})
    assert writer.tokens == [] and store.get_message(OWNER, writer.message_id).status == "partial"


def test_import_uses_the_apps_limits_and_settings_validator(store: Store):
    import engine  # the real definitions the app writes with

    limits = STORE_LIMITS
    good = answer_export()
    for msg in good["conversations"][0]["messages"]:
        if msg.get("settings"):
            msg["settings"] = engine.GenerationSettings(num_steps=32, criterion="kl").to_dict()
    for col in good["conversations"][0]["messages"][1]["extra"]["columns"]:
        col["settings"] = engine.GenerationSettings(num_steps=4).to_dict()
    [conv] = store.import_json(OWNER, json.dumps(good), limits)
    assert store.thread(OWNER, conv.id)[1].settings == good["conversations"][0]["messages"][1]["settings"]
    before = store.export_data(OWNER)["conversations"]
    cases = [
        ((*ANSWER, "tokens", 0, "steps"), 300, r"tokens\[0\]\.steps must be an integer from 0 to 256"),
        ((*ANSWER, "settings", "temperature"), "hot", r"messages\[1\]\.settings: temperature"),
        ((*ANSWER, "settings", "top_k"), -1, r"messages\[1\]\.settings: top_k"),
        ((*ANSWER, "settings", "bogus"), 1, r"messages\[1\]\.settings: bogus: unknown setting"),
        ((*COLUMN, "settings", "criterion"), "<b>x</b>", r"columns\[0\]\.settings: criterion"),
    ]
    for path, value, message in cases:
        doc = copy.deepcopy(good)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ImportInvalid, match=message):
            store.import_json(OWNER, json.dumps(doc), limits)
    assert store.export_data(OWNER)["conversations"] == before


HTML = '<a href="//evil.example">click</a><img src=x onerror=alert(1)><form action=//x>'


def test_error_messages_from_user_data_are_plain_text_and_short(app_store: Store):
    store = app_store
    doc = answer_export()
    answer_msg = doc["conversations"][0]["messages"][1]
    cases = [
        {**doc, "format": HTML},
        {**doc, "format": HTML * 10_000},
        {**doc, "version": HTML},
        {**doc, "conversations": [{**doc["conversations"][0], HTML: 1}]},
    ]
    for field, value in [("role", HTML), ("status", HTML), ("settings", {HTML: [1]}),
                         ("stats", {HTML: {}}), ("tokens", [{"text": "a", "steps": 1, HTML: 1}])]:
        bad = copy.deepcopy(doc)
        bad["conversations"][0]["messages"][1] = {**answer_msg, field: value}
        cases.append(bad)  # fmt: skip
    limits = store_module.RecordLimits(settings_validator=lambda s: (_ for _ in ()).throw(ValueError(HTML)))
    for case in cases:
        with pytest.raises(ImportInvalid) as err:
            store.import_json(OWNER, json.dumps(case))
        text = str(err.value)
        assert "<" not in text and ">" not in text and len(text) < 400, text
    with pytest.raises(ImportInvalid) as err:
        store.import_json(OWNER, json.dumps(doc), limits)
    assert "‹a href" in str(err.value) and "<" not in str(err.value)
    assert store.list_conversations(OWNER) == []


def test_errors_after_open_never_show_the_database_path(db_path: Path):
    store = Store(db_path, busy_timeout=0.01, lock_timeout=0.2)
    conv = store.create_conversation(OWNER)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy) as busy:
            store.add_message(OWNER, conv.id, "user", "x")
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.close()
    with pytest.raises(StoreError) as closed:
        store.list_conversations(OWNER)
    for err in (busy, closed):
        assert str(db_path.parent) not in str(err.value) and db_path.name not in str(err.value)


def test_import_rejects_non_json_and_non_utf8(store: Store):
    with pytest.raises(ImportInvalid, match="not valid JSON.*line 1"):
        store.import_json(OWNER, "{nope")
    with pytest.raises(ImportInvalid, match="not UTF-8"):
        store.import_json(OWNER, b"\xff\xfe{}")
    with pytest.raises(ImportInvalid, match="JSON object"):
        store.import_json(OWNER, "[1, 2]")
    assert store.list_conversations(OWNER) == []


@pytest.mark.parametrize("depth", [100_000, 1_000])
def test_deeply_nested_json_is_refused_clearly(store: Store, depth: int):
    before = store.export_data(OWNER)["conversations"]
    nested = "[" * depth + "]" * depth
    whole = '{"format": "%s", "version": 1, "conversations": %s}' % (EXPORT_FORMAT, nested)
    inner = json.loads(json.dumps(chain_export(1)))
    inner["conversations"][0]["extra"] = "@"
    in_extra = json.dumps(inner).replace('"@"', '{"a": ' + nested + "}")
    for text in (nested, whole, in_extra):
        with pytest.raises(ImportInvalid, match="nested more than 32 levels deep"):
            store.import_json(OWNER, text)
    assert store.export_data(OWNER)["conversations"] == before
    conv = store.create_conversation(OWNER)
    deep: list = []
    for _ in range(depth):
        deep = [deep]
    with pytest.raises(InvalidData, match="extra is nested more than 32 levels deep"):
        store.add_message(OWNER, conv.id, "user", "x", extra={"deep": deep})


def test_markdown_export_shows_depth_settings_and_steps(store: Store):
    conv, u1, a1, a2, u2, a3 = conversation_with_branches(store)
    store.set_current_leaf(OWNER, conv.id, a1.id)
    md = store.export_markdown(OWNER, [conv.id])
    assert md.startswith("# What is 2+2?\n")
    assert "showing the current branch (2 of 5 messages)" in md
    assert "## User\n\nWhat is 2+2?" in md
    assert "## Assistant · tomg-group-umd/huginn-0125@2a364bd · bf16" in md
    assert "num_steps=32, criterion=kl, exit_threshold=0.0005" in md and "warm_start=on" in md
    assert "3 tokens, mean 16, min 4, max 32 · 21.5 tokens/s" in md
    assert "status: complete" in md and "What is 3+3?" not in md
    both = store.export_markdown(OWNER)
    assert both.count("\n---\n") == 0  # one conversation, no separator
    other = store.create_conversation(OWNER, "Second")
    partial = store.add_message(OWNER, other.id, "assistant", "half", status="partial", tokens=[{"text": "half", "steps": 7, "exit_value": None}])
    assert partial.stats is None
    md = store.export_markdown(OWNER)
    assert md.count("\n---\n") == 1 and "1 tokens, mean 7, min 7, max 7 · status: partial" in md


# ------------------------------------------------------------------------------------ streaming
def test_streaming_answer_is_visible_to_other_connections_while_written(store: Store, db_path: Path):
    conv = store.create_conversation(OWNER)
    user = store.add_message(OWNER, conv.id, "user", "count")
    writer = store.begin_answer(OWNER, conv.id, model_id="m", settings=SETTINGS, flush_interval=0)
    reader = Store(db_path)
    try:
        partial = reader.get_message(OWNER, writer.message_id)
        assert (partial.status, partial.content, partial.tokens, partial.parent_id) == ("partial", "", [], user.id)
        for i in range(5):
            writer.add_token(f" {i}", i + 1, 0.5)
            seen = reader.get_message(OWNER, writer.message_id)
            assert seen.content == "".join(f" {j}" for j in range(i + 1))
            assert len(seen.tokens) == i + 1 and seen.status == "partial"
        final = writer.finish("complete", STATS, content="0 1 2 3 4")
        assert final.status == "complete" and final.content == "0 1 2 3 4" and final.stats == STATS
        assert reader.get_message(OWNER, writer.message_id) == final
        assert [t["steps"] for t in final.tokens] == [1, 2, 3, 4, 5]
        with pytest.raises(StoreError, match="already finished"):
            writer.add_token("x", 1)
    finally:
        reader.close()


def test_streaming_flushes_on_interval_not_per_token(store: Store):
    now = [100.0]  # a fake clock: the test decides when time passes, so load cannot change the count
    conv = store.create_conversation(OWNER)
    writer = store.begin_answer(OWNER, conv.id, flush_interval=0.25, clock=lambda: now[0])
    for _ in range(115):  # 0.9 s of tokens, one every 1/128 s (exact in binary floating point)
        writer.add_token("x", 3)
        now[0] += 1 / 128
    # flushes after the tokens at 0.25, 0.50 and 0.75 s: far fewer transactions than tokens
    assert writer.flushes == 3
    saved = store.get_message(OWNER, writer.message_id)
    assert len(saved.tokens) == 97 and saved.status == "partial"
    writer.flush()
    assert store.get_message(OWNER, writer.message_id).tokens == writer.tokens


def test_writer_context_manager_marks_cancelled_and_failed(store: Store):
    conv = store.create_conversation(OWNER)

    def generate():
        with store.begin_answer(OWNER, conv.id, flush_interval=10) as w:
            for i in range(100):
                w.add_token(str(i), 1)
                yield w.message_id

    gen = generate()
    cancelled_id = next(gen)
    next(gen)
    gen.close()  # what Gradio does when the user presses Stop
    cancelled = store.get_message(OWNER, cancelled_id)
    assert cancelled.status == "cancelled" and cancelled.content == "01"

    with pytest.raises(RuntimeError):
        with store.begin_answer(OWNER, conv.id) as w:
            w.add_token("a", 1)
            raise RuntimeError("CUDA out of memory")
    failed = store.get_message(OWNER, w.message_id)
    assert failed.status == "failed" and failed.error == "RuntimeError: CUDA out of memory"
    assert failed.content == "a"

    with store.begin_answer(OWNER, conv.id) as w:
        w.add_token("ok", 2)
    assert store.get_message(OWNER, w.message_id).status == "complete"


def test_writer_ending_methods_map_outcomes_to_statuses(store: Store):
    conv = store.create_conversation(OWNER)
    ends = {
        "summary": lambda w: w.finish_stream("end_of_turn", STATS, content="a b"),
        "stopped by the engine": lambda w: w.finish_stream("cancelled", STATS),
        "no summary": lambda w: w.finish_stream(None),
        "exception": lambda w: w.fail(ValueError("bad <b>prompt</b>")),
        "message": lambda w: w.fail("The prompt is too long."),
        "nobody finished": lambda w: w.close(),
    }
    got = {}
    for name, end in ends.items():
        writer = store.begin_answer(OWNER, conv.id, flush_interval=10)
        writer.add_token("a", 2)
        end(writer)
        assert writer.close() is None  # already ended: close is a no-op
        m = store.get_message(OWNER, writer.message_id)
        got[name] = (m.status, m.error, m.content)
    assert got == {
        "summary": ("complete", None, "a b"),
        "stopped by the engine": ("cancelled", None, "a"),
        "no summary": ("cancelled", None, "a"),
        "exception": ("failed", "ValueError: bad <b>prompt</b>", "a"),
        "message": ("failed", "The prompt is too long.", "a"),
        "nobody finished": ("cancelled", None, "a"),
    }


def test_sibling_ids_give_every_branch_point_in_one_query(store: Store):
    conv, u1, a1, a2, u2, a3 = conversation_with_branches(store)
    ids = store.sibling_ids(OWNER, conv.id)
    assert ids == {None: [u1.id, u2.id], u1.id: [a1.id, a2.id], u2.id: [a3.id]}
    for m in store.messages(OWNER, conv.id):
        assert ids[m.parent_id] == [s.id for s in store.siblings(OWNER, m.id)]
    with pytest.raises(NotFound):
        store.sibling_ids("mallory", conv.id)


def test_store_package_has_no_import_cycles():
    import ast

    package = REPO / "app" / "store"
    graph = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps - {None}
    graph.pop("__init__")
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, path + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())
    assert "core" not in set().union(*graph.values())  # nothing reaches back into the facade


def test_writer_reports_a_conversation_deleted_mid_stream(store: Store):
    conv = store.create_conversation(OWNER)
    writer = store.begin_answer(OWNER, conv.id, flush_interval=0)
    store.delete_conversation(OWNER, conv.id)
    with pytest.raises(NotFound, match="deleted while it was being written"):
        writer.add_token("x", 1)


def test_answer_of_a_killed_process_is_marked_interrupted_at_open(db_path: Path):
    for after_s in (0.0, 0.1, 0.25):  # the same file, killed and reopened three times
        conv_id, msg_id = kill_mid_stream(db_path, after_s)
        with Store(db_path) as s:
            assert s.interrupted == 1
            assert damage(s, conv_id, msg_id) == []  # intact prefix, status "interrupted"
            # a new answer continues the conversation normally
            s.add_message(store_module.LOCAL_OWNER, conv_id, "user", "again?")
            assert s.thread(store_module.LOCAL_OWNER, conv_id)[-2].status == "interrupted"


def test_answers_of_live_writers_stay_partial(db_path: Path):
    with Store(db_path) as s:  # in this process
        conv = s.create_conversation(OWNER)
        writer = s.begin_answer(OWNER, conv.id, flush_interval=0)
        writer.add_token("a", 1)
        with Store(db_path) as again:
            assert again.interrupted == 0
            assert again.get_message(OWNER, writer.message_id).status == "partial"
        writer.finish("complete")
    proc = subprocess.Popen(  # in another process, still running
        [sys.executable, str(REPO / "tests" / "store_crash_writer.py"), str(db_path), "0.02"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, conv_id, msg_id = proc.stdout.readline().split()
        with Store(db_path) as s:
            assert s.interrupted == 0
            assert s.get_message(store_module.LOCAL_OWNER, int(msg_id)).status == "partial"
    finally:
        proc.kill()
        proc.wait()
    with Store(db_path) as s:
        assert s.interrupted == 1
        assert s.get_message(store_module.LOCAL_OWNER, int(msg_id)).status == "interrupted"


def test_imported_partial_answer_becomes_interrupted(store: Store):
    doc = answer_export()
    doc["conversations"][0]["messages"][1]["status"] = "partial"
    [conv] = store.import_json(OWNER, doc)
    assert store.thread(OWNER, conv.id)[1].status == "interrupted"


def test_version_1_file_is_migrated_keeping_everything(db_path: Path):
    from sqlite_utils import Database

    from app.store.schema import MIGRATIONS

    db = Database(db_path)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    stamp = "2026-01-01T00:00:00.000000+00:00"
    db["conversations"].insert({"id": 1, "owner": OWNER, "title": "old", "auto_title": 0, "created": stamp,
                                "updated": stamp, "current_leaf": None})
    for i, (role, status) in enumerate([("user", "complete"), ("assistant", "partial")], 1):
        db["messages"].insert({"id": i, "conversation_id": 1, "parent_id": i - 1 or None, "role": role,
                               "content": f"oldword {i}", "created": stamp, "updated": stamp, "status": status,
                               "tokens": json.dumps(TOKENS)})
    db["conversations"].update(1, {"current_leaf": 2})
    db.conn.commit()
    db.conn.close()  # fmt: skip
    with Store(db_path) as s:
        assert s.file.db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert s.interrupted == 1
        old = s.thread(OWNER, 1)
        assert [(m.id, m.content, m.status) for m in old] == [(1, "oldword 1", "complete"), (2, "oldword 2", "interrupted")]
        assert old[1].tokens == TOKENS and s.get_conversation(OWNER, 1).current_leaf == 2
        assert [h.message_id for h in s.search(OWNER, "oldword 2")] == [2]
        new = s.add_message(OWNER, 1, "user", "newword")  # the search triggers came back
        assert [h.message_id for h in s.search(OWNER, "newword")] == [new.id]
        s.delete_conversation(OWNER, 1)
        assert s.search(OWNER, "oldword") == [] and s.integrity_check() == "ok"
        assert s.file.db().execute("PRAGMA foreign_keys").fetchone()[0] == 1


# ---------------------------------------------------------------------------------- concurrency
def test_concurrent_writers_lose_nothing(db_path: Path):
    store = Store(db_path)
    shared = store.create_conversation(OWNER, "shared")
    errors: list[BaseException] = []
    per_thread, threads_n = 15, 6

    def own_conversation(n: int) -> None:
        try:
            conv = store.create_conversation(OWNER, f"thread {n}")
            for i in range(per_thread):
                store.add_message(OWNER, conv.id, "user", f"q{n}-{i}")
                with store.begin_answer(OWNER, conv.id, flush_interval=0) as w:
                    for t in range(5):
                        w.add_token(f"a{n}-{i}-{t} ", t + 1)
                store.add_message(OWNER, shared.id, "user", f"shared {n}-{i}", parent_id=None)
        except BaseException as exc:  # surfaced below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=own_conversation, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    convs = [c for c in store.list_conversations(OWNER) if c.title.startswith("thread")]
    assert len(convs) == threads_n
    for conv in convs:
        msgs = store.messages(OWNER, conv.id)
        assert len(msgs) == 2 * per_thread
        assert all(m.status == "complete" and len(m.tokens) == 5 for m in msgs if m.role == "assistant")
        assert len(store.thread(OWNER, conv.id)) == 2 * per_thread
    assert len(store.messages(OWNER, shared.id)) == threads_n * per_thread
    assert store.integrity_check() == "ok"
    store.close()


def test_lock_held_elsewhere_is_waited_out_not_surfaced(db_path: Path):
    # A tiny busy_timeout forces the store's own retry loop to do the waiting.
    store = Store(db_path, busy_timeout=0.01, lock_timeout=5)
    conv = store.create_conversation(OWNER)
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    start = time.monotonic()
    store.add_message(OWNER, conv.id, "user", "waited")
    assert time.monotonic() - start >= 0.25
    assert [m.content for m in store.thread(OWNER, conv.id)] == ["waited"]

    impatient = Store(db_path, busy_timeout=0.01, lock_timeout=0.2)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="stayed locked by another program"):
            impatient.add_message(OWNER, conv.id, "user", "gives up")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert len(store.messages(OWNER, conv.id)) == 1
    store.close()
    impatient.close()


def many_conversations(count: int, messages: int) -> dict:
    one = chain_export(messages)["conversations"][0] if messages else {**chain_export(1)["conversations"][0], "messages": [], "current_leaf": None}
    convs = [{**one, "title": f"imported {i}"} for i in range(count)]
    return {"format": EXPORT_FORMAT, "version": 1, "conversations": convs}


def test_another_writer_is_saved_while_a_maximal_import_runs(db_path: Path):
    count, messages = 3_000, 2
    limits = store_module.RecordLimits(max_conversations=count, max_messages=count * messages)
    store = Store(db_path, limits=limits)
    conv = store.create_conversation(OWNER, "visitor")
    text = json.dumps(many_conversations(count, messages))
    result: list = []
    importer = threading.Thread(target=lambda: result.append(store.import_json("importer", text)))
    watcher = sqlite3.connect(db_path)
    importer.start()
    try:
        while not watcher.execute("SELECT count(*) FROM conversations WHERE owner LIKE char(0) || '%'").fetchone()[0]:
            assert importer.is_alive(), "the import ended before it was seen writing"
            time.sleep(0.01)
        start = time.monotonic()
        saved = store.add_message(OWNER, conv.id, "user", "my question")  # waits one short step at most
        waited = time.monotonic() - start
        import_running = importer.is_alive()
    finally:
        importer.join()
        watcher.close()
    assert import_running, f"the message waited {waited:.1f} s, until the whole import was written"
    assert store.get_message(OWNER, saved.id).content == "my question"
    assert len(result[0]) == count and len(store.list_conversations("importer")) == count
    with pytest.raises(ImportInvalid, match="holds 3,001 conversations; one import may hold at most 3,000"):
        store.import_json("importer", many_conversations(count + 1, 0))
    with pytest.raises(ImportInvalid, match="holds 6,001 messages; one import may hold at most 6,000"):
        store.import_json("importer", many_conversations(1, count * messages + 1))
    store.close()


def test_a_failed_import_leaves_nothing_and_killed_leftovers_go_at_open(db_path: Path, monkeypatch):
    store = Store(db_path)
    keep = store.create_conversation(OWNER, "kept")
    before = store.export_data(OWNER)["conversations"]
    calls = []

    def failing_insert(self, db, m, row):
        calls.append(1)
        if len(calls) == 500:
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, db, m, row)

    original = store_module.transfer.ImportWriter._insert
    monkeypatch.setattr(store_module.transfer.ImportWriter, "_insert", failing_insert)
    with pytest.raises(StoreError, match="disk I/O error"):
        store.import_json(OWNER, many_conversations(100, 10))
    assert store.export_data(OWNER)["conversations"] == before
    db = store.file.db()
    assert db.execute("SELECT count(*) FROM conversations").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    monkeypatch.undo()
    # rows a killed import or delete left hidden are deleted at the next open
    [other] = store.import_json(OWNER, many_conversations(1, 5))
    db.execute("UPDATE conversations SET owner = char(0) || 'hidden' WHERE id = ?", [other.id])
    store.close()
    with Store(db_path) as again:
        assert [c.id for c in again.list_conversations(OWNER)] == [keep.id]
        assert again.file.db().execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(InvalidData, match="owner"):
        Store(db_path).list_conversations("\x00hidden")


# ------------------------------------------------------------------------------ damaged files
def test_garbage_file_is_moved_aside_never_overwritten(db_path: Path, caplog):
    garbage = b"this is not a database\x00" * 500
    db_path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="app.store"):
        s = Store(db_path)
    try:
        moved = s.recovered_from
        assert moved is not None and moved.name.startswith("studio.db.corrupt-")
        assert moved.read_bytes() == garbage
        assert str(moved) in caplog.text and "not an SQLite database" in caplog.text
        conv = s.create_conversation(OWNER, "fresh start")
        assert [c.id for c in s.list_conversations(OWNER)] == [conv.id]
    finally:
        s.close()
    db_path.write_bytes(garbage)  # a second damaged file the same second gets its own name
    with Store(db_path) as again:
        assert again.recovered_from != moved and again.recovered_from.read_bytes() == garbage


def test_file_failing_integrity_check_is_moved_aside(db_path: Path):
    with Store(db_path) as s:
        conv = s.create_conversation(OWNER)
        for i in range(300):
            s.add_message(OWNER, conv.id, "user", f"message {i} " + "filler " * 40)
    data = bytearray(db_path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for offset in range(5 * page, len(data) - page, 3 * page):  # scribble over page headers
        data[offset : offset + 64] = b"\xa5" * 64
    db_path.write_bytes(bytes(data))
    with Store(db_path) as s:
        assert s.recovered_from is not None
        assert s.recovered_from.read_bytes() == bytes(data)
        assert s.list_conversations(OWNER) == [] and s.integrity_check() == "ok"


def test_unwritable_locations_fail_clearly_at_open(tmp_path: Path):
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    with pytest.raises(StoreLocationError, match=r"plain-file/sub/x\.db.*--db PATH or the HUGINN_STUDIO_DB"):
        Store(a_file / "sub" / "x.db")
    with pytest.raises(StoreLocationError, match="it is a directory"):
        Store(tmp_path)


def test_read_only_directory_fails_clearly_at_open(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from app.store import Store, StoreLocationError\n"
        "try:\n    Store(sys.argv[2])\nexcept StoreLocationError as e:\n    print('REFUSED', e)\n"
        "else:\n    print('OPENED')\n"
    )
    cmd = [sys.executable, "-c", code, str(REPO), str(ro / "studio.db")]
    if os.geteuid() == 0:
        # root ignores permission bits; drop the capability that lets it, so chmod means something
        setpriv = shutil.which("setpriv")
        assert setpriv, "tests run as root need util-linux setpriv to make a read-only directory"
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    ro.chmod(0o555)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        ro.chmod(0o755)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert "Permission denied" in out.stdout and str(ro / "studio.db") in out.stdout
    assert "--db PATH" in out.stdout
    assert list(ro.iterdir()) == []


# ------------------------------------------------------------------------------------ owners
def test_owners_cannot_see_or_touch_each_others_conversations(store: Store, tmp_path: Path):
    conv, u1, a1, *_ = conversation_with_branches(store)
    mallory = new_owner_key()
    assert mallory != new_owner_key() and len(mallory) >= 32
    calls = [
        lambda: store.get_conversation(mallory, conv.id),
        lambda: store.rename_conversation(mallory, conv.id, "mine now"),
        lambda: store.delete_conversation(mallory, conv.id),
        lambda: store.add_message(mallory, conv.id, "user", "injected"),
        lambda: store.begin_answer(mallory, conv.id),
        lambda: store.get_message(mallory, a1.id),
        lambda: store.messages(mallory, conv.id),
        lambda: store.thread(mallory, conv.id),
        lambda: store.children(mallory, u1.id),
        lambda: store.siblings(mallory, a1.id),
        lambda: store.set_current_leaf(mallory, conv.id, a1.id),
        lambda: store.export_data(mallory, [conv.id]),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    # mallory's own conversation cannot adopt alice's messages either
    own = store.create_conversation(mallory, "What is")
    with pytest.raises(NotFound):
        store.add_message(mallory, own.id, "user", "x", parent_id=u1.id)
    assert store.list_conversations(mallory) == [own]
    [hit] = store.search(mallory, "What")  # alice's "What is 2+2?" stays invisible
    assert hit.conversation_id == own.id
    assert store.export_data(mallory)["conversations"][0]["messages"] == []
    assert store.export_markdown(mallory).startswith("# What is")

    after = store.get_conversation(OWNER, conv.id)
    assert after.title == "What is 2+2?" and len(store.messages(OWNER, conv.id)) == 5
    for bad in ("", None, 7, "x" * 300):
        with pytest.raises(InvalidData, match="owner"):
            store.list_conversations(bad)


@pytest.mark.parametrize("damage_kind", ["cycle", "foreign parent"])
def test_a_damaged_parent_link_still_opens_exports_and_imports(tmp_path: Path, damage_kind: str):
    """A hand-edited file whose messages are each other's parents, or whose parent sits in another
    conversation, must not hang the thread or the export (a recursive walk would never end)."""
    db_path = tmp_path / "damaged.db"
    store = Store(db_path)
    other = store.create_conversation(OWNER)
    elsewhere = store.add_message(OWNER, other.id, "user", "in another conversation")
    conv = store.create_conversation(OWNER)
    first = store.add_message(OWNER, conv.id, "user", "first question")
    second = store.add_message(OWNER, conv.id, "assistant", "first answer")
    third = store.add_message(OWNER, conv.id, "user", "second question")
    store.close()
    conn = sqlite3.connect(db_path)
    parent = second.id if damage_kind == "cycle" else elsewhere.id
    conn.execute("UPDATE messages SET parent_id = ? WHERE id = ?", (parent, first.id))
    conn.commit()
    conn.close()

    store = Store(db_path)
    result: dict[str, object] = {}

    def work() -> None:
        result["thread"] = [m.id for m in store.thread(OWNER, conv.id)]
        result["json"] = store.export_json(OWNER, [conv.id])
        result["markdown"] = store.export_markdown(OWNER, [conv.id])

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "the thread or the export of a damaged conversation never returned"
    thread = result["thread"]
    assert thread[-1] == third.id and len(thread) == len(set(thread))
    if damage_kind == "foreign parent":
        assert thread == [first.id, second.id, third.id]
    else:  # the walk stops where it meets a message twice: every message once, the leaf last
        assert thread == [first.id, second.id, third.id][-len(thread):]
    assert "second question" in result["markdown"]
    imported = store.import_json(OWNER, result["json"])
    assert [m.content for m in store.messages(OWNER, imported[0].id)] == [
        "first question", "first answer", "second question"]
    store.close()


@pytest.mark.parametrize("stats, tokens, shown", [
    ('{"tokens_per_s": 1' + "0" * 400 + ', "mean_steps": -1' + "0" * 400 + "}", None, ["inf tokens/s", "mean -inf"]),
    ('{"tokens": 1' + "0" * 5000 + "}", '[{"text": "a", "ste', ["0 tokens"]),  # not JSON: past str()'s digits, cut off
    ('"fast"', '{"text": "not a list"}', ["0 tokens"]),  # JSON of the wrong types
], ids=["huge numbers", "not JSON", "wrong types"])
def test_a_hand_edited_record_still_exports_as_markdown(store: Store, db_path: Path, stats, tokens, shown):
    conv = store.create_conversation(OWNER, "edited")
    answer(store, conv.id)
    raw = sqlite3.connect(db_path)
    with raw:
        raw.execute("UPDATE messages SET stats = ?, tokens = COALESCE(?, tokens) WHERE conversation_id = ? "
                    "AND role = 'assistant'", [stats, tokens, conv.id])
    raw.close()
    text = store.export_markdown(OWNER, [conv.id])
    assert all(s in text for s in shown), text
    assert store.thread(OWNER, conv.id)[-1].content in text
