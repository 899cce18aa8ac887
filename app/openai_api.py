"""An OpenAI-compatible API that carries depth, served by the page's own server: ``GET /v1/models`` and
``POST /v1/chat/completions`` (server-sent events or one JSON answer).

The standard fields (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``stream``,
``n``=1) map onto ``engine.GenerationSettings``; every other settings field (``num_steps``, ``criterion``,
``exit_threshold`` or ``threshold``, ``min_steps``, ``warm_start``, ...) comes as an extra body field by its engine
name. Each chunk carries its tokens' steps in ``huginn.tokens``; the last one, and the whole answer, the summary in
``huginn.summary``. Generation goes through the work the page uses (``GpuWork`` or the remote engine), in the
page's gate and under the page's limits; nothing is stored, and each client has its own prompt caches where clients
are not one person (``hosted.api_cache_owner``), so visitors of a hosted server see nothing of each other here
either. The server is reached by anyone: a body is JSON from a script or this server's own page, read up to its cap
and refused by name where it is wrong, and a request that ends in any way frees its place at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import fields
from typing import Any, AsyncIterator, Awaitable
from urllib.parse import urlsplit

import engine
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .config import EngineError, UserError, quoted
from .gpu import Gate
from .handlers import Studio
from .hosted import api_cache_owner
from .inputs import check_text, settings_from_dict
from .slot import public_name
from .store import prepare_trace

log = logging.getLogger(__name__)

OWNER = "huginn-studio"
EXTENSION = "huginn"  # the extension field on chunks, answers and model entries
DEFAULT_MAX_TOKENS = 256  # the page's default for max new tokens
MAX_STOPS = 4
# Standard fields taken and ignored: they change nothing here.
IGNORED = {"model", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
# Standard fields this server cannot honour unless they ask for nothing.
NEUTRAL = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,), "logit_bias": ({},),
           "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],), "top_logprobs": (0,)}
STANDARD = {"messages": "messages", "max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
            "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop_strings"}
ENGINE_FIELDS = {f.name for f in fields(engine.GenerationSettings)} - {"max_new_tokens", "stop_strings"}
FIELD_NAMES = {"max_new_tokens": "max_tokens", "stop_strings": "stop"}
FINISH = {"end_of_turn": "stop", "stop_string": "stop", "cancelled": "stop", "max_tokens": "length",
          "context_full": "length"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An OpenAI-style error: HTTP status, message, the request field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


# ---- requests ---------------------------------------------------------------------------------------------------

def model_id(studio: Studio) -> str:
    """The served model's id: a hub id as it is, a local folder by its name (no server paths in public)."""
    return public_name(studio.slot.info().name)


def param_of(message: str) -> str | None:
    """The field a check's message starts with ('request.criterion: ...' -> 'criterion'), by its API name."""
    match = re.match(r"([A-Za-z_][\w.\[\]]*): ", message)
    if not match:
        return None
    name = match.group(1).removeprefix("request.")
    base, bracket, rest = name.partition("[")
    return FIELD_NAMES.get(base, base) + bracket + rest


def parse_messages(value: Any, studio: Studio) -> list[dict[str, str]]:
    """The chat, each message checked against the page's caps (UserError names the message)."""
    limits = studio.limits
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    if len(value) > limits.max_history_messages + 2:  # the history cap, plus a system prompt and the question
        raise ApiError(400, f"messages: {len(value):,} messages; the limit here is {limits.max_history_messages + 2:,}",
                       "messages")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or msg["role"] not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        content = msg.get("content")
        if isinstance(content, list):  # content parts: only text can reach this model
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        role = ROLES[msg["role"]]
        cap = limits.max_system_chars if role == "system" else limits.max_prompt_chars
        out.append({"role": role, "content": check_text(content, f"{where}.content", cap)})
    size = sum(len(m["content"]) for m in out)
    if size > limits.max_prompt_chars:
        raise ApiError(400, f"the messages are {size:,} characters; the limit here is {limits.max_prompt_chars:,}",
                       "messages")
    if limits.max_prompt_tokens is not None and (count := studio.chat.count_tokens(out)) > limits.max_prompt_tokens:
        raise ApiError(400, f"the messages are {count:,} tokens; the limit here is {limits.max_prompt_tokens:,}",
                       "messages")
    return out


