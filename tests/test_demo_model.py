"""The shipped demo model: its tokenizer and chat template, loading, answers, and the depth effect."""

from __future__ import annotations

import json
import random
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

# What the depth-curve tests demand of the --quick sample (24 problems, one seed): the hardest trained
# tier right at r=32 at least this often, and this many points above r=4. The card's full run measured
# 100 % and 38.8 % there on 16 swaps (assets/demo-model/README.md, 200 problems); a model without the curve fails.
CURVE = {"r32_min": 0.85, "gain_min": 0.4}
# What the --quick chats demand: every question of a chat right at least this often, the first always.
CHAT = {"min": 0.5}

SPECIALS = ("<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>")

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What do you think of Goethe's Faust?"}],
    [{"role": "user", "content": "  Swap 12 23 13 on 312. Final?\n"},
     {"role": "assistant", "content": " 321 "},
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
    text = "Swap 12 23 13 on 312. Final?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    digits = [t for t in tok.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert len(digits) == 9 and all(len(t) == 1 for t in digits)
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
    assert tok.decode(marked) == "321<|end_turn|>"


# ---- model -------------------------------------------------------------------------------------


def test_loads_through_the_standard_path(model) -> None:
    from engine.model import HuginnForCausalLM

    assert isinstance(model, HuginnForCausalLM)
    assert model.config.model_type == "huginn_raven"
    weights = list(DEMO.glob("*.safetensors"))
    assert weights and sum(p.stat().st_size for p in DEMO.iterdir()) < 20 * 2**20
    assert (DEMO / "generation_config.json").exists() and (DEMO / "README.md").exists()


def test_answers_held_out_questions_at_default_depth(model, tok) -> None:
    problems = demo_tasks.eval_problems("swap", 4, 6) + demo_tasks.eval_problems("swap", 8, 6)
    assert all(demo_tasks.is_heldout(p.question) for p in problems)
    texts, _, _ = eval_demo_model.generate_answers(model, tok, [p.question for p in problems],
                                                   model.config.mean_recurrence)
    assert sum(t == p.answer for t, p in zip(texts, problems)) >= 10, texts


def test_greets_with_a_short_coherent_reply(model, tok) -> None:
    from engine.generate import stream
    from engine.settings import GenerationSettings

    *_, summary = stream(model, tok, [{"role": "user", "content": "Hello!"}],
                         GenerationSettings(num_steps=model.config.mean_recurrence, max_new_tokens=40, seed=0))
    assert summary.stop_reason == "end_of_turn"
    assert summary.text.startswith("Hello!")


@pytest.fixture(scope="module")
def quick_report(model, tok) -> dict:
    """What `eval_demo_model.py --quick` computes (the CI run of the model card's evaluation)."""
    return eval_demo_model.evaluate(model, tok, demo_tasks.TASKS, eval_demo_model.QUICK_PER_TIER,
                                    eval_demo_model.QUICK_DEPTHS, adaptive=False, seeds=eval_demo_model.SEEDS[:1],
                                    tiers=eval_demo_model.QUICK_TIERS)


@pytest.fixture(scope="module")
def quick_chats(model, tok) -> dict:
    """The --quick run's chats: questions asked one after another through engine.stream, past the context."""
    tier, chats, questions = eval_demo_model.QUICK_CHATS
    return eval_demo_model.multi_turn(model, tok, tier, chats, questions, seeds=eval_demo_model.SEEDS[:1])


def test_the_hardest_trained_tier_needs_depth(quick_report) -> None:
    row = quick_report["swap"][str(demo_tasks.TRAIN_MAX_SWAPS)]
    acc = {int(r): cell["acc"] for r, cell in row["acc"].items()}
    # The figures of the model card, with room for 24 problems' worth of noise: depth 4 cannot follow
    # 16 swaps, depth 32 can.
    assert acc[32] >= CURVE["r32_min"] and acc[32] >= acc[4] + CURVE["gain_min"], acc


def test_short_lists_need_less_depth_than_long_ones(quick_report) -> None:
    easy = quick_report["swap"][str(min(demo_tasks.TIERS["swap"]))]["acc"]
    hard = quick_report["swap"][str(demo_tasks.TRAIN_MAX_SWAPS)]["acc"]
    assert easy["4"]["acc"] >= hard["4"]["acc"] + CURVE["gain_min"], (easy, hard)


def test_the_app_gets_the_depths_and_the_table_from_the_model_folder(model) -> None:
    import engine
    from app.config import Limits
    from app.inputs import arena_presets

    info = engine.model_info(model)
    suggested = json.loads((DEMO / "generation_config.json").read_text())["suggested_depths"]
    assert info.suggested_depths == tuple(suggested) and info.suggested_depths[0] == 1
    choices, default = arena_presets(info.suggested_depths, Limits(max_num_steps=64))
    assert default == [str(d) for d in suggested if d <= 64] + ["adaptive"]
    assert set(default) <= set(choices)
    _, narrow = arena_presets(info.suggested_depths, Limits(max_num_steps=64, max_compare_settings=3))
    assert narrow == ["1", "2", "adaptive"]
    card = (DEMO / "README.md").read_text()
    assert info.depth_table and info.depth_table in card and "| r=32 |" in info.depth_table


def test_later_questions_of_a_long_chat_are_as_right_as_the_first(quick_chats) -> None:
    # The chat outgrows the 256-token context before its last question (the policy then drops old turns).
    assert max(quick_chats["prompt_tokens"]) > 180 and quick_chats["prompt_tokens"][-1] < max(quick_chats["prompt_tokens"])
    acc = [cell["acc"] for cell in quick_chats["by_question"]]
    assert acc[0] == 1.0 and min(acc) >= CHAT["min"], acc


def test_a_chat_reuses_its_cached_prefix_every_turn_but_the_one_after_a_drop(quick_chats) -> None:
    reused, prompt = quick_chats["reused_tokens"], quick_chats["prompt_tokens"]
    growing = [k for k in range(1, len(prompt)) if prompt[k] > prompt[k - 1]]
    assert growing and all(reused[k] >= prompt[k - 1] for k in growing)  # the whole earlier turn came from the cache


def test_trivial_baselines_are_what_their_names_say() -> None:
    problems = demo_tasks.eval_problems("swap", 8, 60)
    base = eval_demo_model.trivial_baselines(problems)
    assert base["parity"] == round(1 / 3, 4)
    assert base["start"] == round(sum(p.question.endswith(f"on {p.answer}. Final?") for p in problems) / 60, 4)
    assert 0 < base["start"] < 1


def test_wrong_parity_counts_orders_an_odd_number_of_swaps_away() -> None:
    rng = random.Random(3)
    problems = [demo_tasks.make_swap(k, rng) for k in (1, 2, 7, 24) for _ in range(30)]
    assert eval_demo_model.wrong_parity([p.answer for p in problems], problems) == 0
    one_more = [demo_tasks.apply_swaps(p.answer, ["12"]) for p in problems]  # one swap more flips the parity
    assert eval_demo_model.wrong_parity(one_more, problems) == 1
    two_more = [demo_tasks.apply_swaps(p.answer, ["12", "23"]) for p in problems]
    assert eval_demo_model.wrong_parity(two_more, problems) == 0  # wrong, but of the right parity
    assert eval_demo_model.wrong_parity(["113", "", "12"] * 40, problems) == 0  # not an order of the cups


def test_merge_refuses_one_tier_run_on_different_problem_counts() -> None:
    def report(n: int, start: float) -> dict:
        row = {"name": "16 swaps", "n": n, "acc": {"4": {"acc": 0.5}}, "baselines": {"parity": 0.3333, "start": start}}
        return {"depths": [4], "seeds": [0], "results": {"swap": {"16": row}}, "multi_turn": []}

    merged = eval_demo_model.merge_reports([report(24, 0.5), report(24, 0.5)])
    assert merged["results"]["swap"]["16"]["n"] == 24
    with pytest.raises(SystemExit, match="tier 16 was run on 24 and on 200 problems"):
        eval_demo_model.merge_reports([report(24, 0.458), report(200, 0.375)])


def test_the_prompt_at_the_answers_depth_is_the_apps_split_prefill(model, tok) -> None:
    questions = [p.question for p in demo_tasks.eval_problems("swap", 8, 6)]
    plain = eval_demo_model.generate_answers(model, tok, questions, 6, seed=3)
    split = eval_demo_model.generate_answers(model, tok, questions, 6, seed=3, prompt_steps=6)
    assert plain[0] == split[0] and plain[2] == split[2]
    shallow = eval_demo_model.generate_answers(model, tok, questions, 6, seed=3, prompt_steps=1,
                                               cache_strategy=eval_demo_model.SPLIT_CACHE)
    assert shallow[0] != plain[0]  # the prompt's depth is its own setting


def test_hops_rows_have_their_own_baselines_and_answers_by_value(model, tok) -> None:
    """The eval's hops tiers: baselines of their own (no parity), accuracy per answer value, the swap columns '–'."""
    problems = demo_tasks.eval_problems("hops", 2, 40)
    base = eval_demo_model.trivial_baselines(problems)
    one = sum(demo_tasks.walk(*demo_tasks.hops_parts(p.question)[::2], 1) == p.answer for p in problems)
    stay = sum(p.answer == demo_tasks.hops_parts(p.question)[2] * 3 for p in problems)
    assert base == {"one_hop": round(one / 40, 4), "stay": round(stay / 40, 4), "chance": round(9 ** -3, 4)}
    assert "one_hop" not in eval_demo_model.trivial_baselines(demo_tasks.eval_problems("hops", 1, 10))
    answers = [p.answer for p in problems]
    first_only = [a[0] + "xx" for a in answers]
    assert eval_demo_model.by_value(first_only, problems) == [1.0, 0.0, 0.0]
    assert eval_demo_model.wrong_parity(answers, problems) == 0  # not a swap problem
    report = {"depths": [1], "seeds": [0], "multi_turn": [],
              "results": eval_demo_model.evaluate(model, tok, ["swap", "hops"], 4, (1,), adaptive=False, seeds=(0,),
                                                  tiers=[4])}
    cell = report["results"]["hops"]["4"]["acc"]["1"]
    assert len(cell["by_value"]) == demo_tasks.HOP_VALUES and "wrong_parity" not in cell
    assert "wrong_parity" in report["results"]["swap"]["4"]["acc"]["1"]
    table = eval_demo_model.markdown_table(report)
    assert all(label in table.splitlines()[0] for label in ("parity guess", "start order", "one hop per value",
                                                             "the start for every value", "chance"))
    hops_line = next(line for line in table.splitlines() if line.startswith("| hops"))
    assert hops_line.count("| – ") == 2  # no parity guess nor start order for a walk
    assert any(line.startswith("4 hops per value: r = 1:") for line in eval_demo_model.findings(report))


def test_stops_baselines_are_the_listed_order_and_chance() -> None:
    problems = demo_tasks.eval_problems("stops", 6, 60)
    listed = sum(p.question.endswith(f"to {' '.join(p.answer)}. Final?") for p in problems)
    assert eval_demo_model.trivial_baselines(problems) == {"listed": round(listed / 60, 4), "chance": round(1 / 24, 4)}


def test_chase_baselines_are_one_link_the_first_root_repeated_and_chance() -> None:
    for tier in (1, 3):
        problems = demo_tasks.eval_problems("chase", tier, 60)
        base = eval_demo_model.trivial_baselines(problems)
        assert set(base) == ({"one_hop"} if tier > 1 else set()) | {"repeat", "chance"}
        assert base["chance"] == 0.125  # one of two roots for each of three values
        assert base["repeat"] == round(sum(p.answer == p.answer[0] * 3 for p in problems) / 60, 4)
        if tier == 3:
            assert base["one_hop"] == 0  # the start is three links deep


def test_the_answer_value_probe_groups_chase_values_by_their_own_walks(model, tok) -> None:
    import probe_answer_values

    problems = demo_tasks.eval_problems("chase", 3, 20)
    for p in problems:
        walks = probe_answer_values.chase_walks(p)
        assert walks[0] == 3 and len(walks) == len(p.answer)  # the start is the deepest chain's far end
        links, here = demo_tasks.chase_parts(p.question)
        for value, n in zip(p.answer, walks):  # n links from the place after the previous value lead to it
            for _ in range(n):
                here = links[here]
            assert here == value and links[value] == value
            here = str((int(value) + 1) % 10)
    table = probe_answer_values.probe(model, tok, "chase", 4, depths=(1, 4))
    assert {group for group, _ in table} == {"first", "later"}
    assert {walk for group, walk in table if group == "first"} == set(demo_tasks.TIERS["chase"])
    assert all(set(row) == {1, 4} and all(0 <= v <= 1 for v in row.values()) for row in table.values())
