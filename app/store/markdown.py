"""The Markdown export: a readable transcript of each conversation's current branch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .checks import clean_title, fits_float
from .records import Message


_MESSAGE_FIELDS = {f.name for f in fields(Message)} - {"conversation_id"}


def render(data: Mapping[str, Any]) -> str:
    """Markdown for an export document (``transfer.export_data``), conversations separated by ---.

    Each answer carries its model, depth settings and a steps summary. Other branches are counted,
    not shown: the JSON export keeps everything.
    """
    return "\n---\n\n".join(_conversation(conv) for conv in data["conversations"])


def _conversation(conv: Mapping[str, Any]) -> str:
    # An export's messages carry more than a Message holds (a depth-lens trace, say): the transcript needs none of it.
    msgs = {m["id"]: Message(conversation_id=0, **{k: v for k, v in m.items() if k in _MESSAGE_FIELDS})
            for m in conv["messages"]}
    branch: list[Message] = []
    node = conv["current_leaf"]
    while node is not None:
        branch.append(msgs[node])
        node = msgs[node].parent_id
    branch.reverse()
    lines = [f"# {clean_title(conv['title'])}", ""]  # a title stored before titles were cleaned may hold a newline
    note = f"*Created {conv['created'][:19].replace('T', ' ')} UTC"
    if len(msgs) > len(branch):
        note += f"; showing the current branch ({len(branch)} of {len(msgs)} messages)"
    lines += [note + ".*", ""]
    for m in branch:
        lines += _message(m)
    return "\n".join(lines).rstrip() + "\n"


def _message(m: Message) -> list[str]:
    heading = f"## {m.role.capitalize()}"
    if m.kind != "message":
        heading += f" ({m.kind})"
    if m.model_id:
        model = m.model_id + (f"@{m.model_revision}" if m.model_revision else "")
        heading += f" · {model}" + (f" · {m.quantization}" if m.quantization else "")
    lines = [heading, "", m.content, ""]
    if m.role != "assistant":
        return lines
    if isinstance(m.settings, dict) and m.settings:
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in m.settings.items())
        lines.append(f"> **Depth settings:** {settings}  ")
    s = steps_summary(m)
    steps = f"> **Steps:** {_fmt(s['tokens'])} tokens"
    if s["mean_steps"] is not None:
        steps += f", mean {_fmt(s['mean_steps'])}, min {_fmt(s['min_steps'])}, max {_fmt(s['max_steps'])}"
    stats = m.stats if isinstance(m.stats, dict) else {}
    for key, label in (("tokens_per_s", "tokens/s"), ("elapsed_s", "s")):
        if isinstance(stats.get(key), (int, float)):
            steps += f" · {_fmt(stats[key])} {label}"
    steps += f" · status: {m.status}"
    if m.error:
        steps += f" · error: {m.error}"
    return lines + [steps, ""]


def steps_summary(message: Message) -> dict[str, Any]:
    """tokens, mean/min/max steps of an answer: from its stats, else from its token records (a damaged record,
    hand-edited or cut off, counts as none: the transcript is still written)."""
    tokens = message.tokens if isinstance(message.tokens, list) else []
    steps = [t["steps"] for t in tokens if isinstance(t, dict) and type(t.get("steps")) in (int, float)]
    stats = message.stats if isinstance(message.stats, dict) else {}
    return {
        "tokens": stats.get("tokens", len(steps)),
        "mean_steps": stats.get("mean_steps", sum(steps) / len(steps) if steps else None),
        "min_steps": stats.get("min_steps", min(steps) if steps else None),
        "max_steps": stats.get("max_steps", max(steps) if steps else None),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and abs(value) >= 10**16:  # a hand-edited row: str() of a huge int can raise
        value = float(value) if fits_float(value) else (math.inf if value > 0 else -math.inf)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
