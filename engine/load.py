"""Loading a Huginn model and its tokenizer: local folders or hub ids, in bf16 / fp32 or bitsandbytes int8 / nf4.

``load()`` first makes a memory plan (``engine.plan``) from the config and the free memory and, with
``quantization="auto"`` (the default), loads in the format it chooses; an out-of-memory error while loading falls
back to the next smaller format that fits and says so. ``load("auto")`` picks the official Huginn-0125 when a CUDA GPU
with room for it is present (downloading it with a progress bar when it is not cached), and otherwise the small demo
model shipped in ``assets/demo-model``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.resources
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from .config import MODEL_TYPE, HuginnConfig
from .plan import NF4_BLOCKSIZE, MemoryPlan, compute_dtype, cpu_has_fast_bf16, plan_memory, size
from .quantized_cache import QuantizedCache, resolve_cache

OFFICIAL_MODEL = "tomg-group-umd/huginn-0125"
# assets/ is package data of engine.assets in an installed wheel (pyproject.toml maps it), beside engine/ in a checkout.
_PACKAGED_DEMO = Path(str(importlib.resources.files(__package__))) / "assets" / "demo-model"
DEMO_MODEL = _PACKAGED_DEMO if _PACKAGED_DEMO.is_dir() else Path(__file__).resolve().parents[1] / "assets" / "demo-model"
# "none": unquantized in ``dtype`` (bf16 on a GPU, fp32 on the CPU unless given).
QUANTIZATIONS = ("auto", "nf4", "int8", "bf16", "fp32", "none")
DEVICES = ("auto", "cpu", "cuda")
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.jinja"]
logger = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class Weights:
    """How ``load_weights`` got the weights."""

    quantization: str  # bf16, fp32, none, int8 or nf4
    seconds: float
    cache_note: str = ""  # int8 / nf4: read from or saved to the quantized-weights cache, or why not


@dataclass(frozen=True)
class LoadReport:
    """What ``load`` did: returned beside the model, never kept on it."""

    source: str  # what was asked for, resolved ("auto" becomes the model it chose)
    weights: Weights
    plan: MemoryPlan | None = None  # the memory plan of the format loaded
    notice: str = ""  # a fallback made while loading, if any
    auto_note: str = ""  # why "auto" chose this model

    @property
    def quantization(self) -> str:
        return self.weights.quantization


class Loaded(NamedTuple):
    model: Any
    tokenizer: Any
    report: LoadReport


@dataclass(frozen=True)
class ModelInfo:
    name: str
    parameters: int
    dtype: str
    quantization: str
    device: str
    memory_bytes: int
    num_steps_default: int
    context: int
    plan: str = ""  # the memory plan's one line, e.g. "nf4, 2.7 GB weights + 1.0 GB shared KV cache at 4k ..."
    notice: str = ""  # a fallback made while loading, if any
    # Depths that span the model's accuracy curve (generation_config.json "suggested_depths"), for the
    # depth arena's default columns; empty when the model names none.
    suggested_depths: tuple[int, ...] = ()
    depth_table: str = ""  # the model card's "Accuracy by depth" section (Markdown), if the card has one
    weights_cache: str = ""  # int8 / nf4: read from or saved to the quantized-weights cache, or why not

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _resolve_local(path: Path) -> Path:
    if not path.exists():
        raise LoadError(f"model path {str(path)!r} does not exist; pass a folder holding config.json and "
                        "*.safetensors, a hub id such as tomg-group-umd/huginn-0125, or 'auto'")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise LoadError(f"{str(path)!r} is not a model folder: it has no config.json. Point --model at the folder "
                        "that contains config.json and the .safetensors weights")
    return path


def _check_model_type(folder: Path) -> HuginnConfig:
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot read {folder / 'config.json'}: {err}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != MODEL_TYPE:
        raise LoadError(f"{folder} holds a {model_type!r} model, not a recurrent-depth Huginn model "
                        f"(model_type {MODEL_TYPE!r}); Huginn Studio runs only Huginn-style checkpoints")
    try:
        return HuginnConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise LoadError(f"the config in {folder} is not a valid Huginn config: {err}") from None


def download(repo_id: str, revision: str | None = None, tqdm_class: Any = None) -> Path:
    """Fetch (or find in the local cache) a hub snapshot; huggingface_hub shows a progress bar per file."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_WEIGHT_PATTERNS,
                                      tqdm_class=tqdm_class))
    except HFValidationError:
        raise LoadError(f"{repo_id!r} is neither an existing local folder nor a valid hub id (owner/name)") from None
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises many network error types
        cached = cached_snapshot(repo_id, revision)
        if cached is not None:
            return cached
        raise LoadError(
            f"cannot download {repo_id!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). This machine "
            f"looks offline or the repository is not reachable. On a machine with internet run "
            f"`hf download {repo_id}` and copy the folder here, then pass its path with --model; or start with "
            f"--model {DEMO_MODEL}"
        ) from None


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_WEIGHT_PATTERNS,
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached is the normal case
        return None