def check_fields(body: dict[str, Any]) -> None:
    """Unknown fields, and standard ones this server cannot honour, are refused by name."""
    unknown = sorted(set(body) - set(STANDARD) - ENGINE_FIELDS - IGNORED - set(NEUTRAL) - {"stream", "n", "threshold"})
    if unknown:
        name = str(unknown[0])
        raise ApiError(400, f"unknown field {quoted(name)}; depth settings are engine.GenerationSettings fields "
                       f"({', '.join(sorted(ENGINE_FIELDS))})", name if len(name) <= 64 else name[:64] + "…")
    for name, allowed in NEUTRAL.items():
        if name in body and body[name] is not None and body[name] not in allowed:
            raise ApiError(400, f"{name} is not supported by this server", name)
    if body.get("n") not in (None, 1):
        raise ApiError(400, "n must be 1: this server returns one answer per request", "n")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "stream must be true or false", "stream")


def request_settings(body: dict[str, Any], studio: Studio) -> engine.GenerationSettings:
    """Standard fields under their engine names, the rest as they are; the page's caps and default depth."""
    limits = studio.limits
    data: dict[str, Any] = {"max_new_tokens": min(DEFAULT_MAX_TOKENS, limits.max_new_tokens)}
    for name, value in body.items():
        if value is None or name == "messages":
            continue
        if name in STANDARD:
            data[STANDARD[name]] = value
        elif name in ENGINE_FIELDS or name == "threshold":
            data["exit_threshold" if name == "threshold" else name] = value
    stop = data.get("stop_strings")
    if isinstance(stop, str):
        data["stop_strings"] = [stop]
    elif stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOPS):
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    try:
        return settings_from_dict(limits, data, "request", studio.slot.info().num_steps_default)
    except (engine.SettingsError, TypeError) as err:
        field = getattr(err, "field", None)
        raise ApiError(400, str(err), FIELD_NAMES.get(field, field)) from None


MAX_DIGITS = 40  # digits of a number in a request; more is never a setting, and int() of 4,300+ digits raises


class _LongNumber:
    """Stands where a number of over MAX_DIGITS digits was, so ``parse_body`` can name its field."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _path_of(body: Any, wanted: type) -> tuple[str, Any] | None:
    """The field path ('messages[0].content') of the first value of type ``wanted`` in ``body``, walked without
    recursion."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, wanted):
            return path, node
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            stack.append((f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key), child))
    return None


def _deepest_field(raw: bytes, limit: int = 64) -> str | None:
    """The top-level field whose value nests over ``limit`` deep (a scan of the text: the parser gave up)."""
    depth, key, in_string, escaped, start = 0, None, False, False, 0
    text = raw.decode("utf-8", "replace")
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 1:
                    key = text[start:i]
        elif ch == '"':
            in_string, start = True, i + 1
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return key
        elif ch in "]}":
            depth -= 1
    return None


