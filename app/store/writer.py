"""``AnswerWriter``: saves a streamed answer as it arrives, and owns how a stream ends."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cache
from typing import Any

import psutil

from sqlite_utils import Database

from . import tree
from .checks import check_choice, check_text, dump_json
from .connection import StoreFile
from .fields import check_stats, check_tokens
from .records import STATUSES, Message, NotFound, RecordLimits, Status, StoreError, now_iso


# A partial answer on another machine (a database on a shared drive) whose writer cannot be asked
# is taken as interrupted once it has not been written for this long.
STALE_AFTER_S = 600.0


def process_identity() -> str:
    """This process, as a partial answer records its writer: host, pid and the pid's start time
    (so a later process that reuses the pid is not taken for it)."""
    return _identity(os.getpid())  # keyed by pid: a forked child is another writer


@cache
def _identity(pid: int) -> str:
    return f"{socket.gethostname()} {pid} {psutil.Process(pid).create_time():.3f}"


def _writer_alive(identity: str | None, updated: str) -> bool:
    if not identity:
        return False
    host, pid, started = identity.rsplit(" ", 2)
    if host != socket.gethostname():
        age = datetime.now(timezone.utc) - datetime.fromisoformat(updated)
        return age.total_seconds() < STALE_AFTER_S
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied: it exists, under another user
        return True


def mark_interrupted(db: Database) -> int:
    """Mark "interrupted" every partial answer whose writing process is gone; returns how many.

    A false mark heals itself: a live writer sets "partial" again at its next flush.
    """
    rows = db.execute("SELECT id, writer, updated FROM messages WHERE status = 'partial'").fetchall()
    dead = [(now_iso(), mid) for mid, writer, updated in rows if not _writer_alive(writer, updated)]
    db.conn.executemany(
        "UPDATE messages SET status = 'interrupted', writer = NULL, updated = ? WHERE id = ?", dead
    )
    return len(dead)


class AnswerWriter:
    """Saves a streamed answer as it arrives. Made by ``Store.begin_answer``.

    ``add_token`` keeps tokens in memory and writes them when ``flush_interval`` seconds (of
    ``clock``) have passed since the last write; each write is one transaction that replaces content
    and tokens together, so the row is never half-written and a killed process loses at most
    ``flush_interval`` seconds. Usable from any thread (each thread gets its own connection), not
    from two at once.

    Ending: ``finish`` with an explicit status; ``finish_stream`` with the engine's stop reason;
    ``fail`` with an error; ``close`` marks an answer nobody finished as cancelled. As a context
    manager it ends itself the same way (see ``__exit__``).
    """

    def __init__(
        self,
        file: StoreFile,
        owner: str,
        message: Message,
        flush_interval: float,
        clock: Callable[[], float] = time.monotonic,
        limits: RecordLimits = RecordLimits(),
    ) -> None:
        self._file = file
        self._limits = limits
        self._clock = clock
        self.owner = owner
        self.message_id: int = message.id
        self.conversation_id: int = message.conversation_id
        self.tokens: list[dict[str, Any]] = []
        self._extra: dict[str, Any] = dict(message.extra or {})  # as begun; finish may add the prompt's depth
        self.flush_interval = flush_interval
        self.finished: bool = False
        self.flushes = 0
        self._flushed_count = 0
        self._last_flush = clock()

    @property
    def content(self) -> str:
        return "".join(t["text"] for t in self.tokens)

    def add_token(self, text: str, steps: int, exit_value: float | None = None,
                  id: int | None = None, change: float | None = None) -> None:  # noqa: A002 - the record's own key
        """Record one generated token with the recurrent steps it took, its exit value, its token id (a later
        turn sends the answer back as these ids, so the engine can reuse its cache positions) and how far its
        state still moved at its last step."""
        if self.finished:
            raise StoreError(f"answer {self.message_id} is already finished")
        raw = {"text": text, "steps": steps, "exit_value": exit_value, **({"id": id} if id is not None else {}),
               **({"change": change} if change is not None else {})}
        [record] = check_tokens([raw], "token", self._limits)
        check_text(text, "token text")
        self.tokens.append(record)
        if self._clock() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write the tokens so far now (one transaction); a no-op if nothing is new."""
        if self.finished or self._flushed_count == len(self.tokens):
            return
        self._save({}, status="partial")

    def finish(
        self,
        status: Status = "complete",
        stats: dict[str, Any] | None = None,
        *,
        content: str | None = None,
        error: str | None = None,
        prompt: list[dict[str, Any]] | None = None,
    ) -> Message:
        """Write the final state. ``content`` replaces the joined token texts when given (e.g. the
        detokenised text, which can differ from the pieces); ``prompt`` is the prompt positions' token
        records (what each received), kept in the message's ``extra``."""
        if self.finished:
            raise StoreError(f"answer {self.message_id} is already finished")
        check_choice(status, "status", STATUSES)
        values = {
            "stats": dump_json(check_stats(stats, "stats", self._limits), "stats"),
            "error": None if error is None else check_text(error, "error"),
        }
        if content is not None:
            values["content"] = check_text(content, "content")
        if prompt:
            self._extra["prompt"] = check_tokens(prompt, "prompt", self._limits)
            values["extra"] = dump_json(self._extra, "extra")
        self._save(values, status=status)
        self.finished = True
        return self._file.read(lambda db: tree.get(db, self.owner, self.message_id))

    def finish_stream(
        self, stop_reason: str | None, stats: dict[str, Any] | None = None, *, content: str | None = None,
        prompt: list[dict[str, Any]] | None = None,
    ) -> Message:
        """End with the engine's outcome: ``stop_reason`` "cancelled", or None when the stream ended
        without a summary (stopped from this side), saves "cancelled"; any other reason "complete"."""
        status: Status = "cancelled" if stop_reason in (None, "cancelled") else "complete"
        return self.finish(status, stats, content=content, prompt=prompt)

    def fail(self, error: BaseException | str) -> Message:
        """End as "failed". An exception is saved as ``"<Type>: <message>"``, a string as it is."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        return self.finish("failed", error=error)

    def close(self) -> Message | None:
        """Mark the answer "cancelled" unless it already ended; returns it, or None if it had ended.
        Call it in a ``finally`` so an answer never stays "partial"."""
        return None if self.finished else self.finish("cancelled")

    def _save(self, values: dict[str, Any], *, status: str) -> None:
        tokens = list(self.tokens)
        row = {
            "content": check_text("".join(t["text"] for t in tokens), "content"),
            "tokens": dump_json(tokens, "tokens"),
            "status": status,
            "writer": process_identity() if status == "partial" else None,
            **values,
        }

        def op(db: Database) -> None:
            now = now_iso()
            row["updated"] = now
            cur = db.execute(
                "UPDATE messages SET " + ", ".join(f"{k} = ?" for k in row) + " WHERE id = ?",
                [*row.values(), self.message_id],
            )
            if cur.rowcount != 1:
                raise NotFound(f"message {self.message_id} was deleted while it was being written")
            if status != "partial":
                db.execute(
                    "UPDATE conversations SET updated = ? WHERE id = ?", [now, self.conversation_id]
                )

        self._file.write(op)
        self.flushes += 1
        self._flushed_count = len(tokens)
        self._last_flush = self._clock()

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """No exception: "complete"; the generator closed (GeneratorExit, e.g. Stop) or Ctrl-C:
        "cancelled"; any other exception: "failed" with it (the exception still propagates)."""
        if self.finished:
            return
        if exc_type is None:
            self.finish("complete")
        elif issubclass(exc_type, (GeneratorExit, KeyboardInterrupt)):
            self.close()
        else:
            self.fail(exc if exc is not None else exc_type())
