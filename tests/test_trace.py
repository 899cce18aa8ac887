"""The depth lens in the engine: traces agree with separate runs at fixed depth, and tracing changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

import engine
from engine import GenerationSettings, SettingsError, Summary
from engine.trace import pca_2d

PROMPTS = ["The cat", "2 + 2 =", "zzz"]


def run(model, tokenizer, prompt: str, **settings):
    events, summary = [], None
    for event in engine.stream(model, tokenizer, [{"role": "user", "content": prompt}],
                               GenerationSettings(**{"seed": 7, **settings})):
        if isinstance(event, Summary):
            summary = event
        elif event.token_id >= 0:
            events.append(event)
    return events, summary


@pytest.mark.parametrize("init_scale", [1.0, 0.0])
def test_the_leader_at_step_s_is_the_greedy_token_of_a_run_that_exits_at_step_s(tiny, init_scale):
    """The context (the prompt) runs at depth k in both runs; only the token's own recurrence stops at step s,
    forced by a criterion that exits at its first check (min_steps = s - 1, a threshold no value reaches)."""
    model, tokenizer = tiny
    k = 6
    flips = 0
    for prompt in PROMPTS:
        events, _ = run(model, tokenizer, prompt, num_steps=k, max_new_tokens=1, trace=True, init_scale=init_scale)
        trace = events[0].trace
        assert trace is not None and trace.exit_step == k and [s.step for s in trace.steps] == list(range(1, k + 1))
        leaders = trace.leaders()
        for s in range(1, k + 1):
            (solo,), _ = run(model, tokenizer, prompt, num_steps=k, criterion="kl", exit_threshold=1e6,
                             min_steps=s - 1, cache_strategy="full", max_new_tokens=1, init_scale=init_scale)
            assert solo.steps == s
            assert leaders[s - 1] == solo.token_id, f"{prompt!r}: step {s}"
        flips += len(set(leaders))
    assert flips > len(PROMPTS), "the leaders never changed with depth: the test would not notice a wrong step"


@pytest.mark.parametrize("criterion", ["none", "kl", "latent-diff"])
def test_every_token_exits_where_it_says_and_its_last_step_is_the_answer(tiny, criterion):
    model, tokenizer = tiny
    settings = dict(num_steps=12, max_new_tokens=8, criterion=criterion, trace=True, trace_top_k=3)
    if criterion != "none":
        settings["exit_threshold"] = {"kl": 5e-3, "latent-diff": 0.05}[criterion]
    events, summary = run(model, tokenizer, "Once upon a time", **settings)
    assert events
    for event in events:
        trace = event.trace
        assert trace.index == event.index and trace.token_id == event.token_id
        assert trace.exit_step == event.steps == len(trace.steps)
        assert trace.steps[-1].top_ids[0] == event.token_id  # greedy: the last step's leader is the token
        assert all(len(s.top_ids) == len(s.top_probs) == len(s.top_texts) == 3 for s in trace.steps)
        assert all(1 >= s.top_probs[0] >= s.top_probs[1] >= s.top_probs[2] >= 0 for s in trace.steps)
        assert all(s.top_texts[0] == tokenizer.decode([s.top_ids[0]]) for s in trace.steps)
        assert all(s.entropy >= 0 and s.kl >= -1e-5 and s.latent_change >= 0 for s in trace.steps)
        if criterion == "kl":  # the trace's KL is the criterion's value at each check
            assert math.isclose(trace.steps[-1].kl, event.exit_value, rel_tol=1e-3, abs_tol=1e-6)
        if criterion == "latent-diff" and event.index > 0:  # the prompt's criterion averages all its positions
            assert math.isclose(trace.steps[-1].latent_change, event.exit_value, rel_tol=1e-3, abs_tol=1e-6)
    if criterion != "none":
        assert len({e.steps for e in events}) > 1, "no token exited early: the threshold is too strict to test"
    compact = summary.trace
    assert compact["version"] == engine.TRACE_VERSION and compact["top_k"] == 3 and compact["cut"] is False
    assert [t["exit_step"] for t in compact["tokens"]] == [e.steps for e in events]
    assert all(len(t["xy"]) == t["exit_step"] for t in compact["tokens"])
    assert compact["texts"][str(events[0].token_id)] == tokenizer.decode([events[0].token_id])


def test_tracing_changes_no_token_and_off_records_nothing(tiny):
    model, tokenizer = tiny
    for criterion in ("none", "kl"):
        settings = dict(num_steps=8, max_new_tokens=6, criterion=criterion, exit_threshold=1e-2 if criterion == "kl"
                        else None)
        plain, plain_summary = run(model, tokenizer, "The cat", **settings)
        traced, _ = run(model, tokenizer, "The cat", **settings, trace=True)
        assert [(e.token_id, e.steps) for e in plain] == [(e.token_id, e.steps) for e in traced]
        assert all(e.trace is None for e in plain) and plain_summary.trace is None


def test_compare_traces_only_the_rows_that_ask(tiny):
    model, tokenizer = tiny
    messages = [{"role": "user", "content": "2 + 2 ="}]
    rows = [GenerationSettings(num_steps=4, max_new_tokens=6, seed=3, trace=True),
            GenerationSettings(num_steps=9, max_new_tokens=6, seed=3),
            GenerationSettings(num_steps=9, max_new_tokens=6, seed=3, trace=True, criterion="kl",
                               exit_threshold=1e-2)]
    results = engine.compare(model, tokenizer, messages, rows)
    assert results[1].summary.trace is None and all(e.trace is None for e in results[1].events)
    for result in (results[0], results[2]):
        tokens = [e for e in result.events if e.token_id >= 0]
        assert [t["exit_step"] for t in result.summary.trace["tokens"]] == [e.steps for e in tokens]
        solo, _ = run(model, tokenizer, "2 + 2 =", **{**result.settings.to_dict(), "seed": 3,
                                                       "stop_strings": ()})
        assert [e.trace.leaders() for e in solo] == [e.trace.leaders() for e in tokens]


def test_the_pca_finds_the_direction_of_largest_spread():
    torch.manual_seed(0)
    t = torch.linspace(-5, 5, 50)
    points = torch.stack([t, 0.1 * torch.randn(50), 0.01 * torch.randn(50)], 1) @ torch.linalg.qr(
        torch.randn(3, 3))[0].T
    xy = pca_2d(points)
    assert xy.shape == (50, 2)
    assert torch.allclose(xy[:, 0].abs(), t.abs(), atol=0.1)
    assert xy[:, 1].abs().max() < 0.5
    assert pca_2d(points[:1]).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("changes, field", [({"trace_top_k": 0}, "trace_top_k"), ({"trace_top_k": 21}, "trace_top_k"),
                                            ({"trace": "yes"}, "trace"),
                                            ({"trace": True, "draft_steps": 2, "num_steps": 8}, "trace")])
def test_trace_settings_are_checked(changes, field):
    with pytest.raises(SettingsError) as err:
        GenerationSettings(**changes)
    assert err.value.field == field
