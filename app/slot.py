"""The loaded model every session generates with, and the line the page shows about it."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import engine


class ModelSlot:
    """The model every session generates with. Swapping keeps running generations on the model they started with."""

    def __init__(self, model: Any, tokenizer: Any, note: str = "", compile: bool = False,
                 report: engine.LoadReport | None = None) -> None:
        self._pair = (model, tokenizer)
        self._report = report  # how engine.load got the model (None: built otherwise)
        self.note = note
        self.compile = compile  # models loaded from the panel are compiled as the first one was (--compile)
        self.lock = threading.Lock()
        self.prompt_cache = engine.PromptCache()  # conversations' KV caches, so a turn runs only its new tokens

    @property
    def pair(self) -> tuple[Any, Any]:
        return self._pair

    def info(self) -> engine.ModelInfo:
        return engine.model_info(self._pair[0], self._report)

    def materialized(self, num_steps: float) -> int:
        return int(self._pair[0].config.materialized_parameters(max(1, round(num_steps))))

    def load(self, source: str, quantization: str, tqdm_class: Any = None) -> engine.ModelInfo:
        """Load another model and make it current; raises engine.LoadError with a user-facing message."""
        with self.lock:
            model, tokenizer, report = engine.load(source or "auto", quantization=quantization, tqdm_class=tqdm_class,
                                                   compile=self.compile)
            self._pair, self._report = (model, tokenizer), report
            self.prompt_cache.clear()  # the caches belong to the previous model
            self.note = describe_source(source or "auto", report.source)
            return self.info()


def public_name(name: str) -> str:
    """A model's name as pages, exports and the API show it: a hub id as it is, a local folder by its own name (no
    install paths: an export is shared, a page is seen by others). Characters a model id does not hold (spaces,
    markup) become `-`, so another Huginn Studio page can take this server as its remote engine."""
    shown = Path(name).name if Path(name).is_absolute() else name
    shown = re.sub(r"[^\w./:@+-]", "-", shown)[:200]
    return shown if re.match(r"\w", shown) else "model-" + shown[:194]


def describe_source(requested: str, loaded: str) -> str:
    """The line the page shows about which model runs and why."""
    if Path(loaded).resolve() == Path(engine.DEMO_MODEL).resolve():
        why = " (no suitable GPU with the official weights)" if requested == "auto" else ""
        return (f"Running the bundled demo model{why}: a tiny model trained on toy tasks, for trying the app. "
                f"Start with --model {engine.OFFICIAL_MODEL} on a GPU for Huginn-0125.")
    return f"Running {loaded}."
