"""The OpenAI-compatible API, driven by the official ``openai`` client against ``python run.py`` on the demo model:
depth through ``extra_body``, per-token steps in every chunk, one default depth with the page, OpenAI-style errors,
and the hosted caps and login."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import engine
from tests.test_app_hosted import run_py

QUESTION = [{"role": "user", "content": "What is 12 + 30?"}]
JSON = {"content-type": "application/json"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_py(["--db", str(tmp_path_factory.mktemp("api") / "c.db")], {}) as (_, url):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}v1", api_key="unused", max_retries=0, timeout=120)


def demo_depth() -> int:
    return json.loads((engine.DEMO_MODEL / "config.json").read_text())["mean_recurrence"]


def extension(obj) -> dict:
    return obj.model_extra["huginn"]


def test_models_lists_the_loaded_model_with_its_depth(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["demo-model"]
    depth = extension(models[0])
    assert depth["num_steps_default"] == demo_depth() and depth["max_num_steps"] == 128
    assert "kl" in depth["criteria"] and depth["materialized_parameters"]["per_step"] > 0


def test_whole_answer_carries_per_token_steps_and_the_summary(client):
    answer = client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=8, seed=3,
                                            extra_body={"num_steps": 4})
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason in ("stop", "length")
    text = answer.choices[0].message.content
    ext = extension(answer)
    tokens, summary = ext["tokens"], ext["summary"]
    assert text and "".join(t["text"] for t in tokens) == text
    real = [t for t in tokens if "id" in t]  # held-back text at the end has no id: it is not a token
    assert len(real) == answer.usage.completion_tokens == summary["tokens"] <= 8
    assert {t["steps"] for t in real} == {4} and summary["steps"] == [4] * len(real)
    assert summary["mean_steps"] == 4 and summary["max_steps"] == 4 and summary["tokens_per_s"] > 0
    assert summary["settings"]["num_steps"] == 4 and summary["seed"] == 3


def test_default_depth_is_the_models_own_for_the_api_and_the_page_api(client, server):
    from gradio_client import Client

    answer = client.chat.completions.create(model="x", messages=QUESTION, max_tokens=2)
    assert extension(answer)["summary"]["settings"]["num_steps"] == demo_depth()
    page = Client(server, verbose=False).predict("What is 1 + 1?", {"max_new_tokens": 2}, api_name="/chat")
    assert page["settings"]["num_steps"] == demo_depth()



def test_the_parallel_sampler_through_the_api_and_the_page_api(client, server):
    """The same settings fields in the OpenAI API's extra body and in /chat: the sampler and its parameters."""
    fields = {"num_steps": 16, "sampler": "parallel", "inner_steps": 4, "max_window": 16}
    answer = client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=12, seed=3,
                                            extra_body=fields)
    summary = extension(answer)["summary"]
    assert (summary["sampler"], summary["settings"]["inner_steps"], summary["fallback"]) == ("parallel", 4, None)
    assert summary["diffusion_steps"] == len(summary["wavefront"].split()) > 0
    assert summary["core_passes_per_token"] < 16
    from gradio_client import Client

    page = Client(server, verbose=False).predict(QUESTION[0]["content"], {**fields, "max_new_tokens": 12, "seed": 3},
                                                  api_name="/chat")
    assert page["stats"]["sampler"] == "parallel" and page["text"] == answer.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=4,
                                       extra_body={"sampler": "parallel", "num_steps": 8, "inner_steps": 9})
    assert caught.value.body["param"] == "inner_steps"

def test_the_prompts_depth_and_prompt_exits_through_the_openai_client(client):
    swaps = [{"role": "user", "content": "Swap 12 23 13 12 23 13 on 312. Final?"}]
    depth = {"num_steps": 32, "criterion": "kl"}
    block = extension(client.chat.completions.create(model="demo-model", messages=swaps, max_tokens=6, seed=0,
                                                     extra_body=depth))["summary"]
    alone = extension(client.chat.completions.create(model="demo-model", messages=swaps, max_tokens=6, seed=0,
                                                     extra_body={**depth, "prompt_exits": True}))["summary"]
    assert block["prompt_core_steps"] == 32 * (block["prompt_tokens"] - 1)
    assert 0 < alone["prompt_core_steps"] < block["prompt_core_steps"] and alone["settings"]["prompt_exits"] is True
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo-model", messages=swaps, max_tokens=4,
                                       extra_body={**depth, "prompt_exits": "yes"})
    assert caught.value.body["param"] == "prompt_exits"


