"""The conversations sidebar: list and search, new, rename, delete, export and import."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from ..session import Session
from .common import PRIVATE, Page, friendly, info



class SidebarPanel:
    def __init__(self, page: Page) -> None:
        self.page = page
        gr.Markdown("### Conversations")
        self.new_btn = gr.Button("New conversation", variant="secondary", elem_id="new-conv")
        self.search = gr.Textbox(placeholder="Search conversations", show_label=False, elem_id="conv-search")
        page.conv_list = gr.Radio(choices=[], label="Conversations", show_label=False, elem_id="conv-list")
        with gr.Accordion("Rename, delete, export, import", open=False):
            self.title_box = gr.Textbox(placeholder="New title", show_label=False, elem_id="rename-box")
            self.rename_btn = gr.Button("Rename", size="sm")
            self.delete_btn = gr.Button("Delete conversation", size="sm", variant="stop")
            self.delete_all_btn = gr.Button("Delete all my conversations", size="sm", variant="stop",
                                            elem_id="delete-all")
            self.export_all = gr.Checkbox(label="Export all conversations", value=False)
            with gr.Row():
                self.export_json = gr.Button("Export JSON", size="sm")
                self.export_md = gr.Button("Export Markdown", size="sm")
            self.download = gr.File(label="Download", interactive=False, elem_id="export-file")
            self.import_btn = gr.UploadButton("Import JSON", file_types=[".json"], size="sm", elem_id="import-btn")
        self.delete_ok = gr.Checkbox(visible=False)

    def wire(self) -> None:
        p = self.page
        opened = [p.session, p.transcript, p.conv_list]
        p.conv_list.input(friendly(self.on_open), [p.session, p.conv_list], [p.session, p.transcript, p.system],
                          **PRIVATE)
        self.new_btn.click(friendly(self.on_new), [p.session], opened, **PRIVATE)
        self.search.change(friendly(self.on_search), [p.session, self.search], [p.conv_list],
                           trigger_mode="always_last", **PRIVATE)
        self.rename_btn.click(friendly(self.on_rename, closed=lambda s: p.closed(s, gr.skip())),
                              [p.session, self.title_box], [*opened, self.title_box], **PRIVATE)
        self.delete_btn.click(friendly(self.on_delete, closed=p.closed), [p.session, self.delete_ok], opened,
                              **PRIVATE, js="(s, ok) => [s, confirm('Delete this conversation with all its branches?')]")
        self.delete_all_btn.click(friendly(self.on_delete_all), [p.session, self.delete_ok], opened, **PRIVATE,
                                  js="(s, ok) => [s, confirm('Delete all your conversations on this server?')]")
        for button, fmt in ((self.export_json, "json"), (self.export_md, "md")):
            button.click(friendly(functools.partial(self.on_export, fmt=fmt), closed=lambda s: p.closed(s, None)),
                         [p.session, self.export_all], [*opened, self.download], **PRIVATE)
        self.import_btn.upload(friendly(self.on_import), [p.session, self.import_btn], opened, **PRIVATE)

    def on_open(self, sess: Session, conversation_id: Any) -> tuple:
        studio = self.page.studio
        sess, html = studio.conversations.open(sess, conversation_id)
        system_prompt = studio.conversations.last_system_prompt(sess)
        return sess, html, gr.skip() if system_prompt is None else system_prompt

    def on_new(self, sess: Session) -> tuple:
        sess, html = self.page.studio.conversations.new(sess)
        return sess, html, self.page.listing(sess)

    def on_search(self, sess: Session, query: str) -> dict:
        return gr.update(choices=self.page.studio.conversations.choices(sess, query))

    def on_rename(self, sess: Session, title: str) -> tuple:
        self.page.studio.conversations.rename(sess, title)
        return gr.skip(), gr.skip(), self.page.listing(sess), ""

    def on_delete(self, sess: Session, ok: bool) -> tuple:
        if ok is not True:
            return gr.skip(), gr.skip(), gr.skip()
        sess, html = self.page.studio.conversations.delete(sess)
        return sess, html, self.page.listing(sess)

    def on_delete_all(self, sess: Session, ok: bool) -> tuple:
        if ok is not True:
            return gr.skip(), gr.skip(), gr.skip()
        sess, html, count = self.page.studio.conversations.delete_all(sess)
        info(f"Deleted {count} conversation(s).")
        return sess, html, self.page.listing(sess)

    def on_export(self, sess: Session, everything: bool, fmt: str) -> tuple:
        return gr.skip(), gr.skip(), gr.skip(), self.page.studio.conversations.export(sess, fmt, everything is True)

    def on_import(self, sess: Session, file: Any) -> tuple:
        sess, html, count = self.page.studio.conversations.import_file(sess, file)
        info(f"Imported {count} conversation(s).")
        return sess, html, self.page.listing(sess)
