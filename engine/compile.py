"""Optional torch.compile of the decode path (``--compile``), after gpt-fast.

* **The core step, whole.** A compiled model's ``new_cache`` makes static caches (fixed capacity, stacked core
  slots at fixed addresses; see ``engine.cache``), and one recurrence of one decoded position (the adapter and every
  core layer, attention and cache writes included) is ``model.static_core_step``, compiled with ``fullgraph=True``:
  mode "reduce-overhead" (one CUDA graph, replayed at every recurrence of every token) on a GPU, the default mode on
  the CPU. Which slots, which position and which rows are device tensors, so neither depth nor position recompiles.
* **Each layer's cache-free halves** (norms, projections, RoPE, MLP) in the default mode, for everything else: the
  prelude, the coda and head, and blocks of several positions (prefill, speculative verification), whose attention
  and cache stay eager.

If compilation is unavailable (no C++ compiler, an unsupported backend) or a graph breaks, the first call falls back
to the eager code with a warning, so the model always runs. ``model.compile_report`` records what ran compiled, what
ran eagerly and why.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger(__name__)
CORE_STEP = "core step"


@dataclass
class CompileReport:
    mode: str  # the core step's: "reduce-overhead" (CUDA graphs) or "default"
    layer_mode: str = "default"  # the per-layer halves'
    compiled_calls: int = 0  # calls that returned from compiled code (layer halves and whole core steps)
    core_step_calls: int = 0  # core steps that ran as one compiled graph
    eager_core_steps: Counter = field(default_factory=Counter)  # core steps run layer by layer, counted per reason
    fallbacks: dict[str, str] = field(default_factory=dict)  # what fell back to eager for good -> why

    @property
    def compiled(self) -> bool:
        """True once compiled code has run and nothing fell back to eager."""
        return self.compiled_calls > 0 and not self.fallbacks

    @property
    def captured(self) -> bool:
        """True once a whole core step ran compiled and the core step never fell back."""
        return self.core_step_calls > 0 and CORE_STEP not in self.fallbacks

    @property
    def cudagraph_skips(self) -> int:
        """Compiled graphs that inductor ran without CUDA graphs, in this process (it logs why); 0 on the CPU."""
        from torch._dynamo.utils import counters

        return counters["inductor"]["cudagraph_skips"]


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


def _eager_reason(cache, state: torch.Tensor) -> str | None:
    """Why a core step cannot run as the captured graph (None: it can)."""
    if cache is None:
        return "no cache"
    if not getattr(cache, "static", False):
        return "dynamic cache"
    if state.shape[1] != 1:
        return "several positions"
    if torch.is_grad_enabled() and state.requires_grad:
        return "gradients"
    return None


def _replayed(graph: Callable, cuda_graphs: bool, one_thread: bool) -> Callable:
    """The compiled step as called. With CUDA graphs every replay starts a new generation and its output is cloned,
    because the next replay overwrites it. With ``one_thread`` every call runs on one thread of its own, in the
    caller's grad and inference mode: cudagraph trees are kept per thread, and the app iterates an answer on
    whichever worker thread Gradio picks, which would record the graph (and its memory pool) once per thread."""

    def run(*args):
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = graph(*args)
        return out.clone() if cuda_graphs else out

    if not one_thread:
        return run
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="huginn-core-step")

    def on_worker(*args):
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def job():
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return run(*args)

        return worker.submit(job).result()

    return on_worker


def _captured_core_step(model, eager: Callable, report: CompileReport, mode: str, one_thread: bool) -> Callable:
    """``core_step`` that runs a decoded position's recurrence as the compiled ``static_core_step`` when it can."""
    compiled = torch.compile(model.static_core_step, mode=mode, fullgraph=True, dynamic=False)
    graph = _with_fallback(model.static_core_step, _replayed(compiled, mode == "reduce-overhead", one_thread),
                           CORE_STEP, report)

    def core_step(state, embedded, step, cache=None, pos0=0, rows=None, rope=None):
        reason = _eager_reason(cache, state) if CORE_STEP not in report.fallbacks else "fell back"
        if reason is not None:
            report.eager_core_steps[reason] += 1
            return eager(state, embedded, step, cache, pos0, rows, rope)
        rope = model.rotations(slice(pos0, pos0 + 1)) if rope is None else rope
        inputs = cache.static_step_inputs(step, pos0, rows)
        calls = report.compiled_calls
        out = graph(state, embedded, rope, *inputs)
        cache.static_step_done(step, pos0, rows)
        if report.compiled_calls == calls:  # it fell back just now and ran eagerly
            report.eager_core_steps["fell back"] += 1
        else:
            report.core_step_calls += 1
        return out

    return core_step


def compile_model(model, mode: str | None = None, layers: bool = True, one_thread: bool | None = None) -> CompileReport:
    """Compile the model in place for decoding (see the module docstring). ``mode`` is the core step's and defaults
    to "reduce-overhead" (CUDA graphs) on a GPU and to the default mode on the CPU; the layer halves always use the
    default mode, whose outputs stay valid however long they are kept. ``layers=False`` compiles the core step only
    (everything else stays eager). ``one_thread`` (default: with CUDA graphs) runs the captured step on one thread
    of its own. Returns the report also kept as ``model.compile_report``."""
    device = model.transformer.wte.weight.device
    mode = mode or ("reduce-overhead" if device.type == "cuda" else "default")
    report = CompileReport(mode)
    blocks = [*model.transformer.prelude, *model.transformer.core_block, *model.transformer.coda] if layers else []
    for i, block in enumerate(blocks):
        for half in ("begin", "end"):
            eager = getattr(block, half)
            compiled = torch.compile(eager, mode=report.layer_mode)
            setattr(block, half, _with_fallback(eager, compiled, f"layer {i} {half}", report))
    one_thread = mode == "reduce-overhead" if one_thread is None else one_thread
    model.core_step = _captured_core_step(model, model.core_step, report, mode, one_thread)
    model.compiled = mode
    model.compile_report = report
    model.static_kv_cache = True
    return report
