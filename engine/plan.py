"""The memory plan: which weight format a model should load in, from its config and the free memory, before loading.

``plan_memory`` is a pure function: config + device + free bytes + cache strategy + context + depth in, a
``MemoryPlan`` out, with weights + KV cache + activations for every format and the format chosen. ``engine.load``
makes one before touching the weights, prints it, and returns it in its ``LoadReport``.

Choice, first that fits (weights + KV cache + activations within the usable memory):

* GPU: bf16, then nf4. int8 is only used when asked for: it is larger than nf4 and bitsandbytes' LLM.int8 decodes
  slowest of the three at batch 1 (see ../shared/docs/engine-and-style-notes.md, "Which is faster").
* CPU: bf16 where the CPU has native bf16 (AVX512-BF16 or AMX) and the model is large (fp32 weights of at least
  ``CPU_BF16_MIN_BYTES``): there decoding is bound by memory traffic, which bf16 halves. Small models stay fp32:
  measured on an AVX512-BF16/AMX Xeon, one thread, bf16 decoded at 0.50x the fp32 speed on the demo model and
  0.88x on a 512-wide model of the official layout. Then the other full-precision format, then nf4.

The KV cache is counted for the strategy asked for; ``"auto"`` means what ``engine.stream`` does: the full
per-step cache when it fits its budget, else one shared slot per core layer (``latest-m4-compress-s<L>``). On the
CPU that budget is half the free memory (``engine.cache.memory_budget``): host memory is shared with everything else
the user runs, and a plan that takes 19 of 22 free GB for an exact cache leaves the machine swapping, while the
shared cache cost the authors no accuracy on MT-Bench. On a GPU the whole usable memory may hold it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch
from torch import nn

from .cache import kv_cache_bytes

FORMATS = ("bf16", "fp32", "nf4", "int8")
# bitsandbytes' fast 4-bit kernels need the input width to be a multiple of the block size. Huginn's hidden size
# 5280 is not a multiple of the default 64 (5280 % 64 = 32) but is of 32, as are 10560 and 17920, so every linear
# layer keeps its blocks inside a row. Measured on CPU (bitsandbytes 0.50.2, a random 96x5280 matrix): relative
# dequantisation error 0.087 with blocks of 32 against 0.245 with 64.
NF4_BLOCKSIZE = 32
CPU_BF16_MIN_BYTES = 2 * 1024**3
# Not all free memory is usable: the CUDA allocator fragments, and on the host Python, the tokenizer and the web
# app need room of their own.
GPU_USABLE_FRACTION = 0.95
HOST_RESERVE_BYTES = 1024**3
GB = 1e9


@dataclass(frozen=True)
class FormatCost:
    format: str
    weights: int
    kv_cache: int
    activations: int
    cache_strategy: str
    full_kv_cache: int = 0  # what the full per-step cache would take, for the plan's reason

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


@dataclass(frozen=True)
class MemoryPlan:
    format: str  # the format chosen: bf16, fp32, nf4 or int8
    device: str  # "cuda" or "cpu"
    free_bytes: int
    usable_bytes: int
    context: int
    num_steps: int
    costs: tuple[FormatCost, ...]
    order: tuple[str, ...]  # the device's preference among the formats
    reason: str

    def cost(self, fmt: str | None = None) -> FormatCost:
        fmt = fmt or self.format
        return next(c for c in self.costs if c.format == fmt)

    def fits(self, fmt: str | None = None) -> bool:
        """Weights, KV cache and activations all within the usable memory."""
        return self.cost(fmt).total <= self.usable_bytes

    def weights_fit(self, fmt: str | None = None) -> bool:
        return self.cost(fmt).weights <= self.usable_bytes

    def smaller_formats(self, fmt: str) -> list[str]:
        """Formats with smaller weights than ``fmt`` whose weights fit, most preferred first."""
        need = self.cost(fmt).weights
        return [f for f in self.order if self.cost(f).weights < need and self.weights_fit(f)]

    def summary(self) -> str:
        """One line: "nf4, 2.7 GB weights + 1.0 GB shared KV cache at 4k tokens, r=32: 4.3 GB of your 7.6 GB free"."""
        c = self.cost()
        kind = "full" if c.cache_strategy == "full" else "shared" if "compress" in c.cache_strategy else \
            c.cache_strategy
        where = "free" if self.device == "cpu" else "free on the GPU"
        fit = "" if self.fits() else " (does not fit: " + self.reason + ")"
        return (f"{self.format}, {size(c.weights)} weights + {size(c.kv_cache)} {kind} KV cache at "
                f"{_tokens(self.context)} tokens, r={self.num_steps}: {size(c.total)} of your "
                f"{size(self.free_bytes)} {where}{fit}{self.cache_note()}")

    def cache_note(self, fmt: str | None = None) -> str:
        """Why a cache that would fit was shared anyway (the CPU's budget is half the memory), else ""."""
        c = self.cost(fmt)
        if self.device != "cpu" or "compress" not in c.cache_strategy or \
                c.weights + c.full_kv_cache + c.activations > self.usable_bytes:
            return ""
        return (f"; KV cache shared across recurrence steps: a full one ({size(c.full_kv_cache)}) would take over "
                f"half of the {size(self.usable_bytes)} usable, which the rest of the machine needs")

    def table(self) -> str:
        unit, scale = ("GB", GB) if max(c.total for c in self.costs) >= GB else ("MB", 1e6)
        lines = [f"Memory plan ({self.device}, {size(self.free_bytes)} free, {_tokens(self.context)} tokens, "
                 f"r={self.num_steps}):",
                 f"  {'format':<6} {'weights ' + unit:>10} {'KV ' + unit:>7} {'act. ' + unit:>8} "
                 f"{'total ' + unit:>9}  KV cache"]
        for c in self.costs:
            mark = "  <- " + ("chosen" if self.fits(c.format) else "chosen, does not fit") \
                if c.format == self.format else ("" if self.fits(c.format) else "  (does not fit)")
            lines.append(f"  {c.format:<6} {c.weights / scale:>10.2f} {c.kv_cache / scale:>7.2f} "
                         f"{c.activations / scale:>8.2f} {c.total / scale:>9.2f}  {c.cache_strategy}{mark}")
        lines.append(f"  {self.reason}")
        return "\n".join(lines)


def size(n: float) -> str:
    """Bytes in decimal GB (or MB below 1 GB), as a user reads memory figures."""
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1e6:.1f} MB"


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


