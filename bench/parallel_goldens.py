"""Make tests/goldens/parallel_tiny-1-2-1.json: the authors' ``generate_diffusion_style`` on the goldens' tiny
checkpoint, in the settings where their sampler and ours should agree.

    python bench/parallel_goldens.py --reference-dir /path/to/recurrent-pretraining-checkout

Their code runs from the checkout (``bench/reference.py``), on our weights; nothing of it is stored, only the
tokens it returned. The settings: greedy, zero initial states (``init_scale=0``), no noise, latent-diff freezing at
0.03, headway 1, window 128, r=32, where the tiny checkpoint's states have converged (at r=8 the two samplers part:
see docs/engine.md, "The parallel sampler"). Each case also records what our sampler gives, and the file says how
it was made; ``tests/test_parallel.py`` checks our sampler against their tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference import golden_pair  # noqa: E402
from engine import GenerationSettings  # noqa: E402
from engine.decode import RowPlan, decode  # noqa: E402
from engine.parallel import ParallelParams, parallel_decode  # noqa: E402

OUT = ROOT / "tests" / "goldens" / "parallel_tiny-1-2-1.json"
NEW_TOKENS = 16
# case: (num_steps, inner steps, their cache, our cache, EMA)
CASES = {
    "r32_inner4_full": (32, 4, "full", "full", 0.0),
    "r32_inner4_ema": (32, 4, "full", "full", 0.1),
    "r32_inner32_full": (32, 32, "full", "full", 0.0),
    "r32_inner4_shared": (32, 4, "latest-m4-compress-s2", "compress-layer", 0.0),
    "r8_inner8_full": (8, 8, "full", "full", 0.0),  # not converged at r=8: recorded to show where they part
}


def theirs(model, prompt: torch.Tensor, r: int, inner: int, cache: str, ema: float) -> tuple[list[int], int]:
    config = GenerationConfig(max_length=prompt.shape[1] + NEW_TOKENS, do_sample=False, return_dict_in_generate=True,
                              eos_token_id=None)
    with torch.no_grad():
        out = model.generate_diffusion_style(
            prompt, config, init_scale=0.0, cache_lookup_strategy=cache, ema_embeds=ema, state_noise_mixing=0.0,
            inner_recurrence=inner, num_steps=r, freeze_strategy="latent-diff", exit_t=0.03, headway=1,
            max_wavefront=128, max_diffusion_steps=400)
    return out.sequences[0, prompt.shape[1]:].tolist(), int(out.scores["diffusion_steps"])


def ours(model, prompt: torch.Tensor, r: int, inner: int, cache: str, ema: float) -> list[int]:
    plan = RowPlan(num_steps=r, init_scale=0.0, max_new_tokens=NEW_TOKENS, seed=0, state_seed=0)
    params = ParallelParams.of(GenerationSettings(sampler="parallel", num_steps=r, inner_steps=inner, embed_ema=ema,
                                                  freeze_threshold=0.03, state_noise=0.0, headway=1, max_window=128))
    steps = parallel_decode(model, prompt, plan, params, cache=model.new_cache(1, cache, capacity=64))
    return [s.tokens[0] for s in steps]


def main() -> None:
    _, model, reference, prompt = golden_pair(__doc__)
    cases = {}
    for name, (r, inner, their_cache, our_cache, ema) in CASES.items():
        tokens, steps = theirs(reference, prompt, r, inner, their_cache, ema)
        plan = RowPlan(num_steps=r, init_scale=0.0, max_new_tokens=NEW_TOKENS, seed=0, state_seed=0)
        cases[name] = {
            "num_steps": r, "inner_steps": inner, "their_cache": their_cache, "our_cache": our_cache, "ema": ema,
            "their_tokens": tokens, "their_diffusion_steps": steps,
            "our_tokens": ours(model, prompt, r, inner, our_cache, ema),
            "sequential_tokens": [s.tokens[0] for s in decode(model, prompt, [plan], "full")],
        }
        print(name, "agree" if cases[name]["our_tokens"] == tokens[:NEW_TOKENS] else "differ")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "how": "bench/parallel_goldens.py: the authors' generate_diffusion_style (seal-rg/recurrent-pretraining, "
               "recpre/raven_modeling_minimal.py, run from a checkout through bench/reference.py) on the "
               "reference goldens' tiny-1-2-1 weights; greedy, init_scale 0, state_noise_mixing 0, latent-diff "
               "0.03, headway 1, max_wavefront 128, max_length prompt + 16. their_tokens is what it returned "
               "(it may return more than 16); our_tokens and sequential_tokens are ours at the same settings.",
        "prompt": prompt[0].tolist(), "new_tokens": NEW_TOKENS, "cases": cases,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
