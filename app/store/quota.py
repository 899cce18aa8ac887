"""Per-owner caps on what is stored (``RecordLimits.max_owner_conversations`` and ``max_owner_bytes``), checked in
the transaction that adds a conversation or a message, and before an import writes anything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from .records import RecordLimits, StoreFull

# The columns a message's size is counted from (plus its trace); ids and times are small and fixed.
_COUNTED = ("content", "error", "settings", "tokens", "stats", "extra")
_ROW_BYTES = " + ".join(f"COALESCE(length(CAST(m.{c} AS BLOB)), 0)" for c in _COUNTED)


def row_bytes(row: Mapping[str, Any]) -> int:
    """The bytes ``max_owner_bytes`` counts for a message row (``fields.message_row``) about to be written."""
    return sum(len(row[c].encode("utf-8")) for c in _COUNTED if isinstance(row.get(c), str))


def stored_bytes(db: Database, owner: str) -> int:
    """The bytes of ``owner``'s messages (text and JSON records, as UTF-8) and their compressed traces."""
    messages = db.execute(
        f"SELECT COALESCE(SUM({_ROW_BYTES}), 0) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.owner = ?", [owner]).fetchone()[0]  # fmt: skip
    kept = db.execute(
        "SELECT COALESCE(SUM(length(t.data)), 0) FROM traces t JOIN messages m ON m.id = t.message_id "
        "JOIN conversations c ON c.id = m.conversation_id WHERE c.owner = ?", [owner]).fetchone()[0]  # fmt: skip
    return messages + kept


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
