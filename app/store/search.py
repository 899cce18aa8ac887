"""Full-text search over titles and message text (FTS5 through sqlite-utils)."""

from __future__ import annotations

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
    # The best message per conversation, chosen in SQL before the limit: one busy conversation with hundreds of
    # matches must not crowd out the others. Snippets are made for those winners only.
    message_rows = db.query(
        """
        WITH ranked AS (
            SELECT messages_fts.rowid AS id, messages_fts.rank AS rank,
                   ROW_NUMBER() OVER (PARTITION BY m.conversation_id ORDER BY messages_fts.rank) AS n
            FROM messages_fts
            JOIN messages m ON m.id = messages_fts.rowid
            JOIN conversations c ON c.id = m.conversation_id
            WHERE messages_fts MATCH ? AND c.owner = ?
        ), best AS (SELECT id, rank FROM ranked WHERE n = 1 ORDER BY rank LIMIT ?)
        SELECT m.id, m.conversation_id, c.title, c.updated,
               snippet(messages_fts, 0, ?, ?, '…', 16) AS snippet
        FROM best
        JOIN messages_fts ON messages_fts.rowid = best.id
        JOIN messages m ON m.id = best.id
        JOIN conversations c ON c.id = m.conversation_id
        WHERE messages_fts MATCH ?
        ORDER BY best.rank
        """,
        [fts_query, owner, limit, open_mark, close_mark, fts_query],
    )
    for r in message_rows:
        cid = r["conversation_id"]
        if cid in hits or len(hits) < limit:
            # A title hit stays first but points at the best message.
            hits[cid] = SearchHit(cid, r["title"], r["updated"], r["id"], r["snippet"])
    return list(hits.values())
