"""Generation: the authors' goldens through model.generate, and the app-facing stream / compare."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

import engine
from engine import GenerationSettings, PromptError, SettingsError, Summary, TokenEvent
from engine.generate import IncrementalDecoder

from .conftest import cancel_at_core_step

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    return AutoModelForCausalLM.from_pretrained(golden_dir).eval()


def _golden_cases(golden_dir):
    return json.loads((golden_dir / "golden.json").read_text())


@pytest.mark.parametrize("case", ["minimal_r4", "minimal_r8_warm", "adaptive_none_r8", "adaptive_latentdiff",
                                  "adaptive_kl", "adaptive_entropy", "adaptive_argmax", "adaptive_minpkl",
                                  "adaptive_cosine", "adaptive_kl_warm"])
def test_generate_matches_reference_goldens(golden_model, golden_dir, case):
    golden = _golden_cases(golden_dir)
    spec = golden["generation"][case]
    prompt = torch.tensor([golden["prompt"]])
    config = GenerationConfig(max_length=prompt.shape[1] + 16, do_sample=False, return_dict_in_generate=True)
    out = golden_model.generate(prompt, config, **spec["kwargs"])
    assert out.sequences[0, prompt.shape[1]:].tolist() == spec["tokens"]
    if "criterion" in spec["kwargs"]:
        assert len(out.scores) == 16
        steps = [entry[0][0] for entry in out.scores]
        assert steps == spec["steps"]
        values = [entry[1][0] for entry in out.scores]
        assert all(isinstance(v, list) and all(isinstance(x, float) for x in v) for v in values)
    else:
        assert out.scores is None


ADAPTIVE_CASES = ["adaptive_none_r8", "adaptive_latentdiff", "adaptive_kl", "adaptive_entropy", "adaptive_argmax",
                  "adaptive_minpkl", "adaptive_cosine", "adaptive_kl_warm"]


def _generate_case(model, golden_dir, case, strategy):
    golden = _golden_cases(golden_dir)
    prompt = torch.tensor([golden["prompt"]])
    config = GenerationConfig(max_length=prompt.shape[1] + 16, do_sample=False, return_dict_in_generate=True)
    out = model.generate(prompt, config, cache_lookup_strategy=strategy, **golden["generation"][case]["kwargs"])
    return (out.sequences[0, prompt.shape[1]:].tolist(), [e[0][0] for e in out.scores],
            [e[1][0] for e in out.scores])


@pytest.mark.parametrize("case", ADAPTIVE_CASES)
def test_skip_reads_match_the_reference_with_real_early_exits(golden_model, golden_dir, case):
    """The reference's default cache stacks only the entries a token wrote: our "skip" rule, with real exits."""
    spec = _golden_cases(golden_dir)["generation"][case]
    tokens, steps, _ = _generate_case(golden_model, golden_dir, case, "skip")
    assert (tokens, steps) == (spec["tokens"], spec["steps"])
    if case != "adaptive_none_r8":
        assert min(steps) < 16  # tokens really exited early, so some cache entries really are missing


def _first_missing_read(steps):
    """The first generated token whose depth exceeds an earlier position's: it reads an entry that was never written.
    steps[0] is the prompt's depth (every prompt position), steps[t] the depth of the position of token t - 1."""
    return next((t for t in range(1, len(steps)) if steps[t] > min(steps[:t])), None)


@pytest.mark.parametrize("case", ADAPTIVE_CASES)
def test_latest_reads_engage_exactly_where_entries_are_missing(golden_model, golden_dir, case):
    """latest-m4 equals the reference until a token reads a missing entry; from there it reads the deepest entry
    instead of none, so its exit values differ from the skip rule's at that very token."""
    spec = _golden_cases(golden_dir)["generation"][case]
    latest = _generate_case(golden_model, golden_dir, case, "latest-m4")
    skip = _generate_case(golden_model, golden_dir, case, "skip")
    first = _first_missing_read(spec["steps"])
    if first is None:
        assert latest == skip and case == "adaptive_none_r8"
        return
    assert latest[0][:first] == spec["tokens"][:first] and latest[1][:first] == spec["steps"][:first]
    assert repr(latest[2][:first]) == repr(skip[2][:first])  # repr: cosine's first check against zeros is NaN
    if case == "adaptive_argmax":  # its values are counts of unchanged argmaxes: the difference shows later
        assert latest[1][first:] != skip[1][first:]
    else:
        assert repr(latest[2][first]) != repr(skip[2][first])


