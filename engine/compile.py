"""Optional torch.compile of the recurrence: each layer's cache-free halves (norms, projections, RoPE, MLP) become
fused kernels, with CUDA graphs on a GPU. Attention and the KV cache stay eager, because their shapes grow with
every token. If compilation is unavailable (no C++ compiler, an unsupported backend), the first call falls back to
the eager code with a warning, so the model always runs; ``model.compile_report`` records which halves fell back
and why, and how many calls ran compiled code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger(__name__)


@dataclass
class CompileReport:
    mode: str
    compiled_calls: int = 0  # calls that returned from compiled code
    fallbacks: dict[str, str] = field(default_factory=dict)  # layer half -> why it runs eagerly

    @property
    def compiled(self) -> bool:
        """True once compiled code has run and nothing fell back to eager."""
        return self.compiled_calls > 0 and not self.fallbacks


def _with_fallback(eager: Callable, compiled: Callable, name: str, report: CompileReport) -> Callable:
    state = {"fn": compiled}

    def call(*args, **kwargs):
        if state["fn"] is eager:
            return eager(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure must leave a working model
            reason = f"{type(err).__name__}: {err}"
            log.warning("torch.compile failed for %s (%s); running it eagerly", name, reason)
            report.fallbacks[name] = reason
            state["fn"] = eager
            return eager(*args, **kwargs)
        report.compiled_calls += 1
        return out

    return call


def compile_model(model, mode: str | None = None) -> CompileReport:
    """Compile every layer's ``begin`` / ``end`` halves in place. ``mode`` defaults to "reduce-overhead" (CUDA
    graphs) on a GPU and to the default mode on the CPU. Returns the report also kept as ``model.compile_report``."""
    device = model.transformer.wte.weight.device
    mode = mode or ("reduce-overhead" if device.type == "cuda" else "default")
    report = CompileReport(mode)
    blocks = [*model.transformer.prelude, *model.transformer.core_block, *model.transformer.coda]
    for i, block in enumerate(blocks):
        for half in ("begin", "end"):
            eager = getattr(block, half)
            setattr(block, half, _with_fallback(eager, torch.compile(eager, mode=mode), f"layer {i} {half}", report))
    model.compiled = mode
    model.compile_report = report
    return report
