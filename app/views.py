"""Records in, views out: engine events to the records the store keeps, and stored messages to what the transcript
draws.

A stored record may be damaged (a hand-edited database, an import from before the checks, another program's rows):
``message_view`` keeps what is well-formed and names what is not, so drawing one damaged message never raises and
never costs more than the message's length.
"""

from __future__ import annotations

from typing import Any, Sequence

import engine

from .render import MessageView
from .store import InvalidData, Message, RecordLimits, check_trace

# What the store checks every write and import against: the engine's definitions of a token, the stats and the
# settings (``engine.records``, ``engine.GenerationSettings``).
STORE_LIMITS = RecordLimits(token=engine.TOKEN, stats=engine.STATS, settings_validator=engine.GenerationSettings.from_dict)
STATUSES = ("complete", "cancelled", "failed", "partial", "interrupted")
# The prompt positions an answer keeps (the latest): without them every answer of a long chat would hold, and the
# page draw, the whole conversation again, growing with the square of its length.
PROMPT_KEPT = 256
ROLES = ("user", "assistant", "system")


def kept_prompt(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt positions an answer keeps: the last ``PROMPT_KEPT`` (the stats keep the whole prompt's count)."""
    return list(records[-PROMPT_KEPT:])


# ---- store to engine ---------------------------------------------------------------------------------------------

def model_messages(thread: Sequence[Message], system: str) -> list[dict[str, Any]]:
    """The chat as the engine wants it: optional system prompt, then the branch's non-empty turns. An answer goes
    with the token ids it was generated as, so the next turn can reuse its cache positions (the engine uses them
    only while they still spell the answer's text)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system.strip() else []
    for m in thread:
        if m.role in ("user", "assistant") and isinstance(m.content, str) and m.content.strip():
            out.append({"role": m.role, "content": m.content})
            ids = [t["id"] for t in (m.tokens or []) if isinstance(t, dict) and "id" in t]
            if m.role == "assistant" and ids:
                out[-1]["token_ids"] = ids
    return out


# ---- store to transcript ----------------------------------------------------------------------------------------

def clean_tokens(tokens: Any, damaged: list[str], name: str = "tokens") -> list[dict[str, Any]] | None:
    """A stored answer's token records if every one is what ``engine.records.TOKEN`` defines."""
    if tokens is None:
        return None
    if isinstance(tokens, list):
        try:
            return [engine.TOKEN.check(t) for t in tokens]
        except engine.RecordError:
            pass
    damaged.append(name)
    return None


def clean_stats(stats: Any, damaged: list[str], name: str = "stats") -> dict[str, Any] | None:
    """A stored answer's well-formed stats (``engine.records.STATS``); any other one is named as damaged."""
    if stats is None:
        return None
    good, bad = engine.STATS.clean(stats)
    if bad:
        damaged.append(name)
    return good


def clean_settings(settings: Any, damaged: list[str], name: str = "settings") -> dict[str, Any] | None:
    """Stored settings if they are valid generation settings (``engine.GenerationSettings``)."""
    if settings is None:
        return None
    try:
        engine.GenerationSettings.from_dict(settings)
    except (engine.SettingsError, TypeError, AttributeError):
        damaged.append(name)
        return None
    return settings


def clean_columns(columns: Any, damaged: list[str]) -> list[dict[str, Any]] | None:
    """A saved comparison's columns, each drawn like an answer."""
    if columns is None:
        return None
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        damaged.append("columns")
        return None
    out = []
    for i, c in enumerate(columns):
        before = len(damaged)
        col = {"label": c.get("label") if isinstance(c.get("label"), str) else "",
               "tokens": clean_tokens(c.get("tokens"), damaged), "stats": clean_stats(c.get("stats"), damaged),
               "settings": clean_settings(c.get("settings"), damaged),
               "content": c.get("content") if isinstance(c.get("content"), str) else "",
               "trace": clean_trace(c.get("trace"), damaged, "trace"),
               "prompt": clean_tokens(c.get("prompt"), damaged, "prompt")}
        if len(damaged) > before:
            del damaged[before:]
            damaged.append(f"columns[{i}]")
        out.append(col)
    return out


def clean_trace(trace: Any, damaged: list[str], name: str = "trace") -> dict[str, Any] | None:
    """A stored depth-lens trace if well-formed; a damaged one is left out (the answer still shows)."""
    try:
        return check_trace(trace)
    except InvalidData:
        damaged.append(name)
        return None


def message_view(m: Message, siblings: Sequence[int], streaming: bool = False) -> MessageView:
    """The view of a stored message among its siblings (ids, oldest first). An answer left "partial" by a process
    that is gone (it is not being written now) shows as interrupted."""
    damaged: list[str] = []
    extra = m.extra if isinstance(m.extra, dict) else {}
    if m.extra is not None and not isinstance(m.extra, dict):
        damaged.append("extra")
    status = m.status if m.status in STATUSES else "complete"
    if status == "partial" and not streaming:
        status = "interrupted"
    system = extra.get("system", "")
    view_extra = {"system": system if isinstance(system, str) else ""}
    if extra.get("prompt") is not None:
        view_extra["prompt"] = clean_tokens(extra["prompt"], damaged, "prompt")
    if m.kind == "comparison":
        view_extra["columns"] = clean_columns(extra.get("columns"), damaged)
    i = siblings.index(m.id) if m.id in siblings else 0
    return MessageView(
        id=m.id, role=m.role if m.role in ROLES else "assistant",
        content=m.content if isinstance(m.content, str) else str(m.content), status=status,
        kind=m.kind if isinstance(m.kind, str) else "message",
        tokens=clean_tokens(m.tokens, damaged), stats=clean_stats(m.stats, damaged),
        settings=clean_settings(m.settings, damaged), error=None if m.error is None else str(m.error),
        sibling_index=i + 1, sibling_count=max(len(siblings), 1),
        prev_sibling=siblings[i - 1] if i > 0 else None,
        next_sibling=siblings[i + 1] if i + 1 < len(siblings) else None,
        extra=view_extra, damaged=tuple(damaged))


def message_views(siblings: dict[int | None, list[int]], thread: Sequence[Message],
                  streaming: frozenset[int] = frozenset(), traces: dict[int, dict[str, Any]] | None = None
                  ) -> list[MessageView]:
    """Views of a thread, each with its place among its siblings (``Store.sibling_ids``: ids by parent id), and
    the answers' depth-lens traces (``Store.traces``) when given."""
    views = [message_view(m, siblings.get(m.parent_id, [m.id]), m.id in streaming) for m in thread]
    for view in views:
        view.trace = (traces or {}).get(view.id)
    return views
