"""The app's behaviour without Gradio: chat turns, branches, the depth arena, conversations and the model slot.

``Studio`` turns the engine's event stream into transcript HTML and store records. Every method takes plain values
(the per-tab ``session`` dict, strings, numbers) and returns or yields plain values, so the tests drive it without a
browser and ``app/ui.py`` only wires widgets to it. The owner key travels in ``session["owner"]`` and is passed to
every store call: locally it is ``LOCAL_OWNER``, a hosted build gives each browser its own.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import engine

from . import render
from .gpu import GpuWork
from .render import MessageView
from .store import LOCAL_OWNER, Message, Store

if TYPE_CHECKING:
    from .hosted import OwnerKeys

log = logging.getLogger(__name__)

ARENA_PRESETS = ("4", "8", "16", "32", "64", "128", "adaptive")
ARENA_DEFAULT = ("4", "8", "16", "32", "adaptive")
STATS_KEYS = ("tokens", "prompt_tokens", "tokens_per_s", "mean_steps", "min_steps", "max_steps", "core_iterations",
              "kv_cache_bytes", "elapsed_s", "first_token_s", "stop_reason", "seed", "notice", "trimmed_messages")


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for; a hosted build tightens them."""

    max_num_steps: int = 128
    max_new_tokens: int = 4096
    max_prompt_chars: int = 100_000
    max_compare_settings: int = 7


@dataclass(frozen=True)
class AppConfig:
    limits: Limits = field(default_factory=Limits)
    allow_model_loading: bool = True
    default_owner: str = LOCAL_OWNER
    concurrency_limit: int = 1  # generations at once per loaded model; the rest wait in Gradio's queue
    queue_size: int | None = None
    stream_interval: float = 0.15  # seconds between page updates while streaming (the engine never waits on it)
    banner: str = ""
    per_browser_owner: bool = False  # hosted: each browser gets its own owner key (Studio needs ``owners``)


class UserError(Exception):
    """Bad input from the page; the message is shown as it is."""


# ---- the loaded model -------------------------------------------------------------------------------------------

class ModelSlot:
    """The model every session generates with. Swapping keeps running generations on the model they started with."""

    def __init__(self, model: Any, tokenizer: Any, note: str = "") -> None:
        self._pair = (model, tokenizer)
        self.note = note
        self.lock = threading.Lock()

    @property
    def pair(self) -> tuple[Any, Any]:
        return self._pair

    def info(self) -> engine.ModelInfo:
        return engine.model_info(self._pair[0])

    def materialized(self, num_steps: float) -> int:
        return int(self._pair[0].config.materialized_parameters(max(1, round(num_steps))))

    def load(self, source: str, quantization: str, tqdm_class: Any = None) -> engine.ModelInfo:
        """Load another model and make it current; raises engine.LoadError with a user-facing message."""
        with self.lock:
            model, tokenizer = engine.load(source or "auto", quantization=quantization, tqdm_class=tqdm_class)
            self._pair = (model, tokenizer)
            self.note = describe_source(source or "auto", engine.model_info(model).name)
            return engine.model_info(model)


def describe_source(requested: str, loaded: str) -> str:
    """The line the page shows about which model runs and why."""
    if Path(loaded).resolve() == Path(engine.DEMO_MODEL).resolve():
        why = " (no suitable GPU with the official weights)" if requested == "auto" else ""
        return (f"Running the bundled demo model{why}: a tiny model trained on toy tasks, for trying the app. "
                f"Start with --model {engine.OFFICIAL_MODEL} on a GPU for Huginn-0125.")
    return f"Running {loaded}."


# ---- settings from the form -------------------------------------------------------------------------------------

def parse_threshold(value: Any) -> float | None:
    """'5e-4 (default)' -> 5e-4; '' -> None (the criterion's pinned default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    head = str(value).split()[0]
    try:
        return float(head)
    except ValueError:
        raise engine.SettingsError("exit_threshold", f"{value!r} is not a number (e.g. 5e-4)") from None


def threshold_choices(criterion: str) -> tuple[list[str], str]:
    """Presets around the criterion's pinned default, a decade apart; the default is marked and selected."""
    default = engine.DEFAULT_THRESHOLDS.get(criterion)
    if default is None:
        return [], ""
    if criterion == "argmax-stability":
        values = [2, 3, 5, 8, 12]
    else:
        values = [default * f for f in (100, 10, 1, 0.1, 0.01)]
    labels = [f"{v:g} (default)" if v == default else f"{v:g}" for v in values]
    return labels, f"{default:g} (default)"


