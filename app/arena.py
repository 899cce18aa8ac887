"""The depth arena's results: one prompt's answers at several settings as columns, with agreement against the
deepest, and saving them into a conversation."""

from __future__ import annotations

from typing import Any, Sequence

import engine

from . import render
from .slot import ModelSlot, public_name
from .store import Store, prepare_trace


def result(prompt: str, system: str, results: Sequence[engine.CompareResult], slot: ModelSlot) -> dict[str, Any]:
    """Columns (label, settings, tokens, text, stats with agreement) and which one is the reference. ``text`` as in
    ``/chat``; ``content`` is the same text under the name the store keeps saved comparisons' columns by."""
    ids = [[e.token_id for e in r.events if e.token_id >= 0] for r in results]
    reference = max(range(len(results)), key=lambda i: (results[i].summary.mean_steps, -i))
    columns = []
    for r, token_ids in zip(results, ids):
        stats = r.summary.stats(materialized_parameters=slot.materialized(r.summary.mean_steps))
        stats["agreement"] = render.agreement(token_ids, ids[reference])
        column = {"label": r.settings.label(), "settings": r.summary.settings,
                  "tokens": [e.record() for e in r.events], "text": r.summary.text, "content": r.summary.text,
                  "stats": stats}
        if r.summary.trace is not None:  # kept with the column when saved, within the store's cap
            column["trace"] = prepare_trace(r.summary.trace)
        columns.append(column)
    return {"prompt": prompt, "system": system, "reference": reference, "columns": columns,
            "model": public_name(slot.info().name)}


def save(store: Store, owner: str, conversation_id: int, result: dict[str, Any]) -> None:
    """The prompt, then one message holding all columns whose text is the deepest answer."""
    store.add_message(owner, conversation_id, "user", result["prompt"])
    ref = result["columns"][result["reference"]]
    stored = [{k: v for k, v in c.items() if k != "text"} for c in result["columns"]]
    store.add_message(owner, conversation_id, "assistant", ref["content"], kind="comparison",
                      model_id=result["model"], settings=ref["settings"], tokens=ref["tokens"], stats=ref["stats"],
                      extra={"columns": stored, "system": result.get("system", "")})
