"""KV-cache size by strategy, measured on a real run, and the memory accounting of the official model on a
consumer GPU, computed from its real shapes on the meta device (no weights needed).

    python bench/bench_memory.py

1. A random model of the official layout (2/4/2 layers, hidden 128) processes a 1,000-token conversation at r=32
   with the ``full``, ``latest-m4`` and ``compress-s4`` caches; the table gives the bytes each cache holds.
2. Huginn-0125 in nf4 chatting at r=32 with a 4,096-token conversation: weights + KV cache + activations, for the
   full cache and for the shared-slot cache the engine falls back to when the full one does not fit.
3. The memory plan ``engine.load`` makes for Huginn-0125 on 6, 8, 12 and 24 GB cards and a 16 GB CPU machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import HuginnConfig, HuginnForCausalLM  # noqa: E402
from engine.cache import kv_cache_bytes  # noqa: E402
from engine.plan import activation_bytes, plan_memory, weight_bytes  # noqa: E402

OFFICIAL_CONFIG = Path(__file__).resolve().parent.parent.parent / "shared" / "huginn-0125" / "config.json"
STRATEGIES = ("full", "latest-m4", "compress-s4", "latest-m4-compress-s4")


def measured_cache_bytes(tokens: int = 1000, steps: int = 32) -> dict[str, int]:
    torch.manual_seed(0)
    config = HuginnConfig(n_embd=128, n_heads=4, intermediate_size=256, vocab_size=512, block_size=2048)
    model = HuginnForCausalLM(config).eval()
    ids = torch.randint(0, 512, (1, tokens))
    out = {}
    for strategy in STRATEGIES:
        cache = model.new_cache(1, strategy, capacity=tokens)
        with torch.no_grad():
            model(ids, num_steps=steps, init_scale=0.0, past_key_values=cache)
        out[strategy] = cache.nbytes()
        assert out[strategy] == kv_cache_bytes(config, strategy, tokens, steps, 4)
    return out


def main() -> None:
    gb = 1e9
    print("## KV cache over a 1,000-token conversation at r=32 (measured, hidden 128, fp32)")
    measured = measured_cache_bytes()
    full = measured["full"]
    print(f"{'strategy':<24} {'bytes':>12} {'vs full':>8}")
    for strategy, size in measured.items():
        print(f"{strategy:<24} {size:>12,} {size / full:>8.3f}")

    config = HuginnConfig(**json.loads(OFFICIAL_CONFIG.read_text()))
    with torch.device("meta"):
        params = sum(p.numel() for p in HuginnForCausalLM(config).parameters())
    tokens, steps = 4096, 32
    weights = weight_bytes(config, "nf4")
    activations = activation_bytes(config, tokens, 2)
    print(f"\n## Huginn-0125 ({params:,} parameters) in nf4, r={steps}, {tokens:,}-token conversation, bf16 KV")
    print(f"{'cache':<24} {'weights GB':>10} {'KV GB':>8} {'activations GB':>15} {'total GB':>9} {'fits 8 GB':>9}")
    totals = {}
    for strategy in ("full", "latest-m4-compress-s4", "latest-m4-compress-s16"):
        kv = kv_cache_bytes(config, strategy, tokens, steps, 2)
        total = weights + kv + activations
        totals[strategy] = total
        print(f"{strategy:<24} {weights / gb:>10.2f} {kv / gb:>8.2f} {activations / gb:>15.2f} {total / gb:>9.2f} "
              f"{'yes' if total <= 7 * gb else 'no':>9}")
    print(f"summary: 1,000 tokens at r=32 hold {full / 1e6:.1f} MB with the full cache and "
          f"{measured['compress-s4'] / 1e6:.1f} MB with compress-s4 ({full / measured['compress-s4']:.1f}x less); "
          f"Huginn-0125 nf4 at 4,096 tokens needs {totals['full'] / gb:.1f} GB with the full cache and "
          f"{totals['latest-m4-compress-s4'] / gb:.2f} GB with the shared cache the engine falls back to")

    print("\n## The memory plan engine.load makes for Huginn-0125 (free = card size - 0.5 GiB; CPU: RAM available)")
    print(f"{'memory':<22} {'plan'}")
    for label, device, free in [(f"{g} GB card", "cuda", g * 1024**3 - 1024**3 // 2) for g in (6, 8, 12, 24)] + [
            ("CPU 16 GB, bf16 CPU", "cpu", 16 * 10**9), ("CPU 16 GB, no bf16", "cpu", 16 * 10**9)]:
        plan = plan_memory(config, device, free, cpu_bf16="no bf16" not in label)
        print(f"{label:<22} {plan.summary()}")


if __name__ == "__main__":
    main()