def settings_from_form(limits: Limits, num_steps: Any, adaptive: bool, criterion: str, threshold: Any,
                       min_steps: Any, warm_start: bool, temperature: Any, top_p: Any, top_k: Any, min_p: Any,
                       repetition_penalty: Any, seed: Any, max_new_tokens: Any) -> engine.GenerationSettings:
    """Build validated settings from the widgets; raises engine.SettingsError naming the field."""
    num_steps = _as_int("num_steps", num_steps)
    max_new_tokens = _as_int("max_new_tokens", max_new_tokens)
    if num_steps > limits.max_num_steps:
        raise engine.SettingsError("num_steps", f"must be at most {limits.max_num_steps} here, got {num_steps}")
    if max_new_tokens > limits.max_new_tokens:
        raise engine.SettingsError("max_new_tokens",
                                   f"must be at most {limits.max_new_tokens} here, got {max_new_tokens}")
    seed = None if seed is None or seed == "" or int(seed) < 0 else _as_int("seed", seed)
    return engine.GenerationSettings(
        num_steps=num_steps,
        criterion=(criterion or "kl") if adaptive else "none",
        exit_threshold=parse_threshold(threshold) if adaptive else None,
        min_steps=min(_as_int("min_steps", min_steps), num_steps),
        warm_start=bool(warm_start),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature), top_p=float(top_p), top_k=_as_int("top_k", top_k), min_p=float(min_p),
        repetition_penalty=float(repetition_penalty), seed=seed,
    )


def settings_from_dict(limits: Limits, data: dict[str, Any] | None, default_steps: int | None = None
                       ) -> engine.GenerationSettings:
    """Settings for the scripted APIs: engine fields by name, checked against the limits. ``num_steps`` defaults to
    ``default_steps`` (the loaded model's own depth, as in the page) within the limits."""
    data = dict(data or {})
    if default_steps is not None:
        data.setdefault("num_steps", min(default_steps, limits.max_num_steps))
    settings = engine.GenerationSettings.from_dict(data)
    if settings.num_steps > limits.max_num_steps:
        raise engine.SettingsError("num_steps", f"must be at most {limits.max_num_steps} here")
    if settings.max_new_tokens > limits.max_new_tokens:
        raise engine.SettingsError("max_new_tokens", f"must be at most {limits.max_new_tokens} here")
    return settings