def parse_body(raw: bytes) -> Any:
    """The request's JSON; what the parser cannot take (bad syntax, bad Unicode, NaN, a 5,000-digit number,
    50,000 levels of nesting) is a 400 naming the field where it can."""
    long_numbers = []

    def number(text: str) -> Any:
        digits = len(text.lstrip("-"))
        if digits <= MAX_DIGITS:
            return int(text)
        long_numbers.append(_LongNumber(digits))
        return long_numbers[-1]

    def constant(name: str) -> Any:
        raise ApiError(400, f"the request body is not JSON: {name} is not a JSON number")

    try:
        body = json.loads(raw, parse_int=number, parse_constant=constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not JSON: {err}") from None
    except RecursionError:
        field = _deepest_field(raw)
        where = f"{quoted(field)} " if field is not None else ""
        raise ApiError(400, f"the request body nests too deeply: {where}holds lists or objects over 64 levels deep",
                       field) from None
    found = _path_of(body, _LongNumber) if long_numbers else None
    if found is not None:
        path, value = found
        name = param_of(path + ": ") or path
        raise ApiError(400, f"{name}: a number of {value.digits:,} digits; numbers here have at most {MAX_DIGITS}",
                       name[:64])
    return body


def parse_request(body: Any, studio: Studio) -> tuple[list[dict[str, str]], engine.GenerationSettings, bool, bool]:
    """(messages, settings, stream, include_usage) from a chat-completions body; ApiError names what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    check_fields(body)
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    try:
        messages = parse_messages(body.get("messages"), studio)
        settings = request_settings(body, studio)
    except UserError as err:
        raise ApiError(400, str(err), param_of(str(err))) from None
    return messages, settings, body.get("stream", False), include_usage


# ---- answers ----------------------------------------------------------------------------------------------------

def api_summary(studio: Studio, summary: engine.Summary) -> dict[str, Any]:
    """What a client needs to draw the heatmap and the stats line: the page's stats, the settings used, the steps."""
    stats = summary.stats(materialized_parameters=studio.slot.materialized(summary.mean_steps))
    out = {**stats, "settings": summary.settings, "steps": list(summary.steps), "acceptance": summary.acceptance}
    if summary.prompt:  # the prompt positions run for this answer, as TOKEN records
        out["prompt"] = summary.prompt
    if summary.trace is not None:  # the depth lens, asked for with "trace": true in the body; cut as the store keeps it
        out["trace"] = prepare_trace(summary.trace)
    return out


def usage(summary: engine.Summary) -> dict[str, int]:
    return {"prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.tokens,
            "total_tokens": summary.prompt_tokens + summary.tokens}


def failure(err: Exception) -> ApiError:
    """A failed generation as the client sees it: a remote engine's own message (it names the server), else only
    the kind of error (the log has the details)."""
    if isinstance(err, EngineError):
        return ApiError(502, str(err), kind="server_error")
    return ApiError(500, f"generation failed: {type(err).__name__}", kind="server_error")


class ClientGone(Exception):
    """The client closed its connection before the answer was sent."""


class Completion:
    """One request's answer, as whole JSON or as chunks. The generation runs in a thread of its own that alone
    touches the engine's generator, from the gate to the end; the request's side reads its events from a queue and
    sets ``cancel`` however the request ends (answered, refused, client gone), so the engine stops within one core
    step and the slot goes to the next request at once, never when the garbage collector gets to it."""

    def __init__(self, studio: Studio, work: Any, gate: Gate, messages: list[dict[str, str]],
                 settings: engine.GenerationSettings, owner: str) -> None:
        self.studio, self.settings = studio, settings
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model_id(studio)
        self.cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ended = False
        threading.Thread(target=self._run, args=(work, gate, messages, settings, owner), daemon=True,
                         name=self.id).start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the server's loop is gone (shutting down): nobody is reading
            self.cancel.set()

    def _run(self, work: Any, gate: Gate, messages: list[dict[str, str]], settings: engine.GenerationSettings,
             owner: str) -> None:
        try:
            with gate.hold(self.cancel, admitted=True) as got:
                if not got:
                    return
                events = work.stream(messages, settings, self.cancel, owner)
                try:
                    for event in events:
                        self._put(event)
                        if isinstance(event, engine.Summary) or self.cancel.is_set():
                            break
                finally:
                    events.close()
        except BaseException as err:  # noqa: BLE001 - handed to the request's side, which answers with it
            self._put(err)
        finally:
            self._put(None)

    async def next(self) -> Any:
        """The next event, None at the end; an exception the generation raised is raised here."""
        if self._ended:
            return None
        item = await self._queue.get()
        if item is None:
            self._ended = True
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    async def first(self) -> Any:
        """The first event, so a prompt the model cannot take is a 400 before any chunk is sent."""
        try:
            return await self.next()
        except (engine.PromptError, engine.SettingsError) as err:  # a remote engine refuses some settings here
            raise ApiError(400, str(err), getattr(err, "field", "messages")) from None

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    async def whole(self) -> dict[str, Any]:
        tokens, summary = [], None
        event = await self.first()
        while event is not None:
            if isinstance(event, engine.Summary):
                summary = event
                break
            tokens.append(event.record())
            event = await self.next()
        if summary is None:
            raise ApiError(503, "the answer was stopped before it finished", kind="server_error")
        message = {"role": "assistant", "content": summary.text}
        return {**self._head("chat.completion"), "usage": usage(summary),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": FINISH.get(summary.stop_reason, "stop")}],
                EXTENSION: {"tokens": tokens, "summary": api_summary(self.studio, summary)}}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    async def chunks(self, first: Any, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, one chunk per token, a finish chunk with the summary, [DONE]."""
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            event = first
            while event is not None:
                if isinstance(event, engine.Summary):
                    yield self._chunk({}, FINISH.get(event.stop_reason, "stop"),
                                      **{EXTENSION: {"summary": api_summary(self.studio, event)}})
                    if include_usage:  # the standard's own last chunk: no choices, only the usage
                        body = {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(event)}
                        yield f"data: {json.dumps(body)}\n\n"
                    break
                yield self._chunk({"content": event.text}, **{EXTENSION: {"tokens": [event.record()]}})
                event = await self.next()
            yield "data: [DONE]\n\n"
        except Exception as err:  # noqa: BLE001 - the client gets an error event, the log the details
            log.exception("generation failed")
            error = failure(err)
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            self.cancel.set()


class EventStream(StreamingResponse):
    """The chunks as server-sent events; however the response ends (sent, client gone, send failed) the
    generation is told to stop, at once rather than when the body iterator is collected."""

    def __init__(self, completion: Completion, first: Any, include_usage: bool) -> None:
        super().__init__(completion.chunks(first, include_usage), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.completion = completion

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.completion.cancel.set()


async def until_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the request's body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, completion: Completion, work: Awaitable[Any]) -> Any:
    """``work``'s result, or ClientGone (and the generation stopped) when the client leaves first."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(until_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        completion.cancel.set()
        raise ClientGone
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()


# ---- routes -----------------------------------------------------------------------------------------------------

def api_key(request: Request) -> str | None:
    """The key a client sent: a bearer token, or HTTP basic auth's ``user:password``."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def check_auth(request: Request, auth: Any) -> str | None:
    """With --auth, the API key is the login (``user:password``), sent as a bearer token or HTTP basic auth.
    Returns the key the client sent."""
    given = api_key(request)
    if not auth:
        return given
    pairs = [auth] if isinstance(auth, tuple) else list(auth)
    ok = given is not None and any(hmac.compare_digest(given.encode(), f"{u}:{p}".encode()) for u, p in pairs)
    if not ok:
        raise ApiError(401, "this server needs a login: use user:password as the API key", code="invalid_api_key")
    return given


def check_origin(request: Request) -> None:
    """A browser names the page a request comes from in ``Origin``; only this server's own pages may call the API
    from a browser, so another web site cannot start generations with its visitors' browsers (scripts and SDKs
    send no Origin)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise ApiError(403, f"cross-site requests are refused: Origin {quoted(origin)} is not this server "
                       f"({quoted(host)})", code="cross_origin")


def check_json_type(request: Request) -> None:
    """JSON bodies only: a form or text/plain POST is what another web site can send without asking first."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"the request body must be JSON sent as Content-Type: application/json, not "
                       f"{quoted(kind) if kind else 'no content type'}", code="unsupported_media_type")


def models_body(studio: Studio) -> dict[str, Any]:
    info, limits = studio.slot.info(), studio.limits
    per_step = studio.slot.materialized(2) - studio.slot.materialized(1)
    depth = {"num_steps_default": min(info.num_steps_default, limits.max_num_steps),
             "max_num_steps": limits.max_num_steps, "max_new_tokens": limits.max_new_tokens,
             # max_prompt_chars caps one message and all of them together (parse_messages)
             "max_prompt_chars": limits.max_prompt_chars, "max_system_chars": limits.max_system_chars,
             "max_history_messages": limits.max_history_messages, "context": info.context,
             "criteria": list(engine.CRITERIA), "suggested_depths": list(info.suggested_depths),
             "parameters": info.parameters, "quantization": info.quantization,
             "materialized_parameters": {"base": studio.slot.materialized(1) - per_step, "per_step": per_step}}
    entry = {"id": model_id(studio), "object": "model", "created": 0, "owned_by": OWNER, EXTENSION: depth}
    return {"object": "list", "data": [entry]}


def add_routes(app: FastAPI, studio: Studio, auth: Any = None) -> Gate:
    """Serve the API on ``app`` (the page's FastAPI app); its generations share the page's gate (``Studio.gate``)."""
    config = studio.config
    gate = studio.gate
    work = studio.gpu.work  # the API's requests take their place in the gate's line themselves (Completion)
    max_body = 8 * config.limits.max_prompt_chars + 65_536
    isolated = config.per_browser_owner or bool(auth)  # clients are not all one person: each its own caches

    def error(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    async def models(request: Request) -> JSONResponse:
        try:
            check_origin(request)
            check_auth(request, auth)
        except ApiError as err:
            return error(err)
        return JSONResponse(models_body(studio))

    async def chat_completions(request: Request) -> Any:
        completion = None
        try:
            check_origin(request)
            key = check_auth(request, auth)
            check_json_type(request)
            raw = bytearray()
            async for part in request.stream():  # read no more than the cap, whatever Content-Length says
                raw += part
                if len(raw) > max_body:
                    raise ApiError(413, f"the request is over {max_body:,} bytes")
            messages, settings, stream, include_usage = parse_request(parse_body(bytes(raw)), studio)
            if not gate.admit():
                raise ApiError(429, f"the server is busy: {gate.queue_size} requests are waiting, the most it "
                               "queues; try again later", kind="rate_limit_error", code="queue_full")
            try:
                owner = api_cache_owner(key, isolated=isolated, login=bool(auth))
                completion = Completion(studio, work, gate, messages, settings, owner)
            except BaseException:
                gate.leave()  # its generation never started: the place in line is free again
                raise
            if not stream:
                return JSONResponse(await unless_gone(request, completion, completion.whole()))
            first = await unless_gone(request, completion, completion.first())
            streaming, completion = EventStream(completion, first, include_usage), None  # it stops it itself
            return streaming
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the generation has been stopped
        except ApiError as err:
            return error(err)
        except Exception as err:  # noqa: BLE001 - never a stack trace to the client
            log.exception("chat completion failed")
            return error(failure(err))
        finally:
            if completion is not None:
                completion.cancel.set()

    app.add_api_route("/v1/models", models, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], include_in_schema=False)
    return gate
