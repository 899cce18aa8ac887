"""The store's constants, errors and the records it returns (plain frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

EXPORT_FORMAT = "huginn-studio.conversations"
EXPORT_VERSION = 1
ENV_VAR = "HUGINN_STUDIO_DB"
LOCAL_OWNER = "local"
DEFAULT_TITLE = "New conversation"
# Owner of rows being imported or deleted, invisible to everyone (no owner key may start with NUL);
# rows a killed process left under it are deleted at the next open.
HIDDEN_OWNER = "\x00hidden"
TOTAL_OWNER = "\x00total"  # the ``owner_bytes`` row of every owner's totals together (``quota.server_totals``)
LEAF = "leaf"  # parent_id value meaning "the conversation's current leaf"

ROLES = ("system", "user", "assistant")
# "partial": being written; "interrupted": was being written by a process that died (set at open).
STATUSES = ("complete", "cancelled", "failed", "partial", "interrupted")
Role = Literal["system", "user", "assistant"]
Status = Literal["complete", "cancelled", "failed", "partial", "interrupted"]

MAX_CONTENT_BYTES = 10 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_TITLE_CHARS = 500
MAX_OWNER_CHARS = 256
MAX_IMPORT_BYTES = 512 * 1024 * 1024
# Lists and objects inside one another; deeper values are refused (json and the page recurse).
MAX_JSON_DEPTH = 32
AUTO_TITLE_CHARS = 48



class RecordCheck(Protocol):
    """One record's definition (``engine.records.Record``): the record checked, or an exception naming the field."""

    def check(self, data: Any, where: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RecordLimits:
    """What one message's records may hold, checked on every write and import, and the caps of one
    import. The app passes its engine's definitions (the store never imports the engine); without
    them a record is only checked to be an object of plain values.

    ``token`` and ``stats`` check each token record and an answer's stats (``engine.records.TOKEN``
    and ``STATS``). ``settings_validator`` is called with a copy of every settings object (an
    answer's, a comparison column's) and raises (any exception; its message is shown) when the
    settings are not valid generation settings, e.g. ``engine.GenerationSettings.from_dict``. Its
    return value is unused: the settings are stored as given.
    """

    max_tokens: int = 65_536  # token records of one answer or comparison column
    max_conversations: int = 10_000  # conversations in one import
    max_messages: int = 100_000  # messages in one import, all conversations together
    # What one owner may hold in all (``quota.py``); None: no cap. A hosted app sets them, so that fresh visitors
    # cannot fill the server's disk one import after another.
    max_owner_conversations: int | None = None
    max_owner_bytes: int | None = None  # message text, JSON records and compressed traces, as stored
    # What all owners together may hold; None: no cap. Fresh owner keys cost nothing, so only these bound the file.
    max_server_conversations: int | None = None
    max_server_bytes: int | None = None
    token: RecordCheck | None = None
    stats: RecordCheck | None = None
    settings_validator: Callable[[dict[str, Any]], object] | None = None
    max_system_chars: int | None = None  # a system prompt kept in a message's extra (the app's cap)


# --------------------------------------------------------------------------------------- errors
class StoreError(Exception):
    """Any failure of the store; the message is meant to be shown to the user as is.

    Messages are plain text: angle brackets (which could only come from user data, such as a field
    name in an imported file) are shown as ‹ ›, so no message carries HTML markup, and a lone
    surrogate as its escape, so every message encodes. Messages of
    errors raised after open never name the database's path (hosted visitors see them); only
    ``StoreLocationError`` at open does, for the person starting the app.
    """

    def __init__(self, message: str = "") -> None:
        # A lone surrogate from user data would break whoever encodes the message: show its escape.
        plain = message.translate(_PLAIN).encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(plain)


_PLAIN = str.maketrans({"<": "‹", ">": "›"})


def shown(value: object, limit: int = 40) -> str:
    """A value from user data as an error message quotes it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StoreLocationError(StoreError):
    """The database location cannot be used (unwritable, not a Huginn Studio file, newer schema)."""


class NotFound(StoreError):
    """No such conversation or message for this owner (another owner's rows are "not found")."""


class InvalidData(StoreError):
    """An argument was refused (bad role, too large, not valid Unicode, not JSON-serialisable)."""


class ImportInvalid(InvalidData):
    """An import file was refused; nothing was written. The message names the offending field."""


class StoreFull(StoreError):
    """A per-owner cap (``RecordLimits.max_owner_conversations``, ``max_owner_bytes``) refused a write; nothing was
    written and nothing saved changed."""


class ServerFull(StoreFull):
    """A cap of the whole server (``RecordLimits.max_server_conversations``, ``max_server_bytes``) refused a write;
    nothing was written and nothing saved changed. The message says it is not the visitor's doing."""

    def __init__(self, why: str) -> None:
        super().__init__(f"This server's storage for conversations is full ({why}); that is not something you did, "
                         "and nothing already saved was lost. New conversations and messages cannot be kept until "
                         "older ones are deleted; try again later.")


class StoreBusy(StoreError):
    """The database stayed locked by another writer for longer than ``lock_timeout``."""


# ---------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Conversation:
    id: int
    owner: str
    title: str
    created: str
    updated: str
    current_leaf: int | None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    kind: str
    content: str
    created: str
    updated: str
    status: str
    error: str | None = None
    model_id: str | None = None
    model_revision: str | None = None
    quantization: str | None = None
    settings: dict[str, Any] | None = None
    tokens: list[dict[str, Any]] | None = None
    stats: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class SearchHit:
    """One conversation matching a search; ``message_id`` is None when only the title matched.

    ``snippet`` is raw stored text with the matches wrapped in the ``highlight`` markers: escape it
    before putting it into HTML.
    """

    conversation_id: int
    title: str
    updated: str
    message_id: int | None
    snippet: str


# ----------------------------------------------------------------------------------- timestamps
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
