"""Per-owner caps on what is stored (``RecordLimits.max_owner_conversations`` and ``max_owner_bytes``), checked in
the transaction that adds a conversation or a message, and before an import writes anything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from .records import RecordLimits, StoreFull

# Every text column a row's size is counted from (plus a message's trace), and a fixed cost per row for its ids, times,
# index entries and page overhead, so that no row is free: empty messages with long model ids, or empty
# conversations with long titles, count too.
_MESSAGE_COLUMNS = ("kind", "content", "error", "model_id", "model_revision", "quantization", "settings", "tokens",
                    "stats", "extra")
_CONVERSATION_COLUMNS = ("title", "extra")
ROW_OVERHEAD = 200


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


def stored_bytes(db: Database, owner: str) -> int:
    """The bytes of ``owner``'s conversations and messages (every text column as UTF-8, plus ``ROW_OVERHEAD`` per
    row) and of their compressed traces."""
    convs = db.execute(f"SELECT COALESCE(SUM({_sql_bytes('c', _CONVERSATION_COLUMNS)}), 0) FROM conversations c "
                       "WHERE c.owner = ?", [owner]).fetchone()[0]  # fmt: skip
    messages = db.execute(
        f"SELECT COALESCE(SUM({_sql_bytes('m', _MESSAGE_COLUMNS)}), 0) FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE c.owner = ?", [owner]).fetchone()[0]  # fmt: skip
    kept = db.execute(
        "SELECT COALESCE(SUM(length(t.data)), 0) FROM traces t JOIN messages m ON m.id = t.message_id "
        "JOIN conversations c ON c.id = m.conversation_id WHERE c.owner = ?", [owner]).fetchone()[0]  # fmt: skip
    return convs + messages + kept


def check_room(db: Database, owner: str, limits: RecordLimits, conversations: int = 0, new_bytes: int = 0) -> None:
    """``StoreFull`` when adding ``conversations`` conversations and ``new_bytes`` bytes would pass a cap."""
    cap = limits.max_owner_conversations
    if cap is not None and conversations:
        held = db.execute("SELECT COUNT(*) FROM conversations WHERE owner = ?", [owner]).fetchone()[0]
        if held + conversations > cap:
            adding = f"; this would add {conversations:,}" if conversations > 1 else ""
            raise StoreFull(f"this visitor's space holds at most {cap:,} conversations ({held:,} now{adding}); "
                            "delete some first")
    cap = limits.max_owner_bytes
    if cap is not None:
        used = stored_bytes(db, owner)
        if used + new_bytes > cap:
            raise StoreFull(f"this visitor's space holds at most {_mb(cap)} of conversations ({_mb(used)} used, "
                            f"this needs {_mb(new_bytes)} more); delete some first")


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e3:,.1f} kB"
