"""Schema 4 (ids never given twice) and the migration of a file of schema 3, against real SQLite files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from app.store import SCHEMA_VERSION, Store, StoreBusy, StoreLocationError, schema, traces
from app.store import quota

OWNER, OTHER = "alice", "bob"
T0 = "2026-01-01T00:00:00.000000+00:00"
TOKENS = [{"text": "Four", "steps": 12, "exit_value": 3.5e-4}, {"text": ".", "steps": 4, "exit_value": None}]
TRACE = {"version": 1, "top_k": 1, "cut": False, "texts": {"7": "x"},
         "tokens": [{"index": 0, "token_id": 7, "exit_step": 1, "top": [[7]], "probs": [[1.0]], "kl": [0.0],
                     "entropy": [0.0], "latent_change": [0.0]}]}  # fmt: skip
# Every table whose rows the migration must keep, read in rowid order.
TABLES = ("conversations", "messages", "traces", "conversations_fts", "messages_fts")


def schema_3_file(path: Path) -> None:
    """A file as schema 3 made it: the same migrations (they are never edited), then rows as that version wrote them:
    two owners, a tree with a sibling branch, JSON records, a trace, a partial answer, and a deleted newest
    conversation (so SQLite would give its id again)."""
    db = Database(path)
    for migrate in schema.MIGRATIONS[:3]:
        migrate(db)
    db.execute("PRAGMA user_version = 3")
    db.enable_wal()
    rows = [  # (id, owner, title, auto_title, messages: (id, parent, role, content, status))
        (1, OWNER, "arithmetic", 0, [(1, None, "user", "What is 2+2? oldword", "complete"),
                                     (2, 1, "assistant", "Four.", "complete"), (3, 1, "assistant", "4", "complete")]),
        (2, OTHER, "his", 0, [(4, None, "user", "private words", "complete")]),
        (3, OWNER, "streaming", 1, [(5, None, "user", "tell me", "complete"),
                                    (6, 5, "assistant", "Once upon", "partial")]),
        (4, OWNER, "deleted", 0, [(7, None, "user", "gone", "complete")]),
    ]  # fmt: skip
    for cid, owner, title, auto, messages in rows:
        db.execute("INSERT INTO conversations (id, owner, title, auto_title, created, updated, extra) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", [cid, owner, title, auto, T0, T0, json.dumps({"system": "s"})])
        for mid, parent, role, content, status in messages:
            answer = role == "assistant"
            db.execute(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, created, updated, status, "
                "model_id, settings, tokens, stats, writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [mid, cid, parent, role, content, T0, T0, status, "huginn" if answer else None,
                 json.dumps({"num_steps": 32}) if answer else None, json.dumps(TOKENS) if answer else None,
                 json.dumps({"tokens": 2}) if answer else None, "elsewhere 1 1.0" if status == "partial" else None],
            )  # fmt: skip
        db.execute("UPDATE conversations SET current_leaf = ? WHERE id = ?", [messages[-1][0], cid])
    db.execute("INSERT INTO traces (message_id, data) VALUES (2, ?)", [traces.encode(TRACE)])
    db.execute("DELETE FROM messages WHERE conversation_id = 4")
    db.execute("DELETE FROM conversations WHERE id = 4")
    db.conn.commit()
    db.conn.close()


def snapshot(path: Path) -> dict:
    """Every row of every kept table, every index and trigger, and every table's foreign keys."""
    with sqlite3.connect(path) as conn:
        out = {t: conn.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}
        out["schema"] = set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                         "WHERE type IN ('index', 'trigger')").fetchall())  # fmt: skip
        out["keys"] = {t: conn.execute(f"PRAGMA foreign_key_list({t})").fetchall() for t in TABLES[:3]}
        out["tables"] = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
        out["version"] = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    return out


