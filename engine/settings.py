"""Generation settings: one validated dataclass shared by the chat, the depth arena, the API and any CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .cache import CacheStrategy
from .exits import CRITERIA, resolve_threshold
from .sampling import SamplingParams
from .trace import MAX_TRACE_TOP_K

MAX_NUM_STEPS = 256
MAX_NEW_TOKENS = 32_768
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 200
MIN_TEMPERATURE = 1e-3  # below it sampling is greedy in all but name, and 1e-40 overflows fp32 logits
SAMPLERS = ("sequential", "parallel")
MAX_WINDOW = 1024
MAX_DIFFUSION_STEPS = 1_000_000
MAX_PARALLEL_SECONDS = 86_400.0


class SettingsError(ValueError):
    """An invalid generation setting; the message names the field and its allowed range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class GenerationSettings:
    num_steps: int = 32
    criterion: str = "none"  # "none" = fixed depth; otherwise an adaptive-exit criterion (engine.exits)
    exit_threshold: float | None = None  # None = the criterion's pinned default
    min_steps: int = 0
    check_every: int = 1
    warm_start: bool = False  # continuous chain of thought: start each token from the previous token's state
    # With an exit criterion: the prompt's positions also exit early, each run alone (the authors'
    # _prefill_with_varied_exit_steps); otherwise the prompt runs as one block at full depth. Ignored at fixed depth.
    prompt_exits: bool = False
    cache_strategy: str | None = None  # None: chosen where the answer is planned (engine.generate.cache_strategy_for)
    init_scale: float = 1.0  # 0 makes the initial state zeros, i.e. deterministic
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # sampling; None = a fresh random seed per answer
    # The key of every position's random initial state (prompt and answer alike): the same conversation text gets
    # the same latent noise, so a later turn can reuse the conversation's KV cache (engine.prompt_cache).
    state_seed: int = 0
    stop_strings: tuple[str, ...] = ()
    draft_steps: int = 0  # > 0: self-speculative decoding, drafting at this depth (greedy, fixed depth only)
    lookahead: int = 4  # tokens drafted per verification pass
    trace: bool = False  # the depth lens (engine.trace): record every token's steps; off costs nothing
    trace_top_k: int = 5  # tokens kept per step in a trace
    # "parallel": the diffusion-forcing sampler (engine.parallel); speculative decoding stays selected by draft_steps.
    sampler: str = "sequential"
    inner_steps: int = 4  # parallel: core steps per diffusion step, run on every window position at once
    freeze_threshold: float = 0.03  # parallel: a position freezes once its state moved less than this (relative L2)
    max_window: int = 128  # parallel: most positions in the window at once
    embed_ema: float = 0.1  # parallel: weight of the previous step's embedding in a window position's input (eta)
    state_noise: float = 0.0  # parallel: fresh noise mixed into the states before each step (beta; the paper's 0)
    headway: int = 1  # parallel: new positions added to the window per step
    max_diffusion_steps: int = 4096  # parallel: past this many steps the rest of the answer is decoded sequentially
    max_parallel_seconds: float = 0.0  # parallel: the same after this wall time (0: no limit)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _int_range("num_steps", self.num_steps, 1, MAX_NUM_STEPS)
        if self.criterion not in CRITERIA:
            raise SettingsError("criterion", f"{shown(self.criterion)} is not one of {', '.join(CRITERIA)}")
        if self.exit_threshold is not None:
            _float_range("exit_threshold", self.exit_threshold, 0.0, 1e6, low_open=True)
        _int_range("min_steps", self.min_steps, 0, self.num_steps)
        _int_range("check_every", self.check_every, 1, MAX_NUM_STEPS)
        for name in ("warm_start", "prompt_exits"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(name, f"must be true or false, got {shown(getattr(self, name))}")
        if self.cache_strategy is not None:
            try:
                CacheStrategy.parse(self.cache_strategy)
            except ValueError as err:
                raise SettingsError("cache_strategy", str(err)) from None
        _float_range("init_scale", self.init_scale, 0.0, 10.0)
        _int_range("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _float_range("temperature", self.temperature, 0.0, 10.0)
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise SettingsError("temperature", f"must be 0 (greedy) or from {MIN_TEMPERATURE} to 10.0, "
                                f"got {self.temperature}")
        _int_range("top_k", self.top_k, 0, 1_000_000)
        _float_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _float_range("min_p", self.min_p, 0.0, 1.0)
        _float_range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        if self.seed is not None:
            _int_range("seed", self.seed, 0, 2**63 - 1)
        _int_range("state_seed", self.state_seed, 0, 2**63 - 1)
        _int_range("draft_steps", self.draft_steps, 0, max(self.num_steps - 1, 0))
        _int_range("lookahead", self.lookahead, 1, 32)
        if self.draft_steps and (self.adaptive or self.warm_start or self.temperature > 0
                                 or self.cache_strategy not in (None, "full")):
            raise SettingsError("draft_steps", "speculative decoding needs greedy sampling (temperature 0), fixed "
                                "depth (criterion none), no warm start and the full cache")
        if not isinstance(self.trace, bool):
            raise SettingsError("trace", f"must be true or false, got {shown(self.trace)}")
        _int_range("trace_top_k", self.trace_top_k, 1, MAX_TRACE_TOP_K)
        if self.trace and self.draft_steps:
            raise SettingsError("trace", "tracing needs plain decoding; set draft_steps to 0")
        self._validate_parallel()
        if not isinstance(self.stop_strings, tuple) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise SettingsError("stop_strings", "must be a tuple of non-empty strings")
        if len(self.stop_strings) > MAX_STOP_STRINGS:
            raise SettingsError("stop_strings", f"at most {MAX_STOP_STRINGS} strings, got {len(self.stop_strings)}")
        longest = max((len(s) for s in self.stop_strings), default=0)
        if longest > MAX_STOP_STRING_CHARS:
            raise SettingsError("stop_strings", f"each at most {MAX_STOP_STRING_CHARS} characters, got one of "
                                f"{longest:,}")

    def _validate_parallel(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SettingsError("sampler", f"{shown(self.sampler)} is not one of {', '.join(SAMPLERS)}")
        _int_range("inner_steps", self.inner_steps, 1, MAX_NUM_STEPS)
        _float_range("freeze_threshold", self.freeze_threshold, 0.0, 10.0, low_open=True)
        _int_range("max_window", self.max_window, 1, MAX_WINDOW)
        _float_range("embed_ema", self.embed_ema, 0.0, 0.99)
        _float_range("state_noise", self.state_noise, 0.0, 1.0)
        _int_range("headway", self.headway, 1, 16)
        _int_range("max_diffusion_steps", self.max_diffusion_steps, 1, MAX_DIFFUSION_STEPS)
        _float_range("max_parallel_seconds", self.max_parallel_seconds, 0.0, MAX_PARALLEL_SECONDS)
        if self.sampler != "parallel":
            return
        if self.inner_steps > self.num_steps:
            raise SettingsError("inner_steps", f"must be at most num_steps ({self.num_steps}) with the parallel "
                                f"sampler, got {self.inner_steps}")
        for name, problem in (("draft_steps", self.draft_steps), ("criterion", self.adaptive),
                              ("warm_start", self.warm_start), ("trace", self.trace)):
            if problem:
                raise SettingsError(name, "the parallel sampler freezes positions by its own criterion; it needs "
                                    "draft_steps 0, criterion none, no warm start and no trace")

    @property
    def parallel(self) -> bool:
        return self.sampler == "parallel"

    @property
    def adaptive(self) -> bool:
        return self.criterion != "none"

    @property
    def threshold(self) -> float:
        return resolve_threshold(self.criterion, self.exit_threshold)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)

    def replace(self, **changes: Any) -> "GenerationSettings":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stop_strings"] = list(self.stop_strings)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise SettingsError(field_name(unknown[0]), f"unknown setting (known: {', '.join(sorted(known))})")
        data = dict(data)
        if "stop_strings" in data:
            stops = data["stop_strings"]
            if stops is not None and not isinstance(stops, (list, tuple)):
                raise SettingsError("stop_strings", f"must be a list of strings, got {type(stops).__name__}")
            data["stop_strings"] = tuple(stops or ())
        return cls(**data)

    def label(self) -> str:
        """A short human description, e.g. ``r=32`` or ``kl<5e-04, r<=32``."""
        if self.parallel:
            return f"parallel r={self.num_steps}, {self.inner_steps}/step"
        if not self.adaptive:
            return f"r={self.num_steps}" + (" warm" if self.warm_start else "")
        return f"{self.criterion}<{self.threshold:g}, r<={self.num_steps}" + (" warm" if self.warm_start else "")


def shown(value: object, limit: int = 40) -> str:
    """A value from outside as a message quotes it: its repr, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's limit on digits in str()
        text = f"an integer of {value.bit_length():,} bits"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def field_name(key: object) -> str:
    """A client's key as a message names it: as it is when short and printable, otherwise quoted and cut."""
    return key if isinstance(key, str) and len(key) <= 40 and key.isprintable() else shown(key)


def finite(value: Any) -> bool:
    """A real number a float can hold. ``math.isfinite`` raises OverflowError on an int past a float's range
    (10**400); that is refused like inf."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(name, f"must be an integer from {low} to {high}, got {shown(value)}")
    if not low <= value <= high:
        raise SettingsError(name, f"must be from {low} to {high}, got {shown(value)}")


def _float_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value):
        raise SettingsError(name, f"must be a number from {low} to {high}, got {shown(value)}")
    if value < low or value > high or (low_open and value == low):
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise SettingsError(name, f"must be {bound} and at most {high}, got {shown(value)}")