def test_generate_stops_on_eos_and_honours_max_new_tokens(golden_model, golden_dir):
    prompt = torch.tensor([_golden_cases(golden_dir)["prompt"]])
    config = GenerationConfig(do_sample=False, eos_token_id=11)  # 11 is the second golden token at r=8
    out = golden_model.generate(prompt, config, num_steps=8, init_scale=0.0, max_new_tokens=10)
    assert out[0, prompt.shape[1]:].tolist() == [109, 11]
    out = golden_model.generate(prompt, GenerationConfig(do_sample=False), num_steps=8, init_scale=0.0,
                                max_new_tokens=3)
    assert out.shape[1] == prompt.shape[1] + 3


def test_stream_events_and_summary(tiny):
    model, tok = tiny
    settings = GenerationSettings(num_steps=3, max_new_tokens=12, seed=5, temperature=0.7)
    events = list(engine.stream(model, tok, HELLO, settings))
    tokens, summary = events[:-1], events[-1]
    assert isinstance(summary, Summary) and all(isinstance(e, TokenEvent) for e in tokens)
    ids = [e.token_id for e in tokens if e.token_id >= 0]
    assert len(ids) == 12 and [e.index for e in tokens if e.token_id >= 0] == list(range(12))
    assert "".join(e.text for e in tokens) == summary.text  # with the held-back bytes of the last event
    assert summary.text == tok.decode(ids, skip_special_tokens=True)
    prompt = tok.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert summary.prompt_tokens == len(prompt) == 31
    assert (summary.tokens, summary.stop_reason, summary.steps) == (12, "max_tokens", [3] * 12)
    assert (summary.mean_steps, summary.min_steps, summary.max_steps, summary.core_iterations) == (3.0, 3, 3, 36)
    # 1 prelude + 1 coda + 2 core layers x 3 steps = 8 slots; k and v; 4 heads x 16 dims x 4 bytes; the prompt and
    # 11 fed-back tokens (the last token is never run through the model)
    assert summary.kv_cache_bytes == 8 * 2 * 4 * 16 * 4 * (31 + 11) == 172_032
    assert summary.seed == 5 and summary.settings["num_steps"] == 3 and summary.settings["temperature"] == 0.7
    assert summary.tokens_per_s == pytest.approx(12 / summary.elapsed_s)


def test_seeded_sampling_is_reproducible(tiny):
    model, tok = tiny
    settings = GenerationSettings(num_steps=2, max_new_tokens=10, seed=11, temperature=1.0, top_p=0.9)
    first = list(engine.stream(model, tok, HELLO, settings))[-1]
    second = list(engine.stream(model, tok, HELLO, settings))[-1]
    other = list(engine.stream(model, tok, HELLO, settings.replace(seed=12)))[-1]
    assert first.text == second.text and first.steps == second.steps
    assert other.text != first.text


def test_unseeded_runs_record_their_seed_and_replay(tiny):
    model, tok = tiny
    settings = GenerationSettings(num_steps=2, max_new_tokens=8, temperature=1.0)
    first = list(engine.stream(model, tok, HELLO, settings))[-1]
    replay = list(engine.stream(model, tok, HELLO, settings.replace(seed=first.seed)))[-1]
    assert replay.text == first.text


def test_adaptive_exit_reports_steps_per_token(tiny):
    model, tok = tiny
    settings = GenerationSettings(num_steps=24, criterion="latent-diff", exit_threshold=0.2, max_new_tokens=10,
                                  seed=0, init_scale=0.0)
    events = list(engine.stream(model, tok, HELLO, settings))
    summary, tokens = events[-1], [e for e in events[:-1] if e.token_id >= 0]
    assert [e.steps for e in tokens] == summary.steps and summary.core_iterations == sum(summary.steps)
    exited = [e for e in tokens if e.steps < 24]
    assert len(exited) >= 2  # real early exits
    assert all(e.exit_value < 0.2 for e in exited)  # each exited at its first check under the threshold
    assert all(e.exit_value >= 0.2 for e in tokens if e.steps == 24)


def test_cancel_returns_within_one_core_step(tiny):
    model, tok = tiny
    with cancel_at_core_step(model, 50) as (cancel, calls):
        events = list(engine.stream(model, tok, HELLO, GenerationSettings(num_steps=8, max_new_tokens=100, seed=0),
                                    cancel=cancel))
    summary = events[-1]
    assert summary.stop_reason == "cancelled"
    assert calls["n"] == 50  # no recurrence step ran after the one during which cancel was set
    assert summary.tokens == (49 - 8) // 8  # the prompt but its last token takes one block of 8 steps; then the
    # partial answer keeps every finished token
    assert summary.text == "".join(e.text for e in events[:-1])


