"""The app's behaviour without Gradio, put together: ``Studio`` holds the model slot and the store and the parts
that act on them, each with one responsibility:

* ``conversations`` (``app.conversations``): the list, opening, renaming, deleting, branches, export and import, and
  the transcript HTML;
* ``chat`` (``app.turns``): questions and their streamed answers, and the scripted ``/chat`` answer;
* ``arena`` (``app.arena``): one prompt at several settings;
* ``retention`` (``app.retention``): where ``Limits.retention_days`` is set (hosted), the thread deleting what
  visitors left;
* the model panel's two calls below.

Every method takes plain values (the per-tab ``Session``, strings, numbers) and returns or yields plain values, so
the tests drive it without a browser and ``app.ui`` only wires widgets to it. The owner key travels in
``session.owner`` and is passed to every store call: locally it is ``LOCAL_OWNER``, a hosted build gives each browser
its own. Every input is checked against ``AppConfig.limits`` (``app.inputs``), whatever the page's widgets allow.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import engine

from . import render
from .arena import Arena
from .config import AppConfig, Limits, UserError
from .conversations import Conversations
from .gpu import EngineWork, Gate, GatedWork, GpuWork
from .inputs import (ARENA_DEFAULT, ARENA_PRESETS, arena_settings, parse_threshold, settings_from_dict,
                     settings_from_form, threshold_choices)
from .retention import Retention
from .running import Running
from .session import Session
from .slot import ModelSlot, describe_source, public_name
from .store import Store
from .turns import ChatTurns
from .views import STORE_LIMITS

if TYPE_CHECKING:
    from .hosted import OwnerKeys

__all__ = ["ARENA_DEFAULT", "ARENA_PRESETS", "AppConfig", "Limits", "ModelSlot", "Session", "Studio", "UserError",
           "arena_settings", "describe_source", "parse_threshold", "settings_from_dict", "settings_from_form",
           "threshold_choices"]


class Studio:
    """The model slot, the store, and the parts of the app that act on them."""

    def __init__(self, slot: ModelSlot, store: Store, config: AppConfig | None = None,
                 owners: OwnerKeys | None = None, gpu: EngineWork | None = None) -> None:
        self.slot = slot
        self.config = config or AppConfig()
        # Every write and import is checked against the engine's record definitions and this server's storage caps.
        store.limits = dataclasses.replace(STORE_LIMITS, max_owner_conversations=self.limits.max_conversations,
                                           max_owner_bytes=self.limits.max_stored_bytes,
                                           max_server_conversations=self.limits.max_server_conversations,
                                           max_server_bytes=self.limits.max_server_bytes)
        self.store = store
        days = self.limits.retention_days
        self.retention = Retention(store, days).start() if days is not None else None
        self.owners = owners
        # One gate for the page and the OpenAI API together (app.openai_api serves behind it).
        self.gate = Gate(self.config.concurrency_limit, self.config.queue_size)
        self.gpu = GatedWork(gpu or GpuWork(slot), self.gate)
        self.running = Running()
        self.conversations = Conversations(store, self.config, self.running, owners)
        self.chat = ChatTurns(slot, self.conversations, self.gpu, self.running)
        self.arena = Arena(self.chat, self.gpu, self.running)

    @property
    def limits(self) -> Limits:
        return self.config.limits

    # -- model panel --
    def load_model(self, source: str, quantization: str, tqdm_class: Any = None) -> engine.ModelInfo:
        """Load another model; refused where model loading is off (hosted: no local paths, no downloads)."""
        if not self.config.allow_model_loading:
            raise UserError("Loading models is turned off on this server.")
        return self.slot.load(source, quantization, tqdm_class)

    def model_summary(self) -> str:
        info = self.slot.info()
        return (f"**{public_name(info.name)}** · {render.human_count(info.parameters)} parameters · {info.dtype}"
                f"{'' if info.quantization in ('none', 'bf16', 'fp32') else ' · ' + info.quantization} · {info.device} · "
                f"{render.human_bytes(info.memory_bytes)} · default depth {info.num_steps_default} steps · "
                f"context {info.context:,} tokens" + (f"  \nMemory plan: {info.plan}" if info.plan else "")
                + (f"  \n{info.notice}" if info.notice else ""))
