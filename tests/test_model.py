"""The model against the authors' outputs, the official layout, and the forward-pass contract."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from engine import HuginnConfig, HuginnForCausalLM
from engine.model import split_num_steps

from .conftest import tiny_config

PARITY_TOL = 1e-5


@pytest.fixture(scope="module")
def golden(golden_dir):
    model = AutoModelForCausalLM.from_pretrained(golden_dir).eval()
    return model, load_file(golden_dir / "golden.safetensors")


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_logits_match_reference(golden, steps):
    model, g = golden
    with torch.no_grad():
        out = model(g["input_ids"], num_steps=steps, init_scale=0.0)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, g[f"logits_r{steps}"], atol=PARITY_TOL, rtol=0)


def test_latents_and_given_states_match_reference(golden):
    model, g = golden
    with torch.no_grad():
        latents = model(g["input_ids"], num_steps=4, init_scale=0.0).latent_states
        from_states = model(g["input_ids"], num_steps=4, input_states=g["input_states"]).logits
    torch.testing.assert_close(latents, g["latents_r4"], atol=PARITY_TOL, rtol=0)
    torch.testing.assert_close(from_states, g["logits_r4_states"], atol=PARITY_TOL, rtol=0)


def test_checkpoint_loads_every_tensor_and_ties_embeddings(golden, golden_dir):
    model, _ = golden
    stored = load_file(golden_dir / "model.safetensors")
    state = model.state_dict()
    assert set(state) == set(stored)
    for name, tensor in stored.items():
        if name != "freqs_cis":
            assert torch.equal(state[name], tensor), name
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_official_config_uses_local_classes_despite_auto_map(official_dir):
    raw = json.loads((official_dir / "config.json").read_text())
    assert "auto_map" in raw
    config = AutoConfig.from_pretrained(official_dir)
    assert type(config) is HuginnConfig
    assert (config.head_dim, config.num_key_value_heads, config.effective_expected_depth) == (96, 55, 132)
    assert config.init_values["embed_scale"] == pytest.approx(72.6636084983398)


def test_full_official_model_on_meta_device(official_dir):
    config = AutoConfig.from_pretrained(official_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert isinstance(model, HuginnForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == 3_564_976_800
    index = json.loads((official_dir / "model.safetensors.index.json").read_text())
    assert set(model.state_dict()) == set(index["weight_map"])
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes["transformer.adapter.weight"] == (5280, 10560)
    assert shapes["transformer.core_block.3.attn.qk_bias"] == (2, 1, 55, 96)
    assert shapes["freqs_cis"] == (1, 4096, 1, 48, 2)


def test_num_steps_forms():
    config = tiny_config()
    assert split_num_steps(5, config, training=False) == (5, 0)
    assert split_num_steps(torch.tensor(5), config, training=False) == (5, 0)
    assert split_num_steps((3, 2), config, training=False) == (3, 2)
    assert split_num_steps(None, config, training=False) == (config.mean_recurrence, 0)
    for bad in (0, -1, (1, 2, 3), (0, 0)):
        with pytest.raises(ValueError, match="num_steps"):
            split_num_steps(bad, config, training=False)


def test_pair_steps_equal_plain_steps_and_train_only_last_k():
    torch.manual_seed(0)
    model = HuginnForCausalLM(tiny_config())
    ids = torch.randint(0, 256, (1, 10))
    plain = model(ids, num_steps=5, init_scale=0.0).logits
    pair = model(ids, num_steps=(3, 2), init_scale=0.0, labels=ids)
    torch.testing.assert_close(plain, pair.logits)
    pair.loss.backward()
    expected = torch.nn.functional.cross_entropy(pair.logits.view(-1, pair.logits.shape[-1]), ids.view(-1))
    assert pair.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.transformer.core_block[0].attn.Wqkv.weight.grad is not None
    assert (pair.num_steps_no_grad, pair.num_steps_with_grad) == (3, 2)


def test_training_mode_samples_depth_from_the_poisson_lognormal():
    model = HuginnForCausalLM(tiny_config(mean_recurrence=8, mean_backprop_depth=4)).train()
    ids = torch.randint(0, 256, (1, 4))
    torch.manual_seed(0)
    totals = []
    for _ in range(60):
        out = model(ids)
        assert out.num_steps_with_grad <= 4
        totals.append(out.num_steps_no_grad + out.num_steps_with_grad)
    assert len(set(totals)) > 3
    assert 5 < sum(totals) / len(totals) < 12


def test_initial_state_scale():
    torch.manual_seed(0)
    model = HuginnForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        a = model(ids, num_steps=3, init_scale=0.0).logits
        b = model(ids, num_steps=3, init_scale=0.0).logits
        c = model(ids, num_steps=3, init_scale=1.0).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    like = torch.zeros(2, 4000, 64)
    state = model.initial_state(like, scale=1.0)
    sigma = (2 / 5) ** 0.5
    assert state.std().item() == pytest.approx(sigma * 0.986, rel=0.05)  # truncation at 3 sigma shrinks the std
    assert state.abs().max().item() <= 3 * sigma + 1e-4


def test_rope_table_stays_fp32_in_bf16():
    torch.manual_seed(0)
    model = HuginnForCausalLM(tiny_config()).to(torch.bfloat16).eval()
    rotations = model.rotations(slice(0, 8))
    assert rotations.dtype == torch.float32 and rotations.shape == (8, model.config.head_dim // 2, 2)  # (cos, sin)
    assert model.freqs_cis.dtype == torch.bfloat16  # the stored buffer was cast, and is not what rope uses
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        logits = model(ids, num_steps=2, init_scale=0.0).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        HuginnConfig(n_embd=65, n_heads=4)
    with pytest.raises(ValueError, match="n_layers"):
        HuginnConfig(n_layers=5, n_layers_in_prelude=1, n_layers_in_recurrent_block=2, n_layers_in_coda=1)


def test_context_limit_is_enforced():
    model = HuginnForCausalLM(tiny_config(block_size=16)).eval()
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 17, dtype=torch.long), num_steps=1)
