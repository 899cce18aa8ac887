"""A remote engine: any OpenAI-compatible server (a bigger Huginn Studio, vLLM, llama.cpp, ...) in place of a loaded
model, for ``--engine-url URL``.

``RemoteEngine`` is both the page's model slot and its GPU work: ``stream`` yields ``engine.TokenEvent`` and a final
``engine.Summary`` as ``engine.stream`` does, ``compare`` returns ``engine.CompareResult``s, so the handlers and the
page run unchanged. A Huginn Studio server sends each token's steps (the ``huginn`` extension of its API, see
``app.openai_api``); with any other server every token shows the fixed depth that was asked for, and the answer's
notice says the server gives no per-token depth.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import zlib
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import engine

from .config import AppConfig

KEY_ENV = "HUGINN_STUDIO_ENGINE_KEY"
EXTENSION = "huginn"
STANDARD = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed"}
FINISH = {"length": "max_tokens", "stop": "end_of_turn"}
NO_STEPS = "this server gives no per-token depth: every token shows the fixed depth asked for (r={steps})"
SUMMARY_FIELDS = [f.name for f in dataclasses.fields(engine.Summary) if f.name != "text"]


def add_arguments(parser: Any) -> None:
    parser.add_argument("--engine-url", default=None, metavar="URL",
                        help="use this OpenAI-compatible server as the engine instead of loading a model (e.g. "
                             "http://gpu-box:7860/v1, another Huginn Studio); --model then picks one of its models")
    parser.add_argument("--engine-key", default=os.environ.get(KEY_ENV) or None, metavar="KEY",
                        help=f"API key for --engine-url (or ${KEY_ENV}); user:password for a Huginn Studio --auth")


def api_base(url: str) -> str:
    """'http://host:7860' or 'http://host:7860/v1/' -> 'http://host:7860/v1'."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise engine.LoadError(f"--engine-url must be an http(s) address such as http://host:7860/v1, got {url!r}")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path if path.endswith("/v1") else path + "/v1", "", ""))


def token_id(text: str) -> int:
    """A stand-in id for a piece of text from a server that sends no token ids, so the arena can still compare."""
    return zlib.crc32(text.encode("utf-8"))


