"""Token choice and stop strings at their edges: tiny temperatures, tied logits, overlapping stop strings."""

import pytest
import torch

from engine import GenerationSettings, SettingsError
from engine.sampling import SamplingParams, sample_token
from engine.stops import StopStrings


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 1e-9])
def test_vanishing_temperatures_are_refused_by_name(temperature):
    with pytest.raises(SettingsError) as err:
        GenerationSettings(temperature=temperature)
    assert err.value.field == "temperature"


@pytest.mark.parametrize("temperature", [1e-40, 1e-300])
def test_a_vanishing_temperature_samples_the_top_token_without_nan(temperature):
    """model.generate takes temperatures from a GenerationConfig, past the settings' validation."""
    logits = torch.tensor([0.5, 3.0, -1.0, 2.9, float("-inf")])
    gen = torch.Generator().manual_seed(0)
    assert [sample_token(logits, SamplingParams(temperature=temperature), gen) for _ in range(5)] == [1] * 5


def test_top_k_one_keeps_exactly_one_of_tied_logits():
    logits = torch.tensor([1.0, 4.0, 4.0, 0.0])
    params = SamplingParams(temperature=1.0, top_k=1)
    chosen = {sample_token(logits, params, torch.Generator().manual_seed(seed)) for seed in range(40)}
    assert len(chosen) == 1 and chosen <= {1, 2}


def test_top_k_two_keeps_exactly_two_of_three_tied_logits():
    logits = torch.tensor([4.0, 4.0, 4.0, -3.0])
    params = SamplingParams(temperature=1.0, top_k=2)
    chosen = {sample_token(logits, params, torch.Generator().manual_seed(seed)) for seed in range(60)}
    assert len(chosen) == 2 and 3 not in chosen


def test_the_stop_matcher_cuts_at_the_earliest_match_in_the_text():
    stops = StopStrings(["world", "lo"])
    assert stops.feed("hello world") == "hel"
    assert stops.hit


def test_the_stop_matcher_finds_a_match_split_across_pieces():
    stops = StopStrings(["abc"])
    assert stops.feed("xxa") == "xx"
    assert stops.feed("b") == ""
    assert not stops.hit
    assert stops.feed("cz") == ""
    assert stops.hit


@pytest.mark.parametrize("stops,match", [
    (("x",) * 17, "at most 16 strings"),
    (("a" * 100_000, "b" * 100_000, "c" * 100_000), "at most 200 characters"),
    (("ok", "y" * 201), "at most 200 characters"),
])
def test_stop_strings_are_capped_by_number_and_length(stops, match):
    with pytest.raises(SettingsError, match=match) as err:
        GenerationSettings(stop_strings=stops)
    assert err.value.field == "stop_strings"
    assert GenerationSettings(stop_strings=("s" * 200,) * 16).stop_strings[0] == "s" * 200


def test_stop_strings_from_a_dict_must_be_a_list():
    with pytest.raises(SettingsError, match="list of strings") as err:
        GenerationSettings.from_dict({"stop_strings": "END"})
    assert err.value.field == "stop_strings"


def test_the_stop_matcher_holds_back_less_than_the_longest_stop_string():
    """Each piece is scanned with at most the held-back tail, so matching is linear in the answer's length."""
    stops = StopStrings(["a" * 199 + "b", "zz"])
    released = []
    for _ in range(5_000):
        released.append(stops.feed("a"))
        assert len(stops.pending) < stops.longest
    assert stops.feed("b") == "" and stops.hit
    assert "".join(released) == "a" * (5_000 - 199)


@pytest.mark.parametrize("top_k, top_p, min_p", [(20, 0.7, 0.0), (5, 0.5, 0.0), (0, 0.9, 0.0), (50, 0.8, 0.05),
                                                 (3, 0.95, 0.0)])
def test_filters_keep_what_transformers_warpers_keep(top_k, top_p, min_p):
    """Top-p after top-k works on the renormalised mass top-k left (issue 21, bug 6): transformers' own warpers are
    the reference, on random logits."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    from engine.sampling import filtered_probs

    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.8)] + ([TopKLogitsWarper(top_k)] if top_k else []) +
                                  [TopPLogitsWarper(top_p)] + ([MinPLogitsWarper(min_p)] if min_p else []))
    gen = torch.Generator().manual_seed(top_k * 100 + int(top_p * 10))
    for _ in range(50):
        logits = torch.randn(200, generator=gen) * 3
        theirs = warpers(torch.zeros(1, 1, dtype=torch.long), logits[None].clone())[0].softmax(-1)
        ours = filtered_probs(logits, SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p, min_p=min_p))
        assert torch.equal(ours > 0, theirs > 0)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
