"""The model tab: what is loaded, loading another (where allowed), and how the queue works."""

from __future__ import annotations

from typing import Any

import gradio as gr

import engine

from .. import render
from ..inputs import arena_presets
from ..slot import public_name
from .arena import preset_choices
from .common import GEN, PRIVATE, Page, friendly


class ModelPanel:
    def __init__(self, page: Page) -> None:
        self.page = page
        config = page.studio.config
        self.summary = gr.Markdown(page.studio.model_summary(), elem_id="model-info")
        table = page.studio.slot.info().depth_table
        # The model card's accuracy-by-depth table, one click away, for the models whose card has one.
        with gr.Accordion("Accuracy by depth (from the model card)", open=False, visible=bool(table),
                          elem_id="depth-table") as self.depth_box:
            self.depth_table = gr.Markdown(table)
        with gr.Group(visible=config.allow_model_loading):
            self.source = gr.Textbox(label="Load another model: local folder or hub id",
                                     placeholder=f"{engine.OFFICIAL_MODEL} or /path/to/model")
            self.quantization = gr.Dropdown(list(engine.QUANTIZATIONS), value="auto", label="Quantization")
            self.load_btn = gr.Button("Load model", variant="primary")
        self.status = gr.HTML("")
        queue = f" (at most {config.queue_size})" if config.queue_size else ""
        gr.Markdown(f"Generation runs one request at a time per loaded model (concurrency limit "
                    f"{config.concurrency_limit}); others wait in line{queue} and see their place in the queue.",
                    elem_id="queue-note")

    def wire(self, num_steps: Any, arena_presets_box: Any) -> None:
        p = self.page
        self.load_btn.click(friendly(self.on_load_model, needs_session=False), [self.source, self.quantization],
                            [self.summary, p.banner, self.status, num_steps, arena_presets_box, self.depth_box,
                             self.depth_table], concurrency_limit=1,
                            concurrency_id=GEN, **PRIVATE)

    def on_load_model(self, source: str, quant: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        studio = self.page.studio
        if not studio.config.allow_model_loading:  # before the progress bar: nothing may start
            studio.load_model(source, quant)
        source = source.strip() if isinstance(source, str) else ""
        progress(0, desc=f"Loading {source or 'auto'}…")
        try:
            loaded = studio.load_model(source, quant)
        except engine.LoadError as err:
            return gr.skip(), gr.skip(), render.error_box(str(err)), *(gr.skip(),) * 4
        choices, default = arena_presets(loaded.suggested_depths, studio.limits)
        return (studio.model_summary(), render.banner(studio.slot.note),
                render.banner(f"Loaded {public_name(loaded.name)}."),
                gr.update(value=min(loaded.num_steps_default, studio.limits.max_num_steps)),
                gr.update(choices=preset_choices(choices), value=default), gr.update(visible=bool(loaded.depth_table)),
                loaded.depth_table)
