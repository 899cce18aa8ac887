"""Retention (``Store.delete_stale``): the conversations of owners idle past a cutoff are deleted, in short
transactions, on real SQLite files. An owner's idle time is set in SQL (``owner_bytes.touched``, unix seconds)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.store import InvalidData, NotFound, Store, connection, retention
from tests.test_store_quota import export, totals
from tests.test_store_traces import synthetic_trace

DAY = 86400.0


def idle_for(store: Store, owner: str, days: float) -> None:
    """Make ``owner``'s last change ``days`` ago."""
    store.file.write(lambda db: db.execute("UPDATE owner_bytes SET touched = ? WHERE owner = ?",
                                           [time.time() - days * DAY, owner]))  # fmt: skip


def chat(store: Store, owner: str, conversations: int, messages: int = 2) -> list[int]:
    ids = []
    for c in range(conversations):
        conv = store.create_conversation(owner, f"{owner} {c}")
        for i in range(messages):
            msg = store.add_message(owner, conv.id, "user" if i % 2 == 0 else "assistant", f"{owner}word {c} {i}")
        store.save_trace(owner, msg.id, synthetic_trace(tokens=3))
        ids.append(conv.id)
    return ids


def test_retention_deletes_exactly_the_conversations_of_owners_idle_too_long(tmp_path: Path):
    with Store(tmp_path / "s.db") as s:
        gone = {"left": chat(s, "left", 3), "long-left": chat(s, "long-left", 2)}
        kept = {"active": chat(s, "active", 2), "back": chat(s, "back", 2), "importer": []}
        s.import_json("importer", export(2, 3))  # exports keep their old times; importing is a change of its own
        idle_for(s, "left", 8)
        idle_for(s, "long-left", 30)
        idle_for(s, "back", 8)
        s.add_message("back", kept["back"][0], "user", "I am back")  # a change: all of theirs stay
        idle_for(s, "active", 6)  # within the week
        s.delete_conversation("active", kept["active"][1])  # taking away is not activity, but stays within the week
        before = {o: s.export_data(o)["conversations"] for o in kept}

        assert s.delete_stale(7 * DAY) == 5
        for owner, ids in gone.items():
            assert s.list_conversations(owner) == [] and s.search(owner, f"{owner}word") == []
            for cid in ids:
                with pytest.raises(NotFound):
                    s.get_conversation(owner, cid)
        assert {o: s.export_data(o)["conversations"] for o in kept} == before
        db = s.file.db()
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1 + 2 + 2
        assert db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id IN (%s)"
                          % ",".join(str(c) for ids in gone.values() for c in ids)).fetchone()[0] == 0
        # the running totals equal a recount, the server's total included; the idle owners' rows are gone
        assert totals(s)[0] == totals(s)[1]
        owners = {r[0] for r in db.execute("SELECT owner FROM owner_bytes WHERE owner NOT LIKE char(0) || '%'")}
        assert owners == {"active", "back", "importer"}
        for fts in ("conversations_fts", "messages_fts"):
            db.execute(f"INSERT INTO {fts} ({fts}, rank) VALUES ('integrity-check', 1)")
        assert s.integrity_check() == "ok"
        assert s.delete_stale(7 * DAY) == 0  # nothing more is stale
        with pytest.raises(InvalidData, match="idle_seconds must be a positive number"):
            s.delete_stale(0)


def test_the_least_recently_active_owner_goes_first(tmp_path: Path, monkeypatch):
    with Store(tmp_path / "s.db") as s:
        for owner, days in (("a", 9), ("b", 20), ("c", 12)):
            chat(s, owner, 2, messages=1)
            idle_for(s, owner, days)
        monkeypatch.setattr(retention, "BATCH", 2)  # one owner's conversations a round
        hidden: list[int] = []
        s.file.write(lambda db: retention.hide_stale_step(db, time.time() - 7 * DAY, hidden, time.monotonic() + 60))
        assert len(hidden) == 2 and s.list_conversations("b") == [] and len(s.list_conversations("c")) == 2
        assert s.delete_stale(7 * DAY) == 4 and totals(s)[0] == totals(s)[1]


def test_a_big_cleanup_runs_in_many_short_transactions(tmp_path: Path, monkeypatch):
    with Store(tmp_path / "s.db") as s:
        for i in range(3):
            s.import_json(f"gone-{i}", export(40, 2))
            idle_for(s, f"gone-{i}", 10)
        [mine] = s.import_json("visitor", export(1, 2))
        writes = []
        write = s.file.write

        def counted(fn):
            writes.append(1)
            if len(writes) == 60:  # a visitor's message gets its turn half-way through
                s.add_message("visitor", mine.id, "user", "mid-cleanup")
            return write(fn)

        monkeypatch.setattr(s.file, "write", counted)
        monkeypatch.setattr(connection, "STEP_SECONDS", 0.0)  # each step: one statement past its deadline
        monkeypatch.setattr(retention, "BATCH", 50)  # and three rounds of hiding, then deleting
        assert s.delete_stale(7 * DAY) == 120
        # each of the 120 conversations hidden in a step of its own, and each of their 2 messages deleted in one
        assert len(writes) >= 120 + 120 * 2, len(writes)
        assert s.file.db().execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3
        assert s.messages("visitor", mine.id)[-1].content == "mid-cleanup"
        assert totals(s)[0] == totals(s)[1] and s.integrity_check() == "ok"