def test_stop_strings_end_the_answer_without_showing_them(tiny):
    model, tok = tiny
    base = GenerationSettings(num_steps=2, max_new_tokens=30, seed=3, temperature=1.0)
    full = list(engine.stream(model, tok, HELLO, base))[-1].text
    assert len(full) > 6
    stop = full[3:5]
    cut = list(engine.stream(model, tok, HELLO, base.replace(stop_strings=(stop,))))[-1]
    assert cut.stop_reason == "stop_string"
    assert cut.text == full[:full.index(stop)]


def test_incremental_decoding_handles_multibyte_characters(tiny):
    _, tok = tiny
    text = "naïve 東京 🙂!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # byte-level: multi-byte characters span several tokens
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.add(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_compare_equals_solo_runs(tiny):
    model, tok = tiny
    settings = [
        GenerationSettings(num_steps=1, max_new_tokens=8, seed=1),
        GenerationSettings(num_steps=4, max_new_tokens=8, seed=1),
        GenerationSettings(num_steps=8, max_new_tokens=6, seed=1, warm_start=True),
        GenerationSettings(num_steps=16, criterion="kl", exit_threshold=1e-2, max_new_tokens=8, seed=1),
        GenerationSettings(num_steps=8, criterion="latent-diff", exit_threshold=0.2, max_new_tokens=8, seed=1,
                           warm_start=True),
        GenerationSettings(num_steps=4, max_new_tokens=8, seed=2, temperature=0.9),
        GenerationSettings(num_steps=4, max_new_tokens=8, seed=1, cache_strategy="latest-m4"),
    ]
    results = engine.compare(model, tok, HELLO, settings)
    assert [r.settings for r in results] == settings
    for result in results:
        solo = list(engine.stream(model, tok, HELLO, result.settings))[-1]
        assert result.summary.text == solo.text, result.settings.label()
        assert result.summary.steps == solo.steps, result.settings.label()
        assert [e.steps for e in result.events if e.token_id >= 0] == solo.steps


def test_long_conversations_are_trimmed_with_a_notice(tiny):
    model, tok = tiny
    filler = "x" * 60
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"{i} {filler}"}, {"role": "assistant", "content": filler}]
    messages = [{"role": "system", "content": "Be brief."}] + history + [{"role": "user", "content": "last"}]
    summary = list(engine.stream(model, tok, messages, GenerationSettings(num_steps=1, max_new_tokens=4, seed=0)))[-1]
    assert summary.trimmed_messages > 0
    assert "left out" in summary.notice
    assert summary.prompt_tokens + 4 <= model.config.block_size


def test_a_prompt_that_cannot_fit_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(PromptError, match="context"):
        list(engine.stream(model, tok, [{"role": "user", "content": "y" * 400}], GenerationSettings(num_steps=1)))


@pytest.fixture(scope="module")
def constant(tiny_dir):
    """The tiny checkpoint with the adapter zeroed: every state is 0 whatever the depth, every logit 0, so greedy
    decoding always picks token 0 and never a stop token."""
    model, tok, _ = engine.load(str(tiny_dir))
    with torch.no_grad():
        model.transformer.adapter.weight.zero_()
    return model, tok


def test_context_full_is_reported(constant):
    model, tok = constant
    messages = [{"role": "user", "content": "z" * 200}]
    summary = list(engine.stream(model, tok, messages, GenerationSettings(num_steps=1, max_new_tokens=500,
                                                                         seed=0)))[-1]
    assert summary.stop_reason == "context_full"
    assert summary.prompt_tokens + summary.tokens == model.config.block_size
    assert summary.text == tok.decode([0] * summary.tokens)


def test_end_of_turn_is_reported(constant, monkeypatch):
    model, tok = constant
    monkeypatch.setattr(model.generation_config, "eos_token_id", 0)
    events = list(engine.stream(model, tok, HELLO, GenerationSettings(num_steps=2, max_new_tokens=50, seed=0)))
    summary = events[-1]
    assert (summary.stop_reason, summary.tokens, summary.text) == ("end_of_turn", 1, "")
    assert [e.token_id for e in events[:-1]] == [0]


