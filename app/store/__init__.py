"""Huginn Studio's conversation store: conversations, branches and per-token depth records in SQLite.

This module knows nothing of Gradio, torch or the engine: it takes and returns plain Python values
(str, int, float, dict, list) so the app, the tests and scripts can all use it.

Schema (version ``SCHEMA_VERSION``, kept in ``PRAGMA user_version``)
--------------------------------------------------------------------

``conversations``
    ``id`` INTEGER PRIMARY KEY AUTOINCREMENT, ``owner`` TEXT (the owner key; every query filters on it),
    ``title`` TEXT (one clean line), ``auto_title`` INTEGER (1 while the title may still be replaced by one made from
    the first user message; renaming clears it), ``created`` / ``updated`` TEXT (UTC ISO 8601 with
    microseconds, so text order is time order), ``current_leaf`` INTEGER -> messages.id (the message
    the UI shows last; NULL for an empty conversation), ``extra`` TEXT (JSON object or NULL).

``messages`` -- a tree per conversation
    ``id`` INTEGER PRIMARY KEY AUTOINCREMENT, ``conversation_id`` -> conversations.id (ON DELETE CASCADE),
    ``parent_id`` -> messages.id (NULL for a root; several roots are allowed, so editing the first
    message makes a sibling root), ``role`` (system | user | assistant), ``kind`` (free text,
    "message" by default; e.g. "comparison" for a saved depth-arena run), ``content`` TEXT,
    ``created`` / ``updated`` TEXT, ``status`` (complete | cancelled | failed | partial |
    interrupted: its writing process died, found at open), ``error``
    TEXT, and for answers: ``model_id``, ``model_revision``, ``quantization`` TEXT, ``settings``
    (JSON object as given: num_steps, criterion, exit_threshold, ...), ``tokens`` (JSON list of
    ``{"text": str, "steps": int, "exit_value": float | null}``), ``stats`` (JSON object: tokens,
    tokens_per_s, mean_steps, ...), ``extra`` (JSON object), ``writer`` (host, pid and start time of
    the process writing a partial answer). The JSON records are checked on every write and import
    against one definition (``fields.py``) and a ``RecordLimits``.

``traces``
    ``message_id`` INTEGER PRIMARY KEY -> messages.id (ON DELETE CASCADE), ``data`` BLOB: an answer's
    depth-lens trace as zlib-compressed JSON (format and the ``MAX_TRACE_BYTES`` cap in ``traces.py``).
    Exported and imported as the message's ``trace`` field.

``messages_fts`` / ``conversations_fts``
    FTS5 external-content indexes on ``messages.content`` and ``conversations.title``, kept current
    by sqlite-utils' triggers. Ids are INTEGER PRIMARY KEYs because external-content FTS keys on
    rowid, and VACUUM may renumber a rowid that is not an alias of the primary key.

``owner_bytes``
    ``owner`` TEXT PRIMARY KEY, ``bytes`` INTEGER: each owner's stored bytes (``quota.stored_bytes``) as a running
    total, ``conversations`` INTEGER: how many they hold, ``touched`` REAL: unix time of their last added row or
    change (what retention reads; indexed), kept by triggers on the three tables above in the transaction of every
    write, and a row for everyone together (owner ``TOTAL_OWNER``, hidden rows left out), kept by triggers on this
    table (``quota.py``).

``meta``
    key/value TEXT; ``last_opened`` is rewritten at every open, which doubles as the write probe.

The ids of ``conversations`` and ``messages`` are AUTOINCREMENT: never given twice, so a stale tab holding a deleted
conversation's id finds nothing rather than a newer conversation.

Editing or regenerating never overwrites: it adds a message with the same parent (a sibling), and
``current_leaf`` follows the newest message. Forward migrations in ``MIGRATIONS`` run at open, in
one transaction; a file from a newer version is refused untouched.

Safety
------
WAL journal, ``synchronous=FULL``, foreign keys on, a busy timeout and a retry loop around every
transaction (so "database is locked" never reaches the user; after ``lock_timeout`` seconds it
becomes a ``StoreBusy`` with a clear message). Every public write is one ``BEGIN IMMEDIATE``
transaction; imports and deletes are split into short ones. A file that is not a valid SQLite database or fails ``PRAGMA integrity_check`` is
renamed to ``<name>.corrupt-<timestamp>`` (never overwritten) and ``Store.recovered_from`` says
where it went. An unwritable location raises ``StoreLocationError`` in ``Store()``.

Text is stored exactly as given (titles: one line, ``checks.clean_title``), NUL characters included
(SQL functions such as ``length()`` stop at a NUL, the store does not use them on content). Strings that
are not valid Unicode (lone surrogates) are refused with ``InvalidData``, as is content over
``MAX_CONTENT_BYTES``.
"""

# The package is split by what each module holds: records.py (constants, errors, record types),
# checks.py (checks of plain values), fields.py (the records a message holds), schema.py (schema version and migrations), connection.py (the
# SQLite file: opening, recovery, transactions), conversations.py, tree.py (messages and their tree),
# search.py, quota.py (per-owner and server-wide caps), retention.py (deleting what stale owners left),
# transfer.py (export documents, import checks and writes),
# markdown.py (the Markdown export), writer.py (AnswerWriter) and core.py (the Store facade).
from __future__ import annotations

from .core import Store, default_db_path, new_owner_key
from .records import (
    DEFAULT_TITLE,
    ENV_VAR,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    LEAF,
    LOCAL_OWNER,
    MAX_CONTENT_BYTES,
    ROLES,
    STATUSES,
    Conversation,
    ImportInvalid,
    InvalidData,
    Message,
    NotFound,
    RecordLimits,
    SearchHit,
    ServerFull,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreLocationError,
)
from .schema import SCHEMA_VERSION
from .traces import MAX_TRACE_BYTES, check_trace
from .traces import prepare as prepare_trace
from .writer import AnswerWriter

__all__ = [
    "DEFAULT_TITLE",
    "ENV_VAR",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "LEAF",
    "LOCAL_OWNER",
    "MAX_CONTENT_BYTES",
    "MAX_TRACE_BYTES",
    "ROLES",
    "SCHEMA_VERSION",
    "STATUSES",
    "AnswerWriter",
    "Conversation",
    "ImportInvalid",
    "InvalidData",
    "Message",
    "NotFound",
    "RecordLimits",
    "SearchHit",
    "ServerFull",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreFull",
    "StoreLocationError",
    "check_trace",
    "default_db_path",
    "new_owner_key",
    "prepare_trace",
]
