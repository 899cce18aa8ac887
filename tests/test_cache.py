"""The per-layer-step KV cache: exactness of cached decoding, strategies, sharing, sizes."""

import pytest
import torch

from engine import HuginnForCausalLM
from engine.cache import CacheStrategy

from .conftest import tiny_config

EXACT = 1e-5


def _model(**overrides):
    torch.manual_seed(0)
    model = HuginnForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "wte" not in name:
                p.normal_(0, 0.08)
    return model


def _prefill_then_decode(model, ids, steps, strategy, prefill_len, static=False):
    cache = model.new_cache(ids.shape[0], strategy, static=static)
    with torch.no_grad():
        logits = [model(ids[:, :prefill_len], num_steps=steps, init_scale=0.0, past_key_values=cache).logits]
        for t in range(prefill_len, ids.shape[1]):
            logits.append(model(ids[:, t:t + 1], num_steps=steps, init_scale=0.0, past_key_values=cache).logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("layout", [(1, 2, 1), (2, 4, 2), (2, 3, 1), (0, 1, 0)])
@pytest.mark.parametrize("strategy", ["full", "latest-m4", "skip"])
@pytest.mark.parametrize("static", [False, True])
def test_cached_decoding_equals_full_forward(layout, strategy, static):
    prelude, core, coda = layout
    model = _model(n_layers_in_prelude=prelude, n_layers_in_recurrent_block=core, n_layers_in_coda=coda)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = model(ids, num_steps=3, init_scale=0.0).logits
    cached, cache = _prefill_then_decode(model, ids, 3, strategy, prefill_len=5, static=static)
    assert (cached - full).abs().max().item() < EXACT
    assert cache.seq_len == 12
    assert cache.num_slots == prelude + coda + core * 3


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_compress_shares_slots_and_keeps_prefill_exact(k):
    model = _model(n_layers_in_recurrent_block=2)
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        full = model(ids, num_steps=4, init_scale=0.0).logits
    cached, cache = _prefill_then_decode(model, ids, 4, f"compress-s{k}", prefill_len=10)
    assert (cached - full).abs().max().item() < EXACT
    assert cache.num_slots == 1 + 1 + min(k, 2 * 4)
    shared, _ = _prefill_then_decode(model, ids, 4, f"compress-s{k}", prefill_len=6)
    latest, _ = _prefill_then_decode(model, ids, 4, f"latest-m4-compress-s{k}", prefill_len=6)
    # At fixed depth no entry is missing, so the latest-m4 read rule reads exactly what the plain rule reads.
    torch.testing.assert_close(latest, shared, atol=0, rtol=0)
    gap = (shared[:, 6:] - full[:, 6:]).abs().max().item()
    if k == 8:  # 2 core layers x 4 steps: nothing is shared, decoding is exact
        assert gap < EXACT
    else:  # decoded tokens read earlier positions' later-step entries from shared slots
        assert gap > 1e-3


def test_size_in_bytes_follows_slots_and_positions():
    model = _model()
    ids = torch.randint(0, 256, (1, 20))
    sizes = {}
    for strategy in ("full", "compress-s2"):
        _, cache = _prefill_then_decode(model, ids, 8, strategy, prefill_len=20)
        sizes[strategy] = cache.nbytes()
    per_slot = 2 * 4 * 16 * 4 * 20  # k and v, heads, head_dim, fp32 bytes, positions
    assert sizes["full"] == (1 + 1 + 2 * 8) * per_slot
    assert sizes["compress-s2"] == (1 + 1 + 2) * per_slot


def test_latest_reads_the_deepest_entry_a_token_reached():
    model = _model()
    cache = model.new_cache(1, "latest-m4")
    k = torch.randn(1, 4, 3, 16)
    cache.update("core", 0, k, k, 0)  # recurrence 0, layer 0, three positions
    cache.update("core", 2, k + 1, k + 1, 0)  # recurrence 1, layer 0
    cache.seq_len = 3
    new = torch.randn(1, 4, 1, 16)
    keys, _, mask = cache.update("core", 4, new, new, 3)  # recurrence 2: only the new token reaches it
    assert mask is None
    torch.testing.assert_close(keys[:, :, :3], k + 1)
    torch.testing.assert_close(keys[:, :, 3:], new)
    skip = model.new_cache(1, "skip")
    skip.update("core", 0, k, k, 0)
    skip.seq_len = 3
    keys, _, mask = skip.update("core", 2, new, new, 3)
    assert mask[0, 0, 0].tolist() == [False, False, False, True]


@pytest.mark.parametrize("static", [False, True])
def test_crop_forgets_positions(static):
    model = _model()
    ids = torch.randint(0, 256, (1, 8))
    _, cache = _prefill_then_decode(model, ids, 2, "full", prefill_len=8, static=static)
    cache.crop(5)
    assert cache.seq_len == 5
    with torch.no_grad():
        again = model(ids[:, 5:6], num_steps=2, init_scale=0.0, past_key_values=cache).logits
        full = model(ids[:, :6], num_steps=2, init_scale=0.0).logits
    assert (again[:, -1] - full[:, -1]).abs().max().item() < EXACT


@pytest.mark.parametrize("text,read,share,k", [
    ("full", "full", None, 0), ("latest-m4", "latest-m4", None, 0), ("skip", "skip", None, 0),
    ("compress-s4", "full", "s", 4), ("latest-m4-compress-s16", "latest-m4", "s", 16),
    ("latest-m4-compress-r2", "latest-m4", "r", 2), ("available-m4", "latest-m4", None, 0),
])
def test_strategy_parsing(text, read, share, k):
    s = CacheStrategy.parse(text)
    assert (s.read, s.share, s.share_k) == (read, share, k)


@pytest.mark.parametrize("bad", ["", "fastest", "compress-s0", "compress-x4", "latest-m4-compress-"])
def test_bad_strategies_are_named(bad):
    with pytest.raises(ValueError, match="cache s"):
        CacheStrategy.parse(bad)


def test_static_cache_has_fixed_shapes_and_grows_only_when_it_must():
    model = _model(n_layers_in_recurrent_block=2)
    cache = model.new_cache(1, "full", capacity=300, static=True)
    assert cache.static and cache.capacity == 512  # a power of two, so that few shapes are ever compiled
    slots, pos, rows, k, v, valid, latest_k, latest_v = cache.static_step_inputs(3, 0, None)
    assert slots.tolist() == [6, 7] and pos.tolist() == [0] and rows.tolist() == [True]
    assert k.shape == (8 * 2, 1, 4, 512, 16) and valid.shape == (16, 1, 512) and latest_k is None  # mean_recurrence 8
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        full = model(ids, num_steps=12, init_scale=0.0).logits  # deeper than the 8 steps allocated: the store grows
        cached = torch.cat([model(ids[:, :6], num_steps=12, init_scale=0.0, past_key_values=cache).logits]
                           + [model(ids[:, t:t + 1], num_steps=12, init_scale=0.0, past_key_values=cache).logits
                              for t in range(6, 10)], dim=1)
    assert (cached - full).abs().max().item() < EXACT
    assert cache.static_step_inputs(11, 10, None)[3].shape[0] == 32 and cache.capacity == 512
    cache.reserve(600)
    assert cache.capacity == 1024 and cache.static_step_inputs(0, 10, None)[3].shape[3] == 1024


def test_static_caches_reuse_the_stacked_slots_only_when_the_last_owner_is_gone():
    model = _model()
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        full = model(ids, num_steps=3, init_scale=0.0).logits
    first, first_cache = _prefill_then_decode(model, ids, 3, "full", prefill_len=5, static=True)
    address = first_cache.static_step_inputs(0, 0, None)[3].data_ptr()
    other_ids = torch.randint(0, 256, (1, 9))
    _, live = _prefill_then_decode(model, other_ids, 3, "full", prefill_len=5, static=True)
    live_address = live.static_step_inputs(0, 0, None)[3].data_ptr()
    assert live_address != address  # the first cache still holds its slots
    del first_cache, live
    again, cache = _prefill_then_decode(model, ids, 3, "full", prefill_len=3, static=True)
    assert cache.static_step_inputs(0, 0, None)[3].data_ptr() == live_address  # the last one, handed on
    # the entries of the earlier owners are not read: a reused store gives the same logits as a fresh cache
    assert (again - full).abs().max().item() < EXACT and (first - full).abs().max().item() < EXACT


def test_copy_prefix_of_a_static_cache_is_static_and_exact():
    model = _model()
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        full = model(ids, num_steps=3, init_scale=0.0).logits
    _, cache = _prefill_then_decode(model, ids[:, :8], 3, "latest-m4", prefill_len=8, static=True)
    twin = cache.copy_prefix(6, 16)
    assert twin.static and twin.seq_len == 6 and cache.seq_len == 8
    assert twin.static_step_inputs(0, 6, None)[3].data_ptr() != cache.static_step_inputs(0, 8, None)[3].data_ptr()
    with torch.no_grad():
        again = torch.cat([model(ids[:, t:t + 1], num_steps=3, init_scale=0.0, past_key_values=twin).logits
                           for t in range(6, 10)], dim=1)
    assert (again - full[:, 6:]).abs().max().item() < EXACT
