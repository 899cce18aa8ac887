"""The per-tab session: whose conversations, which one is open, which question is being edited."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any


def _tab_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Session:
    """Kept by Gradio on the server for each tab (``gr.State``); a client never sends it. Immutable: handlers return
    a changed copy, which Gradio stores for the next event."""

    owner: str
    tab: str = field(default_factory=_tab_id)  # keys this tab's Stop, so one tab never stops another's answer
    conversation_id: int | None = None
    edit_id: int | None = None  # the question a send replaces with a new version

    def replace(self, **changes: Any) -> Session:
        return dataclasses.replace(self, **changes)

    def opened(self, conversation_id: int | None) -> Session:
        return dataclasses.replace(self, conversation_id=conversation_id, edit_id=None)