class RemoteEngine:
    """The model slot and the generation work of a page whose model runs on another server."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 600) -> None:
        import openai

        self.url = api_base(url)
        self._errors = openai
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or "none", timeout=timeout, max_retries=1)
        self.lock = threading.Lock()
        try:
            models = self.client.models.list().data
        except openai.APIError as err:
            raise engine.LoadError(f"the engine at {self.url} did not list its models: {err}") from None
        if not models:
            raise engine.LoadError(f"the engine at {self.url} serves no models")
        wanted = [m for m in models if m.id == model] if model and model != "auto" else models[:1]
        if not wanted:
            raise engine.LoadError(f"the engine at {self.url} has no model {model!r}; it serves "
                                   f"{', '.join(m.id for m in models)}")
        self.model = wanted[0].id
        self.depth: dict[str, Any] | None = (wanted[0].model_extra or {}).get(EXTENSION)
        self.note = f"Running {self.model} on the remote engine at {self.url}."
        if self.depth is None:
            self.note += (" This server gives no per-token depth: every token shows the fixed depth the page asked "
                          "for.")

    # -- the slot --
    @property
    def pair(self) -> tuple[Any, Any]:
        raise RuntimeError("a remote engine has no local model")

    def info(self) -> engine.ModelInfo:
        depth = self.depth or {}
        return engine.ModelInfo(
            name=self.model, parameters=int(depth.get("parameters", 0)), dtype="remote",
            quantization=str(depth.get("quantization", "unknown")), device=self.url, memory_bytes=0,
            num_steps_default=int(depth.get("num_steps_default", engine.HuginnConfig().mean_recurrence)),
            context=int(depth.get("context", 0)),
            suggested_depths=tuple(int(d) for d in depth.get("suggested_depths", ()) if isinstance(d, int)))

    def materialized(self, num_steps: float) -> int:
        size = (self.depth or {}).get("materialized_parameters") or {}
        return int(size.get("base", 0) + max(1, round(num_steps)) * size.get("per_step", 0))

    def load(self, source: str, quantization: str, tqdm_class: Any = None) -> engine.ModelInfo:
        raise engine.LoadError(f"this page uses the remote engine at {self.url}; load models there")

    def app_config(self, config: AppConfig) -> AppConfig:
        """The page's config with no model loading, and no limit above the server's own."""
        depth, limits = self.depth or {}, config.limits
        caps = {name: min(getattr(limits, name), int(depth[name]))
                for name in ("max_num_steps", "max_new_tokens", "max_prompt_chars") if name in depth}
        # Prompt tokens are counted by the server, which holds the tokenizer.
        capped = dataclasses.replace(limits, max_prompt_tokens=None, **caps)
        return dataclasses.replace(config, limits=capped, allow_model_loading=False)

    # -- the work --
    def _request(self, messages: list[dict[str, str]], settings: engine.GenerationSettings) -> dict[str, Any]:
        values = settings.to_dict()
        body: dict[str, Any] = {api: values[name] for name, api in STANDARD.items() if values[name] is not None}
        if settings.stop_strings:
            body["stop"] = list(settings.stop_strings)
        # A Huginn Studio server takes every setting; elsewhere only the depth asked for (a vLLM port, say).
        extra = ({k: v for k, v in values.items() if k not in STANDARD and k != "stop_strings"}
                 if self.depth is not None else {"num_steps": settings.num_steps})
        return dict(model=self.model, messages=messages, stream=True, stream_options={"include_usage": True},
                    extra_body=extra, **body)

    def stream(self, messages: list[dict[str, str]], settings: engine.GenerationSettings,
               cancel: threading.Event | None = None, owner: str = "") -> Iterator[engine.TokenEvent | engine.Summary]:
        """The remote answer as engine events; a refused request raises engine.PromptError with the server's
        message. ``owner`` is not sent: the remote server keeps its own prompt caches."""
        if settings.trace and self.depth is None:
            raise engine.SettingsError("trace", f"the engine at {self.url} gives no per-step depth, so no depth "
                                                "lens; ask without \"trace\" or use a Huginn Studio server")
        start = time.perf_counter()
        try:
            chunks = self.client.chat.completions.create(**self._request(messages, settings))
        except self._errors.BadRequestError as err:
            raise engine.PromptError(f"the engine refused: {_message(err)}") from None
        except self._errors.APIError as err:
            raise RuntimeError(f"the engine at {self.url} failed: {_message(err)}") from None
        text, events, summary, finish, used, first = "", [], None, None, None, 0.0
        try:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                now = time.perf_counter() - start
                ext = (chunk.model_extra or {}).get(EXTENSION) or {}
                used = chunk.usage or used
                choice = chunk.choices[0] if chunk.choices else None
                piece = (choice.delta.content or "") if choice else ""
                tokens = ext.get("tokens")
                if tokens is None and piece:
                    tokens = [{"id": token_id(piece), "text": piece, "steps": settings.num_steps,
                               "exit_value": None}]
                for token in tokens or []:
                    first = first or now
                    event = engine.TokenEvent(len(events), int(token["id"]), token["text"], int(token["steps"]),
                                              token.get("exit_value"), now)
                    events.append(event)
                    yield event
                text += piece
                summary = ext.get("summary", summary)
                if choice is not None and choice.finish_reason:
                    finish = choice.finish_reason
        except self._errors.APIError as err:
            raise RuntimeError(f"the engine at {self.url} failed: {_message(err)}") from None
        finally:
            chunks.close()
        if summary is not None and finish != "cancelled":
            yield engine.Summary(text=text, **{k: summary[k] for k in SUMMARY_FIELDS if k in summary})
            return
        yield self._summary(text, events, settings, finish, used, first, time.perf_counter() - start)

    def _summary(self, text: str, events: list[engine.TokenEvent], settings: engine.GenerationSettings,
                 finish: str | None, used: Any, first: float, elapsed: float) -> engine.Summary:
        """What the page shows for an answer whose server sent no summary (or that was stopped here)."""
        steps = [e.steps for e in events if e.token_id >= 0] or [0]
        count = len(events) if used is None else used.completion_tokens
        reason = "cancelled" if finish == "cancelled" else FINISH.get(finish or "", "end_of_turn")
        return engine.Summary(
            text=text, tokens=count, prompt_tokens=0 if used is None else used.prompt_tokens,
            tokens_per_s=count / elapsed if elapsed > 0 else 0.0, mean_steps=sum(steps) / len(steps),
            min_steps=min(steps), max_steps=max(steps), core_iterations=sum(steps), kv_cache_bytes=0,
            elapsed_s=elapsed, first_token_s=first, stop_reason=reason, seed=settings.seed or 0,
            settings=settings.to_dict(), notice=None if self.depth is not None else
            NO_STEPS.format(steps=settings.num_steps), steps=steps if events else [])

    def compare(self, messages: list[dict[str, str]], settings_list: Sequence[engine.GenerationSettings],
                cancel: threading.Event | None = None) -> list[engine.CompareResult]:
        """One answer per setting, one after another (the server batches nothing across requests)."""
        results = []
        for settings in settings_list:
            events, summary = [], None
            for event in self.stream(messages, settings, cancel):
                if isinstance(event, engine.Summary):
                    summary = event
                else:
                    events.append(event)
            results.append(engine.CompareResult(settings, events, summary))
        return results


def _message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(err)
