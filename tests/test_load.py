"""engine.load: local checkpoints, bitsandbytes int8 / nf4 on the CPU, and clear errors for bad input."""

import gc
import json
import logging

import pytest
import torch
from safetensors import safe_open

import engine
from engine import LoadError
from engine.load import _is_out_of_memory, resolve_auto_model
from engine.plan import HOST_RESERVE_BYTES, plan_memory, weight_bytes

from .conftest import make_checkpoint

# Weight-only quantization of a tiny model at its own init: the relative error of the logits stays near the
# weights' own quantization error (measured at r=4: 1.3% for int8, 12% for nf4 with blocks of 32), slightly grown
# by the recurrence. The bounds leave room for that growth but catch a broken path (errors of order 1).
RELATIVE_ERROR = {"int8": 0.05, "nf4": 0.3}


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    # Wide enough that the linear layers dominate the footprint, and a multiple of 32 as bitsandbytes wants.
    return make_checkpoint(tmp_path_factory.mktemp("wide") / "model", weight_std=None, n_embd=256, n_heads=4,
                           intermediate_size=512)


def _logits(model, steps=4):
    ids = torch.arange(3, 40).view(1, -1)
    with torch.no_grad():
        return model(ids, num_steps=steps, init_scale=0.0).logits


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_bitsandbytes_on_cpu_is_close_and_smaller(wide_dir, quantization):
    full, _, _ = engine.load(str(wide_dir))
    quant, tok, report = engine.load(str(wide_dir), quantization=quantization)
    reference, approx = _logits(full), _logits(quant)
    error = ((approx - reference).norm() / reference.norm()).item()
    assert error < RELATIVE_ERROR[quantization], error
    assert quant.get_memory_footprint() < 0.6 * full.get_memory_footprint()
    info = engine.model_info(quant, report)
    assert info.quantization == quantization and info.device == "cpu"
    layer = quant.transformer.core_block[0].attn.Wqkv
    assert type(layer).__name__ == ("Linear8bitLt" if quantization == "int8" else "Linear4bit")
    if quantization == "nf4":
        assert layer.weight.quant_state.blocksize == 32
    summary = list(engine.stream(quant, tok, [{"role": "user", "content": "hi"}],
                                 engine.GenerationSettings(num_steps=2, max_new_tokens=3, seed=0)))[-1]
    assert summary.tokens >= 1


def test_load_returns_model_and_tokenizer(tiny_dir):
    model, tok, _ = engine.load(str(tiny_dir), device="cpu")
    assert isinstance(model, engine.HuginnForCausalLM) and not model.training
    assert tok.chat_template
    info = engine.model_info(model)
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.dtype == "float32" and info.memory_bytes > 0 and info.num_steps_default == 8


def test_missing_path(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        engine.load(str(tmp_path / "nowhere"))


def test_folder_without_config(tmp_path):
    with pytest.raises(LoadError, match="no config.json"):
        engine.load(str(tmp_path))


def test_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(LoadError, match="'llama' model, not a recurrent-depth Huginn model"):
        engine.load(str(tmp_path))


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LoadError, match="cannot read"):
        engine.load(str(tmp_path))


def test_missing_weights(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(LoadError, match="cannot load the weights"):
        engine.load(str(tmp_path))


def test_unknown_quantization_and_device(tiny_dir):
    with pytest.raises(LoadError, match="unknown quantization 'int3'"):
        engine.load(str(tiny_dir), quantization="int3")
    with pytest.raises(LoadError, match="unknown device 'tpu'"):
        engine.load(str(tiny_dir), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LoadError, match="no CUDA GPU"):
            engine.load(str(tiny_dir), device="cuda")


def test_offline_hub_id_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match="offline") as err:
        engine.load("nobody-here/no-such-huginn-model")
    assert "--model" in str(err.value)


# ---- memory plan, memory maps, fallbacks ------------------------------------------------------------------------

def _mapped(folder) -> list[str]:
    """Lines of /proc/self/maps that map a .safetensors file of ``folder``."""
    root = str(folder.resolve())
    return [line for line in open("/proc/self/maps") if root in line and ".safetensors" in line]


