"""Optional torch.compile of the recurrence: each layer's cache-free halves (norms, projections, RoPE, MLP) become
fused kernels, with CUDA graphs on a GPU. Attention and the KV cache stay eager, because their shapes grow with
every token. If compilation is unavailable (no C++ compiler, an unsupported backend), the first call falls back to
the eager code with a warning, so the model always runs.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


def _with_fallback(eager: Callable, compiled: Callable, name: str) -> Callable:
    state = {"fn": compiled}

    def call(*args, **kwargs):
        try:
            return state["fn"](*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure must leave a working model
            if state["fn"] is eager:
                raise
            log.warning("torch.compile failed for %s (%s: %s); running it eagerly", name, type(err).__name__, err)
            state["fn"] = eager
            return eager(*args, **kwargs)

    return call


def compile_model(model, mode: str | None = None) -> None:
    """Compile every layer's ``begin`` / ``end`` halves in place. ``mode`` defaults to "reduce-overhead" (CUDA
    graphs) on a GPU and to the default mode on the CPU."""
    device = model.transformer.wte.weight.device
    mode = mode or ("reduce-overhead" if device.type == "cuda" else "default")
    blocks = [*model.transformer.prelude, *model.transformer.core_block, *model.transformer.coda]
    for i, block in enumerate(blocks):
        for half in ("begin", "end"):
            eager = getattr(block, half)
            setattr(block, half, _with_fallback(eager, torch.compile(eager, mode=mode), f"layer {i} {half}"))
    model.compiled = mode
