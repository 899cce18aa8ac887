"""The depth panel beside the chat and the arena: recurrence steps, adaptive exit, sampling, system prompt."""

from __future__ import annotations

import gradio as gr

import engine

from ..inputs import threshold_choices
from .common import PRIVATE, Page
from .presets import KeptSettings


class DepthPanel:
    def __init__(self, page: Page) -> None:
        limits, info = page.studio.limits, page.studio.slot.info()
        thresholds, default_threshold = threshold_choices("kl")
        gr.Markdown("### Depth")
        self.keep = KeptSettings(page, info.num_steps_default)
        self.num_steps = gr.Slider(1, limits.max_num_steps, value=min(info.num_steps_default, limits.max_num_steps),
                                   step=1, label="Recurrence steps", elem_id="num-steps")
        self.adaptive = adaptive = gr.Checkbox(label="Adaptive exit (stop early on easy tokens)", value=False,
                                               elem_id="adaptive")
        # What only adaptive exit uses is greyed out while it is off.
        self.criterion = gr.Dropdown([c for c in engine.CRITERIA if c != "none"], value="kl", label="Exit criterion",
                                     elem_id="criterion", interactive=False)
        self.threshold = gr.Dropdown(thresholds, value=default_threshold, allow_custom_value=True,
                                     label="Exit threshold", elem_id="threshold", interactive=False)
        self.min_steps = min_steps = gr.Slider(0, limits.max_num_steps, value=0, step=1, label="Min steps",
                                               elem_id="min-steps", interactive=False)
        self.prompt_exits = gr.Checkbox(label="Exit early in the prompt too (each prompt token runs alone)",
                                        value=False, elem_id="prompt-exits", interactive=False)
        warm_start = gr.Checkbox(label="Warm start (continue from the previous token's state)", value=False)
        trace = gr.Checkbox(label="Depth lens (trace every step; then an answer's Depth button, and click a token)",
                            value=False, elem_id="trace")
        sampler = gr.Radio([("sequential", "sequential"), ("parallel (diffusion forcing)", "parallel")],
                           value="sequential", label="Sampler", elem_id="sampler")
        with gr.Accordion("Parallel sampler", open=False, elem_id="parallel-params"):
            base = engine.GenerationSettings()
            inner_steps = gr.Slider(1, limits.max_num_steps, value=base.inner_steps, step=1,
                                    label="Core steps per diffusion step", elem_id="inner-steps")
            freeze_threshold = gr.Number(value=base.freeze_threshold, label="Freeze threshold (relative state change)",
                                         elem_id="freeze-threshold")
            max_window = gr.Slider(1, engine.MAX_WINDOW, value=base.max_window, step=1,
                                   label="Window (positions at once)", elem_id="max-window")
            embed_ema = gr.Slider(0, 0.99, value=base.embed_ema, step=0.01, label="Embedding EMA")
            state_noise = gr.Slider(0, 1, value=base.state_noise, step=0.05, label="State noise")
        page.system = gr.Textbox(label="System prompt", lines=2, placeholder="Optional", elem_id="system",
                                 max_length=limits.max_system_chars)
        with gr.Accordion("Advanced", open=False):
            temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="temperature")
            top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p")
            top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)")
            min_p = gr.Slider(0, 1, value=0.0, step=0.01, label="Min-p")
            repetition_penalty = gr.Slider(0.5, 2, value=1.0, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(256, limits.max_new_tokens), step=1,
                                       label="Max new tokens", elem_id="max-new-tokens")
        # Each widget under the settings field it sets (app.inputs.FORM_FIELDS).
        page.form = {"num_steps": self.num_steps, "adaptive": adaptive, "criterion": self.criterion,
                     "exit_threshold": self.threshold, "min_steps": min_steps, "prompt_exits": self.prompt_exits,
                     "warm_start": warm_start,
                     "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                     "repetition_penalty": repetition_penalty, "seed": seed, "max_new_tokens": max_new_tokens,
                     "trace": trace, "sampler": sampler, "inner_steps": inner_steps,
                     "freeze_threshold": freeze_threshold, "max_window": max_window, "embed_ema": embed_ema,
                     "state_noise": state_noise}

    def wire(self) -> None:
        # On the user's choice only: a preset or the kept settings set criterion and threshold together.
        self.criterion.input(on_criterion, [self.criterion], [self.threshold], **PRIVATE)
        greyed = [self.criterion, self.threshold, self.min_steps, self.prompt_exits]
        self.adaptive.change(lambda on: [gr.update(interactive=on is True)] * len(greyed), [self.adaptive], greyed,
                             queue=False, **PRIVATE)


def on_criterion(name: str) -> dict:
    choices, value = threshold_choices(name if isinstance(name, str) else "")
    return gr.update(choices=choices, value=value)