def test_transformers_alone_keeps_the_checkpoint_mapped(wide_dir):
    """The probe of the next test sees the problem it guards against: a plain CPU load keeps views of the file."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(wide_dir, dtype=torch.float32, device_map={"": "cpu"})
    assert _mapped(wide_dir)
    del model
    gc.collect()


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "nf4"])
def test_nothing_stays_mapped_from_the_checkpoint(wide_dir, fmt):
    model, _, report = engine.load(str(wide_dir), quantization=fmt)
    gc.collect()
    assert _mapped(wide_dir) == []
    with safe_open(str(wide_dir / "model.safetensors"), "pt") as f:
        saved = f.get_tensor("freqs_cis")
    assert torch.equal(model.freqs_cis.float(), saved.to(model.freqs_cis.dtype).float())
    info = engine.model_info(model, report)
    assert info.quantization == fmt and info.plan.startswith(fmt + ",")


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "nf4"])
def test_plan_weight_bytes_match_the_loaded_model(wide_dir, fmt):
    model, _, _ = engine.load(str(wide_dir), quantization=fmt)
    planned = weight_bytes(model.config, fmt, "cpu")
    measured = engine.model_info(model).memory_bytes
    assert abs(planned - measured) <= 0.01 * measured, (planned, measured)


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_quantized_parameter_count_equals_the_unquantized_one(wide_dir, fmt):
    full, _, _ = engine.load(str(wide_dir), quantization="fp32")
    quant, _, _ = engine.load(str(wide_dir), quantization=fmt)
    assert engine.model_info(quant).parameters == engine.model_info(full).parameters
    assert engine.model_info(full).parameters == sum(p.numel() for p in full.parameters())


def _cap(folder, smaller: tuple[str, str], larger: tuple[str, str]) -> int:
    """A memory cap between what ``smaller`` needs and what ``larger`` needs at the least (with the shared KV
    cache, which the plan counts when the full one does not fit)."""
    config = engine.HuginnConfig.from_pretrained(folder)
    roomy = plan_memory(config, "cpu", 10**12)
    assert roomy.format == "fp32"
    shared = plan_memory(config, "cpu", 10**12,
                         cache_strategy=f"latest-m4-compress-s{config.n_layers_in_recurrent_block}")
    low = getattr(roomy.cost(smaller[0]), smaller[1])
    high = min(getattr(plan.cost(larger[0]), larger[1]) for plan in (roomy, shared))
    assert low < high
    return HOST_RESERVE_BYTES + (low + high) // 2


def test_auto_plans_a_smaller_format_when_memory_is_short(wide_dir):
    model, _, report = engine.load(str(wide_dir), max_memory=_cap(wide_dir, ("bf16", "total"), ("fp32", "total")))
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    info = engine.model_info(model, report)
    assert info.quantization == "bf16" and "fp32 needs" in report.plan.reason


def test_explicit_format_that_cannot_fit_names_the_need_and_the_next_format(wide_dir):
    with pytest.raises(LoadError, match=r"not enough host memory: fp32 needs .* for its weights .* bf16 fits "
                                        r".*--quantization bf16"):
        engine.load(str(wide_dir), quantization="fp32",
                    max_memory=_cap(wide_dir, ("bf16", "weights"), ("fp32", "weights")))
    with pytest.raises(LoadError, match="no smaller format fits"):
        engine.load(str(wide_dir), quantization="nf4", max_memory="1 KB")
    with pytest.raises(LoadError, match="cannot read the memory size"):
        engine.load(str(wide_dir), max_memory="lots")


def test_bitsandbytes_warnings_at_most_once(wide_dir, caplog):
    model, tok, _ = engine.load(str(wide_dir), quantization="int8")
    with caplog.at_level(logging.WARNING):
        list(engine.stream(model, tok, [{"role": "user", "content": "hi"}],
                           engine.GenerationSettings(num_steps=4, max_new_tokens=4, seed=0)))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("bitsandbytes")]
    assert len(messages) == len(set(messages))


def test_a_real_allocation_failure_counts_as_out_of_memory():
    """The errors load() turns into a fallback (auto) or a LoadError naming the next format: torch's CPU allocator
    refusing a request, as loading does when the host runs out."""
    with pytest.raises(RuntimeError) as err:
        torch.empty(1 << 60, dtype=torch.uint8)
    assert _is_out_of_memory(err.value)
    assert not _is_out_of_memory(RuntimeError("size mismatch for transformer.wte.weight"))


def test_auto_model_offline_says_so(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub reads its environment at import time: set both, and an empty cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    name, note = resolve_auto_model(gpu_free_bytes=8 * 1024**3)
    assert name == str(engine.DEMO_MODEL)
    assert "not reachable" in note and "HF_HUB_OFFLINE" in note and "hf download" in note
    name, note = resolve_auto_model(gpu_free_bytes=3 * 1024**3)
    assert name == str(engine.DEMO_MODEL) and "needs" in note


@pytest.mark.slow  # compiles the layers and the core step: ~20 s on 2 cores with inductor's cache warm, ~60 s cold
def test_load_with_compile_answers_through_the_captured_core_step(tiny_dir):
    from app.slot import ModelSlot

    eager, tok, _ = engine.load(str(tiny_dir), device="cpu")
    compiled, _, _ = engine.load(str(tiny_dir), device="cpu", compile=True)
    report = compiled.compile_report
    assert report.mode == "default" and not hasattr(eager, "compile_report")  # the default mode on the CPU
    settings = engine.GenerationSettings(num_steps=8, criterion="entropy-diff", max_new_tokens=6, seed=0)
    pool, messages = engine.PromptCache(), []
    for question in ("hello there", "and then?"):  # the second turn reuses the first's static cache (prompt cache)
        messages = messages + [{"role": "user", "content": question}]
        a = list(engine.stream(eager, tok, messages, settings))
        b = list(engine.stream(compiled, tok, messages, settings, prompt_cache=pool))
        assert [e.token_id for e in a[:-1]] == [e.token_id for e in b[:-1]] and a[-1].text == b[-1].text
        assert [e.steps for e in a[:-1]] == [e.steps for e in b[:-1]]
        messages = messages + [{"role": "assistant", "content": a[-1].text}]
    assert b[-1].reused_tokens > 0
    assert report.captured and report.fallbacks == {}  # the app's path (stream) decoded through the captured step
    assert report.eager_core_steps["dynamic cache"] == 0  # every cache it used, reused ones included, was static
    slot = ModelSlot(compiled, tok, compile=True)  # the model panel loads the next model the same way
    slot.load(str(tiny_dir), "auto")
    assert slot.pair[0].compile_report is not report and slot.pair[0].compile_report.mode == "default"


def test_what_load_did_is_returned_not_kept_on_the_model(tiny_dir):
    """Issue 21: the plan, the source, the format and the cache note were attributes stuck on the model."""
    model, tok, report = engine.load(str(tiny_dir), device="cpu")
    assert isinstance(report, engine.LoadReport) and report.source == str(tiny_dir)
    assert report.quantization == "fp32" and report.plan.format == "fp32" and report.weights.seconds > 0
    for name in ("memory_plan", "source", "quantization", "load_notice", "auto_note", "weights_cache", "load_seconds"):
        assert name not in vars(model), name
    info = engine.model_info(model, report)
    assert info.name == str(tiny_dir) and info.plan == report.plan.summary()
    bare = engine.model_info(model)  # a model built without engine.load
    assert bare.quantization == "none" and bare.plan == "" and bare.name == model.config.name_or_path


def test_a_relative_or_home_path_is_reported_as_its_folder(tiny_dir, monkeypatch):
    """A model given as `./ckpt` or `~/x` is named by its folder on the page, in exports and in /v1/models, and such
    a server's model id is one another page takes as its remote engine."""
    from app.remote import MODEL_ID
    from app.slot import public_name

    monkeypatch.chdir(tiny_dir.parent)
    *_, report = engine.load(f"./{tiny_dir.name}", device="cpu")
    assert report.source == str(tiny_dir.resolve())
    assert public_name(report.source) == tiny_dir.name
    monkeypatch.setenv("HOME", str(tiny_dir.parent))
    *_, report = engine.load(f"~/{tiny_dir.name}", device="cpu")
    assert public_name(report.source) == tiny_dir.name
    for name, shown in (("/models/my model", "my-model"), ("tomg-group-umd/huginn-0125", "tomg-group-umd/huginn-0125"),
                        ("/models/<i>x", "model--i-x")):
        assert public_name(name) == shown and MODEL_ID.match(shown), name
