"""Chat turns: a question and its streamed answer (new, regenerated or edited), written into the store as it grows,
and the scripted ``/chat`` answer, which is not stored."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, NamedTuple, Sequence

import engine

from . import context as context_policy
from . import inputs, render
from .config import EngineError, Interrupted, Limits, UserError
from .conversations import Conversations
from .gpu import EngineWork
from .render import MessageView
from .running import Running
from .session import Session
from .slot import ModelSlot, public_name
from .store import AnswerWriter, Message, StoreFull
from .views import kept_prompt, message_views, model_messages

log = logging.getLogger(__name__)


class TurnUpdate(NamedTuple):
    """One update of a streamed turn. While the answer grows only ``live`` changes (``transcript`` is None: keep the
    one drawn before), so an update costs the answer's size, not the conversation's."""

    session: Session
    transcript: str | None  # the conversation without the answer being written; None: unchanged
    live: str  # the answer being written ("" once the transcript holds it)


class ChatTurns:
    def __init__(self, slot: ModelSlot, conversations: Conversations, gpu: EngineWork, running: Running) -> None:
        self.slot, self.conversations, self.gpu, self.running = slot, conversations, gpu, running
        self.store, self.config = conversations.store, conversations.config

    @property
    def limits(self) -> Limits:
        return self.config.limits

    def send(self, session: Session, text: Any, system: Any, settings: engine.GenerationSettings
             ) -> Iterator[TurnUpdate]:
        """Add the user's message (a sibling of the edited one when editing) and stream the answer."""
        text = inputs.check_message(text, self.limits)
        system = inputs.check_system(system, self.limits)
        new = session.conversation_id is None or self.conversations.gone(session)  # gone: deleted in another tab
        if new:
            session = session.opened(self.store.create_conversation(session.owner).id)
        parent: Any = "leaf"
        if session.edit_id is not None:
            parent = self.store.get_message(session.owner, session.edit_id).parent_id
            session = session.replace(edit_id=None)
        try:
            user = self.store.add_message(session.owner, session.conversation_id, "user", text, parent_id=parent)
        except StoreFull:  # a full store keeps no empty conversation for the question it refused
            if new:
                self.store.delete_conversation(session.owner, session.conversation_id)
            raise
        yield from self._answer(session, user.id, system, settings)

    def regenerate(self, session: Session, system: Any, settings: engine.GenerationSettings
                   ) -> Iterator[TurnUpdate]:
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

    def stop(self, session: Session) -> None:
        self.running.stop(session)

    def _questions(self, session: Session) -> list[Message]:
        cid = self.conversations.require(session)
        return [m for m in self.store.thread(session.owner, cid) if m.role == "user"]

    # -- prompts --
    def prompt_messages(self, thread: Sequence[Message], system: str) -> list[dict[str, str]]:
        """What the model gets for a stored branch: the newest turns within this server's history caps."""
        messages = model_messages(thread, system)
        head = messages[:1] if system.strip() else []
        turns = messages[len(head):][-self.limits.max_history_messages:]
        turns, _ = inputs.fit_prompt(head, turns, self.limits.max_prompt_tokens, self.count_tokens)
        context = self.slot.info().context
        # Old turns leave in blocks, so the prompt cache keeps its prefix. A remote engine has no tokenizer here (its
        # server drops what its context cannot take) but refuses a request over its caps, all messages' characters
        # together among them: old turns leave by characters for it.
        if not isinstance(self.slot, ModelSlot):
            turns, _ = context_policy.keep_recent(head, turns, self.limits.max_prompt_chars, context_policy.characters)
        elif context > context_policy.ANSWER_RESERVE:
            turns, _ = context_policy.keep_recent(head, turns, context - context_policy.ANSWER_RESERVE,
                                                  self.count_tokens)
        return head + turns

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """The prompt's length in tokens as the model's chat template renders it."""
        tokenizer = self.slot.pair[1]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        return len(ids)

    def check_prompt_tokens(self, messages: list[dict[str, str]]) -> None:
        cap = self.limits.max_prompt_tokens
        if cap is not None and (count := self.count_tokens(messages)) > cap:
            raise UserError(f"The prompt (with history and system prompt) is {count:,} tokens; the limit here is "
                            f"{cap:,}.")

    # -- answers --
    def _answer(self, session: Session, parent_id: int, system: str, settings: engine.GenerationSettings
                ) -> Iterator[TurnUpdate]:
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
        cancel = self.running.start(session)
        self.running.writing(writer.message_id, True)
        try:
            yield TurnUpdate(session, self.conversations.transcript(session, base=base), render.live_tail(live))
            for _ in self._write_answer(writer, messages, settings, cancel):
                yield TurnUpdate(session, None, render.live_tail(live))
        finally:
            self.running.end(session, cancel)
            self.running.writing(writer.message_id, False)
            writer.close()
        yield TurnUpdate(session, self.conversations.transcript(session), "")

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
        except Interrupted as err:  # a remote stream cut short: what came is kept, never as a finished answer
            writer.finish("interrupted", error=str(err))
            return
        except (engine.PromptError, EngineError, engine.SettingsError) as err:  # SettingsError: a remote refusal
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
        writer.finish_stream(summary.stop_reason, stats, content=summary.text, prompt=kept_prompt(summary.prompt))
        if summary.trace is not None:
            self.store.save_trace(writer.owner, writer.message_id, summary.trace)

    # -- scripted API --
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
        self.check_prompt_tokens(messages)
        return messages

    def chat_api(self, prompt: Any, settings: Any = None, system_prompt: Any = "",
                 history: Any = None, cache_owner: str = "") -> dict[str, Any]:
        """One answer with its per-token steps, not saved in the store. ``cache_owner`` names whose prompt caches
        it may reuse (``hosted.api_cache_owner``)."""
        gen = inputs.settings_from_dict(self.limits, settings, default_steps=self.slot.info().num_steps_default)
        messages = self.api_messages(prompt, system_prompt, history)
        tokens, summary = [], None
        for event in self.gpu.stream(messages, gen, owner=cache_owner):
            if isinstance(event, engine.Summary):
                summary = event
            else:
                tokens.append(event.record())
        assert summary is not None
        out = {"text": summary.text, "tokens": tokens,
               "stats": summary.stats(materialized_parameters=self.slot.materialized(summary.mean_steps)),
               "settings": summary.settings, "prompt": summary.prompt}
        if summary.trace is not None:  # asked for with settings {"trace": true}; the engine's compact form
            out["trace"] = summary.trace
        return out
