"""What is running right now in this process: each tab's Stop event and the answers being written.

Shared by the chat turns (which write answers), the arena (which can be stopped too) and the conversations (an
answer left "partial" that nobody is writing is drawn as interrupted)."""

from __future__ import annotations

import threading

from .session import Session


class Running:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self._writing: set[int] = set()

    def start(self, session: Session) -> threading.Event:
        """This tab's new Stop event (a newer run of the tab takes Stop over)."""
        with self._lock:
            event = threading.Event()
            self._cancels[session.tab] = event
            return event

    def end(self, session: Session, cancel: threading.Event) -> None:
        cancel.set()  # the engine stops too if Gradio closed the generator (tab closed)
        with self._lock:
            if self._cancels.get(session.tab) is cancel:
                del self._cancels[session.tab]

    def stop(self, session: Session) -> None:
        """Stop this tab's running generation within one recurrence step; its partial answer is kept."""
        with self._lock:
            event = self._cancels.get(session.tab)
        if event is not None:
            event.set()

    def writing(self, message_id: int, on: bool) -> None:
        with self._lock:
            (self._writing.add if on else self._writing.discard)(message_id)

    def written_now(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._writing)
