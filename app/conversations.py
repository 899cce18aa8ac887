"""A visitor's conversations: opening, listing and searching them, renaming, deleting, branches, export and import,
and the transcript HTML of the open one."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import inputs, render
from .config import AppConfig, UserError
from .hosted import HourlyCap, OwnerKeys
from .render import MessageView
from .running import Running
from .session import Session
from .store import NotFound, Store
from .views import message_views

EMPTY_CHAT = "Ask something. Every answer shows how many recurrent steps each token took."
GONE = "This conversation was deleted, perhaps in another tab. Start a new one or open another from the list."
Update = tuple[Session, str]


class Conversations:
    def __init__(self, store: Store, config: AppConfig, running: Running, owners: OwnerKeys | None = None) -> None:
        if config.per_browser_owner and owners is None:
            raise ValueError("per-browser owners need OwnerKeys")
        self.store, self.config, self.running, self.owners = store, config, running, owners
        self.imports = HourlyCap(config.limits.max_imports_per_hour, "import files")
        # Export files live here, one folder per owner, so "delete all my conversations" removes them too.
        self.exports = Path(tempfile.mkdtemp(prefix="huginn-exports-"))

    # -- sessions and rendering --
    def new_session(self) -> Session:
        return Session(self.config.default_owner)

    def browser_session(self, token: Any) -> tuple[Session, str | None]:
        """A tab's session from the token its browser keeps, and the token to keep. Hosted, the owner key is
        derived from the token on the server; a missing or malformed token gets a fresh one (a new, empty owner).
        Locally everyone is the default owner and no token is kept."""
        if not self.config.per_browser_owner:
            return self.new_session(), None
        assert self.owners is not None
        if not self.owners.valid_token(token):
            token = self.owners.new_token()
        return Session(self.owners.owner_for(token)), token

    def transcript(self, session: Session, live: MessageView | None = None,
                   base: list[MessageView] | None = None) -> str:
        views = list(base) if base is not None else self.views(session)
        if live is not None:
            views.append(live)
        return render.transcript(views, EMPTY_CHAT)

    def views(self, session: Session) -> list[MessageView]:
        cid = session.conversation_id
        if cid is None:
            return []
        return message_views(self.store.sibling_ids(session.owner, cid), self.store.thread(session.owner, cid),
                             self.running.written_now(), self.store.traces(session.owner, cid))

    # -- the list --
    def choices(self, session: Session, query: Any = "") -> list[tuple[str, int]]:
        """(label, id) for the sidebar: all conversations newest first, or the search hits for ``query``."""
        query = inputs.check_text(query or "", "search", self.config.limits.max_query_chars, what="the search")
        if query.strip():
            return [(f"{h.title} — {h.snippet}" if h.message_id else h.title, h.conversation_id)
                    for h in self.store.search(session.owner, query, limit=50, highlight=("", ""))]
        return [(str(c.title), c.id) for c in self.store.list_conversations(session.owner, limit=500)]

    def open(self, session: Session, conversation_id: Any) -> Update:
        if conversation_id is not None:
            conversation_id = message_id(conversation_id, "conversation")
            self.store.get_conversation(session.owner, conversation_id)  # NotFound for another owner's id
        session = session.opened(conversation_id)
        return session, self.transcript(session)

    def open_latest(self, session: Session) -> tuple[Session, str, list[tuple[str, int]]]:
        """A page load: the most recent conversation open, with the sidebar's list."""
        recent = self.choices(session)
        if self.gone(session):  # a reloaded tab whose conversation another tab deleted
            session = session.opened(None)
        if session.conversation_id is None and recent:
            session = session.opened(recent[0][1])
        session, html = self.open(session, session.conversation_id)
        return session, html, recent

    def last_system_prompt(self, session: Session) -> str | None:
        """The system prompt the open branch was last answered with (kept in the answer's extra)."""
        for view in reversed(self.views(session)):
            if view.role == "assistant":
                return view.extra.get("system", "")
        return None

    def gone(self, session: Session) -> bool:
        """Whether the open conversation was deleted elsewhere (another tab of this visitor) since it was opened."""
        if session.conversation_id is None:
            return False
        try:
            self.store.get_conversation(session.owner, session.conversation_id)
        except NotFound:
            return True
        return False

    def require(self, session: Session) -> int:
        """The open conversation's id: a plain refusal when none is open or another tab deleted it."""
        if session.conversation_id is None:
            raise UserError("Open a conversation first.")
        if self.gone(session):
            raise ConversationGone(GONE)
        return session.conversation_id

    def new(self, session: Session) -> Update:
        return self.open(session, None)

    def rename(self, session: Session, title: Any) -> None:
        cid = self.require(session)
        title = inputs.check_text(title, "title", self.config.limits.max_title_chars,
                                  if_empty="Type a new title first.")
        self.store.rename_conversation(session.owner, cid, title.strip())

    def delete(self, session: Session) -> Update:
        cid = self.require(session)
        self.store.delete_conversation(session.owner, cid)
        return self.open(session, None)

    def delete_all(self, session: Session) -> tuple[Session, str, int]:
        """Delete every conversation of this owner and the export files made for it (a visitor's "forget me")."""
        conversations = self.store.list_conversations(session.owner)
        for conversation in conversations:
            self.store.delete_conversation(session.owner, conversation.id)
        shutil.rmtree(self._export_folder(session), ignore_errors=True)
        session, html = self.open(session, None)
        return session, html, len(conversations)

    def select_sibling(self, session: Session, message: Any) -> str:
        cid = self.require(session)
        self.store.set_current_leaf(session.owner, cid, message_id(message, "message"))
        return self.transcript(session)

    # -- files --
    def export(self, session: Session, fmt: str, everything: bool) -> str:
        """Write an export file into this owner's export folder and return its path (for a download)."""
        ids = None if everything else [self.require(session)]
        text = (self.store.export_json if fmt == "json" else self.store.export_markdown)(session.owner, ids)
        name = "huginn-conversations" if everything else f"huginn-conversation-{ids[0]}"
        folder = self._export_folder(session)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.{'json' if fmt == 'json' else 'md'}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def import_file(self, session: Session, path: str) -> tuple[Session, str, int]:
        self.imports.take(session.owner)
        data = Path(path).read_bytes()
        # A system prompt comes back into the page's box with its answer: no longer than the page itself takes. The
        # store's limits hold the record definitions and the owner's caps.
        limits = dataclasses.replace(self.store.limits, max_system_chars=self.config.limits.max_system_chars)
        imported = self.store.import_json(session.owner, data, limits)
        session, html = self.open(session, imported[0].id if imported else session.conversation_id)
        return session, html, len(imported)

    def _export_folder(self, session: Session) -> Path:
        # Owner keys are secrets of their browsers: the folder is named by a hash, never by the key.
        return self.exports / hashlib.sha256(session.owner.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class ConversationGone(UserError):
    """The tab's open conversation no longer exists: the page closes it (``app.ui.common.friendly``)."""


def message_id(value: Any, what: str) -> int:
    """An id sent by the page (a click, a list choice): a positive whole number, else a clear refusal."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise UserError(f"{what}: not a valid id")
    return value
