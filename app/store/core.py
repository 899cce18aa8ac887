"""The ``Store`` class: connections, transactions, recovery and every public query and write."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import platformdirs
from sqlite_utils import Database

from .checks import (
    _auto_title,
    _check_choice,
    _check_object,
    _check_optional_text,
    _check_owner,
    _check_text,
    _check_tokens,
    _dump_json,
)
from .records import (
    DEFAULT_TITLE,
    ENV_VAR,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    LEAF,
    MAX_TITLE_CHARS,
    ROLES,
    STATUSES,
    Conversation,
    InvalidData,
    Message,
    NotFound,
    Role,
    SearchHit,
    Status,
    StoreBusy,
    StoreError,
    StoreLocationError,
    _now,
)
from .schema import MIGRATIONS, SCHEMA_VERSION
from .transfer import _export_message, _fmt, _parse_import, _plan_conversation, _steps_summary
from .writer import AnswerWriter

# The logger keeps the name it had when the store was one module.
log = logging.getLogger("app.store")

_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26
_MESSAGE_JSON_FIELDS = ("settings", "tokens", "stats", "extra")

T = TypeVar("T")


# ----------------------------------------------------------------------------- module helpers
def default_db_path() -> Path:
    """``$HUGINN_STUDIO_DB`` if set, else ``<user data dir>/huginn-studio/huginn-studio.db``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("huginn-studio", appauthor=False)) / "huginn-studio.db"


def new_owner_key() -> str:
    """A fresh unguessable owner key, e.g. for a browser when the app is hosted for many people."""
    return secrets.token_urlsafe(24)