def _as_int(name: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise engine.SettingsError(name, f"must be a whole number, got {value!r}") from None
    if number != int(number):
        raise engine.SettingsError(name, f"must be a whole number, got {value!r}")
    return int(number)


def arena_settings(base: engine.GenerationSettings, presets: Sequence[str], limits: Limits
                   ) -> list[engine.GenerationSettings]:
    """One settings entry per chosen preset: fixed depths, and 'adaptive' with the panel's criterion."""
    if not presets:
        raise UserError("Choose at least one setting to compare.")
    if len(presets) > limits.max_compare_settings:
        raise UserError(f"Compare at most {limits.max_compare_settings} settings at once.")
    out = []
    # Adaptive exit may go as deep as the deepest fixed column, so it is compared against its full budget.
    deepest = max([base.num_steps] + [int(p) for p in presets if p != "adaptive"])
    for preset in presets:
        if preset == "adaptive":
            criterion = base.criterion if base.adaptive else "kl"
            out.append(base.replace(num_steps=min(deepest, limits.max_num_steps), criterion=criterion,
                                    exit_threshold=base.exit_threshold if base.adaptive else None))
        else:
            steps = int(preset)
            if steps > limits.max_num_steps:
                raise UserError(f"{steps} steps is over this app's limit of {limits.max_num_steps}.")
            out.append(base.replace(num_steps=steps, criterion="none", exit_threshold=None,
                                    min_steps=min(base.min_steps, steps)))
    return out


# ---- conversations ----------------------------------------------------------------------------------------------

def new_session(owner: str = LOCAL_OWNER) -> dict[str, Any]:
    """Per-tab state: whose conversations, which one is open, which message is being edited."""
    return {"owner": owner, "tab": secrets.token_hex(8), "conversation_id": None, "edit_id": None}


def message_views(messages: Sequence[Message], thread: Sequence[Message]) -> list[MessageView]:
    """Views of a thread with each message's place among its siblings (taken from the whole tree)."""
    by_parent: dict[int | None, list[int]] = {}
    for m in messages:
        by_parent.setdefault(m.parent_id, []).append(m.id)
    views = []
    for m in thread:
        sibs = by_parent.get(m.parent_id, [m.id])
        i = sibs.index(m.id) if m.id in sibs else 0
        views.append(MessageView(
            id=m.id, role=m.role, content=m.content, status=m.status, kind=m.kind, tokens=m.tokens, stats=m.stats,
            settings=m.settings, error=m.error, sibling_index=i + 1, sibling_count=len(sibs),
            prev_sibling=sibs[i - 1] if i > 0 else None, next_sibling=sibs[i + 1] if i + 1 < len(sibs) else None,
            extra=m.extra or {},
        ))
    return views


def model_messages(thread: Sequence[Message], system: str) -> list[dict[str, str]]:
    """The chat as the engine wants it: optional system prompt, then the branch's non-empty turns."""
    out = [{"role": "system", "content": system}] if system.strip() else []
    out += [{"role": m.role, "content": m.content} for m in thread
            if m.role in ("user", "assistant") and m.content.strip()]
    return out


def summary_stats(summary: engine.Summary, materialized: int) -> dict[str, Any]:
    data = summary.to_dict()
    stats = {k: data[k] for k in STATS_KEYS}
    stats["materialized_parameters"] = materialized
    return stats


def token_record(event: engine.TokenEvent) -> dict[str, Any]:
    return {"text": event.text, "steps": event.steps, "exit_value": render.finite(event.exit_value)}


EMPTY_CHAT = "Ask something. Every answer shows how many recurrent steps each token took."


class Studio:
    """Everything the page does, as plain methods over the model slot and the store."""

    def __init__(self, slot: ModelSlot, store: Store, config: AppConfig | None = None,
                 owners: OwnerKeys | None = None, gpu: GpuWork | None = None) -> None:
        self.slot = slot
        self.store = store
        self.config = config or AppConfig()
        if self.config.per_browser_owner and owners is None:
            raise ValueError("per-browser owners need OwnerKeys")
        self.owners = owners
        self.gpu = gpu or GpuWork(slot)
        self._cancels: dict[str, threading.Event] = {}
        self._cancels_lock = threading.Lock()

    # -- sessions and rendering --
    def new_session(self) -> dict[str, Any]:
        return new_session(self.config.default_owner)

    def browser_session(self, token: Any) -> tuple[dict[str, Any], str | None]:
        """A tab's session from the token its browser keeps, and the token to keep. Hosted, the owner key is
        derived from the token on the server; a missing or malformed token gets a fresh one (a new, empty owner).
        Locally everyone is the default owner and no token is kept."""
        if not self.config.per_browser_owner:
            return self.new_session(), None
        assert self.owners is not None
        if not self.owners.valid_token(token):
            token = self.owners.new_token()
        return new_session(self.owners.owner_for(token)), token

    def transcript(self, session: dict[str, Any], live: MessageView | None = None,
                   base: list[MessageView] | None = None) -> str:
        views = list(base) if base is not None else self.views(session)
        if live is not None:
            views.append(live)
        return render.transcript(views, EMPTY_CHAT)

    def views(self, session: dict[str, Any]) -> list[MessageView]:
        cid = session.get("conversation_id")
        if cid is None:
            return []
        owner = session["owner"]
        return message_views(self.store.messages(owner, cid), self.store.thread(owner, cid))

    def conversation_choices(self, session: dict[str, Any], query: str = "") -> list[tuple[str, int]]:
        """(label, id) for the sidebar: all conversations newest first, or the search hits for ``query``."""
        owner = session["owner"]
        if query and query.strip():
            return [(f"{h.title} — {h.snippet}" if h.message_id else h.title, h.conversation_id)
                    for h in self.store.search(owner, query, limit=50)]
        return [(c.title, c.id) for c in self.store.list_conversations(owner, limit=500)]

    def open_conversation(self, session: dict[str, Any], conversation_id: int | None) -> tuple[dict[str, Any], str]:
        session = {**session, "conversation_id": conversation_id, "edit_id": None}
        if conversation_id is not None:
            self.store.get_conversation(session["owner"], conversation_id)  # NotFound for another owner's id
        return session, self.transcript(session)

    def last_system_prompt(self, session: dict[str, Any]) -> str | None:
        """The system prompt the open branch was last answered with (kept in the answer's extra)."""
        for view in reversed(self.views(session)):
            if view.role == "assistant":
                return view.extra.get("system", "")
        return None

    def new_conversation(self, session: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return self.open_conversation(session, None)

    def rename(self, session: dict[str, Any], title: str) -> None:
        cid = self._require_conversation(session)
        if not title or not title.strip():
            raise UserError("Type a new title first.")
        self.store.rename_conversation(session["owner"], cid, title.strip())

    def delete(self, session: dict[str, Any]) -> tuple[dict[str, Any], str]:
        cid = self._require_conversation(session)
        self.store.delete_conversation(session["owner"], cid)
        return self.open_conversation(session, None)

    def delete_all(self, session: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
        """Delete every conversation of this owner (a visitor's "forget me" on a hosted server)."""
        owner = session["owner"]
        conversations = self.store.list_conversations(owner)
        for conversation in conversations:
            self.store.delete_conversation(owner, conversation.id)
        session, html = self.open_conversation(session, None)
        return session, html, len(conversations)

    def select_sibling(self, session: dict[str, Any], message_id: int) -> str:
        cid = self._require_conversation(session)
        self.store.set_current_leaf(session["owner"], cid, int(message_id))
        return self.transcript(session)

    def export(self, session: dict[str, Any], fmt: str, everything: bool) -> str:
        """Write an export file and return its path (for a download)."""
        ids = None if everything else [self._require_conversation(session)]
        text = (self.store.export_json if fmt == "json" else self.store.export_markdown)(session["owner"], ids)
        name = "huginn-conversations" if everything else f"huginn-conversation-{ids[0]}"
        path = Path(tempfile.mkdtemp(prefix="huginn-export-")) / f"{name}.{'json' if fmt == 'json' else 'md'}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def import_file(self, session: dict[str, Any], path: str) -> tuple[dict[str, Any], str, int]:
        data = Path(path).read_bytes()
        imported = self.store.import_json(session["owner"], data)
        session, html = self.open_conversation(session, imported[0].id if imported else session["conversation_id"])
        return session, html, len(imported)

    def _require_conversation(self, session: dict[str, Any]) -> int:
        cid = session.get("conversation_id")
        if cid is None:
            raise UserError("Open a conversation first.")
        return cid

    # -- stopping --
    def _cancel_event(self, session: dict[str, Any]) -> threading.Event:
        with self._cancels_lock:
            event = threading.Event()
            self._cancels[session["tab"]] = event
            return event

    def stop(self, session: dict[str, Any]) -> None:
        """Stop this tab's running generation within one recurrence step; its partial answer is kept."""
        with self._cancels_lock:
            event = self._cancels.get(session.get("tab", ""))
        if event is not None:
            event.set()

    # -- chat --
    def send(self, session: dict[str, Any], text: str, system: str, settings: engine.GenerationSettings
             ) -> Iterator[tuple[dict[str, Any], str]]:
        """Add the user's message (a sibling of the edited one when editing) and stream the answer."""
        if not text or not text.strip():
            raise UserError("Type a message first.")
        if len(text) > self.config.limits.max_prompt_chars:
            raise UserError(f"The message is {len(text):,} characters; the limit here is "
                            f"{self.config.limits.max_prompt_chars:,}.")
        owner = session["owner"]
        session = dict(session)
        if session.get("conversation_id") is None:
            session["conversation_id"] = self.store.create_conversation(owner).id
        cid = session["conversation_id"]
        parent: Any = "leaf"
        if session.get("edit_id") is not None:
            parent = self.store.get_message(owner, session["edit_id"]).parent_id
            session["edit_id"] = None
        user = self.store.add_message(owner, cid, "user", text, parent_id=parent)
        yield from self._answer(session, user.id, system, settings)

    def regenerate(self, session: dict[str, Any], system: str, settings: engine.GenerationSettings
                   ) -> Iterator[tuple[dict[str, Any], str]]:
        """A new answer to the last question, as a sibling of the current one."""
        cid = self._require_conversation(session)
        thread = self.store.thread(session["owner"], cid)
        users = [m for m in thread if m.role == "user"]
        if not users:
            raise UserError("There is no question to answer again yet.")
        yield from self._answer(dict(session), users[-1].id, system, settings)

    def start_edit(self, session: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Put the last question in the input box; sending makes a sibling of it."""
        cid = self._require_conversation(session)
        users = [m for m in self.store.thread(session["owner"], cid) if m.role == "user"]
        if not users:
            raise UserError("There is no question to edit yet.")
        return {**session, "edit_id": users[-1].id}, users[-1].content

    def _answer(self, session: dict[str, Any], parent_id: int, system: str, settings: engine.GenerationSettings
                ) -> Iterator[tuple[dict[str, Any], str]]:
        owner, cid = session["owner"], session["conversation_id"]
        self.store.set_current_leaf(owner, cid, parent_id, descend=False)
        thread = self.store.thread(owner, cid, parent_id)
        base = message_views(self.store.messages(owner, cid), thread)
        info = self.slot.info()
        writer = self.store.begin_answer(
            owner, cid, parent_id, model_id=info.name, quantization=info.quantization,
            settings=settings.to_dict(), extra={"system": system} if system.strip() else None)
        live = MessageView(id=writer.message_id, role="assistant", content="", status="partial",
                           tokens=writer.tokens, settings=settings.to_dict())
        cancel = self._cancel_event(session)
        last = time.perf_counter()
        yield session, self.transcript(session, live, base)
        try:
            summary = None
            for event in self.gpu.stream(model_messages(thread, system), settings, cancel):
                if isinstance(event, engine.Summary):
                    summary = event
                    break
                writer.add_token(**token_record(event))
                now = time.perf_counter()
                if now - last >= self.config.stream_interval:
                    last = now
                    yield session, self.transcript(session, live, base)
            if summary is None:  # cut from this side (Stop under ZeroGPU): the finally below marks it stopped
                assert cancel.is_set(), "the engine ended without a summary"
            else:
                stats = summary_stats(summary, self.slot.materialized(summary.mean_steps))
                status = "cancelled" if summary.stop_reason == "cancelled" else "complete"
                writer.finish(status, stats, content=summary.text)
        except engine.PromptError as err:
            writer.finish("failed", error=str(err))
        except Exception as err:  # noqa: BLE001 - one failed answer must not take the page down
            log.exception("generation failed")
            writer.finish("failed", error=f"generation failed: {type(err).__name__}: {err}")
        finally:
            cancel.set()  # the engine stops too if Gradio closed this generator (tab closed)
            with self._cancels_lock:
                if self._cancels.get(session["tab"]) is cancel:
                    del self._cancels[session["tab"]]
            if not writer.finished:
                writer.finish("cancelled")
        yield session, self.transcript(session)

    # -- depth arena --
    def compare(self, prompt: str, system: str, settings_list: Sequence[engine.GenerationSettings],
                session: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one prompt at several settings (batched by the engine); columns, plot rows and the raw results."""
        if not prompt or not prompt.strip():
            raise UserError("Type a prompt to compare first.")
        if len(prompt) > self.config.limits.max_prompt_chars:
            raise UserError(f"The prompt is over the limit of {self.config.limits.max_prompt_chars:,} characters.")
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + \
            [{"role": "user", "content": prompt}]
        cancel = self._cancel_event(session) if session else None
        results = self.gpu.compare(messages, list(settings_list), cancel)
        ids = [[e.token_id for e in r.events if e.token_id >= 0] for r in results]
        reference = max(range(len(results)), key=lambda i: (results[i].summary.mean_steps, -i))
        columns = []
        for r, token_ids in zip(results, ids):
            stats = summary_stats(r.summary, self.slot.materialized(r.summary.mean_steps))
            stats["agreement"] = render.agreement(token_ids, ids[reference])
            columns.append({"label": r.settings.label(), "settings": r.summary.settings,
                            "tokens": [token_record(e) for e in r.events], "content": r.summary.text,
                            "stats": stats})
        return {"prompt": prompt, "system": system, "reference": reference, "columns": columns,
                "model": self.slot.info().name}

    def save_comparison(self, session: dict[str, Any], result: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
        """Store a comparison in the open conversation (or a new one): the prompt, then one message holding all
        columns, whose text is the deepest answer so the chat can go on from it."""
        if not result:
            raise UserError("Run a comparison first.")
        owner = session["owner"]
        session = dict(session)
        if session.get("conversation_id") is None:
            session["conversation_id"] = self.store.create_conversation(owner).id
        cid = session["conversation_id"]
        self.store.add_message(owner, cid, "user", result["prompt"])
        ref = result["columns"][result["reference"]]
        self.store.add_message(owner, cid, "assistant", ref["content"], kind="comparison", model_id=result["model"],
                               settings=ref["settings"], tokens=ref["tokens"], stats=ref["stats"],
                               extra={"columns": result["columns"], "system": result.get("system", "")})
        return session, self.transcript(session)

    # -- scripted API --
    def chat_api(self, prompt: str, settings: dict[str, Any] | None = None, system_prompt: str = "",
                 history: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """One answer with its per-token steps, not saved in the store."""
        gen = settings_from_dict(self.config.limits, settings, self.slot.info().num_steps_default)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
            list(history or []) + [{"role": "user", "content": prompt}]
        # The history counts too: otherwise a caller could pass any amount of text through it.
        size = sum(len(str(m.get("content", ""))) if isinstance(m, dict) else len(str(m)) for m in messages)
        if size > self.config.limits.max_prompt_chars:
            raise UserError(f"The prompt (with history and system prompt) is {size:,} characters; the limit here is "
                            f"{self.config.limits.max_prompt_chars:,}.")
        tokens, summary = [], None
        for event in self.gpu.stream(messages, gen):
            if isinstance(event, engine.Summary):
                summary = event
            else:
                tokens.append(token_record(event))
        assert summary is not None
        return {"text": summary.text, "tokens": tokens,
                "stats": summary_stats(summary, self.slot.materialized(summary.mean_steps)),
                "settings": summary.settings}

    def compare_api(self, prompt: str, settings: list[dict[str, Any]], system_prompt: str = "") -> list[dict[str, Any]]:
        if not isinstance(settings, list) or not settings:
            raise UserError("settings must be a non-empty list of settings objects, e.g. [{\"num_steps\": 4}]")
        if len(settings) > self.config.limits.max_compare_settings:
            raise UserError(f"Compare at most {self.config.limits.max_compare_settings} settings at once.")
        gen = [settings_from_dict(self.config.limits, s, self.slot.info().num_steps_default) for s in settings]
        return self.compare(prompt, system_prompt, gen)["columns"]

    # -- model panel --
    def load_model(self, source: str, quantization: str, tqdm_class: Any = None) -> engine.ModelInfo:
        """Load another model; refused where model loading is off (hosted: no local paths, no downloads)."""
        if not self.config.allow_model_loading:
            raise UserError("Loading models is turned off on this server.")
        return self.slot.load(source, quantization, tqdm_class)

    def model_summary(self) -> str:
        info = self.slot.info()
        return (f"**{info.name}** · {render.human_count(info.parameters)} parameters · {info.dtype}"
                f"{'' if info.quantization == 'none' else ' · ' + info.quantization} · {info.device} · "
                f"{render.human_bytes(info.memory_bytes)} · default depth {info.num_steps_default} steps · "
                f"context {info.context:,} tokens")
