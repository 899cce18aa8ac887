"""engine.compile: compiled layers run compiled code and give the eager results; a failing compiler falls back to
eager, visibly."""

import logging

import torch
from torch._dynamo.utils import counters

import engine
from engine.compile import compile_model

from .conftest import tiny_config


def _pair():
    torch.manual_seed(0)
    eager = engine.HuginnForCausalLM(tiny_config()).eval()
    other = engine.HuginnForCausalLM(tiny_config()).eval()
    other.load_state_dict(eager.state_dict())
    return eager, other


def test_compiled_model_matches_eager():
    eager, compiled = _pair()
    report = compile_model(compiled)
    counters.clear()
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        cache_e, cache_c = eager.new_cache(1), compiled.new_cache(1)
        for chunk in (ids[:, :6], ids[:, 6:7], ids[:, 7:8]):
            a = eager(chunk, num_steps=3, init_scale=0.0, past_key_values=cache_e).logits
            b = compiled(chunk, num_steps=3, init_scale=0.0, past_key_values=cache_c).logits
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert report.fallbacks == {}
    # 1 prelude + 2 core layers x 3 steps + 1 coda = 8 layers, 2 halves each, 3 forward passes
    assert report.compiled_calls == 8 * 2 * 3 and report.compiled
    assert counters["frames"]["ok"] >= 2 and counters["stats"]["unique_graphs"] >= 2  # dynamo captured graphs
    assert compiled.compile_report is report and compiled.compiled == "default"


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    eager, fallback = _pair()

    def broken_compile(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    report = compile_model(fallback)
    ids = torch.randint(0, 256, (1, 5))
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = fallback(ids, num_steps=2, init_scale=0.0).logits
    torch.testing.assert_close(out, eager(ids, num_steps=2, init_scale=0.0).logits)
    assert "running it eagerly" in caplog.text
    assert report.compiled_calls == 0 and not report.compiled
    assert len(report.fallbacks) == 4 * 2  # every half of every layer
    assert report.fallbacks["layer 0 begin"] == "RuntimeError: no C++ compiler"
