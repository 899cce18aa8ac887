"""The ``Store`` class: the public face of the store, one method per query or write.

Each method checks its arguments, then runs one function of the module that holds the data it
touches (conversations, tree, search, transfer) inside one transaction of the ``StoreFile``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from sqlite_utils import Database

from . import conversations, markdown, quota, retention, search, traces, transfer, tree
from .checks import check_object, check_owner, check_text, check_title, dump_json
from .fields import message_row
from .connection import StoreFile
from .records import (
    ENV_VAR,
    HIDDEN_OWNER,
    LEAF,
    Conversation,
    InvalidData,
    Message,
    RecordLimits,
    Role,
    SearchHit,
    Status,
    StoreError,
)
from .writer import AnswerWriter, mark_interrupted, process_identity


log = logging.getLogger("app.store")


def default_db_path() -> Path:
    """``$HUGINN_STUDIO_DB`` if set, else ``<user data dir>/huginn-studio/huginn-studio.db``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("huginn-studio", appauthor=False)) / "huginn-studio.db"


def new_owner_key() -> str:
    """A fresh unguessable owner key, e.g. for a browser when the app is hosted for many people."""
    return secrets.token_urlsafe(24)


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
        limits: RecordLimits = RecordLimits(),
    ) -> None:
        self.path: Path = Path(path).expanduser() if path is not None else default_db_path()
        self.limits = limits
        """What every write and (unless ``import_json`` gets its own) every import is checked against."""
        self.file = StoreFile(self.path, lock_timeout=lock_timeout, busy_timeout=busy_timeout)
        try:
            # How many answers left "partial" by a process that died were marked "interrupted".
            self.interrupted: int = self.file.write(mark_interrupted)
            hidden = self.file.read(conversations.hidden_ids)  # left by a killed import or delete
            self.file.write_in_steps(lambda db, deadline: conversations.delete_step(db, hidden, deadline))
        except BaseException:
            self.file.close()
            raise

    @property
    def closed(self) -> bool:
        """True once ``close`` was called (a background cleanup stops then)."""
        return self.file.closed

    @property
    def recovered_from(self) -> Path | None:
        """Where a corrupt file found at open was moved (the app should tell the user), or None."""
        return self.file.recovered_from

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        self.file.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` of the open database: "ok" when healthy."""
        return self.file.integrity_check()

    def _read(self, owner: str, fn: Callable[[Database], Any]) -> Any:
        check_owner(owner)
        return self.file.read(fn)

    def _write(self, owner: str, fn: Callable[[Database], Any]) -> Any:
        check_owner(owner)
        return self.file.write(fn)

    # ------------------------------------------------------------------------ conversations
    def create_conversation(
        self, owner: str, title: str | None = None, *, extra: dict[str, Any] | None = None
    ) -> Conversation:
        """A new empty conversation. Without a title, the first user message will name it."""
        if title is not None:
            title = check_title(title)
        extra_json = dump_json(check_object(extra, "extra"), "extra")

        def create(db: Database) -> Conversation:
            quota.check_room(db, owner, self.limits, conversations=1,
                             new_bytes=quota.conversation_bytes(title, extra_json))
            return conversations.create(db, owner, title, extra_json)

        return self._write(owner, create)

    def get_conversation(self, owner: str, conversation_id: int) -> Conversation:
        return self._read(owner, lambda db: conversations.get(db, owner, conversation_id))

    def list_conversations(
        self, owner: str, *, limit: int | None = None, offset: int = 0
    ) -> list[Conversation]:
        """The owner's conversations, most recently updated first."""
        return self._read(owner, lambda db: conversations.listing(db, owner, limit, offset))

    def rename_conversation(self, owner: str, conversation_id: int, title: str) -> Conversation:
        """Give a conversation a title (one line: control characters dropped, whitespace folded)."""
        title = check_title(title)
        if not title:
            raise InvalidData("title has no visible characters")
        return self._write(owner, lambda db: conversations.rename(db, owner, conversation_id, title))

    def delete_conversation(self, owner: str, conversation_id: int) -> None:
        """Delete a conversation and all its messages (and their search index entries).

        It disappears at once; a long one is then deleted in short transactions.
        """
        self._write(owner, lambda db: conversations.hide(db, owner, conversation_id))
        self.file.write_in_steps(lambda db, deadline: conversations.delete_step(db, [conversation_id], deadline))

    def delete_stale(self, idle_seconds: float) -> int:
        """Delete every conversation of each owner whose last change is more than ``idle_seconds`` ago (a hosted
        server's retention; a local app never calls it), least recently active owner first, a batch at a time: hidden
        in short transactions, then deleted in short transactions, so visitors' writes get their turns in between.
        A change is an added or changed row (a message, an answer's flush, a rename, an import), not a read. Returns
        how many conversations were deleted."""
        if not (isinstance(idle_seconds, (int, float)) and idle_seconds > 0):
            raise InvalidData(f"idle_seconds must be a positive number of seconds, not {idle_seconds!r}")
        cutoff = time.time() - idle_seconds
        deleted = 0
        while True:
            batch: list[int] = []
            self.file.write_in_steps(lambda db, deadline: retention.hide_stale_step(db, cutoff, batch, deadline))
            if not batch:
                return deleted
            self.file.write_in_steps(lambda db, deadline: conversations.delete_step(db, batch, deadline))
            deleted += len(batch)

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
        row = message_row(
            role=role, content=content, kind=kind, status=status, error=error, model_id=model_id,
            model_revision=model_revision, quantization=quantization, settings=settings,
            tokens=tokens, stats=stats, extra=extra, limits=self.limits,
        )  # fmt: skip
        return self._write(owner, lambda db: self._insert(db, owner, conversation_id, parent_id, row))

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
        clock: Callable[[], float] = time.monotonic,
    ) -> AnswerWriter:
        """Start a streamed assistant answer: the row exists at once, with status "partial".

        Feed tokens to the returned writer and end it with one of its ending methods, or use it as
        a context manager. ``clock`` times the flushes (tests pass a fake one).
        """
        row = message_row(
            role="assistant", content="", kind=kind, status="partial", model_id=model_id,
            model_revision=model_revision, quantization=quantization, settings=settings, tokens=[],
            extra=extra, limits=self.limits,
        )  # fmt: skip
        row["writer"] = process_identity()
        # Only the start is checked against the owner's caps: an answer's growth is bounded by its settings.
        message = self._write(owner, lambda db: self._insert(db, owner, conversation_id, parent_id, row))
        return AnswerWriter(self.file, owner, message, flush_interval, clock, self.limits)

    def _insert(self, db: Database, owner: str, conversation_id: int, parent_id: int | None | Literal["leaf"],
                row: dict[str, Any]) -> Message:
        quota.check_room(db, owner, self.limits, new_bytes=quota.row_bytes(row))
        return tree.insert(db, owner, conversation_id, parent_id, row)

    def get_message(self, owner: str, message_id: int) -> Message:
        return self._read(owner, lambda db: tree.get(db, owner, message_id))

    def messages(self, owner: str, conversation_id: int) -> list[Message]:
        """Every message of a conversation, all branches, oldest first."""
        return self._read(owner, lambda db: tree.all_of(db, owner, conversation_id))

    def thread(
        self, owner: str, conversation_id: int, leaf_id: int | None = None
    ) -> list[Message]:
        """The branch from its root to ``leaf_id`` (default: the current leaf), root first."""
        return self._read(owner, lambda db: tree.thread(db, owner, conversation_id, leaf_id))

    def children(self, owner: str, message_id: int) -> list[Message]:
        """Direct replies to a message, oldest first."""
        return self._read(owner, lambda db: tree.children(db, owner, message_id))

    def siblings(self, owner: str, message_id: int) -> list[Message]:
        """The message and its alternatives (same parent, same conversation), oldest first.

        The UI shows "i / n" with ``[m.id for m in siblings].index(message_id) + 1``.
        """
        return self._read(owner, lambda db: tree.siblings(db, owner, message_id))

    def sibling_ids(self, owner: str, conversation_id: int) -> dict[int | None, list[int]]:
        """Every message id of a conversation grouped by parent id (None: the roots), oldest first:
        the siblings of every message in one query, for drawing "i / n" along a whole thread."""
        return self._read(owner, lambda db: tree.sibling_ids(db, owner, conversation_id))

    def set_current_leaf(
        self, owner: str, conversation_id: int, message_id: int, *, descend: bool = True
    ) -> Message:
        """Show the branch through ``message_id``; returns the new current leaf.

        With ``descend`` the leaf is the newest message below ``message_id`` (following the newest
        child at each level), which is what switching to a sibling branch wants.
        """
        return self._write(
            owner, lambda db: tree.set_current_leaf(db, owner, conversation_id, message_id, descend)
        )

    # ------------------------------------------------------------------------------- traces
    def save_trace(self, owner: str, message_id: int, trace: dict[str, Any]) -> dict[str, Any]:
        """Keep an answer's depth-lens trace (``app.store.traces``): checked, cut to ``MAX_TRACE_BYTES`` (then
        marked ``cut``), compressed. Returns what was kept."""
        kept = traces.prepare(trace)
        self._write(owner, lambda db: traces.save(db, owner, message_id, kept))
        return kept

    def trace(self, owner: str, message_id: int) -> dict[str, Any] | None:
        return self._read(owner, lambda db: traces.get(db, owner, message_id))

    def traces(self, owner: str, conversation_id: int) -> dict[int, dict[str, Any]]:
        """The traces of a conversation's answers, by message id."""
        return self._read(owner, lambda db: traces.for_conversation(db, owner, conversation_id))

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
        check_owner(owner)
        query = search.clean_query(check_text(query, "query", 10_000))
        if not query.strip():
            return []
        return self.file.read(lambda db: search.search(db, owner, query, limit, highlight))

    # ------------------------------------------------------------------------ import/export
    def export_data(self, owner: str, conversation_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Lossless export as a JSON-ready dict (see ``import_json``)."""
        ids = None if conversation_ids is None else list(conversation_ids)
        return self._read(owner, lambda db: transfer.export_data(db, owner, ids))

    def export_json(self, owner: str, conversation_ids: Iterable[int] | None = None) -> str:
        """One conversation, several, or all (None) of the owner's, as JSON text."""
        # Stored JSON is finite (``dump_json``, ``load_json``): allow_nan=False keeps the export strict JSON.
        return json.dumps(self.export_data(owner, conversation_ids), ensure_ascii=False, indent=1, allow_nan=False)

    def export_markdown(self, owner: str, conversation_ids: Iterable[int] | None = None) -> str:
        """A readable Markdown transcript of the current branch of each conversation."""
        return markdown.render(self.export_data(owner, conversation_ids))

    def import_json(
        self, owner: str, data: str | bytes | Mapping[str, Any], limits: RecordLimits | None = None
    ) -> list[Conversation]:
        """Import an export (text, bytes or parsed dict) as new conversations of ``owner``.

        The whole file is checked first, every field against ``limits`` (default: the store's);
        any problem raises ``ImportInvalid`` naming the field, and nothing is written; so does ``StoreFull`` when
        the owner's caps have no room for all of it. The rows are
        then written in short transactions, hidden until all are in, with new ids, and handed to ``owner`` in one
        transaction that checks the caps again (``StoreFull``, and nothing kept, when another import took the room).
        """
        check_owner(owner)
        limits = limits or self.limits
        plans = transfer.plan_import(transfer.parse(data), limits)
        counted = limits.max_owner_bytes is not None or limits.max_server_bytes is not None
        size = transfer.plan_bytes(plans) if counted else 0

        def room(db: Database) -> None:
            quota.check_room(db, owner, limits, len(plans), size)

        self._read(owner, room)  # before writing anything
        importer = transfer.ImportWriter(plans)

        def hand_over(db: Database) -> None:
            room(db)  # again, in the transaction that hands over: two imports at once must not both fit
            importer.hand_over(db, owner)

        try:
            self.file.write_in_steps(importer.write_step)
            self.file.write(hand_over)
        except BaseException:
            self._forget(importer.conversation_ids)
            raise
        ids = importer.conversation_ids
        return self.file.read(lambda db: [conversations.get(db, owner, cid) for cid in ids])

    def _forget(self, conversation_ids: list[int]) -> None:
        """Delete what a failed import wrote, handed over or not (best effort: the next open
        deletes what is still hidden)."""
        def hide_all(db: Database) -> None:
            for cid in conversation_ids:
                db.execute("UPDATE conversations SET owner = ?, current_leaf = NULL WHERE id = ?",
                           [HIDDEN_OWNER, cid])  # fmt: skip

        try:
            self.file.write(hide_all)
            self.file.write_in_steps(lambda db, deadline: conversations.delete_step(db, conversation_ids, deadline))
        except StoreError:
            log.warning("could not delete %d conversations of a failed import", len(conversation_ids))
