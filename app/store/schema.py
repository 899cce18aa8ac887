"""The schema version and the forward migrations (the schema is described in ``app.store``)."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

SCHEMA_VERSION = 2


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


def _migrate_1_to_2(db: Database) -> None:
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
MIGRATIONS: list[Callable[[Database], None]] = [_migrate_0_to_1, _migrate_1_to_2]
assert len(MIGRATIONS) == SCHEMA_VERSION
