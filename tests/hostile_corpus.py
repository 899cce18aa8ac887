"""A hostile-input corpus of import files, generated here (no large files in the repository).

``cases()`` yields ``Case(name, data, error)``: the bytes of one import file and a regular
expression its error message must match, or ``error=None`` for hostile text that is valid data
(HTML, control characters) and must be stored and read back exactly. Every file is small enough for
the app's upload cap. The errors expect the app's checks: ``RecordLimits`` with the engine's
``MAX_NUM_STEPS`` and ``GenerationSettings.from_dict`` as the settings validator. Used by tests/test_hostile_store.py (through ``Store.import_json``) and meant
for an app-level run of the same files.

The valid file every mutation starts from is ``valid_export()``: a question and a saved depth
comparison holding every record the app writes, with settings an engine accepts.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "huginn-studio.conversations"
STAMP = "2026-01-01T00:00:00.000000+00:00"
# A title is stored as one clean line (control and format characters dropped, whitespace folded): what it becomes.
HOSTILE_TITLE = "\u202eevil\x00\n# heading\x1b[31m\r\n\u2066x\ufeff\u200b"
CLEAN_TITLES = {HOSTILE_TITLE: "evil # heading[31m x"}
HTML = '<a href="//evil.example/x">click</a><img src=x onerror=alert(1)><form action=//evil.example>'
SETTINGS = {
    "num_steps": 32, "criterion": "kl", "exit_threshold": 5e-4, "min_steps": 0, "check_every": 1,
    "warm_start": False, "cache_strategy": "latest-m4", "init_scale": 1.0, "max_new_tokens": 256,
    "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 1234,
    "stop_strings": ["\n\n"], "draft_steps": 0, "lookahead": 4,
}  # fmt: skip
TOKENS = [
    {"text": "Four", "steps": 12, "exit_value": 3.5e-4},
    {"text": ".", "steps": 4, "exit_value": None},
]
STATS = {
    "tokens": 2, "prompt_tokens": 9, "tokens_per_s": 21.5, "mean_steps": 8.0, "min_steps": 4, "max_steps": 12,
    "core_iterations": 16, "kv_cache_bytes": 1024, "elapsed_s": 0.1, "first_token_s": 0.05,
    "stop_reason": "end_of_turn", "seed": 1234, "notice": None, "trimmed_messages": 0,
    "materialized_parameters": 1_000_000,
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    error: str | None  # regex for the error message; None: valid data, stored exactly


def valid_export() -> dict[str, Any]:
    column = {"label": "r=4", "settings": dict(SETTINGS, num_steps=4, criterion="none", exit_threshold=None,
                                               cache_strategy="full"),
              "tokens": TOKENS, "content": "Four.", "stats": dict(STATS, agreement=0.5)}
    messages = [
        {"id": 1, "parent_id": None, "role": "user", "content": "2+2?", "created": STAMP, "updated": STAMP},
        {"id": 2, "parent_id": 1, "role": "assistant", "content": "Four.", "created": STAMP, "updated": STAMP,
         "kind": "comparison", "status": "complete", "error": None, "model_id": "tomg-group-umd/huginn-0125",
         "model_revision": "2a364bd", "quantization": "nf4", "settings": SETTINGS, "tokens": TOKENS,
         "stats": STATS, "extra": {"columns": [column], "system": "Be brief."}},
    ]  # fmt: skip
    conv = {"title": "corpus", "created": STAMP, "updated": STAMP, "current_leaf": 2,
            "extra": {"pinned": True}, "messages": messages}  # fmt: skip
    doc = {"format": FORMAT, "version": 1, "exported": STAMP, "conversations": [conv]}
    return json.loads(json.dumps(doc))  # no shared sub-objects


def _dump(doc: Any) -> bytes:
    # ASCII with \\u escapes: a lone surrogate travels as valid UTF-8 text, as a browser would send it
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _paths(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every value of a document with its path, parents before children."""
    if path:
        yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _wrong(value: Any) -> Any:
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "fast"
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return {"a": 1}
    return [1, 2]  # objects and null


def _name(path: tuple) -> str:
    """The last part of a path as the store's messages write it: ``key`` or ``key[i]``."""
    if isinstance(path[-1], int):
        return f"{path[-2]}[{path[-1]}]"
    return str(path[-1])


