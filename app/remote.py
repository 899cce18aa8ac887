"""A remote engine: any OpenAI-compatible server (a bigger Huginn Studio, vLLM, llama.cpp, ...) in place of a loaded
model, for ``--engine-url URL``.

``RemoteEngine`` is both the page's model slot and its GPU work: ``stream`` yields ``engine.TokenEvent`` and a final
``engine.Summary`` as ``engine.stream`` does, ``compare`` returns ``engine.CompareResult``s, so the handlers and the
page run unchanged. A Huginn Studio server sends each token's steps (the ``huginn`` extension of its API, see
``app.openai_api``); with any other server every token shows the fixed depth that was asked for, and the answer's
notice says the server gives no per-token depth.

The server is not trusted: this side stops an answer at its max new tokens and its wall time whatever the server
does, checks every record it sends against the engine's own definitions (``engine.TOKEN``, ``engine.STATS``), and
refuses what is not a stream of server-sent events; a stream that ends without its end marker is kept as interrupted
(``config.Interrupted``), never as a finished answer. Every error names the server, and strings from it are cut and
quoted.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import os
import re
import threading
import time
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

import engine

from .config import AppConfig, EngineError, Interrupted, quoted
from .store import MAX_TRACE_BYTES, InvalidData, prepare_trace

KEY_ENV = "HUGINN_STUDIO_ENGINE_KEY"
EXTENSION = "huginn"
STANDARD = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed"}
FINISH = {"length": "max_tokens", "stop": "end_of_turn"}
STOP_REASONS = ("end_of_turn", "stop_string", "max_tokens", "cancelled", "context_full")
NO_STEPS = ("this server takes no depth settings and gives no per-token depth: every token shows the depth asked "
            "for (r={steps})")
MAX_SECONDS = 600.0  # one answer's wall time, whatever the server does
POLL_S = 0.05  # how often a silent server's answer looks at Stop and the wall time
MAX_EVENT_BYTES = 1 << 20  # one server-sent event; a token's chunk is a few hundred bytes
CHARS_PER_TOKEN = 100  # a plain server's pieces are counted, not tokenized: the text is capped at this per token
MAX_ERROR_CHARS = 300  # of a message the server sends
MODEL_ID = re.compile(r"^[\w][\w./:@+-]{0,199}$")  # hub ids, file names, tags; nothing that draws as markup
# Summary fields only the server knows (every stat of engine.STATS but those counted here from what arrived).
SUMMARY_FIELDS = {f.name for f in dataclasses.fields(engine.Summary)}
COUNTED = ("tokens", "tokens_per_s", "mean_steps", "min_steps", "max_steps", "elapsed_s", "first_token_s",
           "stop_reason")
SERVER_STATS = tuple(n for n in engine.STATS.names if n in SUMMARY_FIELDS and n not in COUNTED)
# The server's caps on one request (app.openai_api.models_body); an older server sends only some.
CAPS = ("max_num_steps", "max_new_tokens", "max_prompt_chars", "max_system_chars", "max_history_messages")


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


class _Upstream:
    """What one answer's stream has sent so far, checked."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = False  # the end marker ([DONE]) or a finish reason arrived

    def fail(self, what: str) -> EngineError:
        return EngineError(f"the engine at {self.url} {what}")


def _message(body: Any, fallback: str) -> str:
    """An error message from the server's body, cut and quoted."""
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return quoted(message, MAX_ERROR_CHARS) if isinstance(message, str) else fallback


def _events(response: httpx.Response, url: str, start: float, max_seconds: float,
            max_bytes: int = MAX_EVENT_BYTES) -> Iterator[str]:
    """The data of each server-sent event; an event over ``max_bytes`` is refused, and bytes ``max_seconds``
    after ``start`` (``time.perf_counter()``) end the answer there, however slowly they come."""
    buffer, data = b"", []
    for part in response.iter_bytes():
        if time.perf_counter() - start > max_seconds:
            raise Interrupted(f"the engine at {url} took over {max_seconds:g} s; the answer was cut there")
        buffer += part
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end].rstrip(b"\r"), buffer[end + 1:]
            if not line:
                if data:
                    yield "\n".join(data)
                data = []
            elif line.startswith(b"data:"):
                data.append(line[5:].strip().decode("utf-8", "replace"))
        if len(buffer) + sum(map(len, data)) > max_bytes:
            raise EngineError(f"the engine at {url} sent an event over {max_bytes:,} bytes")
    if data:
        yield "\n".join(data)