def resolve_auto_model(gpu_free_bytes: int | None = None, tqdm_class: Any = None) -> tuple[str, str]:
    """``(model, note)``: the official model when a GPU could hold it (nf4 with its KV cache, by the memory plan),
    from the local cache or downloaded with a progress bar; else the demo model, with the reason in ``note``."""
    free = _free_gpu_bytes() if gpu_free_bytes is None else gpu_free_bytes
    if not free:
        return str(DEMO_MODEL), "no CUDA GPU"
    plan = plan_memory(HuginnConfig(), "cuda", free)
    if not plan.fits():
        return str(DEMO_MODEL), f"the GPU has {size(free)} free and Huginn-0125 needs {size(plan.cost().total)}"
    cached = cached_snapshot(OFFICIAL_MODEL)
    if cached is not None:
        return str(cached), ""
    try:
        return str(download(OFFICIAL_MODEL, tqdm_class=tqdm_class)), ""
    except LoadError:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true") else ""
        note = (f"Huginn-0125 is not in the local cache and the Hugging Face hub is not reachable{offline}, so the "
                f"demo model runs instead; on a machine with internet run `hf download {OFFICIAL_MODEL}`")
        logger.warning(note)
        return str(DEMO_MODEL), note


def _free_gpu_bytes(device: str = "cuda") -> int:
    if not torch.cuda.is_available():
        return 0
    try:
        return torch.cuda.mem_get_info(torch.device(device))[0]
    except RuntimeError:
        return 0


def free_memory(device: str) -> int:
    """Free bytes where the weights will live: on the GPU, or the host RAM available to new allocations."""
    if device.startswith("cuda"):
        return _free_gpu_bytes(device)
    import psutil

    return int(psutil.virtual_memory().available)


def parse_bytes(value: int | str | None) -> int | None:
    """``6GB``, ``512MiB``, ``7.5e9`` or an int -> bytes (None stays None)."""
    if value is None or isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)\s*", str(value).lower())
    if not match:
        raise LoadError(f"cannot read the memory size {value!r}; write it like 6GB, 7.5GiB or 512MB")
    unit = match.group(2).rstrip("b")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(float(match.group(1)) * scale[unit])


@contextlib.contextmanager
def _nf4_blocksize(blocksize: int) -> Iterator[None]:
    """transformers' BitsAndBytesConfig has no block-size option; set it on each 4-bit layer as it is created,
    before its weight is quantized from the checkpoint."""
    import bitsandbytes as bnb

    original = bnb.nn.Linear4bit.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.weight.blocksize = blocksize

    bnb.nn.Linear4bit.__init__ = init
    try:
        yield
    finally:
        bnb.nn.Linear4bit.__init__ = original