def _set(doc: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def wrong_types() -> Iterator[Case]:
    """Each field of the valid file, one at a time, with a value of the wrong type.

    A conversation's ``extra`` is free JSON (only its depth and size are checked), so its inside is
    left out; everything else the app writes has a type.
    """
    base = valid_export()
    for path, value in _paths(base):
        if path[:3] == ("conversations", 0, "extra") and len(path) > 3:
            continue
        if path[-1] == "stop_strings" or (len(path) > 1 and path[-2] == "stop_strings"):
            pattern = "stop_strings"
        elif path[0] == "format":
            pattern = "not a Huginn Studio export"
        elif path[0] == "version":
            pattern = "unsupported export version"
        else:
            pattern = re.escape(_name(path))
        yield Case("wrong type: " + ".".join(map(str, path)), _dump(_set(base, path, _wrong(value))), pattern)


def _sqlite_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "disguised.json"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT)")
        conn.executemany("INSERT INTO conversations (title) VALUES (?)", [("x" * 50,)] * 200)
        conn.commit()
        conn.close()
        return path.read_bytes()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def hostile_files() -> Iterator[Case]:
    base = valid_export()
    ans = ("conversations", 0, "messages", 1)
    col = (*ans, "extra", "columns", 0)
    text = _dump(base).decode()
    column = base["conversations"][0]["messages"][1]["extra"]["columns"][0]
    # 100,000 of these make a 7.5 MB file, under the hosted upload cap of 10 MB (the count is refused before the
    # short dates are read)
    empty_conv = {"title": "", "created": "2026-01-01", "updated": "2026-01-01", "current_leaf": None, "messages": []}
    yield from [
        Case("empty file", b"", "not valid JSON"),
        Case("truncated JSON", _dump(base)[: len(_dump(base)) // 2], "not valid JSON"),
        Case("bad UTF-8", _dump(base).replace(b"2+2?", b"2+2\xff\xfe?"), "not UTF-8"),
        Case("overlong UTF-8", _dump(base).replace(b"2+2?", b"2+2\xc0\xaf"), "not UTF-8"),
        Case("UTF-16 file", text.encode("utf-16"), "not UTF-8"),
        Case("SQLite file disguised as JSON", _sqlite_bytes(), "not UTF-8|not valid JSON"),
        Case("JSON array", b"[1, 2]", "JSON object"),
        Case("JSON null", b"null", "JSON object"),
        Case("infinite number", b"1e999", "JSON object"),
        Case("integer of 5,000 digits", _dump(base).replace(b'"id":1,', b'"id":' + b"9" * 5000 + b","),
             "not valid JSON"),
        Case("100,000 levels of nesting", _nested(100_000).encode(), "nested more than 32 levels"),
        Case("100,000 levels in extra", text.replace('"pinned":true', '"deep":' + _nested(100_000)).encode(),
             "nested more than 32 levels"),
        Case("40 levels in settings", _dump(_set(base, (*ans, "settings", "seed"), json.loads(_nested(40)))),
             "nested more than 32 levels"),
        Case("100,000 empty conversations", _dump({**base, "conversations": [empty_conv] * 100_000}),
             "holds 100,000 conversations; one import may hold at most"),
        Case("token steps 3e7", _dump(_set(base, (*ans, "tokens", 0, "steps"), 3e7)), r"tokens\[0\]\.steps"),
        Case("token steps 30,000,000", _dump(_set(base, (*ans, "tokens", 0, "steps"), 30_000_000)),
             r"tokens\[0\]\.steps must be an integer from 0 to"),
        Case("column token steps 1e9", _dump(_set(base, (*col, "tokens", 1, "steps"), 10**9)),
             r"columns\[0\]\.tokens\[1\]\.steps"),
        Case("negative steps", _dump(_set(base, (*ans, "tokens", 0, "steps"), -1)), r"tokens\[0\]\.steps"),
        Case("num_steps 10**9", _dump(_set(base, (*ans, "settings", "num_steps"), 10**9)), "num_steps"),
        Case("65,537 token records", _dump(_set(base, (*ans, "tokens"), TOKENS[:1] * 65_537)),
             "65,537 token records"),
        Case("17 comparison columns", _dump(_set(base, (*ans, "extra", "columns"), [column] * 17)),
             "at most 16 columns"),
        Case("NaN exit value", _dump(base).replace(b'"exit_value":0.00035', b'"exit_value":NaN'), "exit_value"),
        Case("Infinity tokens/s", _dump(base).replace(b'"tokens_per_s":21.5', b'"tokens_per_s":Infinity', 1),
             "tokens_per_s"),
        # Past a float's range (math.isfinite raises OverflowError on them): refused by name, not a bare error.
        Case("temperature of 401 digits", _dump(_set(base, (*ans, "settings", "temperature"), 10**400)),
             r"settings\.temperature must be a number"),
        Case("column temperature of 401 digits", _dump(_set(base, (*col, "settings", "temperature"), 10**400)),
             r"columns\[0\]\.settings\.temperature"),
        Case("tokens/s of 401 digits", _dump(_set(base, (*ans, "stats", "tokens_per_s"), -10**400)), "tokens_per_s"),
        Case("exit value of 401 digits", _dump(_set(base, (*ans, "tokens", 0, "exit_value"), 10**400)), "exit_value"),
        Case("stats.tokens_per_s fast", _dump(_set(base, (*ans, "stats", "tokens_per_s"), "fast")), "tokens_per_s"),
        Case("threshold as a string", _dump(_set(base, (*ans, "settings", "exit_threshold"), "5e-4")),
             "exit_threshold"),
        Case("temperature hot", _dump(_set(base, (*ans, "settings", "temperature"), "hot")), "temperature"),
        Case("unknown setting", _dump(_set(base, (*ans, "settings", "bogus"), 1)), "bogus"),
        Case("lone surrogate in content", _dump(_set(base, (*ans, "content"), "a\ud800b")), "lone surrogate"),
        Case("lone surrogate in a title", _dump(_set(base, ("conversations", 0, "title"), "\udfff")),
             "lone surrogate"),
        Case("lone surrogate in a settings key", _dump(_set(base, (*ans, "settings", "\ud800"), 1)),
             "surrogate|\\\\ud800"),
        Case("HTML field name", _dump(_set(base, ("conversations", 0, HTML), 1)), "unknown fields"),
        Case("HTML format", _dump({**base, "format": HTML}), "not a Huginn Studio export"),
        Case("HTML role", _dump(_set(base, (*ans, "role"), HTML)), "role must be one of"),
        Case("HTML in a setting", _dump(_set(base, (*ans, "settings", "criterion"), HTML)), "criterion"),
        Case("1 MB field name", _dump(_set(base, ("conversations", 0, "k" * 1_000_000), 1)), "unknown fields"),
        Case("title over the limit", _dump(_set(base, ("conversations", 0, "title"), "t" * 3000)), "title"),
        Case("time that is not a time", _dump(_set(base, (*ans, "created"), "yesterday")), "ISO 8601"),
        # a date the store would sort first forever (other ISO forms are stored as UTC: test_store.py)
        Case("date only, year 9999", _dump(_set(base, ("conversations", 0, "updated"), "9999-12-31")),
             r"conversations\[0\]\.updated must be a time from 2000 to now"),
        Case("month 13", _dump(_set(base, (*ans, "created"), "2024-13-01T00:00:00Z")), r"created is not an ISO 8601"),
        Case("far future", _dump(_set(base, ("conversations", 0, "updated"), "9999-12-31T23:59:59+00:00")),
             r"conversations\[0\]\.updated must be a time from 2000 to now"),
        Case("exported in 1900", _dump({**base, "exported": "1900-01-01T00:00:00+00:00"}),
             r"the file\.exported must be a time from 2000"),
        Case("NaN in a conversation's extra", text.replace('"pinned":true', '"pinned":NaN').encode(),
             r"conversations\[0\]\.extra holds NaN or Infinity"),
        Case("Infinity in an answer's extra",
             text.replace('"system":"Be brief."', '"system":"Be brief.","x":[-Infinity]').encode(),
             r"messages\[1\]\.extra holds NaN or Infinity"),
        Case("status halfway", _dump(_set(base, (*ans, "status"), "halfway")), "status must be one of"),
        Case("missing parent", _dump(_set(base, (*ans, "parent_id"), 42)), "not in the file"),
        Case("cycle", _dump(_set(base, ("conversations", 0, "messages", 0, "parent_id"), 2)), "cycle"),
        Case("current leaf elsewhere", _dump(_set(base, ("conversations", 0, "current_leaf"), 99)),
             "not one of its messages"),
        Case("id used twice", _dump(_set(base, (*ans, "id"), 1)), "used twice"),
        Case("unknown top-level field", _dump({**base, "payload": HTML}), "unknown fields"),
        Case("version 1.0", _dump({**base, "version": 1.0}), "unsupported export version"),
        # hostile text that is valid data: stored and read back exactly, escaped by the page
        Case("HTML title and content", _dump(_set(_set(base, ("conversations", 0, "title"), HTML),
                                                  (*ans, "content"), HTML)), None),
        Case("control characters and NUL", _dump(_set(base, (*ans, "content"), "a\x00b\x1b[31mc\u202ed\ufeff")),
             None),
        Case("control characters in a title", _dump(_set(base, ("conversations", 0, "title"), HOSTILE_TITLE)), None),
    ]  # fmt: skip


def cases() -> Iterator[Case]:
    yield from hostile_files()
    yield from wrong_types()
