"""``--engine-url``: a page whose model runs on another server. Real processes: ``run.py`` serving the API on the
demo model, a second ``run.py`` page using it as its engine, a Huginn Studio server in this process (the API's
routes on the demo model, so its answers can be compared with ``engine.stream``'s), and a stand-in OpenAI server (a
few lines of FastAPI, run here) that sends no per-token steps."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from gradio_client import Client

import engine
from app.config import Limits
from app.handlers import AppConfig, ModelSlot, Studio
from app.inputs import arena_presets
from app.openai_api import add_routes
from app.remote import RemoteEngine, api_base
from app.store import Store
from tests.test_app_hosted import free_port, run_py

DEMO_DEPTH = engine.HuginnConfig.from_pretrained(engine.DEMO_MODEL).mean_recurrence  # the page's and API's default

pytestmark = pytest.mark.slow
QUESTION = "What is 12 + 30?"


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory) -> Iterator[str]:
    with run_py(["--db", str(tmp_path_factory.mktemp("engine") / "c.db")], {}) as (_, url):
        yield url


@pytest.fixture(scope="module")
def page(engine_server, tmp_path_factory) -> Iterator[tuple[str, str]]:
    args = ["--engine-url", f"{engine_server}v1", "--db", str(tmp_path_factory.mktemp("page") / "c.db")]
    with run_py(args, {}) as (out, url):
        yield out, url


def direct(engine_server: str, **body: Any) -> dict[str, Any]:
    request = {"messages": [{"role": "user", "content": QUESTION}], **body}
    return httpx.post(f"{engine_server}v1/chat/completions", json=request, timeout=120).json()


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn in this process on a free port: its address."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def demo_model() -> tuple[Any, Any]:
    return engine.load(str(engine.DEMO_MODEL), quantization="fp32", device="cpu", quantized_cache=False)[:2]


@contextlib.contextmanager
def huginn_server(pair: tuple[Any, Any], folder, limits: Limits | None = None) -> Iterator[tuple[str, ModelSlot]]:
    """A Huginn Studio server's API on ``pair`` in this process, under ``limits``: its address and its slot."""
    slot = ModelSlot(*pair)
    with Store(folder / f"server{time.monotonic_ns()}.db") as store:
        app = FastAPI()
        add_routes(app, Studio(slot, store, AppConfig(limits=limits or Limits())))
        with serving(app) as base:
            yield base, slot


def remote_and_local(base: str, slot: ModelSlot, messages: list[dict[str, str]],
                     settings: engine.GenerationSettings) -> tuple[list[Any], list[Any]]:
    """The events of one answer through a RemoteEngine and from engine.stream on the server's own model, the
    server's prompt cache emptied first (a prefix it held would leave prompt positions out of its answer)."""
    slot.prompt_cache.clear()
    remote = list(RemoteEngine(base).stream(messages, settings))
    return remote, list(engine.stream(*slot.pair, messages, settings))


SWAPS = [{"role": "user", "content": "Swap 12 23 13 on 312. Final?"}]


def test_held_back_text_at_the_end_comes_through_as_it_does_locally(demo_model, tmp_path):
    settings = engine.GenerationSettings(num_steps=4, max_new_tokens=8, stop_strings=("1X",))
    with huginn_server(demo_model, tmp_path) as (base, slot):
        remote, local = remote_and_local(base, slot, SWAPS, settings)
    assert local[-2].token_id == -1 and local[-2].steps == 0 and local[-2].text  # the case: a held-back tail
    assert remote[-1].text == local[-1].text and [e.record() for e in remote[:-1]] == [e.record() for e in local[:-1]]
    assert remote[-1].tokens == local[-1].tokens and remote[-1].stop_reason == local[-1].stop_reason


def test_the_trace_the_prompt_records_and_the_parallel_samplers_stats_come_through(demo_model, tmp_path):
    parallel = ("sampler", "wavefront", "diffusion_steps", "core_passes_per_token", "fallback")
    with huginn_server(demo_model, tmp_path) as (base, slot):
        traced, local = remote_and_local(base, slot, SWAPS, engine.GenerationSettings(
            num_steps=4, max_new_tokens=4, trace=True, seed=3))
        assert local[-1].trace is not None and local[-1].prompt
        assert traced[-1].trace == local[-1].trace and traced[-1].prompt == local[-1].prompt
        diffused, local = remote_and_local(base, slot, SWAPS, engine.GenerationSettings(
            num_steps=8, max_new_tokens=6, sampler="parallel", seed=3))
        assert local[-1].sampler == "parallel" and local[-1].wavefront and local[-1].diffusion_steps > 0
        assert [getattr(diffused[-1], k) for k in parallel] == [getattr(local[-1], k) for k in parallel]
        assert diffused[-1].text == local[-1].text


