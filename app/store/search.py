"""Full-text search over titles and message text (FTS5 through sqlite-utils)."""

from __future__ import annotations

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
    # conversation measured 3-5x slower: it joins and sorts every match.) A snippet costs little while FTS5's
    # cursor stands on its row and much on its own (a prefix query is expanded again), so a second pass over the
    # same rows makes them for the chosen messages only.
    ranked = """
        FROM messages_fts
        JOIN messages m ON m.id = messages_fts.rowid
        JOIN conversations c ON c.id = m.conversation_id
        WHERE messages_fts MATCH ? AND c.owner = ?
        ORDER BY messages_fts.rank
    """
    best: dict[int, tuple[int, str, str]] = {}  # conversation -> its best message, title, updated
    needed = 0  # rows of the ranked order up to the last chosen one
    with closing(db.execute(f"SELECT m.id, m.conversation_id, c.title, c.updated {ranked}", [fts_query, owner])) as rows:
        for at, (message_id, cid, title, updated) in enumerate(rows, 1):
            if cid not in best:
                if cid not in hits and len(hits.keys() | best.keys()) >= limit:
                    break
                best[cid], needed = (message_id, title, updated), at
    chosen = [m for m, _, _ in best.values()]
    snippets = dict(db.execute(
        f"SELECT m.id, CASE WHEN m.id IN ({', '.join('?' * len(chosen))}) "
        f"THEN snippet(messages_fts, 0, ?, ?, '…', 16) END {ranked} LIMIT ?",
        [*chosen, open_mark, close_mark, fts_query, owner, needed],
    ).fetchall()) if chosen else {}
    for cid, (message_id, title, updated) in best.items():
        # A title hit stays first but points at the best message.
        hits[cid] = SearchHit(cid, title, updated, message_id, snippets.get(message_id) or "")
    return list(hits.values())
