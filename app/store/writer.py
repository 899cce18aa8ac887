"""``AnswerWriter``: saves a streamed answer as it arrives."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from .checks import _check_choice, _check_object, _check_text, _check_tokens, _dump_json
from .records import STATUSES, Message, NotFound, Status, StoreError, _now

if TYPE_CHECKING:
    from .core import Store


class AnswerWriter:
    """Saves a streamed answer as it arrives. Made by ``Store.begin_answer``.

    ``add_token`` keeps tokens in memory and writes them when ``flush_interval`` seconds have passed
    since the last write; each write is one transaction that replaces content and tokens together,
    so the row is never half-written and a killed process loses at most ``flush_interval`` seconds.
    Usable from any thread (the store gives each thread its own connection), not from two at once.
    """

    def __init__(self, store: Store, owner: str, message: Message, flush_interval: float) -> None:
        self.store = store
        self.owner = owner
        self.message_id: int = message.id
        self.conversation_id: int = message.conversation_id
        self.tokens: list[dict[str, Any]] = []
        self.flush_interval = flush_interval
        self.finished: bool = False
        self.flushes = 0
        self._flushed_count = 0
        self._last_flush = time.monotonic()

    @property
    def content(self) -> str:
        return "".join(t["text"] for t in self.tokens)

    def add_token(self, text: str, steps: int, exit_value: float | None = None) -> None:
        """Record one generated token with the recurrent steps it took and its exit value."""
        if self.finished:
            raise StoreError(f"answer {self.message_id} is already finished")
        _check_tokens([{"text": text, "steps": steps, "exit_value": exit_value}], "token")
        _check_text(text, "token text")
        self.tokens.append({"text": text, "steps": steps, "exit_value": exit_value})
        if time.monotonic() - self._last_flush >= self.flush_interval:
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
    ) -> Message:
        """Write the final state. ``content`` replaces the joined token texts when given (e.g. the
        detokenised text, which can differ from the pieces)."""
        if self.finished:
            raise StoreError(f"answer {self.message_id} is already finished")
        _check_choice(status, "status", STATUSES)
        values = {
            "stats": _dump_json(_check_object(stats, "stats"), "stats"),
            "error": None if error is None else _check_text(error, "error"),
        }
        if content is not None:
            values["content"] = _check_text(content, "content")
        self._save(values, status=status)
        self.finished = True
        return self.store.get_message(self.owner, self.message_id)

    def _save(self, values: dict[str, Any], *, status: str) -> None:
        tokens = list(self.tokens)
        row = {
            "content": _check_text("".join(t["text"] for t in tokens), "content"),
            "tokens": _dump_json(tokens, "tokens"),
            "status": status,
            **values,
        }

        def op(db: Database) -> None:
            now = _now()
            row["updated"] = now
            cur = db.execute(
                "UPDATE messages SET "
                + ", ".join(f"{k} = ?" for k in row)
                + " WHERE id = ?",
                [*row.values(), self.message_id],
            )
            if cur.rowcount != 1:
                raise NotFound(f"message {self.message_id} was deleted while it was being written")
            if status != "partial":
                db.execute(
                    "UPDATE conversations SET updated = ? WHERE id = ?", [now, self.conversation_id]
                )

        self.store._write(op)
        self.flushes += 1
        self._flushed_count = len(tokens)
        self._last_flush = time.monotonic()

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.finished:
            return
        if exc_type is None:
            self.finish("complete")
        elif issubclass(exc_type, (GeneratorExit, KeyboardInterrupt)):
            self.finish("cancelled")
        else:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")
