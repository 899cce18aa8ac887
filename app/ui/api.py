"""The named endpoints ``/chat`` and ``/compare`` (clients depend on these names and signatures)."""

from __future__ import annotations

import gradio as gr

from ..handlers import Studio
from ..hosted import api_cache_owner
from .common import GEN, friendly


def add_endpoints(studio: Studio) -> None:
    """Inside the Blocks: the scripted API. Errors come back as plain text naming the field."""
    limit = studio.config.concurrency_limit

    def chat(prompt: str, settings: dict | None = None, system_prompt: str = "",
             history: list | None = None, request: gr.Request = None) -> dict:
        """One answer: {"text", "tokens": [{"text", "steps", "exit_value"}], "stats", "settings"}.
        settings: engine.GenerationSettings fields by name, e.g. {"num_steps": 16}."""
        # Hosted or behind a login, each login (or each call) has its own prompt caches: a shared one would let a
        # caller read another's system prompt back through the reuse it reports.
        login = getattr(request, "username", None)
        owner = api_cache_owner(login, isolated=studio.config.per_browser_owner or login is not None,
                                login=login is not None)
        return studio.chat.chat_api(prompt, settings, system_prompt, history, owner)

    def compare(prompt: str, settings: list, system_prompt: str = "") -> list:
        """One prompt at several settings, batched: a list of {"label", "settings", "tokens", "text", "stats"}
        (as /chat; "content" is the same text, kept for older clients) with stats["agreement"] against the
        deepest answer."""
        return studio.arena.compare_api(prompt, settings, system_prompt)

    for fn in (chat, compare):
        gr.api(friendly(fn, needs_session=False, escape=False), api_name=fn.__name__, concurrency_limit=limit,
               concurrency_id=GEN)


