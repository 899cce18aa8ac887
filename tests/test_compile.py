"""engine.compile: compiled code gives the eager results, a decoded position's core step runs as one captured graph
on a static cache (no graph break, no eager fallback, no recompile per depth or position), and a failing compiler
falls back to eager, visibly."""

import logging
import threading

import pytest
import torch
from torch._dynamo.utils import counters

import engine
from engine.compile import CORE_STEP, compile_model
from engine.decode import RowPlan, decode

from .conftest import tiny_config


def _pair():
    torch.manual_seed(0)
    eager = engine.HuginnForCausalLM(tiny_config()).eval()
    with torch.no_grad():  # larger than the init, so that tokens and exits depend visibly on depth
        for name, p in eager.named_parameters():
            if p.ndim == 2 and "wte" not in name:
                p.normal_(0, 0.08)
    other = engine.HuginnForCausalLM(tiny_config()).eval()
    other.load_state_dict(eager.state_dict())
    return eager, other


@pytest.fixture(scope="module")
def models():
    """One compiled model for the module: each graph compiles once, later tests replay it. Its captured step runs on a
    thread of its own, as it does with CUDA graphs (the CPU default calls it directly: tests/test_load.py)."""
    eager, compiled = _pair()
    compile_model(compiled, one_thread=True)
    return eager, compiled


@pytest.fixture(autouse=True)
def _fresh_counters():
    counters.clear()


def _no_break(report):
    assert report.fallbacks == {}
    assert dict(counters["graph_break"]) == {}, counters["graph_break"]


@pytest.mark.slow  # runs first and compiles the core step and the layer halves: ~60 s on 2 cores with a cold cache
def test_compiled_model_matches_eager(models):
    eager, compiled = models
    report = compiled.compile_report
    before = (report.compiled_calls, report.core_step_calls)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        cache_e, cache_c = eager.new_cache(1), compiled.new_cache(1)
        assert not cache_e.static and cache_c.static  # a compiled model's caches are static
        for chunk in (ids[:, :6], ids[:, 6:7], ids[:, 7:8], ids[:, 8:9]):
            a = eager(chunk, num_steps=3, init_scale=0.0, past_key_values=cache_e).logits
            b = compiled(chunk, num_steps=3, init_scale=0.0, past_key_values=cache_c).logits
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _no_break(report)
    # the prefill: 1 prelude + 2 core layers x 3 steps + 1 coda, 2 halves each; each decoded token: prelude and coda
    # halves (4) and 3 whole core steps
    assert report.compiled_calls - before[0] == 8 * 2 + 3 * (4 + 3)
    assert report.core_step_calls - before[1] == 3 * 3
    assert report.compiled and report.captured and report.eager_core_steps["several positions"] >= 3
    assert counters["frames"]["ok"] >= 2 and counters["stats"]["unique_graphs"] >= 2  # dynamo captured graphs
    assert compiled.compiled == "default" and report.mode == "default"


def _decode_both(models, ids, plans, strategy):
    eager, compiled = models
    report = compiled.compile_report
    before = report.core_step_calls, report.eager_core_steps["several positions"]
    out_e = list(decode(eager, ids, plans, cache_strategy=strategy))
    out_c = list(decode(compiled, ids, plans, cache_strategy=strategy))
    assert [s.tokens for s in out_c] == [s.tokens for s in out_e]
    assert [s.steps for s in out_c] == [s.steps for s in out_e]
    for a, b in zip(out_e, out_c):
        for va, vb in zip(a.exit_values, b.exit_values):
            assert vb == pytest.approx(va, rel=1e-4, abs=1e-5)
    _no_break(report)
    # every core step of a decoded position ran captured; only the prompt's (several positions) ran layer by layer
    decoded_steps = sum(max(s.steps) for s in out_e[1:])  # a batch's core step serves all its rows
    assert report.core_step_calls - before[0] >= decoded_steps > 0
    assert report.eager_core_steps["several positions"] - before[1] == max(out_e[0].steps)
    return out_e


