"""Export documents and imports: building the JSON export, checking and writing an import."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sqlite_utils import Database

from . import conversations, quota, traces, tree
from .checks import check_depth, check_object, check_time, check_title, dump_json
from .conversations import conversation_from_row
from .fields import message_row
from .records import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    HIDDEN_OWNER,
    MAX_IMPORT_BYTES,
    MAX_JSON_DEPTH,
    ImportInvalid,
    InvalidData,
    Message,
    RecordLimits,
    now_iso,
    shown,
)

# An exported conversation and its (message, row) pairs, parents first.
Plan = tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]


# ---------------------------------------------------------------------------------------- export
def _export_message(m: Message, local: Mapping[int, int], parent: int | None,
                    trace: dict[str, Any] | None) -> dict[str, Any]:
    out = asdict(m)
    del out["conversation_id"]
    out["id"] = local[m.id]
    out["parent_id"] = local[parent] if parent is not None else None
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
        parents = _tree_parents(msgs)
        kept = traces.for_conversation(db, owner, conv.id)
        out.append(
            {
                "title": conv.title,
                "created": conv.created,
                "updated": conv.updated,
                "current_leaf": local.get(conv.current_leaf) if conv.current_leaf is not None else None,
                "extra": conv.extra,
                "messages": [_export_message(m, local, parents[m.id], kept.get(m.id)) for m in msgs],
            }
        )
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported": now_iso(), "conversations": out}


def _tree_parents(msgs: Sequence[Message]) -> dict[int, int | None]:
    """Each message's parent, made a tree: in a damaged file, a parent in another conversation and the
    link that closes a parent cycle become roots, so the export imports again and loses no message."""
    ids = {m.id for m in msgs}
    parents = {m.id: m.parent_id if m.parent_id in ids else None for m in msgs}
    done: set[int] = set()
    for start in parents:
        path: dict[int, None] = {}  # insertion-ordered: the walk so far
        node: int | None = start
        while node is not None and node not in done:
            if node in path:
                parents[next(reversed(path))] = None  # the link back into the path closes the cycle
                break
            path[node] = None
            node = parents[node]
        done.update(path)
    return parents


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
        except RecursionError:
            raise ImportInvalid(f"the file is nested more than {MAX_JSON_DEPTH} levels deep") from None
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            raise ImportInvalid(f"the file is not valid JSON: {str(exc)[:200]}") from None
    try:  # whether the decoder hit Python's recursion limit depends on the stack it ran on: check the depth itself
        check_depth(data, "the file", MAX_JSON_DEPTH)
    except InvalidData as exc:
        raise ImportInvalid(str(exc)) from None
    if not isinstance(data, Mapping):
        raise ImportInvalid("the file must hold a JSON object exported by Huginn Studio")
    if data.get("format") != EXPORT_FORMAT:
        raise ImportInvalid(
            f"not a Huginn Studio export: format is {shown(data.get('format'))}, "
            f"expected {EXPORT_FORMAT!r}"
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= EXPORT_VERSION:
        raise ImportInvalid(
            f"unsupported export version {shown(version)}; this Huginn Studio reads 1 to {EXPORT_VERSION}"
        )
    _check_keys(data, {"format", "version", "exported", "conversations"}, "the file")
    if "exported" in data:
        _timestamp(data, "exported", "the file")
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
        raise ImportInvalid(f"{where} has unknown fields: {', '.join(shown(str(k)) for k in unknown[:5])}")


def _timestamp(obj: Mapping[str, Any], key: str, where: str) -> str:
    try:
        return check_time(_field(obj, key, where, str), f"{where}.{key}")
    except InvalidData as exc:
        raise ImportInvalid(str(exc)) from None


def _plan_message(m: Any, where: str, limits: RecordLimits) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(m, Mapping):
        raise ImportInvalid(f"{where} must be an object")
    _check_keys(m, _MESSAGE_KEYS, where)
    _field(m, "id", where, int)
    _field(m, "parent_id", where, int, optional=True)
    for key in ("role", "content"):
        _field(m, key, where, str)
    times = {key: _timestamp(m, key, where) for key in ("created", "updated")}
    values = {k: m.get(k, d) for k, d in _MESSAGE_FIELDS.items()}
    if values["status"] == "partial":
        values["status"] = "interrupted"  # no process here is writing it
    try:
        row = message_row(**values, limits=limits, field=f"{where}.")
        trace = traces.prepare(m.get("trace"), f"{where}.trace")
    except InvalidData as exc:
        raise ImportInvalid(str(exc)) from None
    return {**m, **times, "trace": trace}, row


def plan_conversation(conv: Any, where: str, limits: RecordLimits = RecordLimits()) -> Plan:
    """Validate one exported conversation; returns it and its (message, row) pairs, parents first."""
    if not isinstance(conv, Mapping):
        raise ImportInvalid(f"{where} must be an object")
    _check_keys(conv, _CONVERSATION_KEYS, where)
    try:
        title = check_title(_field(conv, "title", where, str), f"{where}.title")
        check_object(conv.get("extra"), f"{where}.extra")
        dump_json(conv.get("extra"), f"{where}.extra")
    except InvalidData as exc:
        raise ImportInvalid(str(exc)) from None
    times = {key: _timestamp(conv, key, where) for key in ("created", "updated")}
    leaf = _field(conv, "current_leaf", where, int, optional=True)
    by_id: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    for j, m in enumerate(_field(conv, "messages", where, list)):
        planned = _plan_message(m, f"{where}.messages[{j}]", limits)
        if planned[0]["id"] in by_id:
            raise ImportInvalid(f"{where}.messages[{j}].id {planned[0]['id']} is used twice")
        by_id[planned[0]["id"]] = planned
    if leaf is not None and leaf not in by_id:
        raise ImportInvalid(f"{where}.current_leaf {leaf} is not one of its messages")
    return {**conv, "title": title, **times}, _parents_first(by_id, where)


def _parents_first(
    by_id: dict[int, tuple[dict[str, Any], dict[str, Any]]], where: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    # Place every message after its ancestors. Visiting ids in order keeps the file's order when
    # it already lists parents first (every export does), so a round trip keeps sibling order.
    ordered: list[tuple[dict[str, Any], dict[str, Any]]] = []
    placed: set[int] = set()
    for mid in sorted(by_id):
        path: list[int] = []
        on_path: set[int] = set()
        node: int | None = mid
        while node is not None and node not in placed:
            if node not in by_id:
                raise ImportInvalid(
                    f"{where}: message {path[-1]} has parent {node}, which is not in the file"
                )
            if node in on_path:
                raise ImportInvalid(f"{where}: message {node} is its own ancestor (a cycle)")
            path.append(node)
            on_path.add(node)
            node = by_id[node][0]["parent_id"]
        for n in reversed(path):
            placed.add(n)
            ordered.append(by_id[n])
    return ordered


def plan_import(doc: Mapping[str, Any], limits: RecordLimits) -> list[Plan]:
    """Check a parsed export (``parse``) against ``limits``; nothing is written yet."""
    convs = doc["conversations"]
    if len(convs) > limits.max_conversations:
        raise ImportInvalid(
            f"the file holds {len(convs):,} conversations; one import may hold at most "
            f"{limits.max_conversations:,}"
        )
    total = sum(len(c["messages"]) for c in convs if isinstance(c, Mapping) and isinstance(c.get("messages"), list))
    if total > limits.max_messages:
        raise ImportInvalid(
            f"the file holds {total:,} messages; one import may hold at most {limits.max_messages:,}"
        )
    try:
        check_depth(convs, "the file", MAX_JSON_DEPTH - 1)
    except InvalidData as exc:
        raise ImportInvalid(str(exc).replace(f"{MAX_JSON_DEPTH - 1} levels", f"{MAX_JSON_DEPTH} levels")) from None
    return [plan_conversation(c, f"conversations[{i}]", limits) for i, c in enumerate(convs)]


def plan_bytes(plans: list[Plan]) -> int:
    """What a checked import adds to its owner's stored bytes (``quota.stored_bytes``)."""
    return sum(quota.conversation_bytes(conv.get("title"), dump_json(conv.get("extra"), "extra")) for conv, _ in plans) \
        + sum(quota.row_bytes(row) + (len(traces.encode(m["trace"])) if m["trace"] is not None else 0)
              for _, ordered in plans for m, row in ordered)


