"""Loading a Huginn model and its tokenizer: local folders or hub ids, full precision or bitsandbytes int8 / nf4.

``load("auto")`` picks the official Huginn-0125 when a CUDA GPU with room for it is present and its weights are
cached (or downloadable), and otherwise the small demo model shipped in ``assets/demo-model``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from .config import MODEL_TYPE, HuginnConfig
from .model import HuginnForCausalLM

OFFICIAL_MODEL = "tomg-group-umd/huginn-0125"
# assets/ is package data of engine.assets in an installed wheel (pyproject.toml maps it), beside engine/ in a checkout.
_PACKAGED_DEMO = Path(str(importlib.resources.files(__package__))) / "assets" / "demo-model"
DEMO_MODEL = _PACKAGED_DEMO if _PACKAGED_DEMO.is_dir() else Path(__file__).resolve().parents[1] / "assets" / "demo-model"
QUANTIZATIONS = ("none", "int8", "nf4", "auto")
DEVICES = ("auto", "cpu", "cuda")
# bitsandbytes' fast 4-bit kernels need the input width to be a multiple of the block size. Huginn's hidden size
# 5280 is not a multiple of the default 64 (5280 % 64 = 32) but is of 32, as are 10560 and 17920, so every linear
# layer keeps its blocks inside a row. Measured on CPU (bitsandbytes 0.50.2, a random 96x5280 matrix): relative
# dequantisation error 0.087 with blocks of 32 against 0.245 with 64.
NF4_BLOCKSIZE = 32
GPU_HEADROOM_BYTES = 2 * 1024**3  # KV cache and activations for a chat at r=32 with a shared-slot cache
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.jinja"]


class LoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


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


def parameter_count(config: HuginnConfig) -> int:
    with torch.device("meta"):
        model = HuginnForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def bytes_per_weight(config: HuginnConfig, quantization: str) -> float:
    """Bytes per linear-layer weight: bf16, int8 with a fp32 scale per row, or nf4 with a fp32 scale per block."""
    return {"none": 2.0, "int8": 1.0 + 4 / config.n_embd, "nf4": 0.5 + 4 / NF4_BLOCKSIZE}[quantization]


def weight_bytes(config: HuginnConfig, quantization: str) -> int:
    """Bytes of the weights in memory; the embedding (tied head) stays in bf16."""
    embedding = config.padded_vocab_size * config.n_embd
    linear = parameter_count(config) - embedding
    return int(linear * bytes_per_weight(config, quantization) + embedding * 2)


def choose_quantization(config: HuginnConfig, free_bytes: int) -> str:
    """bf16 when it fits with room for the cache, else int8, else nf4 (which may still not fit)."""
    for quantization in ("none", "int8", "nf4"):
        if weight_bytes(config, quantization) + GPU_HEADROOM_BYTES <= free_bytes:
            return quantization
    return "nf4"


def _free_gpu_bytes() -> int:
    if not torch.cuda.is_available():
        return 0
    try:
        return torch.cuda.mem_get_info()[0]
    except RuntimeError:
        return 0


def resolve_auto_model() -> str:
    """The official model when a GPU could hold it in nf4 and its weights are cached; else the demo model."""
    free = _free_gpu_bytes()
    official = HuginnConfig()
    if free and weight_bytes(official, "nf4") + GPU_HEADROOM_BYTES <= free and cached_snapshot(OFFICIAL_MODEL):
        return OFFICIAL_MODEL
    return str(DEMO_MODEL)


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


def load_weights(folder: Path, quantization: str, device: str, dtype: torch.dtype):
    """The model of a checkpoint folder in full precision or through bitsandbytes ("int8", "nf4"), in eval mode."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    blocksize = contextlib.nullcontext()
    if quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    elif quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=["lm_head"])
        blocksize = _nf4_blocksize(NF4_BLOCKSIZE)
    if quantization != "none":
        kwargs["device_map"] = {"": device}
    started = time.perf_counter()
    try:
        with blocksize:
            loaded = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise LoadError(f"cannot load the weights in {folder}: {str(err).splitlines()[0][:300]}") from None
    if quantization == "none":
        loaded = loaded.to(device)
    loaded.eval()
    loaded.load_seconds = time.perf_counter() - started
    loaded.quantization = quantization
    return loaded


def load(
    model: str | os.PathLike = "auto",
    quantization: str = "none",
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    tqdm_class: Any = None,
):
    """Load a Huginn model and its tokenizer, ready to generate. Returns ``(model, tokenizer)``.

    ``model``: "auto", a local folder, or a hub id. ``quantization``: "none", "int8", "nf4" (bitsandbytes, also on
    the CPU) or "auto" (by free GPU memory). ``device``: "auto", "cpu", "cuda" or "cuda:N". ``dtype`` defaults to
    bf16 on a GPU and fp32 on the CPU.
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
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)

    name = str(model)
    if name == "auto":
        name = resolve_auto_model() if device.startswith("cuda") else str(DEMO_MODEL)
    local = Path(name).expanduser()
    if local.exists() or not _looks_like_hub_id(name):
        folder = _resolve_local(local)
    else:
        folder = download(name, revision, tqdm_class)
    config = _check_model_type(folder)

    if quantization == "auto":
        quantization = choose_quantization(config, _free_gpu_bytes()) if device.startswith("cuda") else "none"
    loaded = load_weights(folder, quantization, device, dtype)
    loaded.source = name

    tok_source = Path(tokenizer) if tokenizer is not None else folder
    try:
        tok = AutoTokenizer.from_pretrained(tok_source)
    except (OSError, ValueError, TypeError) as err:
        raise LoadError(f"no usable tokenizer in {tok_source} ({str(err).splitlines()[0][:200]}); "
                        "pass tokenizer=<folder with tokenizer.json>") from None
    if tok.chat_template is None:
        raise LoadError(f"the tokenizer in {tok_source} has no chat template; Huginn Studio formats chats with it")
    return loaded, tok


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def model_info(model) -> ModelInfo:
    """What is loaded, for the model panel."""
    weight = model.transformer.wte.weight
    return ModelInfo(
        name=str(getattr(model, "source", model.config.name_or_path)),
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(weight.dtype).replace("torch.", ""),
        quantization=getattr(model, "quantization", "none"),
        device=str(weight.device),
        memory_bytes=int(model.get_memory_footprint()),
        num_steps_default=model.config.mean_recurrence,
        context=model.config.block_size,
    )
