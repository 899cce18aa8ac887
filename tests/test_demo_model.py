"""The shipped demo model: its tokenizer and chat template, loading, answers, and the depth effect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo-model"
OFFICIAL = ROOT.parent / "shared" / "huginn-0125"
sys.path.insert(0, str(ROOT / "scripts"))

import demo_tasks  # noqa: E402
import eval_demo_model  # noqa: E402

SPECIALS = ("<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>")

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What do you think of Goethe's Faust?"}],
    [{"role": "user", "content": "  What is 00004821+00003390?\n"},
     {"role": "assistant", "content": " 000008211 "},
     {"role": "user", "content": "thanks"}],
    [{"role": "system", "content": "sys"}, {"role": "Huginn", "content": "first"},
     {"role": "user", "content": "second"}, {"role": "assistant", "content": "third"}],
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return eval_demo_model.load(DEMO)[0]


# ---- tokenizer ---------------------------------------------------------------------------------


def test_special_tokens_are_the_last_ids_and_match_the_config(tok) -> None:
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIALS]
    assert ids == list(range(len(tok) - len(SPECIALS), len(tok)))
    config = json.loads((DEMO / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (ids[0], ids[1], ids[5])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ids[0], ids[1], ids[5])
    assert config["vocab_size"] == len(tok)


def test_digits_are_single_tokens_and_text_round_trips(tok) -> None:
    text = "What is 00004821+00003390?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    digits = [t for t in tok.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert len(digits) == 16 and all(len(t) == 1 for t in digits)
    assert tok.decode(ids) == text
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # BOS prepended, like the official tokenizer


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_like_the_official_one(tok, messages, add_generation_prompt) -> None:
    if not (OFFICIAL / "tokenizer_config.json").exists():
        pytest.fail(f"the official tokenizer_config.json is missing from {OFFICIAL}: CI needs ../shared")
    official = json.loads((OFFICIAL / "tokenizer_config.json").read_text())["chat_template"]
    ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                     chat_template=official)
    assert ours == theirs


def test_chat_template_marks_assistant_tokens(tok) -> None:
    enc = tok.apply_chat_template(CONVERSATIONS[2], return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(marked) == "000008211<|end_turn|>"


# ---- model -------------------------------------------------------------------------------------


def test_loads_through_the_standard_path(model) -> None:
    from engine.model import HuginnForCausalLM

    assert isinstance(model, HuginnForCausalLM)
    assert model.config.model_type == "huginn_raven"
    weights = list(DEMO.glob("*.safetensors"))
    assert weights and sum(p.stat().st_size for p in DEMO.iterdir()) < 20 * 2**20
    assert (DEMO / "generation_config.json").exists() and (DEMO / "README.md").exists()


def test_answers_held_out_questions_at_default_depth(model, tok) -> None:
    problems = demo_tasks.eval_problems("add", 1, 3) + demo_tasks.eval_problems("add", 2, 3)
    assert all(demo_tasks.is_heldout(p.question) for p in problems)
    texts, _ = eval_demo_model.generate_answers(model, tok, [p.question for p in problems],
                                                model.config.mean_recurrence)
    assert texts == [p.answer for p in problems]


def test_greets_with_a_short_coherent_reply(model, tok) -> None:
    from engine.generate import stream
    from engine.settings import GenerationSettings

    *_, summary = stream(model, tok, [{"role": "user", "content": "Hello!"}],
                         GenerationSettings(num_steps=model.config.mean_recurrence, max_new_tokens=40, seed=0))
    assert summary.stop_reason == "end_of_turn"
    assert summary.text.startswith("Hello!")


def test_hardest_tier_needs_depth(model, tok) -> None:
    hardest = max(demo_tasks.TIERS["add"])
    problems = demo_tasks.eval_problems("add", hardest, 32)
    acc = {}
    for r in (1, 32):
        texts, _ = eval_demo_model.generate_answers(model, tok, [p.question for p in problems], r)
        acc[r] = sum(t == p.answer for t, p in zip(texts, problems)) / len(problems)
    assert acc[32] >= 0.85 and acc[32] >= acc[1] + 0.2, acc
