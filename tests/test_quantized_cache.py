"""The quantized-weights cache (engine.quantized_cache): real bitsandbytes int8 / nf4 on the CPU, tiny checkpoints.

A cached load must give exactly the first load's model; a changed checkpoint, a crash mid-write or a damaged entry
must never be taken; the cache can be turned off."""

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import engine
from app.cli import parse_args, quantized_cache_setting
from engine.quantized_cache import MARKER, QuantizedCache

from .conftest import ROOT, make_checkpoint

QUANTIZED = ["int8", "nf4"]
SETTINGS = engine.GenerationSettings(num_steps=4, max_new_tokens=6, temperature=0.0, seed=0)


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "model", weight_std=None)


def _outputs(model, tok):
    ids = torch.arange(3, 40).view(1, -1)
    with torch.no_grad():
        logits = model(ids, num_steps=4, init_scale=0.0).logits
    events = list(engine.stream(model, tok, [{"role": "user", "content": "hi"}], SETTINGS))
    return logits, [e.token_id for e in events[:-1] if getattr(e, "token_id", -1) >= 0]


def _entries(root):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def _mapped(folder):
    root = str(folder.resolve())
    return [line for line in open("/proc/self/maps") if root in line and ".safetensors" in line]


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_cached_load_equals_the_first_load(checkpoint, tmp_path, fmt):
    cache = tmp_path / "cache"
    first, tok, first_report = engine.load(str(checkpoint), quantization=fmt, quantized_cache=cache)
    assert first_report.weights.cache_note.startswith("quantized weights saved to")
    assert len(_entries(cache)) == 1
    expected = _outputs(first, tok)
    again, tok, again_report = engine.load(str(checkpoint), quantization=fmt, quantized_cache=cache)
    entry = cache / _entries(cache)[0]
    assert again_report.weights.cache_note == f"quantized weights read from the cache {entry}"
    assert engine.model_info(again, again_report).weights_cache == again_report.weights.cache_note
    logits, tokens = _outputs(again, tok)
    assert torch.equal(logits, expected[0]) and tokens == expected[1] and len(tokens) >= 1
    layer = again.transformer.core_block[0].attn.Wqkv
    assert type(layer).__name__ == {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[fmt]
    assert layer.weight.dtype == {"int8": torch.int8, "nf4": torch.uint8}[fmt]
    if fmt == "nf4":
        assert layer.weight.quant_state.blocksize == 32  # Huginn's block size survives serialization
    a, b = engine.model_info(first, first_report), engine.model_info(again, again_report)
    assert (a.parameters, a.memory_bytes, a.name) == (b.parameters, b.memory_bytes, b.name)
    gc.collect()
    assert _mapped(entry) == []  # the cache's files, like the checkpoint's, stay unmapped


def test_full_precision_formats_use_no_cache(checkpoint, tmp_path):
    model, _, model_report = engine.load(str(checkpoint), quantization="fp32", quantized_cache=tmp_path / "cache")
    assert model_report.weights.cache_note == "" and not (tmp_path / "cache").exists()


def test_key_changes_with_the_checkpoint_format_and_block_size(checkpoint, tmp_path):
    cache = QuantizedCache(tmp_path / "cache")
    key = cache.entry(checkpoint, "nf4", torch.float32, "cpu", 32).key
    assert key == cache.entry(checkpoint, "nf4", torch.float32, "cpu", 32).key
    assert key != cache.entry(checkpoint, "nf4", torch.float32, "cpu", 64).key
    assert key != cache.entry(checkpoint, "int8", torch.float32, "cpu", 32).key
    assert key != cache.entry(checkpoint, "nf4", torch.bfloat16, "cpu", 32).key
    text = (checkpoint / "config.json").read_text()
    config = json.loads(text)
    (checkpoint / "config.json").write_text(text)  # rewritten with the same contents: the same entry
    assert key == cache.entry(checkpoint, "nf4", torch.float32, "cpu", 32).key
    (checkpoint / "config.json").write_text(json.dumps({**config, "mean_recurrence": 5}))  # an entry copies it
    edited = cache.entry(checkpoint, "nf4", torch.float32, "cpu", 32).key
    assert edited != key
    make_checkpoint(checkpoint, seed=1, weight_std=None)  # same names and shapes, new weights
    assert cache.entry(checkpoint, "nf4", torch.float32, "cpu", 32).key not in (key, edited)


def test_an_edited_config_is_not_answered_from_the_cache(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    engine.load(str(checkpoint), quantization="nf4", quantized_cache=cache)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "mean_recurrence": 5}))
    model, _, model_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=cache)
    assert model_report.weights.cache_note.startswith("quantized weights saved to") and model.config.mean_recurrence == 5
    again, _, again_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=cache)
    assert again_report.weights.cache_note.startswith("quantized weights read") and again.config.mean_recurrence == 5


