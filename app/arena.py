"""The depth arena: one prompt at several settings (batched by the engine) as columns, with agreement against the
deepest, and saving them into a conversation."""

from __future__ import annotations

from typing import Any, Sequence

import engine

from . import inputs, render
from .config import UserError
from .conversations import Update
from .gpu import EngineWork
from .running import Running
from .session import Session
from .slot import ModelSlot, public_name
from .store import Store, prepare_trace
from .turns import ChatTurns
from .views import kept_prompt


class Arena:
    def __init__(self, turns: ChatTurns, gpu: EngineWork, running: Running) -> None:
        self.turns, self.gpu, self.running = turns, gpu, running
        self.slot, self.store, self.limits = turns.slot, turns.store, turns.limits

    def compare(self, prompt: Any, system: Any, settings_list: Sequence[engine.GenerationSettings],
                session: Session | None = None) -> dict[str, Any]:
        """Run one prompt at several settings; columns, plot rows and the raw results."""
        prompt = inputs.check_text(prompt, "prompt", self.limits.max_prompt_chars, what="the prompt",
                                   if_empty="Type a prompt to compare first.")
        system = inputs.check_system(system, self.limits)
        if not settings_list or len(settings_list) > self.limits.max_compare_settings:
            raise UserError(f"Compare from 1 to {self.limits.max_compare_settings} settings at once.")
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + \
            [{"role": "user", "content": prompt}]
        self.turns.check_prompt_tokens(messages)
        cancel = self.running.start(session) if session else None
        try:
            results = self.gpu.compare(messages, list(settings_list), cancel)
        finally:
            if session and cancel is not None:
                self.running.end(session, cancel)
        return result(prompt, system, results, self.slot)

    def save(self, session: Session, result: dict[str, Any] | None) -> Update:
        """Store a comparison in the open conversation (or a new one): the prompt, then one message holding all
        columns, whose text is the deepest answer so the chat can go on from it."""
        if not result:
            raise UserError("Run a comparison first.")
        if session.conversation_id is None or self.turns.conversations.gone(session):
            session = session.opened(self.store.create_conversation(session.owner).id)
        save(self.store, session.owner, session.conversation_id, result)
        return session, self.turns.conversations.transcript(session)

    def compare_api(self, prompt: Any, settings: Any, system_prompt: Any = "") -> list[dict[str, Any]]:
        if not isinstance(settings, list) or not settings:
            raise UserError("settings must be a non-empty list of settings objects, e.g. [{\"num_steps\": 4}]")
        if len(settings) > self.limits.max_compare_settings:
            raise UserError(f"Compare at most {self.limits.max_compare_settings} settings at once.")
        default = self.slot.info().num_steps_default
        gen = [inputs.settings_from_dict(self.limits, s, f"settings[{i}]", default) for i, s in enumerate(settings)]
        return self.compare(prompt, system_prompt, gen)["columns"]


def result(prompt: str, system: str, results: Sequence[engine.CompareResult], slot: ModelSlot) -> dict[str, Any]:
    """Columns (label, settings, tokens, text, stats with agreement) and which one is the reference. ``text`` as in
    ``/chat``; ``content`` is the same text under the name the store keeps saved comparisons' columns by."""
    # Token ids where the engine gives them; a remote server that sends none is compared by its pieces of text.
    ids = [[e.token_id for e in r.events if e.token_id >= 0] or [e.text for e in r.events] for r in results]
    reference = max(range(len(results)), key=lambda i: (results[i].summary.mean_steps, -i))
    columns = []
    for r, token_ids in zip(results, ids):
        stats = r.summary.stats(materialized_parameters=slot.materialized(r.summary.mean_steps))
        stats["agreement"] = render.agreement(token_ids, ids[reference])
        column = {"label": r.settings.label(), "settings": r.summary.settings,
                  "tokens": [e.record() for e in r.events], "text": r.summary.text, "content": r.summary.text,
                  "stats": stats, "prompt": kept_prompt(r.summary.prompt)}
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
