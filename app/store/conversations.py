"""Conversation rows: create, read, list, rename, delete. Each function runs inside a transaction."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from .checks import load_json
from .records import DEFAULT_TITLE, HIDDEN_OWNER, Conversation, NotFound, now_iso


def conversation_from_row(row: Mapping[str, Any]) -> Conversation:
    return Conversation(
        id=row["id"],
        owner=row["owner"],
        title=row["title"],
        created=row["created"],
        updated=row["updated"],
        current_leaf=row["current_leaf"],
        extra=load_json(row["extra"]),
    )


def conversation_row(db: Database, owner: str, conversation_id: int) -> dict[str, Any]:
    """The raw row of one of ``owner``'s conversations; ``NotFound`` for anyone else's."""
    rows = list(
        db["conversations"].rows_where("id = ? AND owner = ?", [conversation_id, owner], limit=1)
    )
    if not rows:
        raise NotFound(f"conversation {conversation_id} not found")
    return rows[0]


def get(db: Database, owner: str, conversation_id: int) -> Conversation:
    return conversation_from_row(conversation_row(db, owner, conversation_id))


def create(db: Database, owner: str, title: str | None, extra_json: str | None) -> Conversation:
    now = now_iso()
    table = db["conversations"]
    table.insert(
        {
            "owner": owner,
            "title": title if title is not None else DEFAULT_TITLE,
            "auto_title": int(title is None),
            "created": now,
            "updated": now,
            "current_leaf": None,
            "extra": extra_json,
        }
    )
    return get(db, owner, table.last_rowid)


def listing(db: Database, owner: str, limit: int | None, offset: int) -> list[Conversation]:
    rows = db["conversations"].rows_where(
        "owner = ?",
        [owner],
        order_by="updated DESC, id DESC",
        limit=limit if limit is not None else -1,
        offset=offset,
    )
    return [conversation_from_row(r) for r in rows]


def rename(db: Database, owner: str, conversation_id: int, title: str) -> Conversation:
    conversation_row(db, owner, conversation_id)
    db["conversations"].update(conversation_id, {"title": title, "auto_title": 0, "updated": now_iso()})
    return get(db, owner, conversation_id)


def hide(db: Database, owner: str, conversation_id: int) -> None:
    """Take a conversation from its owner at once; ``delete_step`` then removes it in short steps."""
    conversation_row(db, owner, conversation_id)
    db.execute(
        "UPDATE conversations SET owner = ?, current_leaf = NULL WHERE id = ?", [HIDDEN_OWNER, conversation_id]
    )


def delete_step(db: Database, conversation_ids: list[int], deadline: float) -> bool:
    """Delete hidden conversations and their messages until ``deadline``; True once all are gone.

    No recursive triggers: deleting a parent cascades to its children, one trigger level per
    generation, and SQLite stops at 1,000 levels (about 500 chat turns). Children go first, one row
    per statement, so every cascade is empty: a message's id is always higher than its parent's.
    """
    for cid in conversation_ids:
        while True:
            ids = db.execute(
                "SELECT id FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT 256", [cid]
            ).fetchall()
            if not ids:
                db.execute("DELETE FROM conversations WHERE id = ? AND owner = ?", [cid, HIDDEN_OWNER])
                break
            for (mid,) in ids:
                db.execute("DELETE FROM messages WHERE id = ?", [mid])
                if time.monotonic() > deadline:
                    return False
    return True


def hidden_ids(db: Database) -> list[int]:
    return [r[0] for r in db.execute("SELECT id FROM conversations WHERE owner = ?", [HIDDEN_OWNER])]
