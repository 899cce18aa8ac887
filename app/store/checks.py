"""Validation of the values given to the store; each refusal is an ``InvalidData``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .records import (
    AUTO_TITLE_CHARS,
    MAX_CONTENT_BYTES,
    MAX_JSON_BYTES,
    MAX_OWNER_CHARS,
    MAX_TITLE_CHARS,
    ROLES,
    STATUSES,
    InvalidData,
)


def check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_CHARS:
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


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidData(f"{field} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _json_default(value: Any) -> Any:
    # numpy/torch scalars and arrays reach us from the engine; keep their values, not their repr.
    for method in ("item", "tolist"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dump_json(value: Any, field: str) -> str | None:
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidData(f"{field}: {exc}") from None
    return check_text(text, field, MAX_JSON_BYTES)


def check_tokens(tokens: Any, field: str) -> list[dict[str, Any]] | None:
    if tokens is None:
        return None
    if not isinstance(tokens, list):
        raise InvalidData(f"{field} must be a list of token records")
    for i, tok in enumerate(tokens):
        where = f"{field}[{i}]"
        if not isinstance(tok, dict):
            raise InvalidData(f"{where} must be an object")
        if not isinstance(tok.get("text"), str):
            raise InvalidData(f"{where}.text must be a string")
        steps = tok.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise InvalidData(f"{where}.steps must be a non-negative integer")
        exit_value = tok.get("exit_value")
        if exit_value is not None and (
            isinstance(exit_value, bool) or not isinstance(exit_value, (int, float))
        ):
            raise InvalidData(f"{where}.exit_value must be a number or null")
    return tokens


def check_object(value: Any, field: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise InvalidData(f"{field} must be an object (dict) or None")
    return value


def auto_title(content: str) -> str | None:
    # First non-blank line, control characters dropped and whitespace folded, so the sidebar stays
    # one tidy line whatever the user pasted.
    for line in content.splitlines():
        kept = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in line)
        clean = " ".join(kept.split())
        if clean:
            return clean if len(clean) <= AUTO_TITLE_CHARS else clean[: AUTO_TITLE_CHARS - 1] + "…"
    return None


def message_row(
    *,
    role: Any,
    content: Any,
    kind: Any = "message",
    status: Any = "complete",
    error: Any = None,
    model_id: Any = None,
    model_revision: Any = None,
    quantization: Any = None,
    settings: Any = None,
    tokens: Any = None,
    stats: Any = None,
    extra: Any = None,
) -> dict[str, Any]:
    """The checked, JSON-encoded columns of a message (everything but its place in the tree).

    Validation and encoding happen before any transaction, so a bad argument writes nothing.
    """
    return {
        "role": check_choice(role, "role", ROLES),
        "content": check_text(content, "content"),
        "kind": check_text(kind, "kind", 200),
        "status": check_choice(status, "status", STATUSES),
        "error": None if error is None else check_text(error, "error"),
        "model_id": check_optional_text(model_id, "model_id"),
        "model_revision": check_optional_text(model_revision, "model_revision"),
        "quantization": check_optional_text(quantization, "quantization"),
        "settings": dump_json(check_object(settings, "settings"), "settings"),
        "tokens": dump_json(check_tokens(tokens, "tokens"), "tokens"),
        "stats": dump_json(check_object(stats, "stats"), "stats"),
        "extra": dump_json(check_object(extra, "extra"), "extra"),
    }
