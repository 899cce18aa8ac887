"""An OpenAI-compatible API that carries depth, served by the page's own server: ``GET /v1/models`` and
``POST /v1/chat/completions`` (server-sent events or one JSON answer).

The standard fields (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``stream``,
``n``=1) map onto ``engine.GenerationSettings``; every other settings field (``num_steps``, ``criterion``,
``exit_threshold`` or ``threshold``, ``min_steps``, ``warm_start``, ...) comes as an extra body field by its engine
name. Each chunk carries its tokens' steps in ``huginn.tokens``; the last one, and the whole answer, the summary in
``huginn.summary``. Generation goes through ``Studio.gpu.stream``, the generator the page uses, under the page's
limits; nothing is stored, so visitors of a hosted server see nothing of each other here either.
"""

from __future__ import annotations

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
from typing import Any, Iterator

import engine
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .config import UserError
from .gpu import Gate
from .handlers import Studio
from .inputs import check_text, settings_from_dict
from .slot import public_name

log = logging.getLogger(__name__)

OWNER = "huginn-studio"
EXTENSION = "huginn"  # the extension field on chunks, answers and model entries
API_CACHE_OWNER = "openai-api"  # API clients share one set of conversation caches, apart from the page's visitors
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
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
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
        raise ApiError(400, f"unknown field {unknown[0]!r}; depth settings are engine.GenerationSettings fields "
                       f"({', '.join(sorted(ENGINE_FIELDS))})", unknown[0])
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

def api_token(event: engine.TokenEvent) -> dict[str, Any]:
    return {"id": event.token_id, **event.record()}


def api_summary(studio: Studio, summary: engine.Summary) -> dict[str, Any]:
    """What a client needs to draw the heatmap and the stats line: the page's stats, the settings used, the steps."""
    stats = summary.stats(materialized_parameters=studio.slot.materialized(summary.mean_steps))
    out = {**stats, "settings": summary.settings, "steps": list(summary.steps), "acceptance": summary.acceptance}
    if summary.trace is not None:  # the depth lens, asked for with "trace": true in the body
        out["trace"] = summary.trace
    return out


def usage(summary: engine.Summary) -> dict[str, int]:
    return {"prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.tokens,
            "total_tokens": summary.prompt_tokens + summary.tokens}


class Completion:
    """One request's answer, as whole JSON or as chunks."""

    def __init__(self, studio: Studio, messages: list[dict[str, str]], settings: engine.GenerationSettings) -> None:
        self.studio, self.settings = studio, settings
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model_id(studio)
        self.cancel = threading.Event()
        self.events = studio.gpu.stream(messages, settings, self.cancel, owner=API_CACHE_OWNER)

    def first(self) -> Any:
        """The first event, so a prompt the model cannot take is a 400 before any chunk is sent."""
        try:
            return next(self.events, None)
        except (engine.PromptError, engine.SettingsError) as err:  # a remote engine refuses some settings here
            self.close()
            raise ApiError(400, str(err), getattr(err, "field", "messages")) from None
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        self.cancel.set()
        self.events.close()

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self) -> dict[str, Any]:
        tokens, summary = [], None
        try:
            event = self.first()
            while event is not None:
                if isinstance(event, engine.Summary):
                    summary = event
                    break
                tokens.append(api_token(event))
                event = next(self.events, None)
        finally:
            self.close()
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

    def chunks(self, first: Any, include_usage: bool) -> Iterator[str]:
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
                yield self._chunk({"content": event.text}, **{EXTENSION: {"tokens": [api_token(event)]}})
                event = next(self.events, None)
            yield "data: [DONE]\n\n"
        except Exception as err:  # noqa: BLE001 - the client gets an error event, the log the details
            log.exception("generation failed")
            error = ApiError(500, f"generation failed: {type(err).__name__}", kind="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            self.close()


# ---- routes -----------------------------------------------------------------------------------------------------

def check_auth(request: Request, auth: Any) -> None:
    """With --auth, the API key is the login (``user:password``), sent as a bearer token or HTTP basic auth."""
    if not auth:
        return
    pairs = [auth] if isinstance(auth, tuple) else list(auth)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    given = None
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            given = None
    ok = given is not None and any(hmac.compare_digest(given.encode(), f"{u}:{p}".encode()) for u, p in pairs)
    if not ok:
        raise ApiError(401, "this server needs a login: use user:password as the API key", code="invalid_api_key")


def models_body(studio: Studio) -> dict[str, Any]:
    info, limits = studio.slot.info(), studio.limits
    per_step = studio.slot.materialized(2) - studio.slot.materialized(1)
    depth = {"num_steps_default": min(info.num_steps_default, limits.max_num_steps),
             "max_num_steps": limits.max_num_steps, "max_new_tokens": limits.max_new_tokens,
             "max_prompt_chars": limits.max_prompt_chars, "context": info.context,
             "criteria": list(engine.CRITERIA), "suggested_depths": list(info.suggested_depths),
             "parameters": info.parameters, "quantization": info.quantization,
             "materialized_parameters": {"base": studio.slot.materialized(1) - per_step, "per_step": per_step}}
    entry = {"id": model_id(studio), "object": "model", "created": 0, "owned_by": OWNER, EXTENSION: depth}
    return {"object": "list", "data": [entry]}


def add_routes(app: FastAPI, studio: Studio, auth: Any = None) -> Gate:
    """Serve the API on ``app`` (the page's FastAPI app); its generations share the page's gate (``Studio.gate``)."""
    config = studio.config
    gate = studio.gate
    max_body = 8 * config.limits.max_prompt_chars + 65_536

    def error(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    async def models(request: Request) -> JSONResponse:
        try:
            check_auth(request, auth)
        except ApiError as err:
            return error(err)
        return JSONResponse(models_body(studio))

    async def chat_completions(request: Request) -> Any:
        try:
            check_auth(request, auth)
            raw = bytearray()
            async for part in request.stream():  # read no more than the cap, whatever Content-Length says
                raw += part
                if len(raw) > max_body:
                    raise ApiError(413, f"the request is over {max_body:,} bytes")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ApiError(400, f"the request body is not JSON: {err}") from None
            messages, settings, stream, include_usage = parse_request(body, studio)
            if gate.full():
                raise ApiError(429, f"the server is busy: {gate.waiting} requests are waiting; try again later",
                               kind="rate_limit_error")
            completion = Completion(studio, messages, settings)
            if not stream:
                return JSONResponse(await run_in_threadpool(completion.whole))
            first = await run_in_threadpool(completion.first)
            return StreamingResponse(completion.chunks(first, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        except ApiError as err:
            return error(err)
        except Exception as err:  # noqa: BLE001 - never a stack trace to the client
            log.exception("chat completion failed")
            return error(ApiError(500, f"generation failed: {type(err).__name__}", kind="server_error"))

    app.add_api_route("/v1/models", models, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], include_in_schema=False)
    return gate