@pytest.mark.parametrize("caps", [{"max_prompt_chars": 250}, {"max_history_messages": 4, "max_system_chars": 50}])
def test_a_long_chat_drops_its_oldest_turns_to_fit_the_servers_caps(demo_model, tmp_path, caps):
    """The server refuses a request whose messages are over max_prompt_chars together, or more than
    max_history_messages + 2."""
    question = "Swap 12 23 13 on 312. Final? " * 3  # 90 characters: the third question is over 250 together
    with huginn_server(demo_model, tmp_path, Limits(**caps)) as (base, _):
        remote = RemoteEngine(base)
        config = remote.app_config(AppConfig(stream_interval=0))
        assert {k: getattr(config.limits, k) for k in caps} == caps
        with Store(tmp_path / "page.db") as store:
            studio = Studio(remote, store, config, gpu=remote)
            session = studio.conversations.new_session()
            for _ in range(5):
                for session, *_ in studio.chat.send(session, question, "", engine.GenerationSettings(
                        num_steps=4, max_new_tokens=4)):
                    pass
            answers = [m for m in store.thread(session.owner, session.conversation_id) if m.role == "assistant"]
    assert [a.status for a in answers] == ["complete"] * 5, [a.error for a in answers]
    assert all(a.content for a in answers)


def test_the_page_shows_the_servers_per_token_steps(engine_server, page):
    out, url = page
    assert "remote engine" in out and "demo-model" in out and "no per-token depth" not in out
    client = Client(url, verbose=False)
    settings = {"num_steps": 8, "criterion": "kl", "exit_threshold": 1e-3, "max_new_tokens": 10, "seed": 7}
    answer = client.predict(QUESTION, settings, api_name="/chat")
    reference = direct(engine_server, max_tokens=10, seed=7, num_steps=8, criterion="kl", exit_threshold=1e-3)
    assert answer["text"] == reference["choices"][0]["message"]["content"] and answer["text"]
    steps = [t["steps"] for t in answer["tokens"] if t["steps"]]
    assert steps == reference["huginn"]["summary"]["steps"] and all(1 <= s <= 8 for s in steps)
    assert answer["stats"]["mean_steps"] == pytest.approx(sum(steps) / len(steps))
    assert answer["stats"]["materialized_parameters"] > 0 and not answer["stats"]["notice"]
    # one default depth: the remote model's own
    assert client.predict(QUESTION, {"max_new_tokens": 2}, api_name="/chat")["settings"]["num_steps"] == DEMO_DEPTH


def test_the_arena_runs_on_the_remote_engine(page):
    _, url = page
    columns = Client(url, verbose=False).predict(
        QUESTION, [{"num_steps": 2, "max_new_tokens": 8}, {"num_steps": 16, "max_new_tokens": 8}],
        api_name="/compare")
    assert [c["label"] for c in columns] == ["r=2", "r=16"]
    for column, depth in zip(columns, (2, 16)):
        assert {t["steps"] for t in column["tokens"] if t["steps"]} == {depth}
        assert column["stats"]["mean_steps"] == depth
    assert columns[1]["stats"]["agreement"] == 1.0 and 0 <= columns[0]["stats"]["agreement"] <= 1


def test_the_remote_page_serves_the_api_too_and_keeps_the_servers_limits(page):
    _, url = page
    models = httpx.get(f"{url}v1/models", timeout=30).json()["data"]
    assert models[0]["id"] == "demo-model" and models[0]["huginn"]["num_steps_default"] == DEMO_DEPTH
    config = json.dumps(httpx.get(f"{url}config", timeout=30).json())
    assert "remote engine" in config


def test_the_arena_defaults_to_the_remote_models_suggested_depths(engine_server):
    suggested = json.loads((engine.DEMO_MODEL / "generation_config.json").read_text())["suggested_depths"]
    remote = RemoteEngine(engine_server)
    assert list(remote.info().suggested_depths) == sorted(suggested)
    presets, default = arena_presets(remote.info().suggested_depths, remote.app_config(AppConfig()).limits)
    assert default == [str(d) for d in sorted(suggested)] + ["adaptive"]


