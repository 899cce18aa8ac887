"""Full-text search over titles and message text (FTS5 through sqlite-utils)."""

from __future__ import annotations

import dataclasses
from contextlib import closing

from sqlite_utils import Database

from .records import SearchHit


def clean_query(query: str) -> str:
    # FTS5 reads the query as a C string: a NUL would cut it inside a quoted word.
    return "".join(ch if ch.isprintable() else " " for ch in query)


def search(
    db: Database, owner: str, query: str, limit: int, highlight: tuple[str, str]
) -> list[SearchHit]:
    """One hit per conversation, best first; ``query`` has been through ``clean_query``."""
    fts_query = db.quote_fts(query)
    if not fts_query.strip():
        return []
    fts_query += "*"
    open_mark, close_mark = highlight
    title_rows = db.query(
        """
        SELECT c.id, c.title, c.updated, snippet(conversations_fts, 0, ?, ?, '…', 16) AS snippet
        FROM conversations_fts JOIN conversations c ON c.id = conversations_fts.rowid
        WHERE conversations_fts MATCH ? AND c.owner = ?
        ORDER BY conversations_fts.rank LIMIT ?
        """,
        [open_mark, close_mark, fts_query, owner, limit],
    )
    hits: dict[int, SearchHit] = {}
    for r in title_rows:
        hits[r["id"]] = SearchHit(r["id"], r["title"], r["updated"], None, r["snippet"])
    # FTS5 yields the rows best first (it sorts by rank itself); each conversation keeps its first (best) one, and
    # reading stops at the first conversation past `limit`. No LIMIT on messages: with one, a busy conversation's
    # hundreds of matches filled it and hid every other conversation. (A window query choosing the best row per
    # conversation measured 3-5x slower: it joins and sorts every match.) A snippet is made only for each
    # conversation's first row (CASE is lazy): making one for every row read was the cost of a prefix search such
    # as `t*` over long messages.
    seen: set[int] = set()

    def first(cid: int) -> bool:
        new = cid not in seen
        seen.add(cid)
        return new

    db.conn.create_function("huginn_first_of", 1, first)  # per connection and call: the set is this search's
    rows = db.execute(
        """
        SELECT m.id, m.conversation_id, c.title, c.updated,
               CASE WHEN huginn_first_of(m.conversation_id) THEN snippet(messages_fts, 0, ?, ?, '…', 16) END
        FROM messages_fts
        JOIN messages m ON m.id = messages_fts.rowid
        JOIN conversations c ON c.id = m.conversation_id
        WHERE messages_fts MATCH ? AND c.owner = ?
        ORDER BY messages_fts.rank
        """,
        [open_mark, close_mark, fts_query, owner],
    )
    with closing(rows):
        for message_id, cid, title, updated, snippet in rows:
            if cid in hits and hits[cid].message_id is not None:
                continue  # a better message of this conversation came first
            if cid not in hits and len(hits) >= limit:
                break
            # A title hit stays first but points at the best message.
            hits[cid] = SearchHit(cid, title, updated, message_id, snippet)
    # Should a query plan ever compute the columns before FTS5's order, make the missing snippets one by one.
    missing = [h.message_id for h in hits.values() if h.message_id is not None and h.snippet is None]
    if missing:
        made = dict(db.execute(
            f"SELECT rowid, snippet(messages_fts, 0, ?, ?, '…', 16) FROM messages_fts WHERE messages_fts MATCH ? "
            f"AND rowid IN ({', '.join('?' * len(missing))})", [open_mark, close_mark, fts_query, *missing]).fetchall())
        hits = {cid: dataclasses.replace(h, snippet=made.get(h.message_id, "")) if h.snippet is None else h
                for cid, h in hits.items()}
    return list(hits.values())
