"""The chat tab: the transcript, the message box, Send / Stop / Regenerate / Edit, and the version arrows."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import gradio as gr

from .. import render
from ..conversations import EMPTY_CHAT
from ..session import Session
from ..turns import TurnUpdate
from .common import PRIVATE, Page, asset, friendly


class ChatPanel:
    def __init__(self, page: Page) -> None:
        self.page = page
        # ``live`` holds the answer being written: while it streams, updates carry it alone (the conversation above
        # it is sent once per turn), so an update costs the answer's size, not the whole conversation's.
        page.transcript = gr.HTML(render.transcript([], EMPTY_CHAT), elem_id="transcript", autoscroll=True,
                                  max_height=640, html_template="${value}${live}", live="",
                                  js_on_load=asset("transcript.js") + asset("markdown.js"))
        self.prompt = gr.Textbox(placeholder="Message Huginn (Enter sends, Shift+Enter new line, Esc stops)",
                                 lines=1, max_lines=12, show_label=False, elem_id="prompt", autofocus=True)
        with gr.Row():
            self.send_btn = gr.Button("Send", variant="primary", elem_id="send-btn")
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            self.regen_btn = gr.Button("Regenerate", elem_id="regen-btn")
            self.edit_btn = gr.Button("Edit last question", elem_id="edit-btn")
        page.status = gr.HTML("", elem_id="status")

    def wire(self) -> None:
        p = self.page
        form = [p.system, *p.form_inputs]
        for trigger in (self.prompt.submit, self.send_btn.click):
            trigger(friendly(self.on_send), [p.session, self.prompt, *form],
                    [p.session, p.transcript, p.conv_list, p.status, self.prompt], show_progress_on=[p.status],
                    **p.gen_events, **PRIVATE)
        opened = [p.session, p.transcript, p.conv_list]
        self.regen_btn.click(friendly(self.on_regenerate, closed=lambda s: p.closed(s, "")), [p.session, *form],
                             [*opened, p.status], show_progress_on=[p.status], **p.gen_events, **PRIVATE)
        self.edit_btn.click(friendly(self.on_edit, closed=lambda s: p.closed(s, gr.skip(), "")), [p.session],
                            [*opened, self.prompt, p.status], **PRIVATE)
        self.stop_btn.click(self.on_stop, [p.session], None, queue=False, **PRIVATE)
        p.transcript.click(friendly(self.on_transcript_click, closed=p.closed), [p.session], opened, **PRIVATE)

    def _stream(self, sess: Session, make_turn: Callable[[], Iterator[TurnUpdate]]) -> Iterator[tuple]:
        first = True
        for sess, transcript, live in make_turn():
            shown = gr.update(live=live) if transcript is None else gr.update(value=transcript, live=live)
            yield sess, shown, (self.page.listing(sess) if first else gr.skip()), ""
            first = False
        yield sess, gr.skip(), self.page.listing(sess), ""

    def on_send(self, sess: Session, text: str, system_prompt: str, *values: Any) -> Iterator[tuple]:
        gen = self.page.settings(values)
        turn = lambda: self.page.studio.chat.send(sess, text, system_prompt, gen)  # noqa: E731
        cleared = False
        for out in self._stream(sess, turn):
            # The box is emptied once, when the question is stored; later updates leave what is typed meanwhile.
            yield *out, (gr.skip() if cleared else "")
            cleared = True

    def on_regenerate(self, sess: Session, system_prompt: str, *values: Any) -> Iterator[tuple]:
        gen = self.page.settings(values)
        yield from self._stream(sess, lambda: self.page.studio.chat.regenerate(sess, system_prompt, gen))

    def on_edit(self, sess: Session) -> tuple:
        sess, text = self.page.studio.chat.start_edit(sess)
        note = render.banner("Editing your last question: send it to add a new version beside the old one.")
        return sess, gr.skip(), gr.skip(), text, note

    def on_stop(self, sess: Any) -> None:
        if isinstance(sess, Session):
            self.page.studio.chat.stop(sess)

    def on_transcript_click(self, sess: Session, evt: gr.EventData) -> Any:
        data = getattr(evt, "_data", None) or {}
        if not isinstance(data, dict) or data.get("action") != "sibling" or not data.get("message"):
            return gr.skip(), gr.skip(), gr.skip()
        return gr.skip(), self.page.studio.conversations.select_sibling(sess, data["message"]), gr.skip()