def test_a_schema_3_file_is_migrated_keeping_everything_and_ids_are_never_given_twice(tmp_path: Path):
    path = tmp_path / "old.db"
    schema_3_file(path)
    before = snapshot(path)
    with Store(path) as s:
        db = s.file.db()
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert s.interrupted == 1  # the partial answer of a process long gone
        after = snapshot(path)
        for table in ("conversations", "traces", "conversations_fts", "messages_fts"):
            assert after[table] == before[table], table
        # the one change: the partial answer is now interrupted (as at any open); every other column as it was
        changed = [(a, b) for a, b in zip(before["messages"], after["messages"]) if a != b]
        assert len(after["messages"]) == len(before["messages"]) == 6
        assert [(a[0], a[9], b[9]) for a, b in changed] == [(6, "partial", "interrupted")]
        assert before["schema"] <= after["schema"]  # every index and search trigger, word for word
        assert after["keys"] == before["keys"]
        bodies = [{name: sql[sql.index("(") :] for name, sql in snap["tables"]} for snap in (before, after)]
        assert set(bodies[1]) - set(bodies[0]) == {"owner_bytes", "sqlite_sequence"}
        for name, body in bodies[0].items():  # every column and constraint as it was, the ids AUTOINCREMENT
            new_body = bodies[1][name].replace("id INTEGER PRIMARY KEY AUTOINCREMENT,", "id INTEGER PRIMARY KEY,")
            assert new_body == body and (new_body != bodies[1][name]) == (name in ("conversations", "messages"))
        for fts in ("conversations_fts", "messages_fts"):
            db.execute(f"INSERT INTO {fts} ({fts}, rank) VALUES ('integrity-check', 1)")  # index == its rows
        assert db.execute("PRAGMA foreign_key_check").fetchall() == [] and s.integrity_check() == "ok"

        assert [m.content for m in s.thread(OWNER, 1)] == ["What is 2+2? oldword", "4"]
        assert [m.id for m in s.siblings(OWNER, 2)] == [2, 3] and s.trace(OWNER, 2) == TRACE
        assert s.messages(OWNER, 1)[1].tokens == TOKENS and s.get_conversation(OWNER, 1).extra == {"system": "s"}
        assert [(h.conversation_id, h.message_id) for h in s.search(OWNER, "oldword")] == [(1, 1)]
        assert [h.conversation_id for h in s.search(OWNER, "arithm")] == [1]
        assert s.search(OWNER, "private") == [] and [h.message_id for h in s.search(OTHER, "private")] == [4]
        assert {o: quota.used_bytes(db, o) for o in (OWNER, OTHER)} == \
            {o: quota.stored_bytes(db, o) for o in (OWNER, OTHER)}  # fmt: skip

        # The newest conversation and message deleted, then new ones: fresh ids, never the deleted ones. (The ids of
        # rows deleted before the migration, 4 and 7 here, are not known to it: they are given once more.)
        newest = s.create_conversation(OWNER, "newest")
        doomed = s.add_message(OWNER, newest.id, "user", "soon gone")
        s.delete_conversation(OWNER, newest.id)
        fresh = s.create_conversation(OTHER, "a visitor's new one")
        reply = s.add_message(OTHER, fresh.id, "user", "mine")
        assert (newest.id, fresh.id) == (4, 5) and (doomed.id, reply.id) == (7, 8)
        assert [h.message_id for h in s.search(OTHER, "mine")] == [reply.id] and s.search(OWNER, "soon") == []
    with Store(path) as s:  # and after reopening
        assert s.create_conversation(OWNER, "later").id == 6


def test_a_fresh_file_never_gives_an_id_twice(tmp_path: Path):
    with Store(tmp_path / "new.db") as s:
        first = s.create_conversation(OWNER, "first")
        m1 = s.add_message(OWNER, first.id, "user", "hello")
        m2 = s.add_message(OWNER, first.id, "user", "newest message")
        s.delete_conversation(OWNER, first.id)
        again = s.create_conversation(OWNER, "again")
        assert again.id > first.id and s.add_message(OWNER, again.id, "user", "x").id > m2.id > m1.id


def test_a_migration_that_cannot_finish_leaves_the_old_file_as_it_was(tmp_path: Path, monkeypatch):
    path = tmp_path / "old.db"
    schema_3_file(path)
    before = snapshot(path)
    # Another program holds the write lock: the open waits, then says so; nothing was changed.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="stayed locked by another program for 0.3 s"):
            Store(path, lock_timeout=0.3, busy_timeout=0.01)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert snapshot(path) == before

    # The disk fails half-way (the conversations are rebuilt, the messages not yet): all of it is rolled back.
    rebuild = schema._rebuild

    def failing(db, table, *args):
        if table == "messages":
            raise sqlite3.OperationalError("disk I/O error")
        rebuild(db, table, *args)

    monkeypatch.setattr(schema, "_rebuild", failing)
    with pytest.raises(StoreLocationError, match="Cannot write the conversation database: disk I/O error"):
        Store(path)
    assert snapshot(path) == before
    monkeypatch.undo()
    with Store(path) as s:  # and it migrates once the disk works again
        assert [c.title for c in s.list_conversations(OWNER)] == ["streaming", "arithmetic"]


def test_links_a_file_already_had_broken_do_not_lock_its_owner_out(tmp_path: Path):
    """Another tool that deletes with foreign keys off (the sqlite3 shell's default) leaves a dangling current leaf;
    the version that wrote the file opened it, and so does this one after the migration."""
    path = tmp_path / "c.db"
    schema_3_file(path)
    with sqlite3.connect(path) as conn:  # foreign keys off, as in the sqlite3 shell
        conn.execute("DELETE FROM messages WHERE id = 6")  # conversation 3's current leaf
    conn.close()
    store = Store(path)
    assert {c.title for c in store.list_conversations(OWNER)} == {"streaming", "arithmetic"}
    assert [m.content for m in store.messages(OWNER, 1)] == ["What is 2+2? oldword", "Four.", "4"]
    assert [m.content for m in store.messages(OWNER, 3)] == ["tell me"]


def test_a_table_whose_ids_reach_the_end_of_the_range_keeps_giving_ids(tmp_path: Path):
    """AUTOINCREMENT cannot go past 2**63 - 1 (SQLite reports the file full); such a table (a hand edit) is left
    as it was, so new rows still get a free id."""
    path = tmp_path / "c.db"
    schema_3_file(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE conversations SET id = ? WHERE id = 2", [2**63 - 1])
        conn.execute("UPDATE messages SET conversation_id = ? WHERE conversation_id = 2", [2**63 - 1])
    conn.close()
    store = Store(path)
    ids = {store.create_conversation(OTHER).id for _ in range(3)}
    assert len(ids) == 3 and not ids & {1, 3, 2**63 - 1}
    assert {m.content for m in store.messages(OTHER, 2**63 - 1)} == {"private words"}