def _is_locked(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


# ------------------------------------------------------------------------------------ store
class Store:
    """The conversation store. Thread-safe: each thread gets its own SQLite connection.

    Every public method takes ``owner`` first and only sees that owner's rows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float = 30.0,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path: Path = Path(path).expanduser() if path is not None else default_db_path()
        self.recovered_from: Path | None = None
        """Where a corrupt file found at open was moved (the app should tell the user), or None."""
        self._lock_timeout = lock_timeout
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._check_location()
        reason = self._corruption_reason()
        if reason is not None:
            self._move_aside(reason)
        try:
            # Refuse foreign or newer files before anything (even the WAL switch) writes to them.
            self._read(self._check_schema)
            self._db().enable_wal()
            self._write(self._migrate)
        except sqlite3.Error as exc:
            self.close()
            raise self._location_error(exc) from None
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- connections, transactions
    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> Database:
        if self._closed:
            raise StoreError(f"the store for {self.path} is closed")
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so close() may close it from another thread; each
            # connection is otherwise used by the thread that made it.
            conn = sqlite3.connect(
                str(self.path),
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            db = Database(conn, execute_plugins=False)
            with self._connections_lock:
                self._connections.append(conn)
            self._local.db = db
        return db

    def _transaction(self, fn: Callable[[Database], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction, retrying while another connection holds the lock.

        ``fn`` must only touch the database: on a retry it runs again from the start.
        """
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.005
        while True:
            db = self._db()
            try:
                db.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(db)
                    db.conn.execute("COMMIT")
                    return result
                except BaseException:
                    if db.conn.in_transaction:
                        db.conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                if not _is_locked(exc):
                    raise self._db_error(exc) from None
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"The conversation database {self.path} stayed locked by another program "
                        f"for {self._lock_timeout:g} s. Close other copies of Huginn Studio using "
                        "it, or start this one with a different --db."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _read(self, fn: Callable[[Database], T]) -> T:
        return self._transaction(fn, write=False)

    def _write(self, fn: Callable[[Database], T]) -> T:
        return self._transaction(fn, write=True)

    def _db_error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError):
            return InvalidData(f"refused by the database: {exc}")
        if _is_corrupt(exc):
            return StoreError(
                f"The conversation database {self.path} is damaged ({exc}). Restart Huginn Studio: "
                "it will move the damaged file aside and start a new one."
            )
        if any(s in str(exc) for s in ("readonly", "disk is full", "disk I/O", "unable to open")):
            return StoreLocationError(f"Cannot write the conversation database {self.path}: {exc}")
        return StoreError(f"Conversation database error ({self.path}): {exc}")

    # ---------------------------------------------------------------------- opening, recovery
    def _location_error(self, exc: BaseException) -> StoreLocationError:
        return StoreLocationError(
            f"Cannot use {self.path} for the conversation database: {exc}. Choose a writable "
            f"location with --db PATH or the {ENV_VAR} environment variable."
        )

    def _check_location(self) -> None:
        # Probe with a real file: os.access() says yes to root on read-only directories, and SQLite
        # needs to create -wal/-shm files beside the database, not just write the database itself.
        if self.path.is_dir():
            raise self._location_error(IsADirectoryError("it is a directory"))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path.parent, prefix=".huginn-probe-"):
                pass
            if self.path.exists():
                with open(self.path, "r+b"):
                    pass
        except OSError as exc:
            raise self._location_error(exc.strerror or exc) from None

    def _corruption_reason(self) -> str | None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with open(self.path, "rb") as fh:
            if fh.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                return "not an SQLite database"
        conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout, isolation_level=None)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                return str(exc)
            if _is_locked(exc):
                raise StoreBusy(f"The conversation database {self.path} is locked: {exc}") from None
            raise self._location_error(exc) from None
        finally:
            conn.close()
        result = "; ".join(str(r[0]) for r in rows[:5])
        return None if result == "ok" else f"integrity check failed: {result}"

    def _move_aside(self, reason: str) -> None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            # Sidecars move under the new name so the moved file stays openable as it was.
            for suffix in ("-wal", "-shm", "-journal"):
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    side.rename(f"{target}{suffix}")
            self.path.rename(target)
        except OSError as exc:
            raise StoreLocationError(
                f"The conversation database {self.path} is damaged ({reason}) and could not be "
                f"moved aside ({exc.strerror or exc}). Move it away yourself or use --db."
            ) from None
        self.recovered_from = target
        log.warning(
            "Conversation database %s was damaged (%s). It was moved to %s and a new empty "
            "database was started.",
            self.path,
            reason,
            target,
        )

    def _check_schema(self, db: Database) -> int:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreLocationError(
                f"{self.path} was written by a newer Huginn Studio (schema {version}; this version "
                f"reads up to {SCHEMA_VERSION}). Upgrade, or use another --db."
            )
        if version == 0 and db.table_names():
            raise StoreLocationError(
                f"{self.path} is an SQLite database of another program (tables: "
                f"{', '.join(db.table_names()[:5])}). It was left untouched; use another --db."
            )
        return version

    def _migrate(self, db: Database) -> None:
        version = self._check_schema(db)
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](db)
            db.execute(f"PRAGMA user_version = {v + 1}")
        db["meta"].upsert({"key": "last_opened", "value": _now()}, pk="key")

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` of the open database: "ok" when healthy."""
        rows = self._read(lambda db: db.execute("PRAGMA integrity_check").fetchall())
        return "; ".join(str(r[0]) for r in rows)

    # -------------------------------------------------------------------------- row helpers
    @staticmethod
    def _conversation(row: Mapping[str, Any]) -> Conversation:
        return Conversation(
            id=row["id"],
            owner=row["owner"],
            title=row["title"],
            created=row["created"],
            updated=row["updated"],
            current_leaf=row["current_leaf"],
            extra=json.loads(row["extra"]) if row["extra"] is not None else None,
        )

    @staticmethod
    def _message(row: Mapping[str, Any]) -> Message:
        values = {f.name: row[f.name] for f in fields(Message)}
        for name in _MESSAGE_JSON_FIELDS:
            if values[name] is not None:
                values[name] = json.loads(values[name])
        return Message(**values)

    @staticmethod
    def _conv_row(db: Database, owner: str, conversation_id: int) -> dict[str, Any]:
        rows = list(
            db["conversations"].rows_where(
                "id = ? AND owner = ?", [conversation_id, owner], limit=1
            )
        )
        if not rows:
            raise NotFound(f"conversation {conversation_id} not found")
        return rows[0]

    @staticmethod
    def _msg_rows(db: Database, owner: str, where: str, args: Sequence[Any]) -> list[Message]:
        sql = (
            "SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            f"WHERE c.owner = ? AND ({where}) ORDER BY m.created, m.id"
        )
        return [Store._message(r) for r in db.query(sql, [owner, *args])]

    def _msg(self, db: Database, owner: str, message_id: int) -> Message:
        rows = self._msg_rows(db, owner, "m.id = ?", [message_id])
        if not rows:
            raise NotFound(f"message {message_id} not found")
        return rows[0]

    # ------------------------------------------------------------------------ conversations
    def create_conversation(
        self, owner: str, title: str | None = None, *, extra: dict[str, Any] | None = None
    ) -> Conversation:
        """A new empty conversation. Without a title, the first user message will name it."""
        _check_owner(owner)
        if title is not None:
            _check_text(title, "title", MAX_TITLE_CHARS * 4)
        extra_json = _dump_json(_check_object(extra, "extra"), "extra")

        def op(db: Database) -> Conversation:
            now = _now()
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
            return self._conversation(self._conv_row(db, owner, table.last_rowid))

        return self._write(op)

    def get_conversation(self, owner: str, conversation_id: int) -> Conversation:
        _check_owner(owner)
        return self._read(lambda db: self._conversation(self._conv_row(db, owner, conversation_id)))

    def list_conversations(
        self, owner: str, *, limit: int | None = None, offset: int = 0
    ) -> list[Conversation]:
        """The owner's conversations, most recently updated first."""
        _check_owner(owner)
        return self._read(
            lambda db: [
                self._conversation(r)
                for r in db["conversations"].rows_where(
                    "owner = ?",
                    [owner],
                    order_by="updated DESC, id DESC",
                    limit=limit if limit is not None else -1,
                    offset=offset,
                )
            ]
        )

    def rename_conversation(self, owner: str, conversation_id: int, title: str) -> Conversation:
        _check_owner(owner)
        _check_text(title, "title", MAX_TITLE_CHARS * 4)

        def op(db: Database) -> Conversation:
            self._conv_row(db, owner, conversation_id)
            db["conversations"].update(
                conversation_id, {"title": title, "auto_title": 0, "updated": _now()}
            )
            return self._conversation(self._conv_row(db, owner, conversation_id))

        return self._write(op)

    def delete_conversation(self, owner: str, conversation_id: int) -> None:
        """Delete a conversation and all its messages (and their search index entries)."""
        _check_owner(owner)

        def op(db: Database) -> None:
            self._conv_row(db, owner, conversation_id)
            db["conversations"].delete(conversation_id)

        self._write(op)

    # ----------------------------------------------------------------------------- messages
    def add_message(
        self,
        owner: str,
        conversation_id: int,
        role: Role,
        content: str,
        *,
        parent_id: int | None | Literal["leaf"] = LEAF,
        kind: str = "message",
        status: Status = "complete",
        error: str | None = None,
        model_id: str | None = None,
        model_revision: str | None = None,
        quantization: str | None = None,
        settings: dict[str, Any] | None = None,
        tokens: list[dict[str, Any]] | None = None,
        stats: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Message:
        """Add a message and make it the conversation's current leaf.

        ``parent_id``: ``LEAF`` (default) appends to the current branch; a message id adds a child
        of it, which is how editing or regenerating makes a sibling branch; None adds a root.
        """
        _check_owner(owner)
        row = self._message_row(
            role=role,
            content=content,
            kind=kind,
            status=status,
            error=error,
            model_id=model_id,
            model_revision=model_revision,
            quantization=quantization,
            settings=settings,
            tokens=tokens,
            stats=stats,
            extra=extra,
        )
        return self._write(lambda db: self._insert_message(db, owner, conversation_id, parent_id, row))

    @staticmethod
    def _message_row(
        *,
        role: Any,
        content: Any,
        kind: Any,
        status: Any,
        error: Any,
        model_id: Any,
        model_revision: Any,
        quantization: Any,
        settings: Any,
        tokens: Any,
        stats: Any,
        extra: Any,
    ) -> dict[str, Any]:
        # Validation and JSON encoding happen before the transaction, so a bad argument writes nothing.
        return {
            "role": _check_choice(role, "role", ROLES),
            "content": _check_text(content, "content"),
            "kind": _check_text(kind, "kind", 200),
            "status": _check_choice(status, "status", STATUSES),
            "error": None if error is None else _check_text(error, "error"),
            "model_id": _check_optional_text(model_id, "model_id"),
            "model_revision": _check_optional_text(model_revision, "model_revision"),
            "quantization": _check_optional_text(quantization, "quantization"),
            "settings": _dump_json(_check_object(settings, "settings"), "settings"),
            "tokens": _dump_json(_check_tokens(tokens, "tokens"), "tokens"),
            "stats": _dump_json(_check_object(stats, "stats"), "stats"),
            "extra": _dump_json(_check_object(extra, "extra"), "extra"),
        }

    def _insert_message(
        self,
        db: Database,
        owner: str,
        conversation_id: int,
        parent_id: int | None | str,
        row: dict[str, Any],
    ) -> Message:
        conv = self._conv_row(db, owner, conversation_id)
        if parent_id == LEAF:
            parent_id = conv["current_leaf"]
        elif parent_id is not None:
            parent = self._msg(db, owner, parent_id)
            if parent.conversation_id != conversation_id:
                raise InvalidData(
                    f"message {parent_id} belongs to another conversation than {conversation_id}"
                )
        now = _now()
        table = db["messages"]
        table.insert(
            {
                "conversation_id": conversation_id,
                "parent_id": parent_id,
                "created": now,
                "updated": now,
                **row,
            }
        )
        message_id = table.last_rowid
        conv_update: dict[str, Any] = {"current_leaf": message_id, "updated": now}
        if conv["auto_title"] and row["role"] == "user":
            title = _auto_title(row["content"])
            if title:
                conv_update.update(title=title, auto_title=0)
        db["conversations"].update(conversation_id, conv_update)
        return self._msg(db, owner, message_id)

    def begin_answer(
        self,
        owner: str,
        conversation_id: int,
        parent_id: int | None | Literal["leaf"] = LEAF,
        *,
        model_id: str | None = None,
        model_revision: str | None = None,
        quantization: str | None = None,
        settings: dict[str, Any] | None = None,
        kind: str = "message",
        extra: dict[str, Any] | None = None,
        flush_interval: float = 0.5,
    ) -> AnswerWriter:
        """Start a streamed assistant answer: the row exists at once, with status "partial".

        Feed tokens to the returned writer and end with ``finish``. As a context manager the writer
        finishes itself: "failed" on an exception, "cancelled" when the generator is closed
        (GeneratorExit, e.g. the user pressed Stop), "complete" otherwise.
        """
        message = self.add_message(
            owner,
            conversation_id,
            "assistant",
            "",
            parent_id=parent_id,
            kind=kind,
            status="partial",
            model_id=model_id,
            model_revision=model_revision,
            quantization=quantization,
            settings=settings,
            tokens=[],
            extra=extra,
        )
        return AnswerWriter(self, owner, message, flush_interval)

    def get_message(self, owner: str, message_id: int) -> Message:
        _check_owner(owner)
        return self._read(lambda db: self._msg(db, owner, message_id))

    def messages(self, owner: str, conversation_id: int) -> list[Message]:
        """Every message of a conversation, all branches, oldest first."""
        _check_owner(owner)

        def op(db: Database) -> list[Message]:
            self._conv_row(db, owner, conversation_id)
            return self._msg_rows(db, owner, "m.conversation_id = ?", [conversation_id])

        return self._read(op)

    def thread(
        self, owner: str, conversation_id: int, leaf_id: int | None = None
    ) -> list[Message]:
        """The branch from its root to ``leaf_id`` (default: the current leaf), root first."""
        _check_owner(owner)

        def op(db: Database) -> list[Message]:
            conv = self._conv_row(db, owner, conversation_id)
            leaf = leaf_id if leaf_id is not None else conv["current_leaf"]
            if leaf is None:
                return []
            chain = db.query(
                """
                WITH RECURSIVE chain(id, depth) AS (
                    SELECT id, 0 FROM messages WHERE id = ? AND conversation_id = ?
                    UNION ALL
                    SELECT m.parent_id, chain.depth + 1 FROM messages m JOIN chain ON m.id = chain.id
                    WHERE m.parent_id IS NOT NULL
                )
                SELECT messages.* FROM chain JOIN messages ON messages.id = chain.id
                ORDER BY chain.depth DESC
                """,
                [leaf, conversation_id],
            )
            result = [self._message(r) for r in chain]
            if not result:
                raise NotFound(f"message {leaf} not found in conversation {conversation_id}")
            return result

        return self._read(op)

    def children(self, owner: str, message_id: int) -> list[Message]:
        """Direct replies to a message, oldest first."""
        _check_owner(owner)

        def op(db: Database) -> list[Message]:
            self._msg(db, owner, message_id)
            return self._msg_rows(db, owner, "m.parent_id = ?", [message_id])

        return self._read(op)

    def siblings(self, owner: str, message_id: int) -> list[Message]:
        """The message and its alternatives (same parent, same conversation), oldest first.

        The UI shows "i / n" with ``[m.id for m in siblings].index(message_id) + 1``.
        """
        _check_owner(owner)

        def op(db: Database) -> list[Message]:
            msg = self._msg(db, owner, message_id)
            return self._msg_rows(
                db,
                owner,
                "m.conversation_id = ? AND m.parent_id IS ?",
                [msg.conversation_id, msg.parent_id],
            )

        return self._read(op)

    def set_current_leaf(
        self, owner: str, conversation_id: int, message_id: int, *, descend: bool = True
    ) -> Message:
        """Show the branch through ``message_id``; returns the new current leaf.

        With ``descend`` the leaf is the newest message below ``message_id`` (following the newest
        child at each level), which is what switching to a sibling branch wants.
        """
        _check_owner(owner)

        def op(db: Database) -> Message:
            self._conv_row(db, owner, conversation_id)
            leaf = self._msg(db, owner, message_id)
            if leaf.conversation_id != conversation_id:
                raise NotFound(f"message {message_id} not found in conversation {conversation_id}")
            while descend:
                kids = self._msg_rows(db, owner, "m.parent_id = ?", [leaf.id])
                if not kids:
                    break
                leaf = kids[-1]
            db["conversations"].update(conversation_id, {"current_leaf": leaf.id})
            return leaf

        return self._write(op)

    # ------------------------------------------------------------------------------- search
    def search(
        self,
        owner: str,
        query: str,
        *,
        limit: int = 50,
        highlight: tuple[str, str] = ("[", "]"),
    ) -> list[SearchHit]:
        """Full-text search over titles and message text; one hit per conversation, best first.

        Any user input is safe: each word is quoted (FTS syntax such as ``AND``, ``"`` or ``(`` is
        searched for literally) and the last word matches as a prefix, for search-as-you-type.
        """
        _check_owner(owner)
        _check_text(query, "query", 10_000)
        # FTS5 reads the query as a C string: a NUL would cut it inside a quoted word.
        query = "".join(ch if ch.isprintable() else " " for ch in query)
        if not query.strip():
            return []
        open_mark, close_mark = highlight

        def op(db: Database) -> list[SearchHit]:
            fts_query = db.quote_fts(query)
            if not fts_query.strip():
                return []
            fts_query += "*"
            title_rows = db.query(
                """
                SELECT c.id, c.title, c.updated,
                       snippet(conversations_fts, 0, ?, ?, '…', 16) AS snippet
                FROM conversations_fts JOIN conversations c ON c.id = conversations_fts.rowid
                WHERE conversations_fts MATCH ? AND c.owner = ?
                ORDER BY conversations_fts.rank LIMIT ?
                """,
                [open_mark, close_mark, fts_query, owner, limit],
            )
            hits: dict[int, SearchHit] = {}
            for r in title_rows:
                hits[r["id"]] = SearchHit(r["id"], r["title"], r["updated"], None, r["snippet"])
            # Several matching messages in one conversation collapse to the best one, so fetch
            # more rows than hits wanted.
            message_rows = db.query(
                """
                SELECT m.id, m.conversation_id, c.title, c.updated,
                       snippet(messages_fts, 0, ?, ?, '…', 16) AS snippet
                FROM messages_fts
                JOIN messages m ON m.id = messages_fts.rowid
                JOIN conversations c ON c.id = m.conversation_id
                WHERE messages_fts MATCH ? AND c.owner = ?
                ORDER BY messages_fts.rank LIMIT ?
                """,
                [open_mark, close_mark, fts_query, owner, limit * 5],
            )
            for r in message_rows:
                if len(hits) >= limit:
                    break
                cid = r["conversation_id"]
                if cid not in hits:
                    hits[cid] = SearchHit(cid, r["title"], r["updated"], r["id"], r["snippet"])
                elif hits[cid].message_id is None:
                    # The title matched too: keep it first but point at the message.
                    hits[cid] = SearchHit(cid, r["title"], r["updated"], r["id"], r["snippet"])
            return list(hits.values())[:limit]

        return self._read(op)

    # ------------------------------------------------------------------------------- export
    def export_data(self, owner: str, conversation_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Lossless export as a JSON-ready dict (see ``import_json``).

        Message ids in the export are local to it (1, 2, ... per conversation), so exporting an
        imported conversation gives the same document.
        """
        _check_owner(owner)
        ids = None if conversation_ids is None else list(conversation_ids)

        def op(db: Database) -> dict[str, Any]:
            if ids is None:
                convs = [
                    self._conversation(r)
                    for r in db["conversations"].rows_where("owner = ?", [owner], order_by="id")
                ]
            else:
                convs = [self._conversation(self._conv_row(db, owner, cid)) for cid in ids]
            out = []
            for conv in convs:
                msgs = self._msg_rows(db, owner, "m.conversation_id = ?", [conv.id])
                # Parents sort before children because they are created first; sort by id to keep
                # that true for imported trees whose timestamps came from elsewhere.
                msgs.sort(key=lambda m: m.id)
                local = {m.id: i + 1 for i, m in enumerate(msgs)}
                out.append(
                    {
                        "title": conv.title,
                        "created": conv.created,
                        "updated": conv.updated,
                        "current_leaf": local.get(conv.current_leaf)
                        if conv.current_leaf is not None
                        else None,
                        "extra": conv.extra,
                        "messages": [_export_message(m, local) for m in msgs],
                    }
                )
            return {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "exported": _now(),
                "conversations": out,
            }

        return self._read(op)

    def export_json(self, owner: str, conversation_ids: Iterable[int] | None = None) -> str:
        """One conversation, several, or all (None) of the owner's, as JSON text."""
        return json.dumps(self.export_data(owner, conversation_ids), ensure_ascii=False, indent=1)

    def export_markdown(self, owner: str, conversation_ids: Iterable[int] | None = None) -> str:
        """A readable Markdown transcript of the current branch of each conversation.

        Each answer carries its model, depth settings and a steps summary. Other branches are
        counted, not shown: the JSON export keeps everything.
        """
        data = self.export_data(owner, conversation_ids)
        parts = []
        for conv in data["conversations"]:
            msgs = {m["id"]: Message(conversation_id=0, **m) for m in conv["messages"]}
            branch: list[Message] = []
            node = conv["current_leaf"]
            while node is not None:
                branch.append(msgs[node])
                node = msgs[node].parent_id
            branch.reverse()
            lines = [f"# {conv['title']}", ""]
            note = f"*Created {conv['created'][:19].replace('T', ' ')} UTC"
            if len(msgs) > len(branch):
                note += f"; showing the current branch ({len(branch)} of {len(msgs)} messages)"
            lines += [note + ".*", ""]
            for m in branch:
                lines += self._markdown_message(m)
            parts.append("\n".join(lines).rstrip() + "\n")
        return "\n---\n\n".join(parts)

    @staticmethod
    def _markdown_message(m: Message) -> list[str]:
        heading = f"## {m.role.capitalize()}"
        if m.kind != "message":
            heading += f" ({m.kind})"
        if m.model_id:
            model = m.model_id + (f"@{m.model_revision}" if m.model_revision else "")
            heading += f" · {model}" + (f" · {m.quantization}" if m.quantization else "")
        lines = [heading, "", m.content, ""]
        if m.role != "assistant":
            return lines
        if m.settings:
            settings = ", ".join(f"{k}={_fmt(v)}" for k, v in m.settings.items())
            lines.append(f"> **Depth settings:** {settings}  ")
        s = _steps_summary(m)
        steps = f"> **Steps:** {s['tokens']} tokens"
        if s["mean_steps"] is not None:
            steps += f", mean {_fmt(float(s['mean_steps']))}, min {s['min_steps']}, max {s['max_steps']}"
        stats = m.stats or {}
        for key, label in (("tokens_per_s", "tokens/s"), ("elapsed_s", "s")):
            if isinstance(stats.get(key), (int, float)):
                steps += f" · {_fmt(float(stats[key]))} {label}"
        steps += f" · status: {m.status}"
        if m.error:
            steps += f" · error: {m.error}"
        lines += [steps, ""]
        return lines

    # ------------------------------------------------------------------------------- import
    def import_json(self, owner: str, data: str | bytes | Mapping[str, Any]) -> list[Conversation]:
        """Import an export (text, bytes or parsed dict) as new conversations of ``owner``.

        The whole file is validated first; any problem raises ``ImportInvalid`` naming the field,
        and nothing is written. All conversations are written in one transaction with new ids.
        """
        _check_owner(owner)
        doc = _parse_import(data)
        plans = [
            _plan_conversation(c, f"conversations[{i}]") for i, c in enumerate(doc["conversations"])
        ]

        def op(db: Database) -> list[Conversation]:
            created = []
            for conv, ordered in plans:
                conversations = db["conversations"]
                conversations.insert(
                    {
                        "owner": owner,
                        "title": conv["title"],
                        "auto_title": 0,
                        "created": conv["created"],
                        "updated": conv["updated"],
                        "current_leaf": None,
                        "extra": _dump_json(conv.get("extra"), "extra"),
                    }
                )
                cid = conversations.last_rowid
                new_ids: dict[int, int] = {}
                messages = db["messages"]
                for m, row in ordered:
                    parent = m["parent_id"]
                    messages.insert(
                        {
                            "conversation_id": cid,
                            "parent_id": new_ids[parent] if parent is not None else None,
                            "created": m["created"],
                            "updated": m["updated"],
                            **row,
                        }
                    )
                    new_ids[m["id"]] = messages.last_rowid
                leaf = conv["current_leaf"]
                conversations.update(cid, {"current_leaf": new_ids.get(leaf)})
                created.append(self._conversation(self._conv_row(db, owner, cid)))
            return created

        return self._write(op)
