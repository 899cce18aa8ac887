"""The depth arena tab: one prompt at several settings side by side, with plots, saved into a conversation."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from .. import render
from ..inputs import arena_presets, arena_settings
from ..session import Session
from .common import PRIVATE, Page, friendly, info

# What differs per column. Not tokens/s: batched columns share one wall clock, so that chart could say nothing.
PLOTS = (("mean_steps", "Mean steps per token", [0, None]), ("tokens", "Answer length", [0, None]),
         ("agreement", "Agreement with deepest", [0, 1]))


def plot_frame(result: dict[str, Any] | None, key: str) -> pd.DataFrame:
    rows = []
    for i, col in enumerate((result or {}).get("columns", [])):
        rows.append({"setting": f"{i + 1}. {col['label']}", key: round(float(col["stats"].get(key) or 0.0), 3)})
    # Typed columns even when empty: the plot picks its axis type from the first value it gets.
    return pd.DataFrame(rows, columns=["setting", key]).astype({"setting": str, key: float})


def preset_choices(presets: list[str]) -> list[tuple[str, str]]:
    names = {"adaptive": "adaptive exit", "parallel": "parallel sampler"}
    return [(names.get(p) or render.plural(int(p), "step"), p) for p in presets]


class ArenaPanel:
    def __init__(self, page: Page) -> None:
        self.page = page
        limits = page.studio.limits
        presets, default = arena_presets(page.studio.slot.info().suggested_depths, limits)
        self.result = gr.State(None)
        gr.Markdown("One prompt at several depths, side by side. Sampling, warm start and the adaptive criterion "
                    "come from the panel on the right.")
        self.prompt = gr.Textbox(placeholder="Prompt to compare", lines=2, show_label=False, elem_id="arena-prompt")
        self.presets = gr.CheckboxGroup(choices=preset_choices(presets), value=default, label="Settings",
                                        elem_id="arena-presets")
        with gr.Row():
            self.run = gr.Button("Compare", variant="primary", elem_id="arena-run")
            self.stop = gr.Button("Stop", variant="stop")
            self.save = gr.Button("Save into conversation", elem_id="arena-save")
        self.columns = gr.HTML("", elem_id="arena-columns")
        with gr.Row():
            self.plots = [gr.BarPlot(plot_frame(None, key), x="setting", y=key, title=title, height=220, sort=None,
                                     x_label_angle=-30, **({"y_lim": y_lim} if y_lim else {}))
                          for key, title, y_lim in PLOTS]

    def wire(self, stop: Any) -> None:
        p = self.page
        self.run.click(friendly(self.on_compare), [p.session, self.prompt, p.system, self.presets, *p.form_inputs],
                       [self.result, self.columns, *self.plots], **p.gen_events, **PRIVATE)
        self.stop.click(stop, [p.session], None, queue=False, **PRIVATE)
        self.save.click(friendly(self.on_save), [p.session, self.result], [p.session, p.transcript, p.conv_list],
                        **PRIVATE)

    def on_compare(self, sess: Session, text: str, system_prompt: str, presets: list[str], *values: Any) -> tuple:
        studio = self.page.studio
        result = studio.arena.compare(text, system_prompt, arena_settings(self.page.settings(values), presets,
                                                                    studio.limits), sess)
        return (result, render.columns(result["columns"]), *(plot_frame(result, key) for key, _, _ in PLOTS))

    def on_save(self, sess: Session, result: dict[str, Any] | None) -> tuple:
        sess, html = self.page.studio.arena.save(sess, result)
        info("The comparison is saved in the conversation.")
        return sess, html, self.page.listing(sess)
