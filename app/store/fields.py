"""The shapes of the JSON records a message holds: settings, token records, stats, and the columns
of a saved comparison. One definition, checked on every write and on every import, so an imported
file can hold nothing the app would not have written itself."""

from __future__ import annotations

from typing import Any

from .checks import (
    check_choice,
    check_object,
    check_optional_text,
    check_text,
    dump_json,
)
from .records import MAX_CONTENT_BYTES, ROLES, STATUSES, InvalidData, RecordLimits, shown
from .traces import check_trace

_INT_BOUND = 2**63  # SQLite's integers; also keeps formatting of any value cheap
MAX_COLUMNS = 16  # columns of one saved comparison
_SHORT = 1_000  # characters of a label, a stop reason or an unknown scalar value

_COLUMN_KEYS = {"label", "settings", "tokens", "content", "stats", "trace", "prompt"}


def _plain(value: Any) -> Any:
    # numpy/torch scalars reach us from the engine; check and keep their values.
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (int, float, str)) else value


def check_number(
    value: Any, field: str, low: float, high: float | None, *, integer: bool
) -> int | float | None:
    """None, or a finite number (an integer when ``integer``) from ``low`` to ``high``."""
    value = _plain(value)
    if value is None:
        return None
    top = _INT_BOUND - 1 if high is None else high
    rule = f"{field} must be {'an integer' if integer else 'a number'} from {low:g} to {top:g}"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InvalidData(f"{rule}, not {type(value).__name__}")
    if not low <= value <= top:  # the bounds are finite: NaN, inf and an int past a float's range fail it
        raise InvalidData(f"{rule}, got {shown(value)}")
    return value


def _no_unknown(obj: dict[str, Any], known: set[str], field: str) -> None:
    unknown = sorted(map(str, set(obj) - known))
    if unknown:
        raise InvalidData(f"{field} has unknown fields: {', '.join(shown(k) for k in unknown[:5])}")


def _check_scalar(value: Any, field: str) -> Any:
    value = _plain(value)
    if isinstance(value, str):
        return check_text(value, field, _SHORT * 4)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return check_number(value, field, -_INT_BOUND, None, integer=False)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidData(f"{field} must be a string, number, true/false or null, not {type(value).__name__}")


def _checked(record: Any, value: Any, where: str) -> dict[str, Any]:
    """``value`` through a record definition the app gave (``engine.records``), or as a plain object."""
    if record is None:
        return _check_plain(value, where)
    try:
        return record.check(value, where)
    except Exception as exc:  # noqa: BLE001 - any refusal of the definition is a bad value
        raise InvalidData(str(exc)[:500]) from None