def _tail(record: Any) -> Any:
    """A token record; an older Huginn Studio sent its held-back text (no steps) with the engine's id -1."""
    if isinstance(record, dict) and record.get("steps") == 0 and record.get("id") == -1:
        return {k: v for k, v in record.items() if k != "id"}
    return record


def _count(value: Any, where: str, upstream: _Upstream) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise upstream.fail(f"sent a malformed {where}: {quoted(value)}")
    return value


class RemoteEngine:
    """The model slot and the generation work of a page whose model runs on another server."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = MAX_SECONDS, max_seconds: float = MAX_SECONDS) -> None:
        self.url = api_base(url)
        self.max_seconds = max_seconds
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # ``timeout``: any wait for the next bytes (a busy server may queue a request for minutes before its first
        # byte); the whole answer is bounded by max_seconds all the same, silent or not.
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(min(timeout, max_seconds), connect=10))
        self.lock = threading.Lock()
        models = self._models()
        if not models:
            raise engine.LoadError(f"the engine at {self.url} serves no models")
        wanted = [m for m in models if m["id"] == model] if model and model != "auto" else models[:1]
        if not wanted:
            raise engine.LoadError(f"the engine at {self.url} has no model {model!r}; it serves "
                                   f"{', '.join(m['id'] for m in models[:20])}")
        self.model = wanted[0]["id"]
        self.depth: dict[str, Any] | None = self._depth(wanted[0].get(EXTENSION))
        self.note = f"Running {self.model} on the remote engine at {self.url}."
        if self.depth is None:
            self.note += (" This server takes no depth settings and gives no per-token depth: every token shows the "
                          "depth the page asked for.")

    def _models(self) -> list[dict[str, Any]]:
        """The server's model entries, each with a plain id."""
        try:
            response = self.http.get(f"{self.url}/models")
            response.raise_for_status()
            data = response.json().get("data")
        except (httpx.HTTPError, ValueError, AttributeError) as err:
            raise engine.LoadError(f"the engine at {self.url} did not list its models: "
                                   f"{quoted(str(err), MAX_ERROR_CHARS)}") from None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise engine.LoadError(f"the engine at {self.url} did not list its models: no list of model entries")
        bad = [m["id"] for m in data if not MODEL_ID.match(m["id"])]
        if bad:
            raise engine.LoadError(f"the engine at {self.url} lists a model id this page cannot show: "
                                   f"{quoted(bad[0])}")
        return data

    def _depth(self, depth: Any) -> dict[str, Any] | None:
        """A Huginn Studio server's depth entry (``app.openai_api.models_body``), every number checked."""
        if depth is None:
            return None
        if not isinstance(depth, dict):
            raise engine.LoadError(f"the engine at {self.url} sent a malformed huginn entry for {self.model}")
        out = dict(depth)
        for name in ("num_steps_default", "context", "parameters", *CAPS):
            value = depth.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise engine.LoadError(f"the engine at {self.url} sent a malformed huginn.{name}: {quoted(value)}")
        size = depth.get("materialized_parameters") or {}
        if not isinstance(size, dict) or not all(isinstance(size.get(k, 0), int) for k in ("base", "per_step")):
            raise engine.LoadError(f"the engine at {self.url} sent a malformed huginn.materialized_parameters")
        depths = [] if depth.get("suggested_depths") is None else depth["suggested_depths"]
        if not isinstance(depths, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= engine.MAX_NUM_STEPS for d in depths):
            raise engine.LoadError(f"the engine at {self.url} sent a malformed huginn.suggested_depths (a list of "
                                   f"depths from 1 to {engine.MAX_NUM_STEPS}): {quoted(depths)}")
        out["quantization"] = quoted(depth.get("quantization", "unknown"), 32).strip("'\"")
        return out

    # -- the slot --
    @property
    def pair(self) -> tuple[Any, Any]:
        raise RuntimeError("a remote engine has no local model")

    def info(self) -> engine.ModelInfo:
        depth = self.depth or {}
        default = min(depth.get("num_steps_default") or engine.HuginnConfig().mean_recurrence, engine.MAX_NUM_STEPS)
        return engine.ModelInfo(
            name=self.model, parameters=int(depth.get("parameters") or 0), dtype="remote",
            quantization=str(depth.get("quantization", "unknown")), device=self.url, memory_bytes=0,
            num_steps_default=max(1, default), context=int(depth.get("context") or 0),
            suggested_depths=tuple(depth.get("suggested_depths") or ()))

    def materialized(self, num_steps: float) -> int:
        size = (self.depth or {}).get("materialized_parameters") or {}
        return int(size.get("base", 0) + max(1, round(num_steps)) * size.get("per_step", 0))

    def load(self, source: str, quantization: str, tqdm_class: Any = None) -> engine.ModelInfo:
        raise engine.LoadError(f"this page uses the remote engine at {self.url}; load models there")

    def app_config(self, config: AppConfig) -> AppConfig:
        """The page's config with no model loading, and no limit above the server's own."""
        depth, limits = self.depth or {}, config.limits
        caps = {name: min(getattr(limits, name), int(depth[name])) for name in CAPS if depth.get(name)}
        # Prompt tokens are counted by the server, which holds the tokenizer.
        capped = dataclasses.replace(limits, max_prompt_tokens=None, **caps)
        return dataclasses.replace(config, limits=capped, allow_model_loading=False)

    # -- the work --
    def _request(self, messages: list[dict[str, Any]], settings: engine.GenerationSettings) -> dict[str, Any]:
        """The standard fields; a Huginn Studio server gets every setting too. Only role and content go with each
        message (answers' token ids are this side's business)."""
        values = settings.to_dict()
        body: dict[str, Any] = {api: values[name] for name, api in STANDARD.items() if values[name] is not None}
        if settings.stop_strings:
            body["stop"] = list(settings.stop_strings)
        if self.depth is not None:
            body.update({k: v for k, v in values.items() if k not in STANDARD and k != "stop_strings"})
        return {"model": self.model, "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "stream": True, "stream_options": {"include_usage": True}, **body}

    def stream(self, messages: list[dict[str, Any]], settings: engine.GenerationSettings,
               cancel: threading.Event | None = None, owner: str = "") -> Iterator[engine.TokenEvent | engine.Summary]:
        """The remote answer as engine events; a refused request raises engine.PromptError with the server's
        message, anything else the server gets wrong ``EngineError``. ``owner`` is not sent: the remote server
        keeps its own prompt caches. The server is read in a thread of its own, so Stop and the wall time take
        effect within ``POLL_S`` even while the server is silent."""
        if settings.trace and self.depth is None:
            raise engine.SettingsError("trace", f"the engine at {self.url} gives no per-step depth, so no depth "
                                                "lens; ask without \"trace\" or use a Huginn Studio server")
        start = time.perf_counter()
        events: queue.Queue = queue.Queue()
        gone = threading.Event()  # nobody reads any more: the reader drops the connection at its next bytes
        threading.Thread(target=self._read, args=(self._request(messages, settings), start, events, gone),
                         daemon=True).start()
        try:
            arrivals = self._arrivals(events, cancel, start)
            yield from self._answer(arrivals, settings, cancel, start, _Upstream(self.url))
        finally:
            gone.set()

    def _read(self, body: dict[str, Any], start: float, out: queue.Queue, gone: threading.Event) -> None:
        """The server's events into ``out``, then None; or the exception that ended them."""
        started = False
        try:
            with self.http.stream("POST", f"{self.url}/chat/completions", json=body) as response:
                started = True
                if response.status_code >= 400:
                    raise self._refusal(response)
                kind = response.headers.get("content-type", "").split(";")[0].strip()
                if kind != "text/event-stream":
                    raise EngineError(f"the engine at {self.url} answered with {quoted(kind or 'no content type')}, "
                                      "not a stream of server-sent events")
                # A traced answer's last event holds its trace, which the server cuts as the store keeps it.
                max_bytes = MAX_EVENT_BYTES + (MAX_TRACE_BYTES if body.get("trace") else 0)
                for data in _events(response, self.url, start, self.max_seconds, max_bytes):
                    if gone.is_set():
                        return
                    out.put(data)
        except httpx.HTTPError as err:
            what = (f"sent nothing for {self.http.timeout.read:g} s" if isinstance(err, httpx.TimeoutException)
                    else f"broke the connection ({type(err).__name__})")
            out.put(Interrupted(f"the engine at {self.url} {what}; the answer was cut there") if started else
                    EngineError(f"the engine at {self.url} could not be reached ({type(err).__name__})"))
        except Exception as err:  # noqa: BLE001 - handed to the reading side, which raises it
            out.put(err)
        finally:
            out.put(None)

    def _arrivals(self, events: queue.Queue, cancel: threading.Event | None, start: float) -> Iterator[str]:
        """The events as they arrive; ends early when ``cancel`` is set, raises Interrupted past the wall time."""
        while True:
            try:
                item = events.get(timeout=POLL_S)
            except queue.Empty:
                if cancel is not None and cancel.is_set():
                    return
                if time.perf_counter() - start > self.max_seconds:
                    raise Interrupted(f"the engine at {self.url} took over {self.max_seconds:g} s; the answer was "
                                      "cut there") from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _refusal(self, response: httpx.Response) -> Exception:
        try:
            body = json.loads(response.read()[:65_536])
        except ValueError:
            body = None
        message = _message(body, f"HTTP {response.status_code}")
        if response.status_code in (400, 413, 422):
            return engine.PromptError(f"the engine refused: {message}")
        return EngineError(f"the engine at {self.url} failed: {message}")

    def _answer(self, events: Iterator[str], settings: engine.GenerationSettings, cancel: threading.Event | None,
                start: float, upstream: _Upstream) -> Iterator[engine.TokenEvent | engine.Summary]:
        text, tokens, summary, finish, usage, first, counted = "", [], None, None, {}, 0.0, 0
        max_chars = settings.max_new_tokens * CHARS_PER_TOKEN
        cut = False  # a token past max_new_tokens arrived: the server ignores the budget
        for data in events:
            now = time.perf_counter() - start
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if data == "[DONE]":
                upstream.done = True
                break
            chunk = self._chunk(data, upstream)
            usage = chunk["usage"] or usage
            summary = chunk["summary"] or summary
            finish = chunk["finish"] or finish
            upstream.done = upstream.done or chunk["finish"] is not None
            for record in chunk["tokens"] if chunk["tokens"] is not None else self._pieces(chunk["piece"], settings):
                if record["steps"] > 0 and counted >= settings.max_new_tokens:
                    finish = "length"  # the server ignored max_tokens: cut here
                    upstream.done = cut = True
                    break
                first = first or now
                event = engine.TokenEvent(len(tokens), record.get("id", -1), record["text"], record["steps"],
                                          record.get("exit_value"), now, change=record.get("change"))
                tokens.append(event)
                text += event.text
                counted += event.steps > 0  # held-back text (no steps) is not a token
                yield event
            if cut:
                break
            if not upstream.done and len(text) >= max_chars:
                finish = "length"  # the server ignored max_tokens: cut here
                upstream.done = True
                break
        if not upstream.done and cancel is not None and cancel.is_set():
            finish = "cancelled"
        if not upstream.done and finish != "cancelled" and counted >= settings.max_new_tokens:
            finish = "length"  # the whole budget came, then the stream closed without its end marker
        elif not upstream.done and finish != "cancelled":
            raise Interrupted(f"the engine at {self.url} ended the stream before the answer's end")
        yield self._summary(text, tokens, settings, finish, usage, summary, first, time.perf_counter() - start)

    def _chunk(self, data: str, upstream: _Upstream) -> dict[str, Any]:
        """One chunk's piece of text, finish reason, usage, and the Huginn extension's tokens and summary, checked."""
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            raise upstream.fail(f"sent an event that is not JSON: {quoted(data)}") from None
        if not isinstance(chunk, dict):
            raise upstream.fail(f"sent an event that is not an object: {quoted(data)}")
        if "error" in chunk:
            raise upstream.fail(f"failed: {_message(chunk, 'an error event')}")
        choices = chunk.get("choices") or []
        choice = choices[0] if isinstance(choices, list) and choices else {}
        delta = choice.get("delta") if isinstance(choice, dict) else None
        piece = delta.get("content") if isinstance(delta, dict) else None
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(delta or {}, dict) or \
                not isinstance(piece, (str, type(None))) or not isinstance(finish, (str, type(None))):
            raise upstream.fail(f"sent a malformed chunk: {quoted(data)}")
        usage = chunk.get("usage") or {}
        if not isinstance(usage, dict):
            raise upstream.fail(f"sent a malformed usage: {quoted(usage)}")
        usage = {k: _count(usage.get(k), f"usage.{k}", upstream) for k in ("prompt_tokens", "completion_tokens")}
        ext = chunk.get(EXTENSION) or {}
        if not isinstance(ext, dict) or not isinstance(ext.get("tokens", []), list) or \
                not isinstance(ext.get("summary", {}), dict):
            raise upstream.fail(f"sent a malformed {EXTENSION} extension: {quoted(ext)}")
        server = ext.get("summary") or {}
        if not isinstance(server.get("prompt", []), list):
            raise upstream.fail(f"sent a malformed {EXTENSION} summary.prompt: {quoted(server['prompt'])}")
        try:
            tokens = None if "tokens" not in ext else [engine.TOKEN.check(_tail(t), "token") for t in ext["tokens"]]
            # The stop reason is taken only when it is one of the engine's own (``_summary``), so it is not checked.
            summary = engine.STATS.check({k: v for k, v in server.items()
                                          if k in engine.STATS.names and k != "stop_reason"}, "summary")
            summary["stop_reason"] = server.get("stop_reason")
            summary["prompt"] = [engine.TOKEN.check(r, f"summary.prompt[{i}]")
                                 for i, r in enumerate(server.get("prompt", []))]
            summary["trace"] = prepare_trace(server.get("trace"), "summary.trace")
        except (engine.RecordError, InvalidData) as err:
            raise upstream.fail(f"sent a malformed record: {quoted(str(err), MAX_ERROR_CHARS)}") from None
        return {"piece": piece or "", "finish": finish, "usage": usage, "tokens": tokens,
                "summary": summary if ext.get("summary") else None}

    def _pieces(self, piece: str, settings: engine.GenerationSettings) -> list[dict[str, Any]]:
        """A plain server's piece of text as a token of the depth asked for, with no id (it sends none)."""
        return [{"text": piece, "steps": settings.num_steps, "exit_value": None}] if piece else []

    def _summary(self, text: str, events: list[engine.TokenEvent], settings: engine.GenerationSettings,
                 finish: str | None, usage: dict[str, Any], server: dict[str, Any] | None, first: float,
                 elapsed: float) -> engine.Summary:
        """The answer's summary, counted here from what arrived; the server's own summary adds only what it alone
        knows (the prompt's length, its cache, its seed), each field checked."""
        server = server or {}
        steps = [e.steps for e in events if e.steps > 0]
        count = len(steps) if usage.get("completion_tokens") is None or finish == "length" else \
            min(usage["completion_tokens"], settings.max_new_tokens)
        reason = server.get("stop_reason") if finish != "cancelled" else "cancelled"
        if reason not in STOP_REASONS:
            reason = "cancelled" if finish == "cancelled" else FINISH.get(finish or "", "end_of_turn")
        if finish == "length":
            reason = "max_tokens"
        values = dict(
            text=text, tokens=count, prompt_tokens=usage.get("prompt_tokens") or 0,
            tokens_per_s=count / elapsed if elapsed > 0 else 0.0, mean_steps=sum(steps) / len(steps) if steps else 0,
            min_steps=min(steps, default=0), max_steps=max(steps, default=0), core_iterations=sum(steps),
            kv_cache_bytes=0, elapsed_s=elapsed, first_token_s=first, stop_reason=reason, seed=settings.seed or 0,
            settings=settings.to_dict(), steps=steps,
            notice=None if self.depth is not None else NO_STEPS.format(steps=settings.num_steps))
        values.update({k: server[k] for k in (*SERVER_STATS, "prompt", "trace") if server.get(k) is not None})
        return engine.Summary(**values)

    def compare(self, messages: list[dict[str, Any]], settings_list: Sequence[engine.GenerationSettings],
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