def test_max_tokens_is_reported(constant):
    model, tok = constant
    summary = list(engine.stream(model, tok, HELLO, GenerationSettings(num_steps=2, max_new_tokens=7, seed=0)))[-1]
    assert (summary.stop_reason, summary.tokens) == ("max_tokens", 7)


def test_speculation_acceptance_counts_every_drafted_token(constant):
    """On a model whose output does not depend on depth, every draft is accepted: 19 tokens after the first, drafted
    3, 3, 3, 3, 3, 3 and 1 at a time."""
    model, tok = constant
    settings = GenerationSettings(num_steps=8, max_new_tokens=20, seed=0, draft_steps=2, lookahead=3)
    summary = list(engine.stream(model, tok, HELLO, settings))[-1]
    assert (summary.tokens, summary.acceptance, summary.stop_reason) == (20, 1.0, "max_tokens")
    assert summary.text == tok.decode([0] * 20)


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty"), ("hello", "non-empty"), ([{"role": "robot", "content": "x"}], "role"),
    ([{"role": "user", "content": 3}], "string content"), ([{"role": "user", "content": "   "}], "empty"),
])
def test_malformed_messages_are_refused(tiny, messages, match):
    model, tok = tiny
    with pytest.raises(PromptError, match=match):
        list(engine.stream(model, tok, messages, GenerationSettings(num_steps=1)))


@pytest.mark.parametrize("field,value", [
    ("num_steps", 0), ("num_steps", 257), ("num_steps", 2.5), ("criterion", "vibes"), ("exit_threshold", -1.0),
    ("min_steps", 40), ("cache_strategy", "bogus"), ("max_new_tokens", 0), ("temperature", -0.1),
    ("top_p", 0.0), ("top_p", 1.5), ("min_p", 2.0), ("repetition_penalty", 0.0), ("seed", -3), ("top_k", -1),
    ("temperature", float("nan")), ("warm_start", "yes"),
    # past a float's range: math.isfinite raises OverflowError on these
    pytest.param("temperature", 10**400, id="temperature-401-digits"),
    pytest.param("exit_threshold", -10**400, id="exit_threshold-401-digits"),
])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(SettingsError) as err:
        GenerationSettings(**{field: value})
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_settings_round_trip_through_dicts():
    settings = GenerationSettings(num_steps=12, criterion="kl", warm_start=True, stop_strings=("END",), seed=4)
    assert GenerationSettings.from_dict(settings.to_dict()) == settings
    assert settings.threshold == engine.DEFAULT_THRESHOLDS["kl"] == 5e-4
    with pytest.raises(SettingsError, match="unknown setting"):
        GenerationSettings.from_dict({"num_stepz": 3})


def test_a_full_cache_that_does_not_fit_is_shared_and_said(tiny, monkeypatch):
    model, tok = tiny
    settings = GenerationSettings(num_steps=8, max_new_tokens=6, seed=0)
    roomy = list(engine.stream(model, tok, HELLO, settings))[-1]
    assert roomy.notice is None and roomy.cache_strategy == "full"
    monkeypatch.setattr(engine.generate, "memory_budget", lambda device: 10_000)
    tight = list(engine.stream(model, tok, HELLO, settings))[-1]
    assert tight.cache_strategy == "latest-m4-compress-s2" and tight.settings["cache_strategy"] is None
    assert "shared across recurrence steps" in tight.notice
    assert tight.kv_cache_bytes < roomy.kv_cache_bytes


@pytest.mark.parametrize("init_scale", [0.0, 1.0])
def test_speculative_decoding_reproduces_plain_greedy(tiny, init_scale):
    model, tok = tiny
    plain_settings = GenerationSettings(num_steps=8, max_new_tokens=20, seed=3, init_scale=init_scale)
    plain = list(engine.stream(model, tok, HELLO, plain_settings))[-1]
    events = list(engine.stream(model, tok, HELLO, plain_settings.replace(draft_steps=2, lookahead=3)))
    spec = events[-1]
    assert spec.text == plain.text and spec.tokens == plain.tokens == 20
    assert spec.acceptance < 1.0 and plain.acceptance is None  # some drafts were wrong, and still the same output
    assert spec.steps == [8] * spec.tokens


def test_speculative_settings_are_checked():
    with pytest.raises(SettingsError, match="draft_steps"):
        GenerationSettings(num_steps=8, draft_steps=2, temperature=0.7)
    with pytest.raises(SettingsError, match="draft_steps"):
        GenerationSettings(num_steps=8, draft_steps=8)
    with pytest.raises(SettingsError, match="draft_steps"):
        GenerationSettings(num_steps=8, draft_steps=2, criterion="kl")


