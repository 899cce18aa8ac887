"""The Gradio page: widgets and wiring only. Behaviour lives in ``app.handlers.Studio``; HTML in ``app.render``."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import gradio as gr
import pandas as pd

import engine

from . import render, resources
from .handlers import (ARENA_DEFAULT, ARENA_PRESETS, Studio, UserError, arena_settings, settings_from_form,
                       threshold_choices)
from .store import StoreError

ASSETS = resources.ASSETS
GEN = "model"  # the concurrency id shared by every event that runs the model: one queue per loaded model
USER_ERRORS = (UserError, StoreError, engine.SettingsError, engine.PromptError, engine.LoadError)


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _friendly(fn: Callable) -> Callable:
    """Show expected failures (bad input, store, prompt) as a message in the page instead of a stack trace."""
    # Events posted to the queue by a script rather than the page can come before the load event made the session.
    needs_session = fn.__code__.co_varnames[:1] == ("sess",)

    def check(args: tuple) -> None:
        if needs_session and args and args[0] is None:
            raise gr.Error("This tab has no session yet: reload the page.", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any):
            check(args)
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as err:
                raise gr.Error(str(err), print_exception=False) from None
        return gen

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any):
        check(args)
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            raise gr.Error(str(err), print_exception=False) from None
    return plain


def _plot_frame(result: dict[str, Any] | None, key: str) -> pd.DataFrame:
    rows = []
    for i, col in enumerate((result or {}).get("columns", [])):
        rows.append({"setting": f"{i + 1}. {col['label']}", key: round(float(col["stats"].get(key) or 0.0), 3)})
    # Typed columns even when empty: the plot picks its axis type from the first value it gets.
    return pd.DataFrame(rows, columns=["setting", key]).astype({"setting": str, key: float})


def build_demo(studio: Studio) -> gr.Blocks:
    """The whole page. Launch it with ``launch(demo, ...)`` so the stylesheet and shortcuts come along."""
    config, limits = studio.config, studio.config.limits
    info = studio.slot.info()
    criteria = [c for c in engine.CRITERIA if c != "none"]
    thresholds, default_threshold = threshold_choices("kl")
    gen_events = dict(concurrency_limit=config.concurrency_limit, concurrency_id=GEN, show_progress="minimal")

    presets = [p for p in ARENA_PRESETS if p == "adaptive" or int(p) <= limits.max_num_steps]

    with gr.Blocks(title="Huginn Studio") as demo:
        session = gr.State(None)
        arena_result = gr.State(None)
        # Hosted: the browser keeps a random token (localStorage); the server derives the owner key from it.
        browser_token = gr.BrowserState(None, storage_key="huginn-studio-browser",
                                         secret=studio.owners.browser_state_secret() if studio.owners else None)

        # ---- sidebar: conversations ----
        with gr.Sidebar(label="Conversations", open=True):
            gr.Markdown("### Conversations")
            new_btn = gr.Button("New conversation", variant="secondary", elem_id="new-conv")
            search = gr.Textbox(placeholder="Search conversations", show_label=False, elem_id="conv-search")
            conv_list = gr.Radio(choices=[], label="Conversations", show_label=False, elem_id="conv-list")
            with gr.Accordion("Rename, delete, export, import", open=False):
                title_box = gr.Textbox(placeholder="New title", show_label=False, elem_id="rename-box")
                rename_btn = gr.Button("Rename", size="sm")
                delete_btn = gr.Button("Delete conversation", size="sm", variant="stop")
                delete_all_btn = gr.Button("Delete all my conversations", size="sm", variant="stop",
                                           elem_id="delete-all")
                export_all = gr.Checkbox(label="Export all conversations", value=False)
                with gr.Row():
                    export_json = gr.Button("Export JSON", size="sm")
                    export_md = gr.Button("Export Markdown", size="sm")
                download = gr.File(label="Download", interactive=False, elem_id="export-file")
                import_btn = gr.UploadButton("Import JSON", file_types=[".json"], size="sm")
            delete_ok = gr.Checkbox(visible=False)

        banner = gr.HTML(render.banner(studio.slot.note), elem_id="banner")
        gr.HTML(render.banner(config.banner), elem_id="hosted-banner", visible=bool(config.banner))
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=420):
                with gr.Tabs():
                    # ---- chat ----
                    with gr.Tab("Chat", id="chat"):
                        transcript = gr.HTML(
                            studio.transcript({"conversation_id": None}), elem_id="transcript", autoscroll=True,
                            max_height=640, js_on_load=_asset("transcript.js"))
                        prompt = gr.Textbox(placeholder="Message Huginn (Enter sends, Shift+Enter new line, "
                                                        "Esc stops)", lines=1, max_lines=12, show_label=False,
                                            elem_id="prompt", autofocus=True)
                        with gr.Row():
                            send_btn = gr.Button("Send", variant="primary", elem_id="send-btn")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                            regen_btn = gr.Button("Regenerate", elem_id="regen-btn")
                            edit_btn = gr.Button("Edit last question", elem_id="edit-btn")
                        status = gr.HTML("", elem_id="status")
                    # ---- depth arena ----
                    with gr.Tab("Depth arena", id="arena"):
                        gr.Markdown("One prompt at several depths, side by side. Sampling, warm start and the "
                                    "adaptive criterion come from the panel on the right.")
                        arena_prompt = gr.Textbox(placeholder="Prompt to compare", lines=2, show_label=False,
                                                  elem_id="arena-prompt")
                        arena_presets = gr.CheckboxGroup(
                            choices=[(f"{p} steps" if p != "adaptive" else "adaptive exit", p) for p in presets],
                            value=[p for p in ARENA_DEFAULT if p in presets], label="Settings",
                            elem_id="arena-presets")
                        with gr.Row():
                            arena_run = gr.Button("Compare", variant="primary", elem_id="arena-run")
                            arena_stop = gr.Button("Stop", variant="stop")
                            arena_save = gr.Button("Save into conversation", elem_id="arena-save")
                        arena_html = gr.HTML("", elem_id="arena-columns")
                        with gr.Row():
                            plot_steps = gr.BarPlot(_plot_frame(None, "mean_steps"), x="setting", y="mean_steps",
                                                    title="Mean steps per token", height=220, sort=None,
                                                    x_label_angle=-30)
                            plot_speed = gr.BarPlot(_plot_frame(None, "tokens_per_s"), x="setting",
                                                    y="tokens_per_s", title="Tokens/s", height=220, sort=None,
                                                    x_label_angle=-30)
                            plot_agree = gr.BarPlot(_plot_frame(None, "agreement"), x="setting", y="agreement",
                                                    title="Agreement with the deepest answer", height=220,
                                                    y_lim=[0, 1], sort=None, x_label_angle=-30)
                    # ---- model ----
                    with gr.Tab("Model", id="model"):
                        model_md = gr.Markdown(studio.model_summary(), elem_id="model-info")
                        with gr.Group(visible=config.allow_model_loading):
                            model_source = gr.Textbox(label="Load another model: local folder or hub id",
                                                      placeholder=f"{engine.OFFICIAL_MODEL} or /path/to/model")
                            quantization = gr.Dropdown(list(engine.QUANTIZATIONS), value="none", label="Quantization")
                            load_btn = gr.Button("Load model", variant="primary")
                        model_status = gr.HTML("")
                        queue = f" (at most {config.queue_size})" if config.queue_size else ""
                        gr.Markdown(f"Generation runs one request at a time per loaded model "
                                    f"(concurrency limit {config.concurrency_limit}); others wait in line{queue} "
                                    f"and see their place in the queue.", elem_id="queue-note")

            # ---- depth controls, beside the chat and the arena ----
            with gr.Column(scale=1, min_width=280, elem_id="depth-panel"):
                gr.Markdown("### Depth")
                num_steps = gr.Slider(1, limits.max_num_steps, value=min(info.num_steps_default, limits.max_num_steps),
                                      step=1, label="Recurrence steps", elem_id="num-steps")
                adaptive = gr.Checkbox(label="Adaptive exit (stop early on easy tokens)", value=False,
                                       elem_id="adaptive")
                criterion = gr.Dropdown(criteria, value="kl", label="Exit criterion", elem_id="criterion")
                threshold = gr.Dropdown(thresholds, value=default_threshold, allow_custom_value=True,
                                        label="Exit threshold", elem_id="threshold")
                min_steps = gr.Slider(0, limits.max_num_steps, value=0, step=1, label="Min steps")
                warm_start = gr.Checkbox(label="Warm start (continue from the previous token's state)", value=False)
                system = gr.Textbox(label="System prompt", lines=2, placeholder="Optional", elem_id="system")
                with gr.Accordion("Advanced", open=False):
                    temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p")
                    top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)")
                    min_p = gr.Slider(0, 1, value=0.0, step=0.01, label="Min-p")
                    repetition_penalty = gr.Slider(0.5, 2, value=1.0, step=0.05, label="Repetition penalty")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                    max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(256, limits.max_new_tokens),
                                               step=1, label="Max new tokens", elem_id="max-new-tokens")

        form = [num_steps, adaptive, criterion, threshold, min_steps, warm_start, temperature, top_p, top_k, min_p,
                repetition_penalty, seed, max_new_tokens]

        def settings(values: tuple) -> engine.GenerationSettings:
            return settings_from_form(limits, *values)

        def listing(sess: dict, query: str = "") -> dict:
            return gr.update(choices=studio.conversation_choices(sess, query), value=sess.get("conversation_id"))

        # ---- handlers ----
        @_friendly
        def init(stored, token):
            sess, token = (stored, None) if stored else studio.browser_session(token)
            recent = studio.conversation_choices(sess)
            if sess.get("conversation_id") is None and recent:
                sess = {**sess, "conversation_id": recent[0][1]}
            sess, html = studio.open_conversation(sess, sess.get("conversation_id"))
            system_prompt = studio.last_system_prompt(sess)
            return (sess, html, listing(sess), gr.skip() if system_prompt is None else system_prompt,
                    gr.skip() if token is None else token)

        def _stream(sess, make_turn):
            first = True
            for sess, html in make_turn():
                yield sess, html, (listing(sess) if first else gr.skip()), ""
                first = False
            yield sess, gr.skip(), listing(sess), ""

        @_friendly
        def on_send(sess, text, system_prompt, *values):
            gen = settings(values)
            for sess, html, conv, status_html in _stream(sess, lambda: studio.send(sess, text, system_prompt, gen)):
                yield sess, html, conv, status_html, ""

        @_friendly
        def on_regenerate(sess, system_prompt, *values):
            gen = settings(values)
            yield from _stream(sess, lambda: studio.regenerate(sess, system_prompt, gen))

        @_friendly
        def on_edit(sess):
            sess, text = studio.start_edit(sess)
            return sess, text, render.banner("Editing your last question: send it to add a new version beside "
                                             "the old one.")

        def on_stop(sess):
            if sess:
                studio.stop(sess)

        @_friendly
        def on_transcript_click(sess, evt: gr.EventData):
            data = getattr(evt, "_data", None) or {}
            if data.get("action") != "sibling" or not data.get("message"):
                return gr.skip()
            return studio.select_sibling(sess, int(data["message"]))

        @_friendly
        def on_open(sess, conversation_id):
            sess, html = studio.open_conversation(sess, conversation_id)
            system_prompt = studio.last_system_prompt(sess)
            return sess, html, gr.skip() if system_prompt is None else system_prompt

        @_friendly
        def on_new(sess):
            sess, html = studio.new_conversation(sess)
            return sess, html, listing(sess)

        @_friendly
        def on_search(sess, query):
            return gr.update(choices=studio.conversation_choices(sess, query))

        @_friendly
        def on_rename(sess, title):
            studio.rename(sess, title)
            return listing(sess), ""

        @_friendly
        def on_delete(sess, ok):
            if not ok:
                return gr.skip(), gr.skip(), gr.skip()
            sess, html = studio.delete(sess)
            return sess, html, listing(sess)

        @_friendly
        def on_delete_all(sess, ok):
            if not ok:
                return gr.skip(), gr.skip(), gr.skip()
            sess, html, count = studio.delete_all(sess)
            gr.Info(f"Deleted {count} conversation(s).")
            return sess, html, listing(sess)

        @_friendly
        def on_export(sess, everything, fmt):
            return studio.export(sess, fmt, everything)

        @_friendly
        def on_import(sess, file):
            sess, html, count = studio.import_file(sess, file)
            gr.Info(f"Imported {count} conversation(s).")
            return sess, html, listing(sess)

        @_friendly
        def on_arena(sess, text, system_prompt, presets, *values):
            result = studio.compare(text, system_prompt, arena_settings(settings(values), presets, limits), sess)
            return (result, render.columns(result["columns"]), _plot_frame(result, "mean_steps"),
                    _plot_frame(result, "tokens_per_s"), _plot_frame(result, "agreement"))

        @_friendly
        def on_arena_save(sess, result):
            sess, html = studio.save_comparison(sess, result)
            gr.Info("The comparison is saved in the conversation.")
            return sess, html, listing(sess)

        def on_criterion(name):
            choices, value = threshold_choices(name)
            return gr.update(choices=choices, value=value)

        @_friendly
        def on_load_model(source, quant, progress=gr.Progress(track_tqdm=True)):
            if not config.allow_model_loading:  # before the progress bar: nothing may start
                studio.load_model(source, quant)
            progress(0, desc=f"Loading {source or 'auto'}…")
            try:
                loaded = studio.load_model(source.strip(), quant)
            except engine.LoadError as err:
                return gr.skip(), gr.skip(), render.error_box(str(err)), gr.skip()
            return (studio.model_summary(), render.banner(studio.slot.note), render.banner(f"Loaded {loaded.name}."),
                    gr.update(value=min(loaded.num_steps_default, limits.max_num_steps)))

        # ---- wiring ----
        private = dict(api_visibility="private")
        demo.load(init, [session, browser_token], [session, transcript, conv_list, system, browser_token], **private)
        send_outputs = [session, transcript, conv_list, status, prompt]
        for trigger in (prompt.submit, send_btn.click):
            trigger(on_send, [session, prompt, system, *form], send_outputs, show_progress_on=[status],
                    **gen_events, **private)
        regen_btn.click(on_regenerate, [session, system, *form], [session, transcript, conv_list, status],
                        show_progress_on=[status], **gen_events, **private)
        edit_btn.click(on_edit, [session], [session, prompt, status], **private)
        stop_btn.click(on_stop, [session], None, queue=False, **private)
        arena_stop.click(on_stop, [session], None, queue=False, **private)
        transcript.click(on_transcript_click, [session], [transcript], **private)
        conv_list.input(on_open, [session, conv_list], [session, transcript, system], **private)
        new_btn.click(on_new, [session], [session, transcript, conv_list], **private)
        search.change(on_search, [session, search], [conv_list], trigger_mode="always_last", **private)
        rename_btn.click(on_rename, [session, title_box], [conv_list, title_box], **private)
        delete_btn.click(on_delete, [session, delete_ok], [session, transcript, conv_list], **private,
                         js="(s, ok) => [s, confirm('Delete this conversation with all its branches?')]")
        delete_all_btn.click(on_delete_all, [session, delete_ok], [session, transcript, conv_list], **private,
                             js="(s, ok) => [s, confirm('Delete all your conversations on this server?')]")
        export_json.click(functools.partial(on_export, fmt="json"), [session, export_all], [download], **private)
        export_md.click(functools.partial(on_export, fmt="md"), [session, export_all], [download], **private)
        import_btn.upload(on_import, [session, import_btn], [session, transcript, conv_list], **private)
        arena_run.click(on_arena, [session, arena_prompt, system, arena_presets, *form],
                        [arena_result, arena_html, plot_steps, plot_speed, plot_agree], **gen_events, **private)
        arena_save.click(on_arena_save, [session, arena_result], [session, transcript, conv_list], **private)
        criterion.change(on_criterion, [criterion], [threshold], **private)
        load_btn.click(on_load_model, [model_source, quantization], [model_md, banner, model_status, num_steps],
                       concurrency_limit=1, concurrency_id=GEN, **private)

        # ---- scripted use ----
        @_friendly
        def chat(prompt: str, settings: dict | None = None, system_prompt: str = "",
                 history: list | None = None) -> dict:
            """One answer: {"text", "tokens": [{"text", "steps", "exit_value"}], "stats", "settings"}.
            settings: engine.GenerationSettings fields by name, e.g. {"num_steps": 16}."""
            return studio.chat_api(prompt, settings, system_prompt, history)

        @_friendly
        def compare(prompt: str, settings: list, system_prompt: str = "") -> list:
            """One prompt at several settings, batched: a list of {"label", "settings", "tokens", "content",
            "stats"} with stats["agreement"] against the deepest answer."""
            return studio.compare_api(prompt, settings, system_prompt)

        gr.api(chat, api_name="chat", concurrency_limit=config.concurrency_limit, concurrency_id=GEN)
        gr.api(compare, api_name="compare", concurrency_limit=config.concurrency_limit, concurrency_id=GEN)

    demo.queue(max_size=config.queue_size, default_concurrency_limit=4)
    return demo


def launch(demo: gr.Blocks, **kwargs: Any) -> tuple[Any, str, str]:
    """``demo.launch`` with the stylesheet and keyboard shortcuts, which Gradio 6 takes at launch."""
    return demo.launch(css=_asset("style.css"), js=_asset("shortcuts.js"), footer_links=["api", "settings"],
                       **kwargs)
