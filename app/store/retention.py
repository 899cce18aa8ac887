"""Retention: deleting the conversations of owners who changed nothing for a while (a hosted server's visitors who
left), least recently active owner first, in short transactions."""

from __future__ import annotations

import time

from sqlite_utils import Database

from .records import HIDDEN_OWNER, TOTAL_OWNER

BATCH = 256  # conversations hidden, then deleted, per round: the delete step walks its whole list each transaction


def hide_stale_step(db: Database, cutoff: float, hidden: list[int], deadline: float) -> bool:
    """Hide the conversations of owners whose last change (``owner_bytes.touched``, unix time) is before ``cutoff``,
    one per statement, until ``deadline`` or ``BATCH`` are in ``hidden``; True when the round is over.

    Hiding takes from an owner and so does not touch them (``quota.py``): a stale owner stays stale from one step to
    the next, while one who writes anything in between is no longer picked. An owner left with nothing loses its
    row, so the table does not keep every visitor there ever was."""
    while len(hidden) < BATCH:
        row = db.execute("SELECT owner FROM owner_bytes WHERE touched < ? AND owner NOT IN (?, ?) ORDER BY touched "
                         "LIMIT 1", [cutoff, TOTAL_OWNER, HIDDEN_OWNER]).fetchone()  # fmt: skip
        if row is None:
            return True
        ids = db.execute("SELECT id FROM conversations WHERE owner = ? ORDER BY updated, id LIMIT ?",
                         [row[0], BATCH - len(hidden)]).fetchall()  # fmt: skip
        if not ids:
            db.execute("DELETE FROM owner_bytes WHERE owner = ? AND conversations = 0", [row[0]])
            continue
        for (cid,) in ids:
            db.execute("UPDATE conversations SET owner = ?, current_leaf = NULL WHERE id = ?", [HIDDEN_OWNER, cid])
            hidden.append(cid)
            if time.monotonic() > deadline:
                return False
    return True