def _check_plain(obj: Any, field: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidData(f"{field} must be an object, not {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidData(f"{field} has a key that is not a string")
        check_text(key, f"{field} key {shown(key)}", _SHORT * 4)
        where = f"{field}.{key if len(key) <= 40 and key.isprintable() else shown(key)}"
        if isinstance(value, (list, tuple)):  # stop strings
            out[key] = [check_text(s, f"{where}[{i}]", _SHORT * 4) for i, s in enumerate(value)]
        else:
            out[key] = _check_scalar(value, where)
    return out


def check_tokens(tokens: Any, field: str, limits: RecordLimits) -> list[dict[str, Any]] | None:
    """A list of token records (``RecordLimits.token``)."""
    if tokens is None:
        return None
    if not isinstance(tokens, list):
        raise InvalidData(f"{field} must be a list of token records, not {type(tokens).__name__}")
    if len(tokens) > limits.max_tokens:
        raise InvalidData(f"{field} has {len(tokens):,} token records; the limit is {limits.max_tokens:,}")
    return [_checked(limits.token, tok, f"{field}[{i}]") for i, tok in enumerate(tokens)]


def check_stats(stats: Any, field: str, limits: RecordLimits) -> dict[str, Any] | None:
    """An answer's stats (``RecordLimits.stats``)."""
    if check_object(stats, field) is None:
        return None
    return _checked(limits.stats, stats, field)


def check_settings(settings: Any, field: str, limits: RecordLimits) -> dict[str, Any] | None:
    """Generation settings: plain values (lists of strings for stop strings), then the app's own validator when it
    gave one."""
    if check_object(settings, field) is None:
        return None
    out = _check_plain(settings, field)
    if limits.settings_validator is not None:
        try:
            limits.settings_validator(dict(out))
        except Exception as exc:  # noqa: BLE001 - any refusal of the app's validator is a bad value
            raise InvalidData(f"{field}: {str(exc)[:300]}") from None
    return out


def check_extra(extra: Any, field: str, limits: RecordLimits) -> dict[str, Any] | None:
    """A message's extra object: ``system`` (text) and ``columns`` (a saved comparison) typed, the
    rest free JSON (its depth and size are checked when it is encoded)."""
    if check_object(extra, field) is None:
        return None
    out = dict(extra)
    if extra.get("system") is not None:
        out["system"] = check_text(extra["system"], f"{field}.system")
        cap = limits.max_system_chars
        if cap is not None and len(out["system"]) > cap:
            raise InvalidData(f"{field}.system: the system prompt is {len(out['system']):,} characters; "
                              f"the limit here is {cap:,}")
    if "prompt" in extra:  # the prompt positions' token records: what each received (render.prompt_depth)
        out["prompt"] = check_tokens(extra["prompt"], f"{field}.prompt", limits)
    if "columns" in extra:
        columns = extra["columns"]
        if not isinstance(columns, list) or len(columns) > MAX_COLUMNS:
            raise InvalidData(f"{field}.columns must be a list of at most {MAX_COLUMNS} columns")
        out["columns"] = [_check_column(c, f"{field}.columns[{i}]", limits) for i, c in enumerate(columns)]
    return out


def _check_column(column: Any, field: str, limits: RecordLimits) -> dict[str, Any]:
    if not isinstance(column, dict):
        raise InvalidData(f"{field} must be an object")
    _no_unknown(column, _COLUMN_KEYS, field)
    out = dict(column)
    if column.get("label") is not None:
        out["label"] = check_text(column["label"], f"{field}.label", _SHORT * 4)
    if column.get("content") is not None:
        out["content"] = check_text(column["content"], f"{field}.content")
    for key, check in (("settings", check_settings), ("tokens", check_tokens), ("stats", check_stats),
                       ("prompt", check_tokens)):
        if key in column:
            out[key] = check(column[key], f"{field}.{key}", limits)
    if "trace" in column:  # the column's depth-lens trace (app.store.traces)
        out["trace"] = check_trace(column["trace"], f"{field}.trace")
    return out


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
    limits: RecordLimits = RecordLimits(),
    field: str = "",
) -> dict[str, Any]:
    """The checked, JSON-encoded columns of a message (everything but its place in the tree).

    Validation and encoding happen before any transaction, so a bad argument writes nothing.
    ``field`` prefixes the names in error messages (e.g. ``conversations[0].messages[3].``).
    """
    f = field
    return {
        "role": check_choice(role, f"{f}role", ROLES),
        "content": check_text(content, f"{f}content", MAX_CONTENT_BYTES),
        "kind": check_text(kind, f"{f}kind", 200),
        "status": check_choice(status, f"{f}status", STATUSES),
        "error": None if error is None else check_text(error, f"{f}error"),
        "model_id": check_optional_text(model_id, f"{f}model_id"),
        "model_revision": check_optional_text(model_revision, f"{f}model_revision"),
        "quantization": check_optional_text(quantization, f"{f}quantization"),
        "settings": dump_json(check_settings(settings, f"{f}settings", limits), f"{f}settings"),
        "tokens": dump_json(check_tokens(tokens, f"{f}tokens", limits), f"{f}tokens"),
        "stats": dump_json(check_stats(stats, f"{f}stats", limits), f"{f}stats"),
        "extra": dump_json(check_extra(extra, f"{f}extra", limits), f"{f}extra"),
    }
