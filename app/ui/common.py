"""What every panel shares: the page's shared widgets (``Page``), turning expected failures into messages, assets."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

import engine

from .. import render, resources
from ..config import EngineError, UserError
from ..conversations import ConversationGone
from ..handlers import Studio, settings_from_form
from ..session import Session
from ..store import StoreError

ASSETS = resources.ASSETS  # assets/ in a checkout, package data in a wheel
GEN = "model"  # the concurrency id shared by every event that runs the model: one queue per loaded model
USER_ERRORS = (UserError, StoreError, engine.SettingsError, engine.PromptError, engine.LoadError, EngineError)
PRIVATE = dict(api_visibility="private")  # page events: reachable by the page's own client, not listed as API


def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def shown(err: BaseException, escape: bool = True) -> gr.Error:
    """An expected failure as a message. The page's toasts render HTML, and messages can quote what the visitor
    sent (an import's field, a setting's value), so they are escaped there; API clients get the text as it is."""
    return gr.Error(render.esc(str(err)) if escape else str(err), print_exception=False)


def friendly(fn: Callable, *, needs_session: bool = True, escape: bool = True,
             closed: Callable[[Session], tuple] | None = None) -> Callable:
    """Show expected failures (bad input, store, prompt) as a message in the page instead of a stack trace. With
    ``closed`` (the event's outputs for a tab with no conversation open), an event on a conversation another tab
    deleted says so and closes it there, rather than failing the same way on every click."""

    def check(args: tuple) -> None:
        # Events posted to the queue by a script rather than the page can come before the load event made the
        # session; a session value a client sends is never used (Gradio keeps state on the server).
        if needs_session and not (args and isinstance(args[0], Session)):
            raise gr.Error("This tab has no session yet: reload the page.", print_exception=False)

    def failed(err: Exception, args: tuple) -> tuple:
        if closed is None or not isinstance(err, ConversationGone):
            raise shown(err, escape) from None
        gr.Warning(render.esc(str(err)))
        return closed(args[0].opened(None))

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any):
            check(args)
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as err:
                yield failed(err, args)
        return gen

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any):
        check(args)
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            return failed(err, args)
    return plain


def info(message: str) -> None:
    """A passing note (a toast); escaped like every message."""
    gr.Info(render.esc(message))


@dataclass
class Page:
    """The widgets more than one panel reads or writes, and the studio behind them."""

    studio: Studio
    session: gr.State
    transcript: Any = None  # chat panel
    status: Any = None
    conv_list: Any = None  # sidebar
    system: Any = None  # depth panel
    form: dict[str, Any] = field(default_factory=dict)  # the depth panel's widgets by settings field name
    banner: Any = None

    @property
    def gen_events(self) -> dict[str, Any]:
        """Options of every event that runs the model: they share one queue."""
        config = self.studio.config
        return dict(concurrency_limit=config.concurrency_limit, concurrency_id=GEN, show_progress="minimal")

    @property
    def form_inputs(self) -> list[Any]:
        """The depth panel's widgets as an event's trailing inputs; ``settings`` reads their values back by name."""
        return list(self.form.values())

    def settings(self, values: tuple) -> engine.GenerationSettings:
        return settings_from_form(self.studio.limits, dict(zip(self.form, values, strict=True)))

    def listing(self, sess: Session, query: str = "") -> dict[str, Any]:
        return gr.update(choices=self.studio.conversations.choices(sess, query), value=sess.conversation_id)

    def closed(self, sess: Session, *rest: Any) -> tuple:
        """(session, transcript, list) for a tab with no conversation open, then ``rest`` for the event's other
        outputs."""
        return sess, self.studio.conversations.transcript(sess), self.listing(sess), *rest
