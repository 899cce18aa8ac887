"""engine.compile: compiled layers give the eager results, and a failing compiler falls back to eager."""

import logging

import torch

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
    compile_model(compiled)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        cache_e, cache_c = eager.new_cache(1), compiled.new_cache(1)
        for chunk in (ids[:, :6], ids[:, 6:7], ids[:, 7:8]):
            a = eager(chunk, num_steps=3, init_scale=0.0, past_key_values=cache_e).logits
            b = compiled(chunk, num_steps=3, init_scale=0.0, past_key_values=cache_c).logits
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert compiled.compiled == "default"


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    eager, fallback = _pair()

    def broken_compile(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    compile_model(fallback)
    ids = torch.randint(0, 256, (1, 5))
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = fallback(ids, num_steps=2, init_scale=0.0).logits
    torch.testing.assert_close(out, eager(ids, num_steps=2, init_scale=0.0).logits)
    assert "running it eagerly" in caplog.text