class ImportWriter:
    """Writes checked conversations (``plan_import``) in short transactions (``write_in_steps``).

    Everything is written under ``HIDDEN_OWNER`` first and handed to the owner at the end in one
    transaction, so nobody sees a conversation half-imported, and a failure (or a kill: the next open
    deletes hidden rows) leaves what was saved as it was.
    """

    def __init__(self, plans: list[Plan]) -> None:
        self.plans = plans
        self.conversation_ids: list[int] = []  # new ids, in file order
        self._conversation = 0  # next conversation to start
        self._message = 0  # next message of the conversation in progress (-1: none in progress)
        self._ids: dict[int, int] = {}  # file id -> new id, for the conversation in progress

    def write_step(self, db: Database, deadline: float) -> bool:
        """Insert rows until ``deadline``; True when every conversation is in."""
        while self._conversation < len(self.plans):
            if time.monotonic() > deadline:
                return False
            conv, ordered = self.plans[self._conversation]
            if self._message == 0:
                self._start(db, conv)
            while self._message < len(ordered):
                self._insert(db, *ordered[self._message])
                self._message += 1
                if time.monotonic() > deadline and self._message < len(ordered):
                    return False
            db.execute(
                "UPDATE conversations SET current_leaf = ? WHERE id = ?",
                [self._ids.get(conv["current_leaf"]), self.conversation_ids[-1]],
            )
            self._conversation, self._message, self._ids = self._conversation + 1, 0, {}
        return True

    def _start(self, db: Database, conv: dict[str, Any]) -> None:
        cur = db.execute(
            "INSERT INTO conversations (owner, title, auto_title, created, updated, extra) "
            "VALUES (?, ?, 0, ?, ?, ?)",
            [HIDDEN_OWNER, conv["title"], conv["created"], conv["updated"],
             dump_json(conv.get("extra"), "extra")],
        )  # fmt: skip
        self.conversation_ids.append(cur.lastrowid)

    def _insert(self, db: Database, m: dict[str, Any], row: dict[str, Any]) -> None:
        parent = m["parent_id"]
        cur = db.execute(
            f"INSERT INTO messages (conversation_id, parent_id, created, updated, {', '.join(row)}) "
            f"VALUES ({', '.join('?' * (len(row) + 4))})",
            [self.conversation_ids[-1], self._ids[parent] if parent is not None else None,
             m["created"], m["updated"], *row.values()],
        )  # fmt: skip
        self._ids[m["id"]] = cur.lastrowid
        if m["trace"] is not None:
            traces.insert(db, cur.lastrowid, m["trace"])

    def hand_over(self, db: Database, owner: str) -> None:
        """Give every written conversation to ``owner``, in the caller's one transaction (which checks the owner's
        caps again first: another import may have been handed over since the check before writing)."""
        for start in range(0, len(self.conversation_ids), 500):
            group = self.conversation_ids[start : start + 500]
            db.execute(
                f"UPDATE conversations SET owner = ? WHERE owner = ? AND id IN ({', '.join('?' * len(group))})",
                [owner, HIDDEN_OWNER, *group],
            )