class _OnceFilter(logging.Filter):
    """Lets each distinct message through once: bitsandbytes logs some warnings on every matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE = _OnceFilter()


def _library_warnings_once(prefix: str = "bitsandbytes") -> None:
    import bitsandbytes  # noqa: F401 - creates its loggers

    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] == prefix:
            log = logging.getLogger(name)
            if _ONCE not in log.filters:
                log.addFilter(_ONCE)


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and any(s in text for s in ("out of memory", "can't allocate memory",
                                                                  "cannot allocate memory", "not enough memory")))


class _OutOfMemory(Exception):
    pass


def load_weights(folder: Path, quantization: str, device: str, dtype: torch.dtype | None = None,
                 cache: QuantizedCache | None = None):
    """The model of a checkpoint folder in full precision ("bf16", "fp32", or "none" in ``dtype``) or through
    bitsandbytes ("int8", "nf4"), in eval mode, placed on ``device`` as it is read (a device_map for every format)
    and holding no memory mapped from the checkpoint files. With a ``cache``, int8 / nf4 weights are read from its
    entry for this checkpoint when there is one, and saved into it after quantizing when there is not
    (``Weights.cache_note`` says which)."""
    fmt_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(quantization)
    dtype = dtype or fmt_dtype or compute_dtype(quantization, "cpu" if device == "cpu" else "cuda")
    if quantization in ("int8", "nf4"):
        _library_warnings_once()
    started = time.perf_counter()
    entry, cached = _cache_entry(cache, folder, quantization, dtype, device)
    loaded, note = None, ""
    if cached is not None:
        try:
            # The entry's config.json carries the quantization_config; from_pretrained restores each layer's
            # quant state (the nf4 block size included) from the saved tensors.
            loaded = _from_pretrained(cached, {"dtype": dtype, "device_map": {"": device}})
            loaded.config.name_or_path = loaded.name_or_path = str(folder)  # the model card, generation config
            note = f"quantized weights read from the cache {cached}"
        except _OutOfMemory:
            raise
        except Exception as err:  # noqa: BLE001 - whatever is wrong with a cache entry, quantizing again fixes it
            logger.warning("the cached quantized weights in %s did not load (%s); quantizing again", cached, err)
            cache.discard(cached)
    if loaded is None:
        loaded = _from_pretrained(folder, *_format_kwargs(quantization, dtype, device))
        if entry is not None:
            note = cache.save(loaded, entry, memory_bytes(loaded))
    loaded.eval()
    return loaded, Weights(quantization, time.perf_counter() - started, note)


def _cache_entry(cache: QuantizedCache | None, folder: Path, quantization: str, dtype: torch.dtype, device: str):
    """(the cache entry for this load or None, its folder when it is complete or None)."""
    if cache is None or quantization not in ("int8", "nf4"):
        return None, None
    try:
        entry = cache.entry(folder, quantization, dtype, device, NF4_BLOCKSIZE)
        return entry, cache.find(entry)
    except OSError as err:
        logger.warning("the quantized-weights cache is not used for %s (%s)", folder, err)
        return None, None


def _format_kwargs(quantization: str, dtype: torch.dtype, device: str):
    """from_pretrained's arguments for a format, and the context that sets the nf4 block size while it runs."""
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}}
    blocksize = contextlib.nullcontext()
    if quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    elif quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=["lm_head"])
        blocksize = _nf4_blocksize(NF4_BLOCKSIZE)
    return kwargs, blocksize


