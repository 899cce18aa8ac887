"""Messages and the tree they form: insert, read, thread, children, siblings, the current leaf.

Each function runs inside a transaction the caller opened (``StoreFile.read``/``write``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlite_utils import Database

from .checks import auto_title, load_json
from .conversations import conversation_row
from .records import LEAF, InvalidData, Message, NotFound, now_iso

_MESSAGE_JSON_FIELDS = ("settings", "tokens", "stats", "extra")


def message_from_row(row: Mapping[str, Any]) -> Message:
    values = {f.name: row[f.name] for f in fields(Message)}
    for name in _MESSAGE_JSON_FIELDS:
        values[name] = load_json(values[name])
    return Message(**values)


def message_rows(db: Database, owner: str, where: str, args: Sequence[Any]) -> list[Message]:
    """``owner``'s messages matching ``where`` (on alias ``m``), oldest first."""
    sql = (
        "SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        f"WHERE c.owner = ? AND ({where}) ORDER BY m.created, m.id"
    )
    return [message_from_row(r) for r in db.query(sql, [owner, *args])]


def get(db: Database, owner: str, message_id: int) -> Message:
    rows = message_rows(db, owner, "m.id = ?", [message_id])
    if not rows:
        raise NotFound(f"message {message_id} not found")
    return rows[0]


def insert(
    db: Database,
    owner: str,
    conversation_id: int,
    parent_id: int | None | str,
    row: dict[str, Any],
) -> Message:
    """Add a checked row (``checks.message_row``) and make it the conversation's current leaf."""
    conv = conversation_row(db, owner, conversation_id)
    if parent_id == LEAF:
        parent_id = conv["current_leaf"]
    elif parent_id is not None:
        parent = get(db, owner, parent_id)
        if parent.conversation_id != conversation_id:
            raise InvalidData(
                f"message {parent_id} belongs to another conversation than {conversation_id}"
            )
    now = now_iso()
    table = db["messages"]
    table.insert(
        {"conversation_id": conversation_id, "parent_id": parent_id, "created": now, "updated": now, **row}
    )
    message_id = table.last_rowid
    conv_update: dict[str, Any] = {"current_leaf": message_id, "updated": now}
    if conv["auto_title"] and row["role"] == "user":
        taken = [r["title"] for r in db.query(
            "SELECT title FROM conversations WHERE owner = ? AND id != ?", [owner, conversation_id])]
        title = auto_title(row["content"], taken)
        if title:
            conv_update.update(title=title, auto_title=0)
    db["conversations"].update(conversation_id, conv_update)
    return get(db, owner, message_id)


def all_of(db: Database, owner: str, conversation_id: int) -> list[Message]:
    conversation_row(db, owner, conversation_id)
    return message_rows(db, owner, "m.conversation_id = ?", [conversation_id])


def thread(db: Database, owner: str, conversation_id: int, leaf_id: int | None) -> list[Message]:
    conv = conversation_row(db, owner, conversation_id)
    leaf = leaf_id if leaf_id is not None else conv["current_leaf"]
    if leaf is None:
        return []
    # A damaged file (edited by hand, a bad restore) may hold a parent cycle or a parent in another
    # conversation: the walk stays in this conversation and is no longer than its message count, and
    # the branch ends at the first message met twice, so the conversation still opens.
    size = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", [conversation_id]).fetchone()[0]
    rows = db.query(
        """
        WITH RECURSIVE chain(id, depth) AS (
            SELECT id, 0 FROM messages WHERE id = ? AND conversation_id = ?
            UNION ALL
            SELECT m.parent_id, chain.depth + 1 FROM messages m JOIN chain ON m.id = chain.id
            WHERE m.parent_id IS NOT NULL AND m.conversation_id = ? AND chain.depth < ?
        )
        SELECT messages.* FROM chain JOIN messages ON messages.id = chain.id AND messages.conversation_id = ?
        ORDER BY chain.depth
        """,
        [leaf, conversation_id, conversation_id, size, conversation_id],
    )
    result: list[Message] = []
    seen: set[int] = set()
    for m in map(message_from_row, rows):
        if m.id in seen:
            break
        seen.add(m.id)
        result.append(m)
    if not result:
        raise NotFound(f"message {leaf} not found in conversation {conversation_id}")
    return result[::-1]


def children(db: Database, owner: str, message_id: int) -> list[Message]:
    get(db, owner, message_id)
    return message_rows(db, owner, "m.parent_id = ?", [message_id])


def siblings(db: Database, owner: str, message_id: int) -> list[Message]:
    msg = get(db, owner, message_id)
    return message_rows(
        db, owner, "m.conversation_id = ? AND m.parent_id IS ?", [msg.conversation_id, msg.parent_id]
    )


def sibling_ids(db: Database, owner: str, conversation_id: int) -> dict[int | None, list[int]]:
    conversation_row(db, owner, conversation_id)
    out: dict[int | None, list[int]] = {}
    for row in db.execute(
        "SELECT id, parent_id FROM messages WHERE conversation_id = ? ORDER BY created, id",
        [conversation_id],
    ):
        out.setdefault(row[1], []).append(row[0])
    return out


def set_current_leaf(
    db: Database, owner: str, conversation_id: int, message_id: int, descend: bool
) -> Message:
    conversation_row(db, owner, conversation_id)
    leaf = get(db, owner, message_id)
    if leaf.conversation_id != conversation_id:
        raise NotFound(f"message {message_id} not found in conversation {conversation_id}")
    while descend:
        kids = message_rows(db, owner, "m.parent_id = ?", [leaf.id])
        if not kids:
            break
        leaf = kids[-1]
    db["conversations"].update(conversation_id, {"current_leaf": leaf.id})
    return leaf
