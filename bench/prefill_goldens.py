"""Make tests/goldens/prefill_tiny-1-2-1.json: the authors' prefill with per-position exits
(``forward_with_adaptive_compute``, which runs ``_prefill_with_varied_exit_steps``) on the goldens' tiny checkpoint.

    python bench/prefill_goldens.py --reference-dir /path/to/recurrent-pretraining-checkout

Their code runs from the checkout (``bench/reference.py``), on our weights; only the steps each prompt position took
are stored. Zero initial states (``init_scale=0``) make the runs deterministic; their default cache skips the
entries an earlier position never wrote, as our ``full`` cache does. ``tests/test_prompt_depth.py`` checks our
``prompt_exits`` prefill against these steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference import golden_pair  # noqa: E402

OUT = ROOT / "tests" / "goldens" / "prefill_tiny-1-2-1.json"
CASES = {  # name: (criterion, threshold, their mean_recurrence)
    "kl_1e-3_r32": ("kl", 1e-3, 32),
    "kl_1e-5_r32": ("kl", 1e-5, 32),
    "latent-diff_0.03_r32": ("latent-diff", 0.03, 32),
    "entropy-diff_1e-3_r16": ("entropy-diff", 1e-3, 16),
}


def main() -> None:
    module, _, reference, prompt = golden_pair(__doc__)
    cases = {}
    for name, (criterion, threshold, depth) in CASES.items():
        reference.config.mean_recurrence = depth  # their prefill iterates up to the config's depth
        evaluator = module.get_adaptive_exit_evaluator(reference, criterion, threshold)
        with torch.no_grad():
            out = reference.forward_with_adaptive_compute(prompt, evaluator, init_scale=0.0)
        cases[name] = {"criterion": criterion, "threshold": threshold, "num_steps": depth,
                       "their_steps": [int(s) for s in out.stats["compute_steps"]]}
        print(name, cases[name]["their_steps"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "how": "bench/prefill_goldens.py: the authors' forward_with_adaptive_compute (seal-rg/recurrent-pretraining, "
               "recpre/raven_modeling_minimal.py, run from a checkout through bench/reference.py) on the reference "
               "goldens' tiny-1-2-1 weights, init_scale 0, their default cache; their_steps: the steps each prompt "
               "position took before its exit evaluator fired.",
        "prompt": prompt[0].tolist(), "cases": cases,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
