"""The Gradio page: one builder per panel (``sidebar``, ``chat``, ``arena``, ``model``, ``depth``), each wiring its
events to ``app.handlers.Studio``; the named API in ``api``. HTML comes from ``app.render``."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from .. import markdown_view, render
from ..handlers import Studio
from ..session import Session
from .api import add_endpoints
from .arena import ArenaPanel
from .chat import ChatPanel
from .common import PRIVATE, Page, asset, friendly
from .depth import DepthPanel
from .model import ModelPanel
from .sidebar import SidebarPanel

__all__ = ["build_demo", "launch"]

log = logging.getLogger(__name__)
EXPORT_CACHE_HOSTED = (60, 300)  # (every, older than) seconds
EXPORT_CACHE_LOCAL = (3600, 86_400)


def build_demo(studio: Studio) -> gr.Blocks:
    """The whole page. Launch it with ``launch(demo, ...)`` so the stylesheet and shortcuts come along."""
    config = studio.config
    # Gradio keeps its own copy of every file a visitor downloads (exports): delete_cache removes those copies, soon
    # when hosted (a visitor's "delete all" must not leave their conversations on the server's disk for long).
    with gr.Blocks(title="Huginn Studio", delete_cache=EXPORT_CACHE_HOSTED if config.per_browser_owner else
                   EXPORT_CACHE_LOCAL) as demo:
        page = Page(studio, gr.State(None))
        # Hosted: the browser keeps a random token (localStorage); the server derives the owner key from it.
        token = gr.BrowserState(None, storage_key="huginn-studio-browser",
                                secret=studio.owners.browser_state_secret() if studio.owners else None)
        with gr.Sidebar(label="Conversations", open=True):
            sidebar = SidebarPanel(page)
        page.banner = gr.HTML(render.banner(studio.slot.note), elem_id="banner")
        gr.HTML(render.banner(config.banner), elem_id="hosted-banner", visible=bool(config.banner))
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=420):
                with gr.Tabs():
                    with gr.Tab("Chat", id="chat"):
                        chat = ChatPanel(page)
                    with gr.Tab("Depth arena", id="arena"):
                        arena = ArenaPanel(page)
                    with gr.Tab("Model", id="model"):
                        model = ModelPanel(page)
                # Where assets/lens.js draws a clicked token's convergence: in the page's flow, over nothing.
                gr.HTML('<div id="lens-panel"></div>', elem_id="lens-dock", container=False)
            with gr.Column(scale=1, min_width=280, elem_id="depth-panel"):
                depth = DepthPanel(page)

        keep = depth.keep

        def init(stored: Any, tok: Any, kept: Any = None) -> tuple:
            sess, html, listing, system, tok = on_load(page, stored, tok)
            *values, kept_system = keep.restored(kept)  # the panel as this browser left it
            # The open conversation's own system prompt wins over the kept one.
            return sess, html, listing, system if isinstance(system, str) else kept_system, tok, *values

        demo.load(friendly(init, needs_session=False), [page.session, token, keep.kept],
                  [page.session, page.transcript, page.conv_list, page.system, token, *keep.widgets[:-1]],
                  **PRIVATE)
        sidebar.wire()
        chat.wire()
        arena.wire(chat.on_stop)
        model.wire(depth.num_steps, arena.presets)
        depth.wire()
        keep.wire()
        add_endpoints(studio)

    demo.queue(max_size=config.queue_size, default_concurrency_limit=4)
    return demo


def on_load(page: Page, stored: Any, token: Any) -> tuple:
    """A page load: the tab's session (from the browser's token when hosted), the latest conversation open. The
    session is made before anything is drawn, so a record that cannot be drawn never leaves the tab without one."""
    studio = page.studio
    sess, token = (stored, None) if isinstance(stored, Session) else studio.conversations.browser_session(token)
    try:
        sess, html, recent = studio.conversations.open_latest(sess)
        system_prompt = studio.conversations.last_system_prompt(sess)
    except Exception as err:  # noqa: BLE001 - the page must load whatever one stored record holds
        log.exception("the latest conversation could not be opened")
        sess, recent, system_prompt = sess.opened(None), _choices(studio, sess), None
        html = render.transcript([], "") + render.error_box(f"The last conversation could not be shown: {err}")
    listing = gr.update(choices=recent, value=sess.conversation_id)
    return (sess, html, listing, gr.skip() if system_prompt is None else system_prompt,
            gr.skip() if token is None else token)


def _choices(studio: Studio, sess: Session) -> list[tuple[str, int]]:
    try:
        return studio.conversations.choices(sess)
    except Exception:  # noqa: BLE001 - an empty list still lets the visitor start a new conversation
        log.exception("the conversation list could not be read")
        return []


def page_js() -> str:
    """The page's scripts (each a ``() => {...}`` function) as the one function Gradio runs at load."""
    scripts = ("shortcuts.js", "layout.js", "lens.js")
    return "() => {\n" + "".join(f"({asset(name).strip()})();\n" for name in scripts) + "}"


def launch(demo: gr.Blocks, **kwargs: Any) -> tuple[Any, str, str]:
    """``demo.launch`` with the stylesheets, the keyboard shortcuts and the depth lens, which Gradio 6 takes at
    launch."""
    css = asset("style.css") + asset("markdown.css") + markdown_view.code_css() + asset("lens.css")
    return demo.launch(css=css, js=page_js(), footer_links=["api", "settings"],
                       **kwargs)
