"""Depth-lens traces kept with their answers: checks, the size cap, compression and the ``traces`` table.

A trace is the engine's compact ``AnswerTrace`` form (plain JSON; see ``engine/trace.py``, described again here
because the store must not import the engine)::

    {"version": 1, "top_k": k, "cut": bool, "texts": {"<token id>": str},
     "tokens": [{"index", "token_id", "exit_step", "top": [[id] * <=k] * n, "probs": [[p] * <=k] * n,
                 "kl": [x] * n, "entropy": [x] * n, "latent_change": [x] * n, "xy"?: [[x, y]] * n}]}

with ``n == exit_step`` steps per token, and optionally ``"prompt"``: the prompt positions the answer ran, in the
same form (``index`` into the answer's prompt records, ``token_id`` the prompt's next token, which that position
predicted). A trace is stored as zlib-compressed JSON in its own table (one row per answer; the transcript's queries
never read it). Its JSON may be at most ``MAX_TRACE_BYTES``: a larger one first loses prompt positions (the earliest),
then keeps the tokens from the start that fit and gets ``"cut": true``, which the page shows as "trace cut".
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Callable

from sqlite_utils import Database

from . import tree
from .checks import check_text, fits_float
from .records import InvalidData, shown

TRACE_VERSION = 1
MAX_TRACE_BYTES = 1024 * 1024  # the compact JSON of one answer's trace
MAX_TRACE_TOP_K = 20
MAX_TRACE_STEPS = 4096
MAX_TOKEN_TEXT_BYTES = 1000
_KEYS = {"version", "top_k", "cut", "texts", "tokens"}
_TOKEN_KEYS = {"index", "token_id", "exit_step", "top", "probs", "kl", "entropy", "latent_change"}
_SERIES = ("kl", "entropy", "latent_change")


# ------------------------------------------------------------------------------------------ checks
def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidData(f"{where} must be an integer from {low} to {high}, got {value!r}"[:300])
    return value


def _number(value: Any, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not fits_float(value) \
            or not low <= value <= high:
        raise InvalidData(f"{where} must be a finite number from {low} to {high}, got {shown(value)}"[:300])
    return value


def _list(value: Any, where: str, length: int | None = None, low: int = 0, high: int = MAX_TRACE_STEPS) -> list:
    if not isinstance(value, list):
        raise InvalidData(f"{where} must be a list, not {type(value).__name__}")
    if length is not None and len(value) != length:
        raise InvalidData(f"{where} must have {length} entries (one per step), has {len(value)}")
    if not low <= len(value) <= high:
        raise InvalidData(f"{where} must have {low} to {high} entries, has {len(value)}")
    return value


def _check_token(tok: Any, where: str, top_k: int) -> None:
    if not isinstance(tok, dict):
        raise InvalidData(f"{where} must be an object")
    missing = sorted(_TOKEN_KEYS - set(tok))
    unknown = sorted(set(tok) - _TOKEN_KEYS - {"xy"})
    if missing or unknown:
        raise InvalidData(f"{where}: {'missing ' + ', '.join(missing) if missing else ''}"
                          f"{'; ' if missing and unknown else ''}{'unknown ' + ', '.join(unknown) if unknown else ''}")
    _int(tok["index"], f"{where}.index", 0, 10**9)
    _int(tok["token_id"], f"{where}.token_id", 0, 2**31 - 1)
    n = _int(tok["exit_step"], f"{where}.exit_step", 1, MAX_TRACE_STEPS)
    tops, probs = _list(tok["top"], f"{where}.top", n), _list(tok["probs"], f"{where}.probs", n)
    for s, (ids, ps) in enumerate(zip(tops, probs)):
        _list(ids, f"{where}.top[{s}]", low=1, high=top_k)
        _list(ps, f"{where}.probs[{s}]", len(ids))
        for j, (i, p) in enumerate(zip(ids, ps)):
            _int(i, f"{where}.top[{s}][{j}]", 0, 2**31 - 1)
            _number(p, f"{where}.probs[{s}][{j}]", 0.0, 1.0)
    for name in _SERIES:
        for s, value in enumerate(_list(tok[name], f"{where}.{name}", n)):
            _number(value, f"{where}.{name}[{s}]")
    if "xy" in tok:
        for s, point in enumerate(_list(tok["xy"], f"{where}.xy", n)):
            for j, value in enumerate(_list(point, f"{where}.xy[{s}]", 2)):
                _number(value, f"{where}.xy[{s}][{j}]")


def check_trace(value: Any, field: str = "trace") -> dict[str, Any] | None:
    """A trace as described above, else ``InvalidData`` naming the field; None stays None."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"prompt"} != _KEYS:
        raise InvalidData(f"{field} must be an object with exactly the fields {', '.join(sorted(_KEYS))} "
                          "(and optionally prompt)")
    if value["version"] != TRACE_VERSION or isinstance(value["version"], bool):
        raise InvalidData(f"{field}.version must be {TRACE_VERSION}, got {value['version']!r}"[:300])
    top_k = _int(value["top_k"], f"{field}.top_k", 1, MAX_TRACE_TOP_K)
    if not isinstance(value["cut"], bool):
        raise InvalidData(f"{field}.cut must be true or false")
    texts = value["texts"]
    if not isinstance(texts, dict):
        raise InvalidData(f"{field}.texts must be an object of token id -> text")
    for key, text in texts.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
            raise InvalidData(f"{field}.texts has a key that is not a token id: {key!r}"[:300])
        check_text(text, f"{field}.texts[{key}]", MAX_TOKEN_TEXT_BYTES)
    for part in ("tokens", "prompt"):
        for i, tok in enumerate(_list(value[part], f"{field}.{part}", high=10**7) if part in value else ()):
            _check_token(tok, f"{field}.{part}[{i}]", top_k)
    return value


