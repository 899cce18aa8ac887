"""Validation of the values given to the store; each refusal is an ``InvalidData``."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .records import (
    AUTO_TITLE_CHARS,
    MAX_CONTENT_BYTES,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_OWNER_CHARS,
    MAX_TITLE_CHARS,
    InvalidData,
    shown,
)

# Stored times are compared as text, so each is kept in one form (``now_iso()``'s): an imported time in any ISO 8601
# form Python reads is turned into it (one without an offset is taken as UTC, as an earlier version stored such
# times as given, and its exports must import again), from EARLIEST_TIME to a day from now: "9999-12-31" would sort
# first forever.
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)


def check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_CHARS or owner[0] == "\x00":
        raise InvalidData(f"owner must be a non-empty string of at most {MAX_OWNER_CHARS} characters")
    return owner


def check_text(value: Any, field: str, max_bytes: int = MAX_CONTENT_BYTES) -> str:
    if not isinstance(value, str):
        raise InvalidData(f"{field} must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidData(
            f"{field} is not valid Unicode text (lone surrogate at position {exc.start})"
        ) from None
    if size > max_bytes:
        raise InvalidData(f"{field} is {size:,} bytes; the limit is {max_bytes:,} bytes")
    return value


def check_optional_text(value: Any, field: str) -> str | None:
    return None if value is None else check_text(value, field, MAX_TITLE_CHARS * 4)


def check_time(value: Any, field: str) -> str:
    """An ISO 8601 date (and time), in range, as UTC with microseconds (``now_iso()``'s form); no offset is UTC."""
    text = check_text(value, field, 100)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:  # not a date, or month 13
        raise InvalidData(f"{field} is not an ISO 8601 date and time, e.g. 2026-01-31T12:00:00+00:00; "
                          f"got {shown(text)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    latest = datetime.now(timezone.utc) + timedelta(days=1)
    if not EARLIEST_TIME <= moment <= latest:
        raise InvalidData(f"{field} must be a time from {EARLIEST_TIME.year} to now; got {shown(text)}")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidData(f"{field} must be one of {', '.join(choices)}; got {shown(value)}")
    return value


def _json_default(value: Any) -> Any:
    # numpy/torch scalars and arrays reach us from the engine; keep their values, not their repr.
    for method in ("item", "tolist"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def check_depth(value: Any, field: str, limit: int = MAX_JSON_DEPTH, huge_ints: bool = True) -> Any:
    """Refuse lists and objects nested more than ``limit`` deep (walked without recursion), and unless ``huge_ints``
    integers past a float's range anywhere in them (a JavaScript or jq reader of an export would read those as
    Infinity)."""
    if not isinstance(value, (dict, list, tuple)):
        return value
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise InvalidData(f"{field} is nested more than {limit} levels deep")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1))
            elif not huge_ints and isinstance(child, int) and not isinstance(child, bool) and not fits_float(child):
                raise InvalidData(f"{field} holds an integer of {child.bit_length():,} bits; numbers must fit "
                                  "a float")
    return value


def fits_float(value: int | float) -> bool:
    """Whether a number is finite and within a float's range: False for NaN, infinity and an int past it (10**400),
    on which ``math.isfinite`` raises OverflowError."""
    return abs(value) <= sys.float_info.max


def dump_json(value: Any, field: str) -> str | None:
    if value is None:
        return None
    check_depth(value, field, huge_ints=False)
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and an export holding them would not parse.
        text = json.dumps(value, ensure_ascii=False, default=_json_default, allow_nan=False)
    except ValueError as exc:
        problem = "holds NaN or Infinity; numbers must be finite" if "float" in str(exc) else str(exc)
        raise InvalidData(f"{field} {problem}") from None
    except TypeError as exc:
        raise InvalidData(f"{field}: {exc}") from None
    return check_text(text, field, MAX_JSON_BYTES)


def load_json(text: str | None) -> Any:
    """A stored JSON value; a NaN or Infinity written before the store refused them reads as null, so every export
    is strict JSON. Text that is not JSON (a hand-edited or damaged row; an int past str()'s digit limit) reads as
    the start of that text, a string where a record was expected, which the page shows as a damaged record."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=lambda _: None)
    except (ValueError, TypeError, RecursionError):
        return str(text)[:200]


def check_object(value: Any, field: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise InvalidData(f"{field} must be an object (dict) or None")
    return value


_JOINERS = "\u200c\u200d"  # zero-width (non-)joiners: Persian and Indic spelling and emoji sequences need them


def clean_title(text: str) -> str:
    """One tidy line for the sidebar and the Markdown export's heading: control and format characters (NUL,
    escapes, bidi overrides, zero-width marks) dropped, whitespace (newlines included) folded to single spaces."""
    kept = "".join(ch if ch.isprintable() or ch in _JOINERS else " " if ch.isspace() else "" for ch in text)
    return " ".join(kept.split())


def check_title(value: Any, field: str = "title") -> str:
    """A title as given (a string of at most ``MAX_TITLE_CHARS * 4`` bytes), cleaned as ``clean_title`` does."""
    return clean_title(check_text(value, field, MAX_TITLE_CHARS * 4))


def auto_title(content: str, taken: Collection[str] = ()) -> str | None:
    # The first non-blank line, cleaned; cut at a word where one is near the limit.
    for line in content.splitlines():
        clean = clean_title(line)
        if clean:
            return unique_title(clean if len(clean) <= AUTO_TITLE_CHARS else _cut(clean), taken)
    return None


def _cut(text: str) -> str:
    head = text[: AUTO_TITLE_CHARS - 1]
    space = len(head) if text[len(head)] == " " else head.rfind(" ")
    return (head[:space] if space >= AUTO_TITLE_CHARS // 2 else head).rstrip(" ,.;:-") + "…"


def unique_title(title: str, taken: Collection[str]) -> str:
    """``title``, or ``title (2)``, ``(3)``, ... when the owner already has a conversation of that name: the
    same first question asked twice still gives two entries one can tell apart."""
    taken = set(taken)
    if title not in taken:
        return title
    return next(f"{title} ({n})" for n in range(2, len(taken) + 3) if f"{title} ({n})" not in taken)