def test_fixed_depth_decoding_is_identical(models):
    ids = torch.randint(0, 256, (1, 6))
    plan = RowPlan(num_steps=4, max_new_tokens=8, seed=1)
    out = _decode_both(models, ids, [plan], "full")
    assert len(out) == 8 and len({t for s in out for t in s.tokens}) > 1
    # a new depth, a new seed and a new prompt of the same length replay the graphs already compiled
    graphs = counters["stats"]["unique_graphs"]
    _decode_both(models, torch.randint(0, 256, (1, 6)), [RowPlan(num_steps=6, max_new_tokens=5, seed=2)], "full")
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("strategy,criterion,threshold", [("full", "latent-diff", 0.25),
                                                         ("latest-m4", "entropy-diff", 0.01)])
def test_adaptive_exit_decoding_is_identical(models, strategy, criterion, threshold):
    ids = torch.randint(0, 256, (1, 6))
    plan = RowPlan(num_steps=8, criterion=criterion, threshold=threshold, max_new_tokens=8, seed=1)
    out = []  # decoded on another thread than the others, as the app's worker threads do
    worker = threading.Thread(target=lambda: out.extend(_decode_both(models, ids, [plan], strategy)))
    worker.start()
    worker.join()
    assert out, "decoding on a worker thread failed (see the thread's exception above)"
    steps = [s.steps[0] for s in out[1:]]
    assert min(steps) < 8 and len(set(steps)) > 1  # tokens exited early, at different depths: missing entries


@pytest.mark.slow  # compiles the batch-of-2 graphs: ~30 s on 2 cores with a cold cache
def test_batched_rows_of_different_depths_are_identical(models):
    ids = torch.randint(0, 256, (1, 6))
    plans = [RowPlan(num_steps=3, max_new_tokens=5, seed=1),
             RowPlan(num_steps=6, criterion="latent-diff", threshold=0.3, max_new_tokens=5, seed=2)]
    _decode_both(models, ids, plans, "full")


def test_speculative_decoding_is_identical(models):
    """Drafts decode through the captured step; verification runs layer by layer and crops the static cache."""
    from engine.speculative import speculative_decode

    eager, compiled = models
    ids = torch.randint(0, 256, (1, 6))
    plan = RowPlan(num_steps=4, max_new_tokens=10, seed=1)
    before = compiled.compile_report.core_step_calls
    out_e, out_c = ([s.tokens[0] for s in speculative_decode(m, ids, plan, 2, 3)] for m in (eager, compiled))
    assert out_c == out_e and len(out_e) == 10
    assert compiled.compile_report.core_step_calls > before
    _no_break(compiled.compile_report)


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    eager, fallback = _pair()

    def broken_compile(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    report = compile_model(fallback)
    ids = torch.randint(0, 256, (1, 6))
    with caplog.at_level(logging.WARNING), torch.no_grad():
        cache_e, cache_f = eager.new_cache(1), fallback.new_cache(1)
        for chunk in (ids[:, :5], ids[:, 5:]):
            out = fallback(chunk, num_steps=2, init_scale=0.0, past_key_values=cache_f).logits
            torch.testing.assert_close(out, eager(chunk, num_steps=2, init_scale=0.0, past_key_values=cache_e).logits)
    assert "running it eagerly" in caplog.text
    assert report.compiled_calls == 0 and not report.compiled and not report.captured
    assert len(report.fallbacks) == 4 * 2 + 1  # every half of every layer, and the whole core step
    assert report.fallbacks["layer 0 begin"] == "RuntimeError: no C++ compiler"
    assert report.fallbacks[CORE_STEP] == "RuntimeError: no C++ compiler"
    assert report.eager_core_steps == {"several positions": 2, "fell back": 2}


def test_core_step_only_leaves_the_layers_eager():
    _, model = _pair()
    report = compile_model(model, layers=False)
    blocks = [*model.transformer.prelude, *model.transformer.core_block, *model.transformer.coda]
    assert all("begin" not in vars(b) and "end" not in vars(b) for b in blocks)  # the class's own methods
    assert "core_step" in vars(model) and model.compile_report is report


def test_the_static_cache_is_chosen_by_its_own_switch():
    """Issue 21: the static cache was switched on by whether a ``compile_report`` attribute existed."""
    eager, model = _pair()
    eager.compile_report = "anything"  # another attribute changes nothing
    assert eager.static_kv_cache is False and not eager.new_cache(1).static
    assert eager.new_cache(1, static=True).static
    compile_model(model, layers=False)
    assert model.static_kv_cache and model.new_cache(1).static
