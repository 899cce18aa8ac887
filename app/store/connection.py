"""``StoreFile``: the SQLite file itself: opening, recovery, migrations, connections, transactions."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database

from .records import ENV_VAR, InvalidData, StoreBusy, StoreError, StoreLocationError, now_iso
from .schema import MIGRATIONS, SCHEMA_VERSION

# The logger keeps the name it had when the store was one module.
log = logging.getLogger("app.store")

_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26

T = TypeVar("T")


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


class StoreFile:
    """One SQLite file, checked and migrated at open, with one connection per thread.

    ``read`` and ``write`` run a function in one transaction and retry while another connection
    holds the lock. Thread-safe.
    """

    def __init__(self, path: Path, *, lock_timeout: float, busy_timeout: float) -> None:
        self.path = path
        self.recovered_from: Path | None = None
        self.lock_timeout = lock_timeout
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
            self.read(self._check_schema)
            self.db().enable_wal()
            self.write(self._migrate)
        except sqlite3.Error as exc:
            self.close()
            raise self._location_error(exc) from None
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- connections, transactions
    def close(self) -> None:
        """Close every connection this file opened (from any thread)."""
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def db(self) -> Database:
        """This thread's connection (made on first use)."""
        if self._closed:
            raise StoreError("the conversation store is closed")
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

    def transaction(self, fn: Callable[[Database], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction, retrying while another connection holds the lock.

        ``fn`` must only touch the database: on a retry it runs again from the start.
        """
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            db = self.db()
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
                        f"The conversation database stayed locked by another program for "
                        f"{self.lock_timeout:g} s. Close other copies of Huginn Studio using it, "
                        "or start this one with a different --db."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def read(self, fn: Callable[[Database], T]) -> T:
        return self.transaction(fn, write=False)

    def write(self, fn: Callable[[Database], T]) -> T:
        return self.transaction(fn, write=True)

    def _db_error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError):
            return InvalidData(f"refused by the database: {exc}")
        if _is_corrupt(exc):
            return StoreError(
                f"The conversation database is damaged ({exc}). Restart Huginn Studio: it will "
                "move the damaged file aside and start a new one."
            )
        if any(s in str(exc) for s in ("readonly", "disk is full", "disk I/O", "unable to open")):
            return StoreLocationError(f"Cannot write the conversation database: {exc}")
        return StoreError(f"Conversation database error: {exc}")

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` of the open database: "ok" when healthy."""
        rows = self.read(lambda db: db.execute("PRAGMA integrity_check").fetchall())
        return "; ".join(str(r[0]) for r in rows)

    # ---------------------------------------------------------------------- opening, recovery
    def _location_error(self, exc: BaseException | str) -> StoreLocationError:
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
        db["meta"].upsert({"key": "last_opened", "value": now_iso()}, pk="key")