def test_a_changed_checkpoint_is_quantized_again_and_replaces_its_entry(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    engine.load(str(checkpoint), quantization="nf4", quantized_cache=cache)
    old = _entries(cache)
    make_checkpoint(checkpoint, seed=1, weight_std=None)
    model, tok, model_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=cache)
    assert model_report.weights.cache_note.startswith("quantized weights saved to")
    assert len(_entries(cache)) == 1 and _entries(cache) != old  # the stale entry is gone
    fresh, _, fresh_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=False)
    assert torch.equal(_outputs(model, tok)[0], _outputs(fresh, tok)[0])


def test_a_writer_killed_before_the_rename_leaves_nothing_to_take(checkpoint, tmp_path):
    """A real crash at the worst moment: every file written, the process dies before the entry is renamed into
    place. The next load quantizes again, removes the dead writer's folder and gives the fresh load's model."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import engine, engine.quantized_cache as qc
        qc._sync_folder = lambda folder: os._exit(9)
        engine.load({str(checkpoint)!r}, quantization="nf4", quantized_cache={str(cache)!r})
    """)
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    partial = [p for p in cache.iterdir() if p.name.startswith(".partial-")]
    assert len(partial) == 1 and (partial[0] / "model.safetensors").is_file() and _entries(cache) == []
    model, tok, model_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=cache)
    assert model_report.weights.cache_note.startswith("quantized weights saved to")
    assert not partial[0].exists() and len(_entries(cache)) == 1
    fresh, _, fresh_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=False)
    assert torch.equal(_outputs(model, tok)[0], _outputs(fresh, tok)[0])


@pytest.mark.parametrize("damage", ["no_marker", "truncated", "garbage"])
def test_a_damaged_entry_is_ignored_and_rebuilt(checkpoint, tmp_path, damage):
    cache = tmp_path / "cache"
    first, tok, first_report = engine.load(str(checkpoint), quantization="int8", quantized_cache=cache)
    expected = _outputs(first, tok)
    entry = cache / _entries(cache)[0]
    weights = entry / "model.safetensors"
    size = weights.stat().st_size
    if damage == "no_marker":  # a folder of the right name that was never completed
        (entry / MARKER).unlink()
        weights.write_bytes(weights.read_bytes()[: size // 2])
    elif damage == "truncated":  # a complete entry whose file lost its end later
        weights.write_bytes(weights.read_bytes()[: size // 2])
    else:  # right size, unreadable contents: only loading it can tell
        weights.write_bytes(b"\0" * size)
    model, tok, model_report = engine.load(str(checkpoint), quantization="int8", quantized_cache=cache)
    assert model_report.weights.cache_note.startswith("quantized weights saved to")
    logits, tokens = _outputs(model, tok)
    assert torch.equal(logits, expected[0]) and tokens == expected[1]
    marker = json.loads((entry / MARKER).read_text())
    assert marker["files"]["model.safetensors"] == size and weights.stat().st_size == size


def test_opt_out_and_the_default_folder(checkpoint, tmp_path, monkeypatch):
    default = tmp_path / "default-cache"
    monkeypatch.setenv(engine.QUANTIZED_CACHE_ENV, str(default))
    model, _, model_report = engine.load(str(checkpoint), quantization="nf4", quantized_cache=False)
    assert model_report.weights.cache_note == "" and not default.exists()
    model, _, model_report = engine.load(str(checkpoint), quantization="nf4")  # the default: the environment's folder
    assert len(_entries(default)) == 1 and str(default) in model_report.weights.cache_note
    monkeypatch.setenv(engine.QUANTIZED_CACHE_ENV, "off")
    model, _, model_report = engine.load(str(checkpoint), quantization="nf4")
    assert model_report.weights.cache_note == ""


def test_cli_flags(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.QUANTIZED_CACHE_ENV, str(tmp_path / "x"))
    assert quantized_cache_setting(parse_args(["--no-quantized-cache"])) is False
    assert os.environ[engine.QUANTIZED_CACHE_ENV] == "off"  # loads from the model panel follow the flag
    assert quantized_cache_setting(parse_args(["--quantized-cache", str(tmp_path / "c")])) == str(tmp_path / "c")
    assert os.environ[engine.QUANTIZED_CACHE_ENV] == str(tmp_path / "c")
    assert quantized_cache_setting(parse_args([])) is True
