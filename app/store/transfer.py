"""Export documents and imports: building the JSON export, checking and writing an import."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sqlite_utils import Database

from . import conversations, traces, tree
from .checks import check_object, check_text, dump_json, message_row
from .conversations import conversation_from_row
from .records import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MAX_IMPORT_BYTES,
    MAX_TITLE_CHARS,
    Conversation,
    ImportInvalid,
    InvalidData,
    Message,
    now_iso,
)

# An exported conversation and its (message, row) pairs, parents first.
Plan = tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]


# ---------------------------------------------------------------------------------------- export
def _export_message(m: Message, local: Mapping[int, int], trace: dict[str, Any] | None) -> dict[str, Any]:
    out = asdict(m)
    del out["conversation_id"]
    out["id"] = local[m.id]
    out["parent_id"] = local[m.parent_id] if m.parent_id is not None else None
    if trace is not None:
        out["trace"] = trace
    return out


def export_data(db: Database, owner: str, conversation_ids: list[int] | None) -> dict[str, Any]:
    """The export document of ``owner``'s conversations (all of them when ``conversation_ids`` is None).

    Message ids in the export are local to it (1, 2, ... per conversation), so exporting an
    imported conversation gives the same document.
    """
    if conversation_ids is None:
        rows = db["conversations"].rows_where("owner = ?", [owner], order_by="id")
        convs = [conversation_from_row(r) for r in rows]
    else:
        convs = [conversations.get(db, owner, cid) for cid in conversation_ids]
    out = []
    for conv in convs:
        msgs = tree.message_rows(db, owner, "m.conversation_id = ?", [conv.id])
        # Parents sort before children because they are created first; sort by id to keep that
        # true for imported trees whose timestamps came from elsewhere.
        msgs.sort(key=lambda m: m.id)
        local = {m.id: i + 1 for i, m in enumerate(msgs)}
        kept = traces.for_conversation(db, owner, conv.id)
        out.append(
            {
                "title": conv.title,
                "created": conv.created,
                "updated": conv.updated,
                "current_leaf": local.get(conv.current_leaf) if conv.current_leaf is not None else None,
                "extra": conv.extra,
                "messages": [_export_message(m, local, kept.get(m.id)) for m in msgs],
            }
        )
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported": now_iso(), "conversations": out}


# -------------------------------------------------------------------------------- import checks
_CONVERSATION_KEYS = {"title", "created", "updated", "current_leaf", "extra", "messages"}
# Message fields of an export besides id/parent_id/created/updated, with the value a missing
# optional one takes.
_MESSAGE_FIELDS: dict[str, Any] = {
    "role": None,
    "content": None,
    "kind": "message",
    "status": "complete",
    "error": None,
    "model_id": None,
    "model_revision": None,
    "quantization": None,
    "settings": None,
    "tokens": None,
    "stats": None,
    "extra": None,
}
_MESSAGE_KEYS = {"id", "parent_id", "created", "updated", "trace", *_MESSAGE_FIELDS}


def parse(data: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_IMPORT_BYTES:
            raise ImportInvalid(f"the file is larger than {MAX_IMPORT_BYTES:,} bytes")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportInvalid(f"the file is not UTF-8 text (byte {exc.start})") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ImportInvalid(
                f"the file is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    if not isinstance(data, Mapping):
        raise ImportInvalid("the file must hold a JSON object exported by Huginn Studio")
    if data.get("format") != EXPORT_FORMAT:
        raise ImportInvalid(
            f"not a Huginn Studio export: format is {data.get('format')!r}, "
            f"expected {EXPORT_FORMAT!r}"
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= EXPORT_VERSION:
        raise ImportInvalid(
            f"unsupported export version {version!r}; this Huginn Studio reads 1 to {EXPORT_VERSION}"
        )
    if not isinstance(data.get("conversations"), list):
        raise ImportInvalid("conversations must be a list")
    return dict(data)


def _field(obj: Mapping[str, Any], key: str, where: str, kind: type, *, optional: bool = False) -> Any:
    if key not in obj:
        raise ImportInvalid(f"{where}.{key} is missing")
    value = obj[key]
    if value is None and optional:
        return None
    # bool is an int subclass; an id of `true` is a broken file, not message 1.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ImportInvalid(
            f"{where}.{key} must be {kind.__name__}{' or null' if optional else ''}, "
            f"not {type(value).__name__}"
        )
    return value


def _check_keys(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ImportInvalid(f"{where} has unknown fields: {', '.join(map(str, unknown))}")


def plan_conversation(conv: Any, where: str) -> Plan:
    """Validate one exported conversation; returns it and its (message, row) pairs, parents first."""
    if not isinstance(conv, Mapping):
        raise ImportInvalid(f"{where} must be an object")
    _check_keys(conv, _CONVERSATION_KEYS, where)
    by_id: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    try:
        check_text(_field(conv, "title", where, str), f"{where}.title", MAX_TITLE_CHARS * 4)
        for key in ("created", "updated"):
            check_text(_field(conv, key, where, str), f"{where}.{key}", 100)
        check_object(conv.get("extra"), f"{where}.extra")
        leaf = _field(conv, "current_leaf", where, int, optional=True)
        for j, m in enumerate(_field(conv, "messages", where, list)):
            mw = f"{where}.messages[{j}]"
            if not isinstance(m, Mapping):
                raise ImportInvalid(f"{mw} must be an object")
            _check_keys(m, _MESSAGE_KEYS, mw)
            mid = _field(m, "id", mw, int)
            _field(m, "parent_id", mw, int, optional=True)
            for key in ("created", "updated", "role", "content"):
                _field(m, key, mw, str)
            for key in ("created", "updated"):
                check_text(m[key], f"{mw}.{key}", 100)
            if mid in by_id:
                raise ImportInvalid(f"{mw}.id {mid} is used twice")
            row = message_row(**{k: m.get(k, d) for k, d in _MESSAGE_FIELDS.items()})
            traces.check_columns(m.get("extra"), f"{mw}.extra")
            by_id[mid] = ({**m, "trace": traces.prepare(m.get("trace"), f"{mw}.trace")}, row)
    except ImportInvalid:
        raise
    except InvalidData as exc:
        raise ImportInvalid(f"{where}: {exc}") from None
    if leaf is not None and leaf not in by_id:
        raise ImportInvalid(f"{where}.current_leaf {leaf} is not one of its messages")
    # Place every message after its ancestors. Visiting ids in order keeps the file's order when
    # it already lists parents first (every export does), so a round trip keeps sibling order.
    ordered: list[tuple[dict[str, Any], dict[str, Any]]] = []
    placed: set[int] = set()
    for mid in sorted(by_id):
        path: list[int] = []
        node: int | None = mid
        while node is not None and node not in placed:
            if node not in by_id:
                raise ImportInvalid(
                    f"{where}: message {path[-1]} has parent {node}, which is not in the file"
                )
            if node in path:
                raise ImportInvalid(f"{where}: message {node} is its own ancestor (a cycle)")
            path.append(node)
            node = by_id[node][0]["parent_id"]
        for n in reversed(path):
            placed.add(n)
            ordered.append(by_id[n])
    return dict(conv), ordered


def write_conversation(db: Database, owner: str, plan: Plan) -> Conversation:
    """Insert one checked conversation (``plan_conversation``) with new ids."""
    conv, ordered = plan
    table = db["conversations"]
    table.insert(
        {
            "owner": owner,
            "title": conv["title"],
            "auto_title": 0,
            "created": conv["created"],
            "updated": conv["updated"],
            "current_leaf": None,
            "extra": dump_json(conv.get("extra"), "extra"),
        }
    )
    cid = table.last_rowid
    new_ids: dict[int, int] = {}
    messages = db["messages"]
    for m, row in ordered:
        parent = m["parent_id"]
        messages.insert(
            {
                "conversation_id": cid,
                "parent_id": new_ids[parent] if parent is not None else None,
                "created": m["created"],
                "updated": m["updated"],
                **row,
            }
        )
        new_ids[m["id"]] = messages.last_rowid
        if m["trace"] is not None:
            traces.save(db, owner, new_ids[m["id"]], m["trace"])
    table.update(cid, {"current_leaf": new_ids.get(conv["current_leaf"])})
    return conversations.get(db, owner, cid)
