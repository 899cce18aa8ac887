"""The app's behaviour without Gradio: chat turns, branches, the depth arena, conversations and the model slot.

``Studio`` turns the engine's event stream into transcript HTML and store records. Every method takes plain values
(the per-tab ``Session``, strings, numbers) and returns or yields plain values, so the tests drive it without a
browser and ``app.ui`` only wires widgets to it. The owner key travels in ``session.owner`` and is passed to every
store call: locally it is ``LOCAL_OWNER``, a hosted build gives each browser its own. Every input is checked here
against ``AppConfig.limits`` (``app.inputs``), whatever the page's widgets allow.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import engine

from . import arena, inputs, render
from .config import AppConfig, Limits, UserError
from .gpu import GpuWork
from .inputs import (ARENA_DEFAULT, ARENA_PRESETS, arena_settings, parse_threshold, settings_from_dict,
                     settings_from_form, threshold_choices)
from .render import MessageView
from .session import Session
from .slot import ModelSlot, describe_source, public_name
from .store import AnswerWriter, Message, Store
from .views import STORE_LIMITS, message_views, model_messages

if TYPE_CHECKING:
    from .hosted import OwnerKeys

__all__ = ["ARENA_DEFAULT", "ARENA_PRESETS", "AppConfig", "Limits", "ModelSlot", "Session", "Studio", "UserError",
           "arena_settings", "describe_source", "parse_threshold", "settings_from_dict", "settings_from_form",
           "threshold_choices"]

log = logging.getLogger(__name__)

EMPTY_CHAT = "Ask something. Every answer shows how many recurrent steps each token took."
Update = tuple[Session, str]


class Studio:
    """Everything the page does, as plain methods over the model slot and the store."""

    def __init__(self, slot: ModelSlot, store: Store, config: AppConfig | None = None,
                 owners: OwnerKeys | None = None, gpu: GpuWork | None = None) -> None:
        self.slot = slot
        store.limits = STORE_LIMITS  # every write and import is checked against the engine's record definitions
        self.store = store
        self.config = config or AppConfig()
        if self.config.per_browser_owner and owners is None:
            raise ValueError("per-browser owners need OwnerKeys")
        self.owners = owners
        self.gpu = gpu or GpuWork(slot)
        self._lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self._streaming: set[int] = set()  # answers being written by this process right now

    @property
    def limits(self) -> Limits:
        return self.config.limits

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
        with self._lock:
            streaming = frozenset(self._streaming)
        return message_views(self.store.sibling_ids(session.owner, cid), self.store.thread(session.owner, cid),
                             streaming, self.store.traces(session.owner, cid))

    def conversation_choices(self, session: Session, query: Any = "") -> list[tuple[str, int]]:
        """(label, id) for the sidebar: all conversations newest first, or the search hits for ``query``."""
        query = inputs.check_text(query or "", "search", self.limits.max_query_chars, what="the search")
        if query.strip():
            return [(f"{h.title} — {h.snippet}" if h.message_id else h.title, h.conversation_id)
                    for h in self.store.search(session.owner, query, limit=50, highlight=("", ""))]
        return [(str(c.title), c.id) for c in self.store.list_conversations(session.owner, limit=500)]

    def open_conversation(self, session: Session, conversation_id: Any) -> Update:
        if conversation_id is not None:
            conversation_id = _message_id(conversation_id, "conversation")
            self.store.get_conversation(session.owner, conversation_id)  # NotFound for another owner's id
        session = session.opened(conversation_id)
        return session, self.transcript(session)

    def open_latest(self, session: Session) -> tuple[Session, str, list[tuple[str, int]]]:
        """A page load: the most recent conversation open, with the sidebar's list."""
        recent = self.conversation_choices(session)
        if session.conversation_id is None and recent:
            session = session.opened(recent[0][1])
        session, html = self.open_conversation(session, session.conversation_id)
        return session, html, recent

    def last_system_prompt(self, session: Session) -> str | None:
        """The system prompt the open branch was last answered with (kept in the answer's extra)."""
        for view in reversed(self.views(session)):
            if view.role == "assistant":
                return view.extra.get("system", "")
        return None

    def new_conversation(self, session: Session) -> Update:
        return self.open_conversation(session, None)

    def rename(self, session: Session, title: Any) -> None:
        cid = self._require_conversation(session)
        title = inputs.check_text(title, "title", self.limits.max_title_chars, if_empty="Type a new title first.")
        self.store.rename_conversation(session.owner, cid, title.strip())

    def delete(self, session: Session) -> Update:
        cid = self._require_conversation(session)
        self.store.delete_conversation(session.owner, cid)
        return self.open_conversation(session, None)

    def delete_all(self, session: Session) -> tuple[Session, str, int]:
        """Delete every conversation of this owner (a visitor's "forget me" on a hosted server)."""
        conversations = self.store.list_conversations(session.owner)
        for conversation in conversations:
            self.store.delete_conversation(session.owner, conversation.id)
        session, html = self.open_conversation(session, None)
        return session, html, len(conversations)

    def select_sibling(self, session: Session, message_id: Any) -> str:
        cid = self._require_conversation(session)
        self.store.set_current_leaf(session.owner, cid, _message_id(message_id, "message"))
        return self.transcript(session)

    def export(self, session: Session, fmt: str, everything: bool) -> str:
        """Write an export file and return its path (for a download)."""
        ids = None if everything else [self._require_conversation(session)]
        text = (self.store.export_json if fmt == "json" else self.store.export_markdown)(session.owner, ids)
        name = "huginn-conversations" if everything else f"huginn-conversation-{ids[0]}"
        path = Path(tempfile.mkdtemp(prefix="huginn-export-")) / f"{name}.{'json' if fmt == 'json' else 'md'}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def import_file(self, session: Session, path: str) -> tuple[Session, str, int]:
        data = Path(path).read_bytes()
        imported = self.store.import_json(session.owner, data, STORE_LIMITS)
        session, html = self.open_conversation(session, imported[0].id if imported else session.conversation_id)
        return session, html, len(imported)

    def _require_conversation(self, session: Session) -> int:
        if session.conversation_id is None:
            raise UserError("Open a conversation first.")
        return session.conversation_id

    # -- stopping --
    def _cancel_event(self, session: Session) -> threading.Event:
        with self._lock:
            event = threading.Event()
            self._cancels[session.tab] = event
            return event

    def _release(self, session: Session, cancel: threading.Event) -> None:
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

    # -- chat --
    def send(self, session: Session, text: Any, system: Any, settings: engine.GenerationSettings
             ) -> Iterator[Update]:
        """Add the user's message (a sibling of the edited one when editing) and stream the answer."""
        text = inputs.check_message(text, self.limits)
        system = inputs.check_system(system, self.limits)
        if session.conversation_id is None:
            session = session.opened(self.store.create_conversation(session.owner).id)
        parent: Any = "leaf"
        if session.edit_id is not None:
            parent = self.store.get_message(session.owner, session.edit_id).parent_id
            session = session.replace(edit_id=None)
        user = self.store.add_message(session.owner, session.conversation_id, "user", text, parent_id=parent)
        yield from self._answer(session, user.id, system, settings)

    def regenerate(self, session: Session, system: Any, settings: engine.GenerationSettings) -> Iterator[Update]:
        """A new answer to the last question, as a sibling of the current one."""
        system = inputs.check_system(system, self.limits)
        users = self._questions(session)
        if not users:
            raise UserError("There is no question to answer again yet.")
        yield from self._answer(session, users[-1].id, system, settings)

    def start_edit(self, session: Session) -> tuple[Session, str]:
        """Put the last question in the input box; sending makes a sibling of it."""
        users = self._questions(session)
        if not users:
            raise UserError("There is no question to edit yet.")
        return session.replace(edit_id=users[-1].id), str(users[-1].content)

    def _questions(self, session: Session) -> list[Message]:
        cid = self._require_conversation(session)
        return [m for m in self.store.thread(session.owner, cid) if m.role == "user"]

    def prompt_messages(self, thread: Sequence[Message], system: str) -> list[dict[str, str]]:
        """What the model gets for a stored branch: the newest turns within this server's history caps."""
        messages = model_messages(thread, system)
        head = messages[:1] if system.strip() else []
        turns = messages[len(head):][-self.limits.max_history_messages:]
        turns, _ = inputs.fit_prompt(head, turns, self.limits.max_prompt_tokens, self.count_tokens)
        return head + turns

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """The prompt's length in tokens as the model's chat template renders it."""
        tokenizer = self.slot.pair[1]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        return len(ids)

    def _answer(self, session: Session, parent_id: int, system: str, settings: engine.GenerationSettings
                ) -> Iterator[Update]:
        owner, cid = session.owner, session.conversation_id
        self.store.set_current_leaf(owner, cid, parent_id, descend=False)
        thread = self.store.thread(owner, cid, parent_id)
        messages = self.prompt_messages(thread, system)
        base = message_views(self.store.sibling_ids(owner, cid), thread)
        info = self.slot.info()
        writer = self.store.begin_answer(
            owner, cid, parent_id, model_id=public_name(info.name), quantization=info.quantization,
            settings=settings.to_dict(), extra={"system": system} if system.strip() else None)
        live = MessageView(id=writer.message_id, role="assistant", content="", status="partial",
                           tokens=writer.tokens, settings=settings.to_dict())
        cancel = self._cancel_event(session)
        with self._lock:
            self._streaming.add(writer.message_id)
        try:
            yield session, self.transcript(session, live, base)
            for _ in self._write_answer(writer, messages, settings, cancel):
                yield session, self.transcript(session, live, base)
        finally:
            self._release(session, cancel)
            with self._lock:
                self._streaming.discard(writer.message_id)
            writer.close()
        yield session, self.transcript(session)

    def _write_answer(self, writer: AnswerWriter, messages: list[dict[str, str]], settings: engine.GenerationSettings,
                      cancel: threading.Event) -> Iterator[None]:
        """Stream the engine into the writer, yielding whenever the page is due an update; finish the writer."""
        last = time.perf_counter()
        summary = None
        try:
            for event in self.gpu.stream(messages, settings, cancel, writer.owner):
                if isinstance(event, engine.Summary):
                    summary = event
                    break
                writer.add_token(**event.record())
                if time.perf_counter() - last >= self.config.stream_interval:
                    last = time.perf_counter()
                    yield
        except engine.PromptError as err:
            writer.fail(str(err))
            return
        except Exception as err:  # noqa: BLE001 - one failed answer must not take the page down
            log.exception("generation failed")
            writer.fail(f"generation failed: {type(err).__name__}: {err}")
            return
        if summary is None:  # cut from this side (Stop under ZeroGPU)
            assert cancel.is_set(), "the engine ended without a summary"
            writer.finish_stream(None)
            return
        stats = summary.stats(materialized_parameters=self.slot.materialized(summary.mean_steps))
        writer.finish_stream(summary.stop_reason, stats, content=summary.text)
        if summary.trace is not None:
            self.store.save_trace(writer.owner, writer.message_id, summary.trace)

    # -- depth arena --
    def compare(self, prompt: Any, system: Any, settings_list: Sequence[engine.GenerationSettings],
                session: Session | None = None) -> dict[str, Any]:
        """Run one prompt at several settings (batched by the engine); columns, plot rows and the raw results."""
        prompt = inputs.check_text(prompt, "prompt", self.limits.max_prompt_chars, what="the prompt",
                                   if_empty="Type a prompt to compare first.")
        system = inputs.check_system(system, self.limits)
        if not settings_list or len(settings_list) > self.limits.max_compare_settings:
            raise UserError(f"Compare from 1 to {self.limits.max_compare_settings} settings at once.")
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + \
            [{"role": "user", "content": prompt}]
        self._check_prompt_tokens(messages)
        cancel = self._cancel_event(session) if session else None
        try:
            results = self.gpu.compare(messages, list(settings_list), cancel)
        finally:
            if session and cancel is not None:
                self._release(session, cancel)
        return arena.result(prompt, system, results, self.slot)

    def save_comparison(self, session: Session, result: dict[str, Any] | None) -> Update:
        """Store a comparison in the open conversation (or a new one): the prompt, then one message holding all
        columns, whose text is the deepest answer so the chat can go on from it."""
        if not result:
            raise UserError("Run a comparison first.")
        if session.conversation_id is None:
            session = session.opened(self.store.create_conversation(session.owner).id)
        arena.save(self.store, session.owner, session.conversation_id, result)
        return session, self.transcript(session)

    # -- scripted API --
    def _check_prompt_tokens(self, messages: list[dict[str, str]]) -> None:
        cap = self.limits.max_prompt_tokens
        if cap is not None and (count := self.count_tokens(messages)) > cap:
            raise UserError(f"The prompt (with history and system prompt) is {count:,} tokens; the limit here is "
                            f"{cap:,}.")

    def api_messages(self, prompt: Any, system_prompt: Any, history: Any) -> list[dict[str, str]]:
        """An API call's messages, every field checked: types, Unicode, each cap, and the whole within the caps."""
        prompt = inputs.check_text(prompt, "prompt", self.limits.max_prompt_chars, what="the prompt",
                                   if_empty="prompt: is empty")
        system_prompt = inputs.check_system(system_prompt, self.limits)
        turns = inputs.check_history(history, self.limits)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
            turns + [{"role": "user", "content": prompt}]
        # The history counts too: otherwise a caller could pass any amount of text through it.
        size = sum(len(m["content"]) for m in messages)
        if size > self.limits.max_prompt_chars:
            raise UserError(f"The prompt (with history and system prompt) is {size:,} characters; the limit here is "
                            f"{self.limits.max_prompt_chars:,}.")
        self._check_prompt_tokens(messages)
        return messages

    def chat_api(self, prompt: Any, settings: Any = None, system_prompt: Any = "",
                 history: Any = None) -> dict[str, Any]:
        """One answer with its per-token steps, not saved in the store."""
        gen = settings_from_dict(self.limits, settings, default_steps=self.slot.info().num_steps_default)
        messages = self.api_messages(prompt, system_prompt, history)
        tokens, summary = [], None
        for event in self.gpu.stream(messages, gen):
            if isinstance(event, engine.Summary):
                summary = event
            else:
                tokens.append(event.record())
        assert summary is not None
        out = {"text": summary.text, "tokens": tokens,
               "stats": summary.stats(materialized_parameters=self.slot.materialized(summary.mean_steps)),
               "settings": summary.settings}
        if summary.trace is not None:  # asked for with settings {"trace": true}; the engine's compact form
            out["trace"] = summary.trace
        return out

    def compare_api(self, prompt: Any, settings: Any, system_prompt: Any = "") -> list[dict[str, Any]]:
        if not isinstance(settings, list) or not settings:
            raise UserError("settings must be a non-empty list of settings objects, e.g. [{\"num_steps\": 4}]")
        if len(settings) > self.limits.max_compare_settings:
            raise UserError(f"Compare at most {self.limits.max_compare_settings} settings at once.")
        default = self.slot.info().num_steps_default
        gen = [settings_from_dict(self.limits, s, f"settings[{i}]", default) for i, s in enumerate(settings)]
        return self.compare(prompt, system_prompt, gen)["columns"]

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


def _message_id(value: Any, what: str) -> int:
    """An id sent by the page (a click, a list choice): a positive whole number, else a clear refusal."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise UserError(f"{what}: not a valid id")
    return value
