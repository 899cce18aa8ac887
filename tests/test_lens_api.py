"""The depth lens through the APIs: ``/chat`` (``Studio.chat_api``, what the named endpoint calls) and the
OpenAI-compatible endpoint (the official client against ``python run.py``) return traces when asked."""

from __future__ import annotations

import pytest

import engine
from app.handlers import AppConfig, ModelSlot, Studio
from app.store import Store, check_trace
from tests.test_openai_api import QUESTION, client, extension, server  # noqa: F401 - the module's fixtures


@pytest.fixture
def studio(tiny, tmp_path):
    with Store(tmp_path / "c.db") as store:
        yield Studio(ModelSlot(*tiny, note="tiny"), store, AppConfig())


def test_chat_returns_a_trace_only_when_asked(studio):
    plain = studio.chat.chat_api("The cat", {"num_steps": 4, "max_new_tokens": 5, "seed": 1})
    assert "trace" not in plain
    out = studio.chat.chat_api("The cat", {"num_steps": 4, "max_new_tokens": 5, "seed": 1, "trace": True,
                                      "trace_top_k": 2})
    trace = check_trace(out["trace"])
    assert trace["top_k"] == 2 and [t["exit_step"] for t in trace["tokens"]] == [4] * len(trace["tokens"])
    assert [t["steps"] for t in out["tokens"] if t["steps"]] == [t["exit_step"] for t in trace["tokens"]]
    assert out["text"] == plain["text"]
    with pytest.raises(engine.SettingsError, match="trace_top_k"):
        studio.chat.chat_api("The cat", {"trace": True, "trace_top_k": 50})


@pytest.mark.slow
def test_the_openai_endpoint_returns_the_trace_in_its_summary(client):  # noqa: F811
    answer = client.chat.completions.create(model="demo-model", messages=QUESTION, max_tokens=4, seed=3,
                                            extra_body={"num_steps": 3, "trace": True})
    trace = check_trace(extension(answer)["summary"]["trace"])
    assert [t["exit_step"] for t in trace["tokens"]] == [3] * len(trace["tokens"]) and trace["tokens"]