@functools.lru_cache(maxsize=32)
def _counts(config_json: str) -> tuple[int, int, int, int]:
    """Elements of (quantizable linear weights, their output rows, other parameters, buffers), from the model
    built on the meta device."""
    from .config import HuginnConfig
    from .model import HuginnForCausalLM

    with torch.device("meta"):
        model = HuginnForCausalLM(HuginnConfig.from_dict(json.loads(config_json)))
    linear = rows = 0
    quantized = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":  # the head stays unquantized (tied to wte)
            linear += module.weight.numel()
            rows += module.weight.shape[0]
            quantized.add(id(module.weight))
    other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    return linear, rows, other, sum(b.numel() for b in model.buffers())


def _layout(config) -> tuple[int, int, int, int]:
    return _counts(config.to_json_string(use_diff=False))


def parameter_count(config) -> int:
    """Parameters of the model (the tied head counted once), from its shapes alone."""
    linear, _, other, _ = _layout(config)
    return linear + other


def compute_dtype(fmt: str, device: str) -> torch.dtype:
    """The dtype activations, unquantized weights and the KV cache use in a format."""
    if fmt == "fp32" or (device == "cpu" and fmt in ("int8", "nf4")):
        return torch.float32
    return torch.bfloat16


def weight_bytes(config, fmt: str, device: str = "cuda") -> int:
    """Bytes of the weights in memory: int8 with one fp32 scale per row, nf4 with one fp32 scale per block of
    ``NF4_BLOCKSIZE``; embeddings (the tied head), norms and biases in the compute dtype."""
    fmt = "bf16" if fmt == "none" else fmt
    linear, rows, other, buffers = _layout(config)
    element = compute_dtype(fmt, device).itemsize
    quantized = {"fp32": 4 * linear, "bf16": 2 * linear, "int8": linear + 4 * rows,
                 "nf4": linear // 2 + 4 * linear // NF4_BLOCKSIZE}[fmt]
    return quantized + other * element + buffers * 4  # freqs_cis stays fp32


def bytes_per_weight(config, fmt: str) -> float:
    """Bytes per linear-layer weight, scales included (an int8 row's scale spread over a hidden-size row)."""
    return {"none": 2.0, "bf16": 2.0, "fp32": 4.0, "int8": 1.0 + 4 / config.n_embd,
            "nf4": 0.5 + 4 / NF4_BLOCKSIZE}[fmt]


def activation_bytes(config, tokens: int, element_size: int) -> int:
    """Peak working memory of one layer over a ``tokens``-long prefill: the fused qkv and MLP projections and the
    residual stream, plus the next-token logits in fp32 (attention runs in SDPA's memory-efficient kernels)."""
    h, i = config.n_embd, config.intermediate_size
    return tokens * element_size * (3 * h + 2 * i + 4 * h) + 4 * config.padded_vocab_size


def preference(device: str, fp32_weights: int, cpu_bf16: bool) -> tuple[str, ...]:
    if device != "cpu":
        return ("bf16", "nf4", "int8", "fp32")
    if cpu_bf16 and fp32_weights >= CPU_BF16_MIN_BYTES:
        return ("bf16", "fp32", "nf4", "int8")
    return ("fp32", "bf16", "nf4", "int8")


def plan_memory(config, device: str, free_bytes: int, requested: str = "auto", cache_strategy: str = "auto",
                context: int | None = None, num_steps: int | None = None, cpu_bf16: bool = True) -> MemoryPlan:
    """Weights + KV cache + activations of every format for ``context`` tokens at ``num_steps`` recurrences (the
    config's context and mean recurrence by default), and the format to load: ``requested`` when it is one, else the
    first in the device's preference order that fits, else the smallest whose weights fit, else the smallest."""
    if requested not in ("auto", None, *FORMATS):
        raise ValueError(f"unknown format {requested!r}; choose auto or one of {', '.join(FORMATS)}")
    device = "cpu" if device == "cpu" else "cuda"
    context = int(context or config.block_size)
    num_steps = int(num_steps or config.mean_recurrence)
    if context < 1 or num_steps < 1:
        raise ValueError(f"context ({context}) and num_steps ({num_steps}) must be at least 1")
    free_bytes = max(0, int(free_bytes))
    usable = int(free_bytes * GPU_USABLE_FRACTION) if device == "cuda" else max(0, free_bytes - HOST_RESERVE_BYTES)
    costs = tuple(_cost(config, fmt, device, usable, cache_strategy, context, num_steps) for fmt in FORMATS)
    fp32 = costs[FORMATS.index("fp32")].weights
    order = preference(device, fp32, cpu_bf16)
    plan = MemoryPlan("", device, int(free_bytes), usable, context, num_steps, costs, order, "")
    if requested not in ("auto", None):
        fmt = requested
        reason = f"{fmt} as asked" + ("" if plan.fits(fmt) else f": needs {size(plan.cost(fmt).total)}, "
                                      f"{size(usable)} usable")
    else:
        fitting = [f for f in order if plan.fits(f)]
        fmt = fitting[0] if fitting else min(FORMATS, key=lambda f: plan.cost(f).weights)
        reason = _why(plan, fmt, order, fitting, cpu_bf16, fp32)
    return MemoryPlan(fmt, device, int(free_bytes), usable, context, num_steps, costs, order, reason)


def _cost(config, fmt: str, device: str, usable: int, strategy: str, context: int, num_steps: int) -> FormatCost:
    element = compute_dtype(fmt, device).itemsize
    weights = weight_bytes(config, fmt, device)
    activations = activation_bytes(config, context, element)
    full = kv_cache_bytes(config, "full", context, num_steps, element)
    if strategy == "auto":
        strategy = "full"
        if weights + full + activations > usable or (device == "cpu" and full > usable // 2):
            strategy = f"latest-m4-compress-s{config.n_layers_in_recurrent_block}"
    kv = kv_cache_bytes(config, strategy, context, num_steps, element)
    return FormatCost(fmt, weights, kv, activations, strategy, full)


def _why(plan: MemoryPlan, fmt: str, order: tuple[str, ...], fitting: list[str], cpu_bf16: bool, fp32: int) -> str:
    if not fitting:
        tokens = max_context(plan, fmt)
        return (f"no format fits {size(plan.usable_bytes)} usable at {plan.context:,} tokens; {fmt} is the "
                f"smallest" + (f" and holds conversations up to about {tokens:,} tokens" if tokens else
                               ": even its weights do not fit"))
    skipped = order[:order.index(fmt)]
    why = f"{fmt}: the first that fits of {', '.join(order)}"
    if skipped:
        why += f" ({', '.join(f'{s} needs {size(plan.cost(s).total)}' for s in skipped)})"
    why += plan.cache_note(fmt)
    if plan.device == "cpu" and fmt in ("bf16", "fp32"):
        if not cpu_bf16:
            why += "; fp32 first because this CPU has no native bf16 (no AVX512-BF16 or AMX)"
        elif fp32 < CPU_BF16_MIN_BYTES:
            why += "; fp32 first because the model is small, where bf16 is slower on the CPU"
        else:
            why += "; bf16 first because this CPU has native bf16 and the model is large"
    return why


def max_context(plan: MemoryPlan, fmt: str) -> int:
    """The longest conversation ``fmt`` holds in the usable memory with the shared KV cache (0: none)."""
    c = plan.cost(fmt)
    room = plan.usable_bytes - c.weights
    per_token = (c.kv_cache + c.activations) / max(1, plan.context)
    return max(0, int(room / per_token)) if per_token else 0


def cpu_has_fast_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX tiles), as torch's own CPU checks report."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:
        return False
