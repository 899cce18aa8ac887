"""The schema version and the forward migrations (the schema is described in ``app.store``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils import Database

from . import quota

SCHEMA_VERSION = 6


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


def _rebuild(db: Database, table: str, create: str, columns: str) -> None:
    """Rebuild ``table`` as ``create`` (the CREATE TABLE of ``<table>_new``) the way SQLite's manual describes: copy
    ``columns``, drop the old table, rename the new one and make the old one's indexes and triggers (the search
    index's) again. Rowids are kept, so the external-content FTS indexes stay valid. sqlite-utils' ``transform`` keeps
    neither CHECK constraints, ON DELETE actions nor triggers, and cannot add AUTOINCREMENT. The caller has turned
    foreign keys off (dropping the old table would otherwise cascade) and checks them before it commits."""
    kept = [
        sql
        for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL",
            [table],
        )
    ]
    db.execute(create)
    db.execute(f"INSERT INTO {table}_new ({columns}) SELECT {columns} FROM {table}")
    db.execute(f"DROP TABLE {table}")
    # Legacy rename: the current one checks every trigger of the file, and the running totals' triggers on the other
    # tables name the table that was just dropped; they name it again once the new one has its name.
    db.execute("PRAGMA legacy_alter_table = ON")
    db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
    db.execute("PRAGMA legacy_alter_table = OFF")
    for sql in kept:
        db.execute(sql)


def _migrate_1_to_2(db: Database) -> None:
    """Status "interrupted" (an answer whose process died) and ``writer`` (which process streams a
    partial answer). A CHECK constraint cannot be altered, so the table is rebuilt."""
    _rebuild(
        db,
        "messages",
        """
        CREATE TABLE messages_new (
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
        """,
        _MESSAGE_COLUMNS_V1,
    )


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


_LARGEST_ID_KEPT = 2**62


def _migrate_3_to_4(db: Database) -> None:
    """AUTOINCREMENT on the tables whose ids the page, links and API clients hold: SQLite otherwise gives the largest
    id again once its row is deleted, so a stale tab holding the newest conversation's id would land on the next new
    one. The tables are rebuilt (AUTOINCREMENT cannot be added in place) from their own CREATE statements, so every
    column, constraint and key stays as the file had it; ``sqlite_sequence`` starts at each table's largest id."""
    for table in ("conversations", "messages"):
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone()
        body = sql[sql.index("(") :]
        if "id INTEGER PRIMARY KEY AUTOINCREMENT," in body:  # a newer file relabelled older (tests do): nothing to do
            continue
        # AUTOINCREMENT never goes past the largest id a table ever had, and fails at 2**63 - 1 (SQLite says the
        # file is full); a table with ids that far out (only a hand edit puts them there) keeps SQLite's free ids.
        if (db.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0] or 0) > _LARGEST_ID_KEPT:
            continue
        new_body = body.replace("id INTEGER PRIMARY KEY,", "id INTEGER PRIMARY KEY AUTOINCREMENT,", 1)
        if new_body == body:
            raise sqlite3.DatabaseError(f"the {table} table is not as this version made it: {sql[:200]}")
        columns = ", ".join(c.name for c in db[table].columns)
        _rebuild(db, table, f"CREATE TABLE {table}_new {new_body}", columns)


def _migrate_4_to_5(db: Database) -> None:
    # Each owner's stored bytes as a running total kept by triggers (quota.py), so the byte cap reads one row per write
    # instead of summing the owner's rows; filled from the rows here.
    quota.keep_running_totals(db)


def _migrate_5_to_6(db: Database) -> None:
    # Each owner's conversation count and last change, and everyone's totals in one row: the server-wide caps read
    # one row per write, retention finds stale owners by an index. Every owner's clock starts at this migration.
    quota.keep_running_totals(db)


# MIGRATIONS[v] upgrades a database from user_version v to v + 1. Append, never edit.
MIGRATIONS: list[Callable[[Database], None]] = [
    _migrate_0_to_1, _migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4, _migrate_4_to_5,
    _migrate_5_to_6,
]  # fmt: skip
assert len(MIGRATIONS) == SCHEMA_VERSION