def test_streaming_gives_steps_on_every_chunk_and_matches_the_whole_answer(client):
    depth = {"num_steps": 8, "criterion": "kl", "exit_threshold": 1e-3, "min_steps": 1, "warm_start": False}
    whole = client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=12, seed=5,
                                           extra_body=depth)
    chunks = list(client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=12, seed=5,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body=depth))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks[1:] if c.choices and c.choices[0].finish_reason is None]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finish) == 1 and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    tokens = [t for c in content for t in extension(c)["tokens"]]
    assert all(len(extension(c)["tokens"]) == 1 for c in content)
    assert "".join(c.choices[0].delta.content for c in content) == whole.choices[0].message.content
    steps = [t["steps"] for t in tokens if "id" in t]
    assert steps == extension(finish[0])["summary"]["steps"] == extension(whole)["summary"]["steps"]
    assert all(1 <= s <= 8 for s in steps) and extension(finish[0])["summary"]["settings"]["criterion"] == "kl"
    # 'threshold' is taken as the short name for exit_threshold
    alias = client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=12, seed=5,
                                           extra_body={**depth, "exit_threshold": None, "threshold": 1e-3})
    assert alias.choices[0].message.content == whole.choices[0].message.content


def test_stop_strings_end_the_answer(client):
    free = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=12, seed=1).choices[0]
    words = free.message.content.split()
    assert len(words) >= 2
    stopped = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=12, seed=1, stop=[words[1]])
    assert stopped.choices[0].finish_reason == "stop" and words[1] not in stopped.choices[0].message.content


@pytest.mark.parametrize("kwargs, param", [
    ({"extra_body": {"num_steps": 0}}, "num_steps"),
    ({"extra_body": {"num_steps": 129}}, "num_steps"),  # over this server's limit (128)
    ({"extra_body": {"criterion": "magic"}}, "criterion"),
    ({"extra_body": {"num_step": 4}}, "num_step"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),  # unhashable: once a 500
    ({"messages": [{"role": {"name": "user"}, "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
])
def test_bad_requests_get_openai_errors_naming_the_field(client, kwargs, param):
    request = {"model": "demo-model", "messages": QUESTION, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error" and param.split(".")[0] in \
        error["message"] + param


def test_malformed_and_oversized_bodies_get_error_objects_not_tracebacks(server):
    with httpx.Client(base_url=server, timeout=60) as http:
        deep = b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"  # 50,000 levels: the parser gives up
        for body in (b"{not json", b"[1, 2]", "\"just a string\"".encode(), b"\xff\xfe", deep):
            r = http.post("v1/chat/completions", content=body, headers=JSON)
            assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert "Traceback" not in r.text
        huge = json.dumps({"messages": [{"role": "user", "content": "x" * 1_000_000}]})
        r = http.post("v1/chat/completions", content=huge, headers=JSON)
        assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
        long = json.dumps({"messages": [{"role": "user", "content": "x" * 100_001}]})
        r = http.post("v1/chat/completions", content=long, headers=JSON)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
        lone = b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'  # a lone surrogate: not Unicode
        r = http.post("v1/chat/completions", content=lone, headers=JSON)
        assert r.status_code == 400 and "Unicode" in r.json()["error"]["message"]


def test_hosted_with_a_login_keeps_the_pages_caps(tmp_path):
    args = ["--hosted", "--data-dir", str(tmp_path), "--auth", "colleague:pass:word"]
    with run_py(args, {}) as (_, url):
        anonymous = openai.OpenAI(base_url=f"{url}v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        with pytest.raises(openai.AuthenticationError):
            anonymous.chat.completions.create(model="m", messages=QUESTION, max_tokens=2)
        client = openai.OpenAI(base_url=f"{url}v1", api_key="colleague:pass:word", max_retries=0, timeout=120)
        assert extension(client.models.list().data[0])["max_num_steps"] == 32
        for kwargs, param in (({"extra_body": {"num_steps": 33}}, "num_steps"), ({"max_tokens": 257}, "max_tokens"),
                              ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages[0].content"),
                              ({"stop": ["a"] * 5}, "stop"), ({"messages": QUESTION * 40}, "messages")):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(**{"model": "m", "messages": QUESTION, "max_tokens": 2, **kwargs})
            assert caught.value.body["param"] == param
        answer = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=4,
                                                extra_body={"num_steps": 32})
        assert extension(answer)["summary"]["max_steps"] == 32
        # The login is one prompt-cache owner: its own prompt again reuses the cache (per key, not per request).
        again = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=4,
                                               extra_body={"num_steps": 32})
        assert extension(again)["summary"]["reused_tokens"] > 0
        basic = httpx.get(f"{url}v1/models", auth=("colleague", "pass:word"), timeout=30)
        assert basic.status_code == 200