def test_chat_turns_are_stored_with_the_remote_steps(engine_server, tmp_path):
    remote = RemoteEngine(engine_server)
    with Store(tmp_path / "s.db") as store:
        studio = Studio(remote, store, remote.app_config(AppConfig()), gpu=remote)
        session = studio.conversations.new_session()
        settings = engine.GenerationSettings(num_steps=4, max_new_tokens=6, seed=1)
        for session, *_ in studio.chat.send(session, QUESTION, "", settings):
            pass
        answer = store.thread(session.owner, session.conversation_id)[-1]
        assert answer.status == "complete" and answer.content and answer.model_id == "demo-model"
        assert {t["steps"] for t in answer.tokens if t["steps"]} == {4}
        assert answer.stats["mean_steps"] == 4
        # the server's prompt depth and each token's convergence come through (issue 23)
        assert answer.stats["prompt_core_steps"] == 4 * (answer.stats["prompt_tokens"] - 1), sorted(answer.stats.items())
        assert all(t["change"] >= 0 for t in answer.tokens if t["steps"])


# ---- a server without per-token depth ---------------------------------------------------------------------------

WORDS = ["The", " answer", " is", " 42", "."]


def sse(chunks: list[dict[str, Any]], done: bool = True) -> StreamingResponse:
    body = [f"data: {json.dumps(c)}\n\n" for c in chunks] + (["data: [DONE]\n\n"] if done else [])
    return StreamingResponse(iter(body), media_type="text/event-stream")


def chunk(word: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "plain-llm",
            "choices": [{"index": 0, "delta": {"content": word} if word else {}, "finish_reason": finish}], **extra}


def fixed_answer(body: dict[str, Any]) -> StreamingResponse:
    return sse([chunk(w) for w in WORDS] + [chunk(finish="stop")])


@contextlib.contextmanager
def stand_in_server(reply: Callable[[dict], Any] = fixed_answer, model: str = "plain-llm",
                    entry: dict[str, Any] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """A minimal OpenAI-compatible server (think vLLM or llama.cpp): by default a fixed answer, no steps, no
    extensions; ``reply`` makes it answer otherwise (a hostile or broken server), ``entry`` adds to its model
    entry (a huginn extension)."""
    app, seen = FastAPI(), []

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "x",
                                            **(entry or {})}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        seen.append(await request.json())
        return reply(seen[-1])

    with serving(app) as base:
        yield base, seen


def test_a_server_without_steps_shows_the_fixed_depth_asked_for_and_says_so(tmp_path):
    with stand_in_server() as (base, seen):
        with run_py(["--engine-url", base, "--db", str(tmp_path / "c.db")], {}) as (out, url):
            assert "plain-llm" in out and "no per-token depth" in out
            answer = Client(url, verbose=False).predict(QUESTION, {"num_steps": 6, "max_new_tokens": 16},
                                                        api_name="/chat")
            # The depth lens needs per-step depth: refused by name, through the page's OpenAI API too.
            refused = httpx.post(f"{url}v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": QUESTION}], "trace": True})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "trace", refused.text
            assert "no depth lens" in refused.json()["error"]["message"]
    assert answer["text"] == "".join(WORDS)
    assert [t["steps"] for t in answer["tokens"]] == [6] * len(WORDS)
    assert "no per-token depth" in answer["stats"]["notice"] and "r=6" in answer["stats"]["notice"]
    assert answer["stats"]["mean_steps"] == 6 and answer["stats"]["stop_reason"] == "end_of_turn"
    assert seen[-1]["max_tokens"] == 16 and seen[-1]["model"] == "plain-llm"
    # a plain server gets only the standard fields (OpenAI's own API refuses any other)
    assert set(seen[-1]) <= {"model", "messages", "stream", "stream_options", "max_tokens", "temperature", "top_p",
                             "seed", "stop"}
    assert all(set(m) == {"role", "content"} for m in seen[-1]["messages"])


def test_unreachable_or_wrong_engines_are_clear_errors():
    with pytest.raises(engine.LoadError, match="did not list its models"):
        RemoteEngine(f"http://127.0.0.1:{free_port()}")
    for bad in ("ftp://host/v1", "not a url", ""):
        with pytest.raises(engine.LoadError, match="http"):
            api_base(bad)
    assert api_base("http://h:1") == api_base("http://h:1/v1/") == "http://h:1/v1"
    with stand_in_server() as (base, _):
        with pytest.raises(engine.LoadError, match="plain-llm"):
            RemoteEngine(base, model="other-model")


