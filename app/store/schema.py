"""The schema version and the forward migrations (the schema is described in ``app.store``)."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

SCHEMA_VERSION = 3


def _migrate_0_to_1(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            title TEXT NOT NULL,
            auto_title INTEGER NOT NULL DEFAULT 1,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            current_leaf INTEGER REFERENCES messages(id) ON DELETE SET NULL,
            extra TEXT
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            kind TEXT NOT NULL DEFAULT 'message',
            content TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'cancelled', 'failed', 'partial')),
            error TEXT,
            model_id TEXT,
            model_revision TEXT,
            quantization TEXT,
            settings TEXT,
            tokens TEXT,
            stats TEXT,
            extra TEXT
        );
        CREATE INDEX conversations_owner_updated ON conversations(owner, updated);
        CREATE INDEX messages_conversation ON messages(conversation_id);
        CREATE INDEX messages_parent ON messages(parent_id);
        """
    )
    db["conversations"].enable_fts(["title"], create_triggers=True)
    db["messages"].enable_fts(["content"], create_triggers=True)


_MESSAGE_COLUMNS_V1 = (
    "id, conversation_id, parent_id, role, kind, content, created, updated, status, error, "
    "model_id, model_revision, quantization, settings, tokens, stats, extra"
)


def _migrate_1_to_2(db: Database) -> None:
    """Status "interrupted" (an answer whose process died) and ``writer`` (which process streams a
    partial answer). A CHECK constraint cannot be altered, so the table is rebuilt the way SQLite's
    manual describes; the caller has turned foreign keys off. The FTS index keeps its rowids."""
    kept = [
        sql
        for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'messages' AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL"
        )
    ]
    db.execute(
        """
        CREATE TABLE messages_v2 (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            kind TEXT NOT NULL DEFAULT 'message',
            content TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'cancelled', 'failed', 'partial', 'interrupted')),
            error TEXT,
            model_id TEXT,
            model_revision TEXT,
            quantization TEXT,
            settings TEXT,
            tokens TEXT,
            stats TEXT,
            extra TEXT,
            writer TEXT
        )
        """
    )
    db.execute(
        f"INSERT INTO messages_v2 ({_MESSAGE_COLUMNS_V1}) SELECT {_MESSAGE_COLUMNS_V1} FROM messages"
    )
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE messages_v2 RENAME TO messages")
    for sql in kept:
        db.execute(sql)


def _migrate_2_to_3(db: Database) -> None:
    # Depth-lens traces (app.store.traces): zlib-compressed JSON, one row per answer, read only on demand.
    db.executescript(
        """
        CREATE TABLE traces (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            data BLOB NOT NULL
        );
        """
    )


# MIGRATIONS[v] upgrades a database from user_version v to v + 1. Append, never edit.
MIGRATIONS: list[Callable[[Database], None]] = [_migrate_0_to_1, _migrate_1_to_2, _migrate_2_to_3]
assert len(MIGRATIONS) == SCHEMA_VERSION