def test_an_adaptive_answer_that_does_not_fit_shares_its_cache_too(tiny, monkeypatch):
    """Issue 21, bug 3: the memory fallback fitted only the full cache; latest-m4 (adaptive exit's) was never
    checked."""
    model, tok = tiny
    settings = GenerationSettings(num_steps=8, criterion="kl", max_new_tokens=6, seed=0)
    roomy = list(engine.stream(model, tok, HELLO, settings))[-1]
    assert roomy.notice is None and roomy.cache_strategy == "latest-m4"
    monkeypatch.setattr(engine.generate, "memory_budget", lambda device: 10_000)
    tight = list(engine.stream(model, tok, HELLO, settings))[-1]
    assert tight.cache_strategy == "latest-m4-compress-s2" and "shared across recurrence steps" in tight.notice
    assert tight.kv_cache_bytes < roomy.kv_cache_bytes


def test_adaptive_settings_read_the_latest_entry_by_default():
    from engine.generate import cache_strategy_for

    assert cache_strategy_for(GenerationSettings()) == "full"
    assert cache_strategy_for(GenerationSettings(criterion="kl")) == "latest-m4"
    assert cache_strategy_for(GenerationSettings(criterion="kl", cache_strategy="full")) == "full"
    assert cache_strategy_for(GenerationSettings().replace(criterion="cosine")) == "latest-m4"


def test_a_setting_derived_from_a_fixed_one_gets_its_own_cache(tiny):
    """Issue 21, bug 1: the arena's adaptive column was the panel's fixed-depth settings with a criterion, and the
    derived cache strategy ("full") rode along; the same prompt and seed then exited at other steps than the chat."""
    model, tok = tiny
    chat = GenerationSettings(num_steps=8, criterion="kl", exit_threshold=1e-2, max_new_tokens=8, seed=1)
    derived = GenerationSettings(num_steps=8, max_new_tokens=8, seed=1).replace(criterion="kl", exit_threshold=1e-2)
    assert derived == chat
    a, b = list(engine.stream(model, tok, HELLO, chat))[-1], list(engine.stream(model, tok, HELLO, derived))[-1]
    assert a.cache_strategy == b.cache_strategy == "latest-m4" and a.steps == b.steps


def test_generate_can_keep_the_prompt_at_full_depth(golden_model, golden_dir):
    prompt = torch.tensor([_golden_cases(golden_dir)["prompt"]])
    config = GenerationConfig(max_length=prompt.shape[1] + 4, do_sample=False, return_dict_in_generate=True)
    kwargs = dict(num_steps=16, init_scale=0.0, criterion="kl", exit_threshold=5e-2)
    early = golden_model.generate(prompt, config, **kwargs)
    full = golden_model.generate(prompt, config, do_not_exit_in_prefill=True, **kwargs)
    assert early.scores[0][0][0] < 16 and full.scores[0][0][0] == 16
    with pytest.raises(TypeError, match="unsupported keyword arguments: not_a_real_option"):
        golden_model.generate(prompt, config, not_a_real_option=1)


