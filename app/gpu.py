"""GPU work: every model call the app makes, under ``spaces.GPU`` on a ZeroGPU Space and directly elsewhere.

Gradio-free at import time (the ``spaces`` package imports Gradio itself, and only on a ZeroGPU Space).
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, Sequence

import engine

# ZeroGPU duration estimate. One recurrence step of Huginn-0125 for one token is a few milliseconds on a ZeroGPU
# slice; the estimate errs long because a task that outlives its duration is killed, while a longer request only
# costs queue priority. Capped because ZeroGPU refuses durations beyond its per-call maximum.
GPU_BASE_SECONDS = 10.0
GPU_SECONDS_PER_TOKEN_STEP = 0.0025
GPU_MAX_SECONDS = 120


class EngineWork(Protocol):
    """What the handlers generate with: ``GpuWork`` over the local model, or ``app.remote.RemoteEngine``, each
    behind the page's ``Gate`` (``GatedWork``)."""

    def stream(self, messages: list[dict[str, Any]], settings: engine.GenerationSettings,
               cancel: threading.Event | None = None, owner: str = "") -> Iterator[Any]: ...

    def compare(self, messages: list[dict[str, Any]], settings_list: list[engine.GenerationSettings],
                cancel: threading.Event | None = None) -> list[engine.CompareResult]: ...


def zero_gpu_requested(environ: dict[str, str] | None = None) -> bool:
    """True on a ZeroGPU Space: the platform sets SPACES_ZERO_GPU=true (the flag the ``spaces`` package reads)."""
    env = os.environ if environ is None else environ
    return env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def import_spaces() -> Any | None:
    """The ``spaces`` package, or None where it is not installed. On ZeroGPU it must be imported before anything
    initialises CUDA, so ``run.py`` calls this first."""
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def zero_gpu_active() -> bool:
    """ZeroGPU is requested by the platform and the ``spaces`` package is there to honour it."""
    return zero_gpu_requested() and import_spaces() is not None


def gpu_seconds(token_steps: float) -> int:
    """ZeroGPU duration for ``token_steps`` recurrence steps over all generated tokens."""
    return int(min(GPU_MAX_SECONDS, math.ceil(GPU_BASE_SECONDS + GPU_SECONDS_PER_TOKEN_STEP * token_steps)))


def stream_duration(messages: Any, settings: engine.GenerationSettings, cancel: Any = None, owner: str = "") -> int:
    return gpu_seconds(settings.num_steps * settings.max_new_tokens)


def compare_duration(messages: Any, settings_list: Sequence[engine.GenerationSettings], cancel: Any = None) -> int:
    # The rows run batched, so this overestimates; it is still the bound a task must fit in.
    return gpu_seconds(sum(s.num_steps * s.max_new_tokens for s in settings_list))


def gpu(fn: Callable, duration: Callable[..., int]) -> Callable:
    """``spaces.GPU(fn, duration=duration)`` where the package is installed (it returns ``fn`` itself unless
    SPACES_ZERO_GPU is set), else ``fn``."""
    spaces = import_spaces()
    return fn if spaces is None else spaces.GPU(fn, duration=duration)


