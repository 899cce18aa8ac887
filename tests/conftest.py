"""Shared fixtures: the reference goldens, tiny random Huginn checkpoints and a byte-level test tokenizer."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch

import engine
from engine import HuginnConfig, HuginnForCausalLM

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
GOLDEN_DIR = SHARED / "reference-goldens" / "tiny-1-2-1"
OFFICIAL_DIR = SHARED / "huginn-0125"
SPECIALS = ["<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"]
# Our own wording of a Huginn-style template: roles verbatim, assistant shown as "Huginn", trimmed content.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|begin_header|>"
    "{{ 'Huginn' if m['role'] == 'assistant' else m['role'] }}<|end_header|>\n\n"
    "{{ m['content'] | trim }}<|end_turn|>{% endfor %}"
    "{% if add_generation_prompt %}<|begin_header|>Huginn<|end_header|>\n\n{% else %}<|end_text|>{% endif %}"
)


def require(path: Path) -> Path:
    """Shared data is part of CI: a missing file fails the test instead of skipping it."""
    if not path.exists():
        pytest.fail(f"required test data is missing: {path}")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return require(GOLDEN_DIR)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return require(OFFICIAL_DIR)


def write_byte_tokenizer(folder: Path) -> int:
    """A byte-level tokenizer (256 byte tokens, no merges) plus Huginn's specials; returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_text|>", eos_token="<|end_text|>", pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(folder)
    return len(fast)


def tiny_config(vocab_size: int = 262, **overrides) -> HuginnConfig:
    values = dict(n_embd=64, n_heads=4, n_layers_in_prelude=1, n_layers_in_recurrent_block=2, n_layers_in_coda=1,
                  intermediate_size=128, vocab_size=vocab_size, block_size=256, mean_recurrence=8,
                  mean_backprop_depth=4, bos_token_id=256, eos_token_id=257, pad_token_id=261)
    values.update(overrides)
    return HuginnConfig(**values)


def make_checkpoint(folder: Path, seed: int = 0, weight_std: float | None = 0.08, **overrides) -> Path:
    """A random Huginn checkpoint in the official format, with the byte-level test tokenizer.

    ``weight_std`` redraws the matrices larger than the Takase init so that outputs depend visibly on depth;
    None keeps the model's own init (tame dynamics, as in a trained model)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_byte_tokenizer(folder)
    torch.manual_seed(seed)
    model = HuginnForCausalLM(tiny_config(vocab_size=vocab, **overrides))
    # Random, larger-than-init weights so that the tiny model's outputs depend visibly on depth.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if weight_std is not None and p.ndim == 2 and "wte" not in name:
                p.normal_(0, weight_std)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, tokenizer) of the tiny checkpoint, loaded through engine.load."""
    return engine.load(str(tiny_dir))[:2]


@contextlib.contextmanager
def cancel_at_core_step(model, n: int) -> Iterator[tuple[threading.Event, dict]]:
    """A cancel event that the model's ``n``-th core step sets, and the count of core steps run (``calls["n"]``)."""
    cancel = threading.Event()
    calls = {"n": 0}
    original = model.core_step

    def counting_core_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            cancel.set()
        return original(*args, **kwargs)

    model.core_step = counting_core_step
    try:
        yield cancel, calls
    finally:
        del model.core_step


def pytest_configure(config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # No test writes quantized weights into the user's cache folder; tests of the cache pass their own folder.
    os.environ.setdefault(engine.QUANTIZED_CACHE_ENV, "off")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