# ---- an untrusted server -----------------------------------------------------------------------------------------

def store_answer(base: str, tmp_path, settings: engine.GenerationSettings | None = None, turns: int = 1,
                 **engine_args: Any):
    """Ask the page's handlers ``turns`` questions on the remote engine at ``base``; the stored answers."""
    remote = RemoteEngine(base, **engine_args)
    settings = settings or engine.GenerationSettings(num_steps=6, max_new_tokens=16)
    with Store(tmp_path / f"s{time.monotonic_ns()}.db") as store:
        studio = Studio(remote, store, remote.app_config(AppConfig()), gpu=remote)
        session = studio.conversations.new_session()
        for i in range(turns):
            for session, *_ in studio.chat.send(session, f"{QUESTION} ({i})", "", settings):
                pass
        return [m for m in store.thread(session.owner, session.conversation_id) if m.role == "assistant"]


def endless(body: dict[str, Any]) -> StreamingResponse:
    """A server that ignores max_tokens."""
    def chunks():
        for i in range(100_000):
            yield f"data: {json.dumps(chunk(f' w{i}'))}\n\n"
    return StreamingResponse(chunks(), media_type="text/event-stream")


def test_max_new_tokens_hold_whatever_the_server_sends(tmp_path):
    with stand_in_server(endless) as (base, _):
        [answer] = store_answer(base, tmp_path)
    assert answer.status == "complete" and len(answer.tokens) == 16 and answer.stats["stop_reason"] == "max_tokens"
    assert answer.stats["tokens"] == 16 and answer.content.startswith(" w0 w1")


@pytest.mark.parametrize("slowloris", [False, True])
def test_wall_time_holds_and_a_cut_answer_is_kept_as_interrupted(tmp_path, slowloris):
    def trickle(body):
        def chunks():
            yield f"data: {json.dumps(chunk(' w0'))}\n\n"
            for i in range(1, 1_000):
                time.sleep(0.1)
                yield "d" if slowloris else f"data: {json.dumps(chunk(f' w{i}'))}\n\n"  # slowloris: no event ends
        return StreamingResponse(chunks(), media_type="text/event-stream")

    settings = engine.GenerationSettings(num_steps=6, max_new_tokens=1_000)
    with stand_in_server(trickle) as (base, _):
        start = time.monotonic()
        [answer] = store_answer(base, tmp_path, settings, max_seconds=1.0)
        assert time.monotonic() - start < 10
    assert answer.status == "interrupted" and "took over 1 s" in answer.error and base in answer.error
    assert 0 < len(answer.tokens) < 50 and answer.content.startswith(" w0")


def test_a_stream_without_its_end_is_kept_as_interrupted(tmp_path):
    with stand_in_server(lambda body: sse([chunk(w) for w in WORDS[:3]], done=False)) as (base, _):
        [answer] = store_answer(base, tmp_path)
    assert answer.status == "interrupted" and answer.content == "".join(WORDS[:3])
    assert "ended the stream before the answer's end" in answer.error and base in answer.error


def test_a_stream_that_closes_after_the_whole_budget_is_a_length_cut_and_one_past_it_is_cut(tmp_path):
    settings = engine.GenerationSettings(num_steps=6, max_new_tokens=3)
    with stand_in_server(lambda body: sse([chunk(w) for w in WORDS[:3]], done=False)) as (base, _):
        [answer] = store_answer(base, tmp_path, settings)
    assert answer.status == "complete" and answer.stats["stop_reason"] == "max_tokens"
    assert answer.content == "".join(WORDS[:3])
    with stand_in_server(lambda body: sse([chunk("".join(WORDS[:4]), huginn={"tokens": [
            {"text": w, "steps": 6} for w in WORDS[:4]]})])) as (base, _):
        [answer] = store_answer(base, tmp_path, settings)
    assert answer.content == "".join(WORDS[:3]) and answer.stats["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("reply, message", [
    (lambda body: JSONResponse({"choices": [{"message": {"content": "hi"}}]}), "not a stream of server-sent events"),
    (lambda body: sse([chunk("a"), chunk(finish="stop", huginn={"summary": {"mean_steps": "deep"}})]),
     "summary.mean_steps must be a number"),
    (lambda body: sse([chunk("a", huginn={"tokens": [{"text": "a", "steps": "x"}]})]), "token.steps must be"),
    (lambda body: sse([chunk("a", huginn={"tokens": [{"text": "a", "steps": 4, "id": 2**32}]})]), "token.id"),
    (lambda body: sse([{"error": {"message": "out of memory " + "!" * 10_000}}]), "failed: 'out of memory"),
    (lambda body: JSONResponse({"error": {"message": "<b>down</b>" * 5_000}}, status_code=503), "failed: '<b>down"),
    (lambda body: sse(["not an object"]), "not an object"),
])
def test_a_broken_reply_is_a_clear_error_naming_the_server(tmp_path, reply, message):
    with stand_in_server(reply) as (base, _):
        [answer] = store_answer(base, tmp_path)
    assert answer.status == "failed" and message in answer.error and base in answer.error, answer.error
    assert len(answer.error) < 600 and "Traceback" not in answer.error