class GpuWork:
    """Every model call the app makes. On ZeroGPU each runs under ``spaces.GPU`` in a worker process the platform
    forks with a GPU attached; elsewhere the decorator is a no-op and the calls run here. Only picklable values
    cross: messages, settings, events, results. The model is reached through the slot, which the fork inherits."""

    def __init__(self, slot: Any, zero_gpu: bool | None = None) -> None:
        self.slot = slot
        self.zero_gpu = zero_gpu_active() if zero_gpu is None else zero_gpu
        self._stream = gpu(self._stream_on_gpu, stream_duration)
        self._compare = gpu(self._compare_on_gpu, compare_duration)

    def _stream_on_gpu(self, messages: list[dict[str, str]], settings: engine.GenerationSettings,
                       cancel: Any = None, owner: str = "") -> Iterator[Any]:
        model, tokenizer = self.slot.pair
        # Under ZeroGPU each call runs in a fresh worker process, so a cache kept there would never be seen again.
        prompt_cache = None if self.zero_gpu else self.slot.prompt_cache
        yield from engine.stream(model, tokenizer, messages, settings, cancel, prompt_cache, owner)

    def _compare_on_gpu(self, messages: list[dict[str, str]], settings_list: list[engine.GenerationSettings],
                        cancel: Any = None) -> list[engine.CompareResult]:
        model, tokenizer = self.slot.pair
        return engine.compare(model, tokenizer, messages, settings_list, cancel)

    def stream(self, messages: list[dict[str, str]], settings: engine.GenerationSettings,
               cancel: Any = None, owner: str = "") -> Iterator[Any]:
        """engine.stream's events. ``owner`` keeps each visitor's conversation caches to themselves. Stop: the
        engine checks ``cancel`` itself; under ZeroGPU a threading.Event cannot reach the worker process, so the
        stream is cut here instead and ends without a Summary."""
        if not self.zero_gpu:
            yield from self._stream(messages, settings, cancel, owner)
            return
        events = self._stream(messages, settings, None, owner)
        try:
            for event in events:
                yield event
                if cancel is not None and cancel.is_set():
                    return
        finally:
            events.close()

    def compare(self, messages: list[dict[str, str]], settings_list: list[engine.GenerationSettings],
                cancel: Any = None) -> list[engine.CompareResult]:
        return self._compare(messages, list(settings_list), None if self.zero_gpu else cancel)


# ---- one generation at a time, for the page and the API together -----------------------------------------------

class Gate:
    """At most ``limit`` generations at once and ``queue_size`` waiting (None: unbounded), shared by the page and
    the API so both keep the server's one-at-a-time promise. A freed slot goes to a waiting request at once, and a
    request whose ``cancel`` is set while it waits leaves the line within ``POLL_S``."""

    POLL_S = 0.02

    def __init__(self, limit: int, queue_size: int | None) -> None:
        self._cond = threading.Condition()
        self.limit = max(1, limit)
        self.queue_size = queue_size
        self.running = 0
        self.waiting = 0

    def admit(self) -> bool:
        """Take a place in line for an API request, or False when ``queue_size`` requests already wait (Gradio's
        own queue counts the same way: the running ones are not in line)."""
        with self._cond:
            if self.queue_size is not None and self.waiting - self._free() >= self.queue_size:
                return False
            self.waiting += 1
            return True

    def leave(self) -> None:
        """Give back a place ``admit`` gave, for a request that ends before it waits."""
        with self._cond:
            self.waiting -= 1

    def _free(self) -> int:
        return max(0, self.limit - self.running)

    @contextmanager
    def hold(self, cancel: threading.Event | None = None, admitted: bool = False) -> Iterator[bool]:
        """Wait for a slot (``admitted``: the place in line ``admit`` gave); yields False instead when ``cancel``
        is set while waiting."""
        got = False
        with self._cond:
            if not admitted:
                self.waiting += 1
            try:
                while not (cancel is not None and cancel.is_set()):
                    if self.running < self.limit:
                        self.running += 1
                        got = True
                        break
                    self._cond.wait(self.POLL_S)
            finally:
                self.waiting -= 1
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self.running -= 1
                    self._cond.notify()


class GatedWork:
    """``GpuWork`` (or the remote engine) behind a ``Gate``: the same interface the handlers use."""

    def __init__(self, work: Any, gate: Gate) -> None:
        self.work, self.gate = work, gate

    def stream(self, messages: list[dict[str, str]], settings: engine.GenerationSettings,
               cancel: threading.Event | None = None, owner: str = "") -> Iterator[Any]:
        with self.gate.hold(cancel) as got:
            if got:
                yield from self.work.stream(messages, settings, cancel, owner)

    def compare(self, messages: list[dict[str, str]], settings_list: list[engine.GenerationSettings],
                cancel: threading.Event | None = None) -> list[engine.CompareResult]:
        with self.gate.hold(cancel) as got:
            if not got:
                raise engine.PromptError("stopped before it started")
            return self.work.compare(messages, settings_list, cancel)