def _from_pretrained(folder: Path, kwargs: dict[str, Any], context: Any = None):
    """from_pretrained with a fresh rotary table and nothing left mapped from ``folder``; a LoadError for a broken
    checkpoint, _OutOfMemory when memory ran out."""
    loaded, out_of_memory = None, None
    try:
        with context or contextlib.nullcontext():
            loaded = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        _recompute_rope_buffer(loaded)
        _own_memory(loaded, folder)
    except (OSError, ValueError, RuntimeError, MemoryError, SafetensorError) as err:
        if not _is_out_of_memory(err):
            raise LoadError(f"cannot load the weights in {folder}: {str(err).splitlines()[0][:300]}") from None
        out_of_memory = str(err).splitlines()[0][:300]
    if out_of_memory is not None:
        # Raised outside the except block, so that the failed attempt's frames and tensors can be freed first.
        loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise _OutOfMemory(out_of_memory)
    return loaded


def _recompute_rope_buffer(model) -> None:
    """The checkpoint's ``freqs_cis`` is a fp32 view into its first shard; a fresh table holds nothing mapped."""
    current = model.freqs_cis
    model.register_buffer("freqs_cis", model._freqs_cis_buffer().to(current.device, current.dtype), persistent=True)


def _mapped_ranges(folder: Path) -> list[tuple[int, int]] | None:
    """Address ranges of this process mapped from the folder's .safetensors files (None without /proc)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    root = str(Path(folder).resolve())
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(root) and fields[5].endswith(".safetensors"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _own_memory(model, folder: Path) -> None:
    """Copy every CPU tensor that is still a view into the checkpoint's memory map into memory of its own, so the
    files' pages are not kept resident (safetensors loads same-dtype CPU tensors zero-copy). That includes the
    tensors bitsandbytes keeps beside a weight read pre-quantized (int8 ``CB`` / ``SCB``, a 4-bit quant state's
    scales and code)."""
    ranges = _mapped_ranges(folder)
    if ranges == []:
        return

    def mapped(tensor) -> bool:
        return (isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu"
                and (ranges is None or any(start <= tensor.data_ptr() < end for start, end in ranges)))

    copies: dict[int, torch.Tensor] = {}  # old data pointer -> the copy, so that aliases stay aliases
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if mapped(tensor):
                    old = tensor.data_ptr()
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = tensor.data.clone()
                    else:
                        table[name] = tensor.clone()
                    copies[old] = table[name].data
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        holders = [(param, "CB"), (param, "SCB"), (state, "absmax"), (state, "code"), (state, "offset"),
                   (getattr(state, "state2", None), "absmax"), (getattr(state, "state2", None), "code")]
        for holder, attr in holders:
            tensor = getattr(holder, attr, None) if holder is not None else None
            if mapped(tensor):
                setattr(holder, attr, copies[tensor.data_ptr()] if tensor.data_ptr() in copies else tensor.clone())
    gc.collect()


def load(
    model: str | os.PathLike = "auto",
    quantization: str = "auto",
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    tqdm_class: Any = None,
    max_memory: int | str | None = None,
    compile: bool = False,
    quantized_cache: bool | str | os.PathLike | None = None,
) -> Loaded:
    """Load a Huginn model and its tokenizer, ready to generate. Returns ``Loaded(model, tokenizer, report)``: the
    ``LoadReport`` says what was loaded and how (the plan, any fallback, the weights cache); nothing of it is kept
    on the model.

    ``model``: "auto", a local folder, or a hub id. ``quantization``: "auto" (the memory plan's choice), "bf16",
    "fp32", "int8", "nf4" (bitsandbytes, also on the CPU) or "none" (unquantized in ``dtype``). ``device``: "auto",
    "cpu", "cuda" or "cuda:N". ``dtype`` is the compute dtype (by default bf16 on a GPU, fp32 on the CPU for
    "none", int8 and nf4). ``max_memory`` ("6GB" or bytes) caps the memory the plan may use. ``compile`` prepares the compiled decode path
    (``engine.compile``: static KV caches, the core step as one CUDA graph on a GPU); the first answer compiles, and
    ``model.compile_report`` says what ran compiled.

    ``quantized_cache``: where int8 / nf4 weights are kept after their first quantization, so later loads skip it
    (``engine.quantized_cache``): None or True for the default folder (``$HUGINN_STUDIO_QUANTIZED_CACHE``, else the
    user's cache folder), a path for another, False for no cache. ``report.weights.cache_note`` says what happened.
    """
    if quantization not in QUANTIZATIONS:
        raise LoadError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if not isinstance(device, str) or not (device in DEVICES or device.startswith("cuda:")):
        raise LoadError(f"unknown device {device!r}; choose one of auto, cpu, cuda, cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise LoadError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    cap = parse_bytes(max_memory)
    cache = resolve_cache(quantized_cache)

    name, auto_note = str(model), ""
    if name == "auto":
        name, auto_note = resolve_auto_model(tqdm_class=tqdm_class) if device.startswith("cuda") else \
            (str(DEMO_MODEL), "no CUDA GPU")
    local = Path(name).expanduser()
    if local.exists() or not _looks_like_hub_id(name):
        folder = _resolve_local(local)
        name = str(folder.resolve())  # `./ckpt` or `~/x` would say nothing of the folder once shown elsewhere
    else:
        folder = download(name, revision, tqdm_class)
    config = _check_model_type(folder)

    free = free_memory(device)
    free = min(free, cap) if cap is not None else free
    requested = _requested_format(quantization, device, dtype)
    plan = plan_memory(config, "cpu" if device == "cpu" else "cuda", free, requested,
                       cpu_bf16=device != "cpu" or cpu_has_fast_bf16())
    logger.info(plan.table())
    loaded, weights, notice = _load_planned(folder, plan, quantization == "auto", device,
                                            dtype if quantization in ("none", "int8", "nf4") else None, cache)
    loaded_plan = plan if weights.quantization == plan.format else \
        plan_memory(config, plan.device, free, weights.quantization, cpu_bf16=device != "cpu" or cpu_has_fast_bf16())
    report = LoadReport(name, weights, loaded_plan, notice, auto_note)
    if notice:
        logger.warning(notice)
    logger.info("loaded %s in %.1f s: %s%s", name, weights.seconds, loaded_plan.summary(),
                f"; {weights.cache_note}" if weights.cache_note else "")
    if compile:
        from .compile import compile_model

        logger.info("compiled decoding: core step in torch.compile mode %r", compile_model(loaded).mode)

    tok_source = Path(tokenizer) if tokenizer is not None else folder
    try:
        tok = AutoTokenizer.from_pretrained(tok_source)
    except (OSError, ValueError, TypeError) as err:
        raise LoadError(f"no usable tokenizer in {tok_source} ({str(err).splitlines()[0][:200]}); "
                        "pass tokenizer=<folder with tokenizer.json>") from None
    if tok.chat_template is None:
        raise LoadError(f"the tokenizer in {tok_source} has no chat template; Huginn Studio formats chats with it")
    return Loaded(loaded, tok, report)


def _requested_format(quantization: str, device: str, dtype: torch.dtype | None) -> str:
    if quantization == "none":
        if dtype is not None:
            return "fp32" if dtype == torch.float32 else "bf16"
        return "fp32" if device == "cpu" else "bf16"
    return quantization


def _load_planned(folder: Path, plan: MemoryPlan, auto: bool, device: str, dtype: torch.dtype | None,
                  cache: QuantizedCache | None = None):
    """Load in the plan's format; when the weights cannot fit, or loading runs out of memory, use the next smaller
    format that fits in auto mode, and otherwise raise a LoadError that names the need and that format."""
    fmt, notes = plan.format, []
    while True:
        problem = None
        if not plan.weights_fit(fmt):
            problem = (f"{fmt} needs {size(plan.cost(fmt).weights)} for its weights and "
                       f"{size(plan.usable_bytes)} is usable ({size(plan.free_bytes)} free)")
        else:
            try:
                return *load_weights(folder, fmt, device, dtype, cache), " ".join(notes)
            except _OutOfMemory as err:
                problem = (f"loading in {fmt} ran out of memory ({err}); it needs about "
                           f"{size(plan.cost(fmt).total)} with its KV cache and "
                           f"{size(plan.free_bytes)} was free")
        smaller = plan.smaller_formats(fmt)
        where = "GPU" if plan.device == "cuda" else "host"
        if not smaller:
            raise LoadError(f"not enough {where} memory: {problem}, and no smaller format fits. Free memory, or "
                            f"use a machine with more")
        if not auto:
            raise LoadError(f"not enough {where} memory: {problem}. {smaller[0]} fits (about "
                            f"{size(plan.cost(smaller[0]).total)}): use --quantization {smaller[0]} (or auto)")
        notes.append(f"Not enough {where} memory for {fmt}: {problem}; loaded in {smaller[0]} instead.")
        fmt = smaller[0]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def model_info(model, report: LoadReport | None = None) -> ModelInfo:
    """What is loaded, for the model panel: the model, and how ``load`` got it (a model built otherwise has no
    report: its name is its config's, its weights as they are)."""
    plan = report.plan if report is not None else None
    weight = model.transformer.wte.weight
    return ModelInfo(
        name=report.source if report is not None else str(model.config.name_or_path),
        parameters=count_parameters(model),
        dtype=str(weight.dtype).replace("torch.", ""),
        quantization=report.quantization if report is not None else "none",
        device=str(weight.device),
        memory_bytes=memory_bytes(model),
        num_steps_default=model.config.mean_recurrence,
        context=model.config.block_size,
        plan=plan.summary() if plan is not None else "",
        notice=report.notice if report is not None else "",
        suggested_depths=suggested_depths(model),
        depth_table=card_section(model.config.name_or_path, DEPTH_TABLE_HEADING),
        weights_cache=report.weights.cache_note if report is not None else "",
    )


DEPTH_TABLE_HEADING = "## Accuracy by depth"


def suggested_depths(model) -> tuple[int, ...]:
    """The positive whole depths listed under ``suggested_depths`` in the generation config, sorted; () if none.

    A malformed entry is ignored rather than fatal: the depths only choose the arena's default columns."""
    raw = getattr(getattr(model, "generation_config", None), "suggested_depths", None)
    if not isinstance(raw, (list, tuple)):
        return ()
    return tuple(sorted({int(d) for d in raw if isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 4096}))


def card_section(folder: str | os.PathLike, heading: str, limit: int = 20_000) -> str:
    """The Markdown section under ``heading`` in the model folder's README.md, up to the next heading of its level.

    "" when the folder, the card or the section is missing; at most ``limit`` characters of a hostile card."""
    try:
        text = (Path(folder) / "README.md").read_text(encoding="utf-8", errors="replace")[:200_000]
    except (OSError, TypeError, ValueError):
        return ""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    if heading not in (line.strip() for line in lines):
        return ""
    start = [line.strip() for line in lines].index(heading) + 1
    body = []
    for line in lines[start:]:
        if line.startswith("#") and line.split(" ", 1)[0] in {level[:n] for n in range(1, len(level) + 1)}:
            break
        body.append(line)
    return "\n".join(body).strip()[:limit]


def count_parameters(model) -> int:
    """Parameters as the model defines them: a 4-bit layer stores two weights per byte, its quant state keeps the
    original shape."""
    total = 0
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += math.prod(shape) if shape is not None else p.numel()
    return total


def memory_bytes(model) -> int:
    """Bytes the model holds: parameters and buffers (each storage once) plus bitsandbytes' scales, which live
    beside the weights (``quant_state.absmax`` for 4-bit, ``SCB`` for int8) and which get_memory_footprint misses."""
    seen: dict[tuple[str, int], int] = {}
    tensors = list(model.parameters()) + list(model.buffers())
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        tensors += [t for t in (getattr(state, "absmax", None), getattr(p, "SCB", None)) if t is not None]
    for t in tensors:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