def test_a_servers_summary_adds_only_what_it_alone_knows(tmp_path):
    huge = {"stop_reason": "end_of_turn" + "!" * 100, "prompt_tokens": 9, "tokens": 1}  # a partial summary
    with stand_in_server(lambda body: sse([chunk(w) for w in WORDS] + [chunk(finish="stop", huginn={
            "summary": huge})])) as (base, _):
        [answer] = store_answer(base, tmp_path)
    assert answer.status == "complete" and answer.content == "".join(WORDS)
    assert answer.stats["stop_reason"] == "end_of_turn" and answer.stats["prompt_tokens"] == 9
    assert answer.stats["tokens"] == len(WORDS)  # counted here, not as the server says


def test_a_plain_servers_answers_carry_no_ids_and_nothing_non_standard_goes_back(tmp_path):
    with stand_in_server() as (base, seen):
        answers = store_answer(base, tmp_path, turns=2)
    assert [a.status for a in answers] == ["complete", "complete"]
    assert all("id" not in t for a in answers for t in a.tokens)
    assert [m["role"] for m in seen[-1]["messages"]] == ["user", "assistant", "user"]
    assert all(set(m) == {"role", "content"} for m in seen[-1]["messages"])


def test_a_model_id_that_is_not_plain_text_is_refused():
    with stand_in_server(model="[click](javascript:alert(1))") as (base, _):
        with pytest.raises(engine.LoadError, match="model id this page cannot show"):
            RemoteEngine(base)


def test_stop_holds_while_the_server_is_silent():
    def silent(body):
        def chunks():
            yield f"data: {json.dumps(chunk('a'))}\n\n"
            time.sleep(20)
            yield "data: [DONE]\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    with stand_in_server(silent) as (base, _):
        cancel = threading.Event()
        events = RemoteEngine(base).stream([{"role": "user", "content": QUESTION}],
                                           engine.GenerationSettings(num_steps=4, max_new_tokens=16), cancel)
        assert next(events).text == "a"
        threading.Timer(0.3, cancel.set).start()
        start = time.monotonic()
        summary = next(events)
        assert time.monotonic() - start < 2, "Stop waited for the server"
        assert isinstance(summary, engine.Summary) and summary.stop_reason == "cancelled" and summary.text == "a"


@pytest.mark.parametrize("depths", [5, True, "8", [4, "8"], [4, True], [0], [engine.MAX_NUM_STEPS + 1]])
def test_malformed_suggested_depths_are_refused_by_name(depths):
    with stand_in_server(entry={"huginn": {"suggested_depths": depths}}) as (base, _):
        with pytest.raises(engine.LoadError, match=r"huginn\.suggested_depths"):
            RemoteEngine(base)


def test_an_older_huginn_server_without_the_newer_caps_and_fields_still_works(tmp_path):
    """No history or system caps in its model entry, and its held-back text sent with the engine's id -1."""
    def older(body):
        return sse([chunk("a", huginn={"tokens": [{"id": 5, "text": "a", "steps": 6}]}),
                    chunk("é", huginn={"tokens": [{"id": -1, "text": "é", "steps": 0, "exit_value": None}]}),
                    chunk(finish="stop", huginn={"summary": {"stop_reason": "end_of_turn"}})])

    with stand_in_server(older, entry={"huginn": {"num_steps_default": 6, "max_prompt_chars": 500}}) as (base, _):
        remote = RemoteEngine(base)
        limits = remote.app_config(AppConfig()).limits
        assert (limits.max_prompt_chars, limits.max_history_messages) == (500, Limits().max_history_messages)
        assert remote.info().suggested_depths == ()
        [answer] = store_answer(base, tmp_path)
    assert answer.status == "complete" and answer.content == "aé", answer.error
    assert answer.tokens[-1] == {"text": "é", "steps": 0, "exit_value": None}