# -------------------------------------------------------------------------------------- the cap
def _size(trace: dict[str, Any]) -> int:
    return len(json.dumps(trace, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _keep(trace: dict[str, Any], count: int) -> dict[str, Any]:
    tokens = trace["tokens"][:count]
    used = {str(i) for tok in tokens for ids in tok["top"] for i in ids}
    texts = {k: v for k, v in trace["texts"].items() if k in used}
    out = {k: v for k, v in trace.items() if k != "prompt"}  # the prompt's positions are left out first
    return {**out, "texts": texts, "tokens": tokens, "cut": trace["cut"] or count < len(trace["tokens"])}


def _keep_prompt(trace: dict[str, Any], count: int) -> dict[str, Any]:
    """The trace with only the last ``count`` prompt positions (the ones nearest the answer)."""
    prompt = trace["prompt"][len(trace["prompt"]) - count:] if count else []
    used = {str(i) for tok in trace["tokens"] + prompt for ids in tok["top"] for i in ids}
    used |= {str(tok["token_id"]) for tok in prompt}
    return {**trace, "prompt": prompt, "texts": {k: v for k, v in trace["texts"].items() if k in used}}


def _longest(fits: Callable[[int], bool], high: int) -> int:
    low = 0  # invariant: `low` fits, `high` + 1 does not
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def fit_trace(trace: dict[str, Any], max_bytes: int = MAX_TRACE_BYTES) -> dict[str, Any]:
    """The trace itself when its JSON fits ``max_bytes``; else with fewer prompt positions (the latest kept); else
    without them and with the longest prefix of its tokens that fits, marked ``cut``."""
    if _size(trace) <= max_bytes:
        return trace
    if trace.get("prompt") and _size(_keep_prompt(trace, 0)) <= max_bytes:
        count = _longest(lambda n: _size(_keep_prompt(trace, n)) <= max_bytes, len(trace["prompt"]))
        return _keep_prompt(trace, count)
    return _keep(trace, _longest(lambda n: _size(_keep(trace, n)) <= max_bytes, len(trace["tokens"])))


def prepare(trace: Any, field: str = "trace") -> dict[str, Any] | None:
    """Checked and within the cap: what the store keeps of a trace it is given (an answer's or an import's)."""
    return None if trace is None else fit_trace(check_trace(trace, field))


def encode(trace: dict[str, Any]) -> bytes:
    # check_trace let only finite numbers in; allow_nan=False keeps it so should that ever change.
    text = json.dumps(trace, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return zlib.compress(text.encode("utf-8"), 6)


def decode(data: bytes) -> dict[str, Any] | None:
    """A stored trace, or None when the row is damaged (the answer still shows, without its lens)."""
    try:
        return check_trace(json.loads(zlib.decompress(data).decode("utf-8")))
    except (zlib.error, ValueError, TypeError, InvalidData):
        return None


# ------------------------------------------------------------------------------------- the table
def save(db: Database, owner: str, message_id: int, trace: dict[str, Any]) -> None:
    """Keep a prepared trace with ``owner``'s message (replacing one it had)."""
    tree.get(db, owner, message_id)  # NotFound for another owner's message
    insert(db, message_id, trace)


def insert(db: Database, message_id: int, trace: dict[str, Any]) -> None:
    """Keep a prepared trace with a message the caller has just checked or written."""
    # An upsert, not INSERT OR REPLACE: a replaced row is deleted without its delete triggers, which keep the owner's
    # running byte total (quota.py).
    db.execute("INSERT INTO traces (message_id, data) VALUES (?, ?) ON CONFLICT (message_id) DO UPDATE SET data = "
               "excluded.data", [message_id, encode(trace)])  # fmt: skip


def _rows(db: Database, owner: str, where: str, args: list[Any]) -> dict[int, dict[str, Any]]:
    sql = ("SELECT t.message_id, t.data FROM traces t JOIN messages m ON m.id = t.message_id "
           f"JOIN conversations c ON c.id = m.conversation_id WHERE c.owner = ? AND {where}")
    found = {row[0]: decode(row[1]) for row in db.execute(sql, [owner, *args]).fetchall()}
    return {mid: trace for mid, trace in found.items() if trace is not None}


def for_conversation(db: Database, owner: str, conversation_id: int) -> dict[int, dict[str, Any]]:
    """The traces of a conversation's answers by message id."""
    return _rows(db, owner, "m.conversation_id = ?", [conversation_id])


def get(db: Database, owner: str, message_id: int) -> dict[str, Any] | None:
    return _rows(db, owner, "m.id = ?", [message_id]).get(message_id)

