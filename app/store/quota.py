"""Caps on what is stored, per owner (``RecordLimits.max_owner_conversations`` and ``max_owner_bytes``) and for the
whole server (``max_server_conversations`` and ``max_server_bytes``), checked in the transaction that adds a
conversation or a message, and before an import writes anything; and the running totals they read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from .records import HIDDEN_OWNER, TOTAL_OWNER, RecordLimits, ServerFull, StoreFull

# Every text column a row's size is counted from (plus a message's trace), and a fixed cost per row for its ids, times,
# index entries and page overhead, so that no row is free: empty messages with long model ids, or empty
# conversations with long titles, count too.
_MESSAGE_COLUMNS = ("kind", "content", "error", "model_id", "model_revision", "quantization", "settings", "tokens",
                    "stats", "extra")
_CONVERSATION_COLUMNS = ("title", "extra")
ROW_OVERHEAD = 200
# SQLite's clock as ``time.time()`` gives it (unix seconds), for ``owner_bytes.touched``.
SQL_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _sql_bytes(alias: str, columns: tuple[str, ...]) -> str:
    return " + ".join([str(ROW_OVERHEAD)] + [f"COALESCE(length(CAST({alias}.{c} AS BLOB)), 0)" for c in columns])


def _bytes(row: Mapping[str, Any], columns: tuple[str, ...]) -> int:
    return ROW_OVERHEAD + sum(len(row[c].encode("utf-8")) for c in columns if isinstance(row.get(c), str))


def row_bytes(row: Mapping[str, Any]) -> int:
    """The bytes ``max_owner_bytes`` counts for a message row (``fields.message_row``) about to be written."""
    return _bytes(row, _MESSAGE_COLUMNS)


def conversation_bytes(title: str | None, extra_json: str | None) -> int:
    """The bytes ``max_owner_bytes`` counts for a conversation row about to be written."""
    return _bytes({"title": title, "extra": extra_json}, _CONVERSATION_COLUMNS)


def _recount(where: str) -> str:
    """Each owner's bytes summed from the rows: conversations, their messages and the messages' traces."""
    return f"""
        SELECT owner, SUM(size) AS size FROM (
            SELECT c.owner, {_sql_bytes('c', _CONVERSATION_COLUMNS)} AS size FROM conversations c WHERE {where}
            UNION ALL
            SELECT c.owner, {_sql_bytes('m', _MESSAGE_COLUMNS)} FROM messages m
                JOIN conversations c ON c.id = m.conversation_id WHERE {where}
            UNION ALL
            SELECT c.owner, length(t.data) FROM traces t JOIN messages m ON m.id = t.message_id
                JOIN conversations c ON c.id = m.conversation_id WHERE {where}
        ) GROUP BY owner"""


def stored_bytes(db: Database, owner: str) -> int:
    """The bytes of ``owner``'s conversations and messages (every text column as UTF-8, plus ``ROW_OVERHEAD`` per
    row) and of their compressed traces, summed from the rows (what ``owner_bytes`` keeps as a running total)."""
    row = db.execute(_recount("c.owner = ?"), [owner] * 3).fetchone()
    return row[1] if row else 0


def used_bytes(db: Database, owner: str) -> int:
    """``stored_bytes`` read from the running total in ``owner_bytes``: one row, however much the owner holds."""
    row = db.execute("SELECT bytes FROM owner_bytes WHERE owner = ?", [owner]).fetchone()
    return row[0] if row else 0


def server_totals(db: Database) -> tuple[int, int]:
    """(conversations, bytes) of every owner together, hidden rows (imports and deletes under way) left out: the
    ``TOTAL_OWNER`` row of ``owner_bytes``, one row however many owners there are."""
    row = db.execute("SELECT conversations, bytes FROM owner_bytes WHERE owner = ?", [TOTAL_OWNER]).fetchone()
    return (row[0], row[1]) if row else (0, 0)


# The triggers that keep ``owner_bytes`` equal to the recount in every transaction that changes a counted row. A
# delete subtracts before the row goes (BEFORE DELETE), with everything under it: SQLite deletes a row before
# cascading to its children, so a cascaded child no longer finds its owner and subtracts nothing a second time.
# Whatever adds to an owner's row marks it ``touched`` (the owner's last change, which retention reads); taking
# away does not, so hiding a stale owner's conversations one step at a time leaves the owner stale until it is done.
_CONV_INNER = ("((SELECT COALESCE(SUM({m}), 0) FROM messages m WHERE m.conversation_id = {{0}}.id)"
               " + (SELECT COALESCE(SUM(length(t.data)), 0) FROM traces t JOIN messages m ON m.id = t.message_id"
               " WHERE m.conversation_id = {{0}}.id))").format(m=_sql_bytes("m", _MESSAGE_COLUMNS))  # fmt: skip
_TRACE_OF = "COALESCE((SELECT length(data) FROM traces WHERE message_id = {0}.id), 0)"
_OWNER_OF_CONVERSATION = "(SELECT owner FROM conversations WHERE id = {0}.conversation_id)"
_OWNER_OF_MESSAGE = ("(SELECT c.owner FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                     "WHERE m.id = {0}.message_id)")  # fmt: skip


def _add(owner: str, amount: str) -> str:
    return f"UPDATE owner_bytes SET bytes = bytes + ({amount}), touched = {SQL_NOW} WHERE owner = {owner};"


def _take(owner: str, amount: str, conversations: str = "0") -> str:
    return (f"UPDATE owner_bytes SET bytes = bytes - ({amount}), conversations = conversations - ({conversations}) "
            f"WHERE owner = {owner};")


def _add_conversation(alias: str, moved: str, conversations: str) -> str:
    # A conversation's owner may have no row yet; a message's or trace's always has (its conversation made it).
    return (f"INSERT INTO owner_bytes (owner, bytes, conversations, touched) VALUES ({alias}.owner, "
            f"{_sql_bytes(alias, _CONVERSATION_COLUMNS)} + {moved}, {conversations}, {SQL_NOW}) ON CONFLICT (owner) "
            "DO UPDATE SET bytes = bytes + excluded.bytes, conversations = conversations + excluded.conversations, "
            "touched = excluded.touched;")


def _nul_key(key: str) -> str:
    """An owner key that starts with NUL as an SQL expression (SQL text may hold no NUL)."""
    assert key[0] == "\x00" and key[1:].isalnum()
    return f"(char(0) || '{key[1:]}')"


# The server's total follows the owners' rows, whatever changed them; hidden rows are not anyone's yet (or any more).
_COUNTED = f"NOT IN ({_nul_key(TOTAL_OWNER)}, {_nul_key(HIDDEN_OWNER)})"
_TOTAL = f"UPDATE owner_bytes SET bytes = bytes + ({{0}}), conversations = conversations + ({{1}}) " \
         f"WHERE owner = {_nul_key(TOTAL_OWNER)};"  # fmt: skip


def _triggers() -> dict[str, tuple[str, str]]:
    """Trigger name -> (when it fires, what it does)."""
    conv = {a: _sql_bytes(a, _CONVERSATION_COLUMNS) for a in ("old", "new")}
    msg = {a: f"{_sql_bytes(a, _MESSAGE_COLUMNS)} + {_TRACE_OF.format(a)}" for a in ("old", "new")}
    moved = "CASE WHEN old.owner IS new.owner THEN 0 ELSE {0} END"  # CASE is lazy: a rename sums nothing
    changed = moved.format(1)
    return {
        "conversation_insert": ("AFTER INSERT ON conversations", _add_conversation("new", "0", "1")),
        "conversation_update": (
            "AFTER UPDATE OF owner, title, extra ON conversations",
            _take("old.owner", f"{conv['old']} + {moved.format(_CONV_INNER.format('old'))}", changed)
            + _add_conversation("new", moved.format(_CONV_INNER.format("new")), changed),
        ),
        "conversation_delete": ("BEFORE DELETE ON conversations",
                                _take("old.owner", f"{conv['old']} + {_CONV_INNER.format('old')}", "1")),
        "message_insert": ("AFTER INSERT ON messages",
                           _add(_OWNER_OF_CONVERSATION.format("new"), _sql_bytes("new", _MESSAGE_COLUMNS))),
        "message_update": (
            f"AFTER UPDATE OF {', '.join(('conversation_id',) + _MESSAGE_COLUMNS)} ON messages",
            _take(_OWNER_OF_CONVERSATION.format("old"), msg["old"])
            + _add(_OWNER_OF_CONVERSATION.format("new"), msg["new"]),
        ),
        "message_delete": ("BEFORE DELETE ON messages", _take(_OWNER_OF_CONVERSATION.format("old"), msg["old"])),
        "trace_insert": ("AFTER INSERT ON traces", _add(_OWNER_OF_MESSAGE.format("new"), "length(new.data)")),
        "trace_update": ("AFTER UPDATE ON traces", _take(_OWNER_OF_MESSAGE.format("old"), "length(old.data)")
                         + _add(_OWNER_OF_MESSAGE.format("new"), "length(new.data)")),
        "trace_delete": ("AFTER DELETE ON traces", _take(_OWNER_OF_MESSAGE.format("old"), "length(old.data)")),
        "total_insert": (f"AFTER INSERT ON owner_bytes WHEN new.owner {_COUNTED}",
                         _TOTAL.format("new.bytes", "new.conversations")),
        "total_update": (f"AFTER UPDATE OF bytes, conversations ON owner_bytes WHEN new.owner {_COUNTED}",
                         _TOTAL.format("new.bytes - old.bytes", "new.conversations - old.conversations")),
        "total_delete": (f"AFTER DELETE ON owner_bytes WHEN old.owner {_COUNTED}",
                         _TOTAL.format("-old.bytes", "-old.conversations")),
    }  # fmt: skip


def keep_running_totals(db: Database) -> None:
    """Make ``owner_bytes`` (owner -> ``stored_bytes``, conversations, last change; and the ``TOTAL_OWNER`` row of
    everyone's) and its triggers, filled from the rows. A migration calls it; a later change to what is counted
    appends a migration that calls it again (it makes the table and the triggers anew). Every owner's last change
    is set to now: nothing that was there before counts as stale at once."""
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'owner_bytes_%'"
                              ).fetchall():  # fmt: skip
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE IF EXISTS owner_bytes")
    db.execute("CREATE TABLE owner_bytes (owner TEXT PRIMARY KEY NOT NULL, bytes INTEGER NOT NULL, "
               "conversations INTEGER NOT NULL DEFAULT 0, touched REAL NOT NULL)")
    db.execute("CREATE INDEX owner_bytes_touched ON owner_bytes(touched)")  # retention reads the stalest first
    db.execute("INSERT INTO owner_bytes (owner, bytes, conversations, touched) VALUES (?, 0, 0, 0)", [TOTAL_OWNER])
    for name, (event, body) in _triggers().items():
        db.execute(f"CREATE TRIGGER owner_bytes_{name} {event} BEGIN {body} END")
    db.execute(f"INSERT INTO owner_bytes (owner, bytes, conversations, touched) SELECT owner, size, "
               f"(SELECT COUNT(*) FROM conversations c WHERE c.owner = r.owner), {SQL_NOW} "
               f"FROM ({_recount('1')}) AS r")


def check_room(db: Database, owner: str, limits: RecordLimits, conversations: int = 0, new_bytes: int = 0) -> None:
    """``StoreFull`` when adding ``conversations`` conversations and ``new_bytes`` bytes would pass a cap: the owner's
    first (their own to free), then the server's."""
    cap = limits.max_owner_conversations
    if cap is not None and conversations:
        held = db.execute("SELECT COUNT(*) FROM conversations WHERE owner = ?", [owner]).fetchone()[0]
        if held + conversations > cap:
            adding = f"; this would add {conversations:,}" if conversations > 1 else ""
            raise StoreFull(f"this visitor's space holds at most {cap:,} conversations ({held:,} now{adding}); "
                            "delete some first")
    cap = limits.max_owner_bytes
    if cap is not None:
        used = used_bytes(db, owner)
        if used + new_bytes > cap:  # before refusing, the rows themselves: a total that drifted must not lock one out
            used = stored_bytes(db, owner)
        if used + new_bytes > cap:
            raise StoreFull(f"this visitor's space holds at most {_mb(cap)} of conversations ({_mb(used)} used, "
                            f"this needs {_mb(new_bytes)} more); delete some first")
    if limits.max_server_conversations is None and limits.max_server_bytes is None:
        return
    held, used = server_totals(db)
    cap = limits.max_server_conversations
    if cap is not None and conversations and held + conversations > cap:
        raise ServerFull(f"all visitors together hold the {cap:,} conversations it keeps")
    cap = limits.max_server_bytes
    if cap is not None and used + new_bytes > cap:
        raise ServerFull(f"all visitors together hold {_mb(used)} of the {_mb(cap)} it keeps; this needs "
                         f"{_mb(new_bytes)} more")


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e3:,.1f} kB"