def test_model_card_style_calls(tiny):
    """The model card's snippets: a BatchEncoding from apply_chat_template, cache_kwargs, the explicit adaptive entry
    point, and a TextStreamer."""
    from transformers import TextStreamer

    model, tok = tiny
    encoded = tok.apply_chat_template(HELLO, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    config = GenerationConfig(max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                              stop_strings=["<|end_text|>", "<|end_turn|>"])
    plain = model.generate(encoded, config, tokenizer=tok, num_steps=4, init_scale=0.0)
    assert plain.sequences.shape[1] > encoded["input_ids"].shape[1]
    seen = []

    class Recorder(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            seen.append(text)

    out = model.generate_with_adaptive_compute(encoded["input_ids"], config, num_steps=8, tokenizer=tok,
                                               streamer=Recorder(tok), continuous_compute=False, criterion="kl",
                                               exit_threshold=5e-4, cache_kwargs={"lookup_strategy": "latest-m4"})
    assert len(out.scores) == out.sequences.shape[1] - encoded["input_ids"].shape[1]
    assert out.cache.strategy.read == "latest-m4"
    assert "".join(seen) == tok.decode(out.sequences[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    again = model.generate_minimal(encoded["input_ids"], config, num_steps=4, init_scale=0.0, tokenizer=tok)
    assert torch.equal(again.sequences, plain.sequences)


def test_speculative_decoding_honours_the_repetition_penalty(tiny):
    model, tok = tiny
    base = GenerationSettings(num_steps=8, max_new_tokens=20, seed=3, init_scale=0.0)
    penalised = base.replace(repetition_penalty=1.8)
    plain = list(engine.stream(model, tok, HELLO, penalised))[-1]
    unpenalised = list(engine.stream(model, tok, HELLO, base))[-1]
    assert plain.text != unpenalised.text  # the penalty changes this answer, so the comparison below means something
    spec = list(engine.stream(model, tok, HELLO, penalised.replace(draft_steps=2, lookahead=3)))[-1]
    assert spec.text == plain.text and spec.tokens == plain.tokens


def test_speculative_cancel_returns_within_one_core_step(tiny):
    model, tok = tiny
    settings = GenerationSettings(num_steps=8, max_new_tokens=100, seed=0, draft_steps=2, lookahead=4)
    with cancel_at_core_step(model, 30) as (cancel, calls):
        summary = list(engine.stream(model, tok, HELLO, settings, cancel=cancel))[-1]
    assert summary.stop_reason == "cancelled"
    assert calls["n"] == 30


def test_generate_stop_strings_match_the_whole_string(tiny):
    model, tok = tiny
    encoded = tok.apply_chat_template(HELLO, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt = encoded["input_ids"]
    kwargs = dict(tokenizer=tok, num_steps=4, init_scale=0.0)
    plain = model.generate(prompt, GenerationConfig(max_new_tokens=30, do_sample=False), **kwargs)
    new = plain[0, prompt.shape[1]:].tolist()
    first = tok.decode(new[:1])
    # A stop string that starts like the answer but never occurs must not stop it.
    unmatched = model.generate(prompt, GenerationConfig(max_new_tokens=30, do_sample=False,
                                                        stop_strings=[first + "\u00a7\u00a7"]), **kwargs)
    assert torch.equal(unmatched, plain)
    # A three-token stop string stops right after its last token, and only there.
    j = next(j for j in range(1, len(new) - 3) if tok.decode(new[j:j + 3]).isascii()
             and tok.decode(new[j:j + 3]).isprintable() and tok.decode(new[j:j + 3]) not in tok.decode(new[:j + 2]))
    stop = tok.decode(new[j:j + 3])
    cut = model.generate(prompt, GenerationConfig(max_new_tokens=30, do_sample=False, stop_strings=[stop]), **kwargs)
    assert cut[0, prompt.shape[1]:].tolist() == new[:j + 3]


class _CountingTokenizer:
    """The test tokenizer, counting how often the chat template is rendered."""

    def __init__(self, tok):
        self.tok, self.renders = tok, 0

    def apply_chat_template(self, *args, **kwargs):
        self.renders += 1
        return self.tok.apply_chat_template(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)


def test_a_long_history_of_empty_messages_is_trimmed_in_few_renders(tiny):
    """2,000 empty messages used to be re-rendered once per dropped message (quadratic: 50 s)."""
    from engine.generate import build_prompt

    _, tok = tiny
    history = [{"role": ("user", "assistant")[i % 2], "content": ""} for i in range(2_000)]
    messages = [{"role": "system", "content": "Be brief."}] + history + [{"role": "user", "content": "last"}]
    counting = _CountingTokenizer(tok)
    ids, dropped = build_prompt(counting, messages, context=256, reserve=16)
    assert counting.renders <= 2 + 11  # the whole history, the last message alone, then a bisection of 1,000
    assert len(ids) + 16 <= 256
    kept = len(messages) - 1 - dropped
    expected = tok.apply_chat_template([messages[0]] + messages[len(messages) - kept:], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
    assert ids == expected
    one_more = tok.apply_chat_template([messages[0]] + messages[len(messages) - kept - 1:], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
    assert len(one_more) + 16 > 256  # the fewest messages were dropped
    assert dropped >= 2_000 - engine.MAX_HISTORY_MESSAGES


def test_history_beyond_the_cap_is_dropped_even_when_it_would_fit(tiny):
    from engine.generate import build_prompt

    _, tok = tiny
    empty, last = {"role": "user", "content": ""}, {"role": "user", "content": "x"}
    messages = [empty] * (engine.MAX_HISTORY_MESSAGES + 5) + [last]
    ids, dropped = build_prompt(tok, messages, context=10**7, reserve=16)
    assert dropped == 6
    assert ids == tok.apply_chat_template(messages[6:], add_generation_prompt=True, tokenize=True, return_dict=False)
