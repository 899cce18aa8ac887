"""``StoreFile``: the SQLite file itself: opening, recovery, migrations, connections, transactions."""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import deque
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
# How long one step of long work may hold the write lock (the rest of a transaction is quick).
STEP_SECONDS = 0.2


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


class _Turns:
    """First come, first served turns at writing for the threads of one process.

    SQLite's write lock has no queue: a long import committing batch after batch would win it again
    and again while another visitor's message waits. Queued here, that message writes right after
    the batch in progress.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    def wait(self, timeout: float) -> bool:
        me = object()
        with self._cond:
            self._queue.append(me)
            if self._cond.wait_for(lambda: self._queue[0] is me, max(timeout, 0.0)):
                return True
            self._queue.remove(me)
            self._cond.notify_all()
            return False

    def done(self) -> None:
        with self._cond:
            self._queue.popleft()
            self._cond.notify_all()


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
        self._turns = _Turns()
        self.longest_write_s = 0.0
        """The longest this file's connections held the write lock in one transaction, in seconds."""
        self._closed = False
        self._check_location()
        reason = self._corruption_reason()
        if reason is not None:
            self._move_aside(reason)
        self._make_private()
        try:
            # Refuse foreign or newer files before anything (even the WAL switch) writes to them.
            self.read(self._check_schema)
            self.db().enable_wal()
            # A migration may rebuild a table, which must run with foreign keys off (dropping the old
            # table would otherwise cascade); _migrate checks the keys before it commits.
            self.db().execute("PRAGMA foreign_keys = OFF")
            self.write(self._migrate)
            self.db().execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            self.close()
            raise self._location_error(exc) from None
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- connections, transactions
    @property
    def closed(self) -> bool:
        return self._closed

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

        Writers of this process take turns in the order they came (``_Turns``). A read ``fn`` may
        run again from the start after a lock, so it must only touch the database.
        """
        deadline = time.monotonic() + self.lock_timeout
        if write and not self._turns.wait(self.lock_timeout):
            raise self._busy()
        try:
            return self._attempts(fn, write, deadline)
        finally:
            if write:
                self._turns.done()

    def _attempts(self, fn: Callable[[Database], T], write: bool, deadline: float) -> T:
        delay = 0.005
        while True:
            db = self.db()
            began = False
            try:
                db.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                began, start = write, time.monotonic()
                try:
                    result = fn(db)
                    db.conn.execute("COMMIT")
                    if write:  # only one writer holds the lock at a time: no race on the maximum
                        self.longest_write_s = max(self.longest_write_s, time.monotonic() - start)
                    return result
                except BaseException:
                    if db.conn.in_transaction:
                        db.conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                # A write holds the lock from BEGIN IMMEDIATE on, so only BEGIN can meet a lock;
                # ``fn`` never runs twice (work in steps keeps state between transactions).
                if began or not _is_locked(exc):
                    raise self._db_error(exc) from None
                if time.monotonic() >= deadline:
                    raise self._busy() from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _busy(self) -> StoreBusy:
        return StoreBusy(
            f"The conversation database stayed locked by another program for "
            f"{self.lock_timeout:g} s. Close other copies of Huginn Studio using it, "
            "or start this one with a different --db."
        )

    def write_in_steps(self, step: Callable[[Database, float], bool], pause: float = 0.002) -> None:
        """Call ``step(db, deadline)`` in one write transaction after another until it returns True.

        Long work (an import, deleting a long conversation) holds the write lock for one short
        transaction at a time, so other writers get their turn in between. ``step`` stops once
        ``time.monotonic()`` passes ``deadline`` and must leave consistent rows at each commit.
        """
        while not self.write(lambda db: step(db, time.monotonic() + STEP_SECONDS)):
            time.sleep(pause)  # a chance for writers in other processes, which do not queue here

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

    def _make_private(self) -> None:
        # Conversations are private wherever the app runs, so the file is 0600 always, not only
        # when hosted. SQLite gives the -wal and -shm files the mode of the database file.
        try:
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            for name in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                if name.exists() and name.stat().st_mode & 0o077:
                    name.chmod(0o600)
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
        # Links a file already had broken (rows deleted by another tool with foreign keys off) are no reason to
        # refuse it: the version that wrote it opened it. Only links a migration broke are.
        before = set(db.execute("PRAGMA foreign_key_check").fetchall()) if version < SCHEMA_VERSION else set()
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](db)
            db.execute(f"PRAGMA user_version = {v + 1}")
        after = db.execute("PRAGMA foreign_key_check").fetchall() if version < SCHEMA_VERSION else []
        broken = [link for link in after if tuple(link) not in before]
        if broken:
            raise StoreLocationError(
                f"{self.path} has {len(broken)} broken links between rows ({broken[0]}); it was left "
                "as it was. Use another --db."
            )
        db["meta"].upsert({"key": "last_opened", "value": now_iso()}, pk="key")
