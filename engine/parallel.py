"""The parallel (diffusion-forcing) sampler: every token thinks at depth r without waiting r serial steps.

After Geiping, Yang and Su, "Efficient Parallel Samplers for Recurrent-Depth Models and Their Connection to
Diffusion Language Models" (arXiv 2510.14961); written from the paper, not ported from the authors' code.

The prompt is prefilled as in ``engine.decode`` and the first token chosen from it. Then a *window* of positions
whose keys and values are not final yet moves along the answer. Each *diffusion step* is one ``run_block`` over the
window: its input tokens (the last final token, then drafts), a moving average of their prelude outputs (``ema``),
``inner_steps`` core steps on every window position at once, and a head run on each, which drafts the token each
position predicts. Then

* **freeze rule: the contiguous prefix** (the paper's). From the window's first position on, a position freezes
  when its state moved less than ``threshold`` (relative L2 to the previous step) or it has had ``num_steps`` core
  steps on its current input token (the *depth cap*, so nothing can spin), *and* the token it was fed is the one
  its frozen predecessor finally chose. The first position that fails ends the prefix: no position freezes ahead
  of an unfrozen one (the authors' code freezes everything left of the rightmost converged position).
* a frozen position's token (the one it predicts) is final and yielded at once, so stop tokens and stop strings end
  the answer as soon as its ending token is frozen; its keys and values stay in the cache, the window's others are
  cropped and rewritten by the next step;
* a position whose input token changed starts counting its steps on that input from zero;
* ``headway`` new positions join at the end (fresh initial states, keyed by position as in ``decode``), up to
  ``max_window`` positions and the answer's budget; a window of 1 still progresses (by the depth cap).

Fallback: past ``max_steps`` diffusion steps, past ``max_seconds``, or when the sampler needs as many serial core
steps per token as sequential decoding would (the states do not converge), the rest of the answer is decoded
sequentially from the frozen prefix; ``ParallelStats.fallback`` says why.

The exact setting: ``inner_steps == num_steps``, no noise, no EMA. Each position then freezes by the depth cap
after one step, on its final input, with the initial state sequential decoding gives it: the output is sequential
decoding's, token for token, at any ``init_scale`` and for the same cache strategy (``tests/test_parallel.py``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from torch import Tensor

from .decode import DecodeStep, RowPlan, RowStops, decode, prefill
from .sampling import sample_token
from .settings import MAX_NUM_STEPS, GenerationSettings
from .step import Cancelled, run_block, seeded_initial_states


MAX_WAVEFRONT_STEPS = 2048  # diffusion steps an answer's wavefront keeps (about 12 characters each)


def wavefront_text(wavefront: list[tuple[int, int, int]]) -> str:
    """The compact form kept with an answer: ``lo,hi,done`` per diffusion step, space-separated (the first
    ``MAX_WAVEFRONT_STEPS``; ``Summary.diffusion_steps`` says how many ran)."""
    return " ".join(f"{lo},{hi},{done}" for lo, hi, done in wavefront[:MAX_WAVEFRONT_STEPS])


@dataclass(frozen=True)
class ParallelParams:
    """The sampler's parameters, as ``GenerationSettings`` names, validates and defaults them (``of``)."""

    inner_steps: int
    threshold: float
    max_window: int
    ema: float
    noise: float
    headway: int
    max_steps: int
    max_seconds: float  # 0: no wall-time limit

    @classmethod
    def of(cls, settings: GenerationSettings) -> "ParallelParams":
        return cls(settings.inner_steps, settings.freeze_threshold, settings.max_window, settings.embed_ema,
                   settings.state_noise, settings.headway, settings.max_diffusion_steps, settings.max_parallel_seconds)


@dataclass
class ParallelStats:
    diffusion_steps: int = 0
    core_passes: int = 0  # serial passes through the core block: a diffusion step counts inner_steps, a token r
    fallback: str | None = None  # why the rest of the answer was decoded sequentially
    # Per diffusion step, in answer-token indices: the window's positions produce tokens [lo, hi); tokens < done
    # are final after the step (the page's wavefront view).
    wavefront: list[tuple[int, int, int]] = field(default_factory=list)


class _Window:
    """Positions ``start ..`` whose keys and values are not final: per position its input token, state, the state
    after the previous step, its moving-average embedding, its steps on the current input and in all."""

    def __init__(self, start: int, token: int, state: Tensor) -> None:
        self.start = start
        self.tokens = [token]
        self.states = state  # (1, W, h)
        self.previous: list[Tensor | None] = [None]
        self.embeds: Tensor | None = None  # (1, W', h): the previous step's mixed embeddings of the first W' positions
        self.on_input = [0]
        self.total = [0]

    def __len__(self) -> int:
        return len(self.tokens)

    def mix(self, ema: float):
        """The moving average of the prelude outputs (new positions take theirs as they are)."""
        def mix_embedded(embedded: Tensor) -> Tensor:
            if ema > 0 and self.embeds is not None:
                kept = self.embeds.shape[1]
                embedded = embedded.clone()
                embedded[:, :kept] = (1 - ema) * embedded[:, :kept] + ema * self.embeds
            self.embeds = embedded
            return embedded
        return mix_embedded

    def advance(self, frozen: int, drafts: list[int], states: Tensor) -> None:
        """Drop the ``frozen`` first positions; every other position's input becomes its predecessor's draft."""
        changed = [False] + [drafts[i - 1] != self.tokens[i] for i in range(1, len(self))]
        self.tokens = [drafts[i - 1] if i else self.tokens[0] for i in range(len(self))]
        self.on_input = [0 if c else n for c, n in zip(changed, self.on_input)]
        self.previous = list(states[0].unbind(0))
        self.states = states
        self.start += frozen
        for name in ("tokens", "previous", "on_input", "total"):
            setattr(self, name, getattr(self, name)[frozen:])
        self.states = self.states[:, frozen:]
        if self.embeds is not None:
            self.embeds = self.embeds[:, frozen:]

    def grow(self, token: int, state: Tensor) -> None:
        self.tokens.append(token)
        self.states = torch.cat((self.states, state), dim=1)
        self.previous.append(None)
        self.on_input.append(0)
        self.total.append(0)


class _Chooser:
    """A position's token from its logits. Each position samples with a generator keyed by (seed, position), so a
    draft changes between steps only when its distribution does; the repetition penalty sees the tokens before it."""

    def __init__(self, plan: RowPlan, device: torch.device) -> None:
        self.plan, self.device = plan, device
        self.generator = torch.Generator(device=device)

    def choose(self, logits: Tensor, position: int, before: list[int]) -> int:
        params = self.plan.sampling
        seen = torch.tensor(before, device=logits.device) if params.repetition_penalty != 1.0 else None
        if not params.greedy:
            self.generator.manual_seed(((self.plan.seed or 0) * 1_000_003 + position) % 2**63)
        return sample_token(logits, params, self.generator, seen)

    def drafts(self, logits: Tensor, start: int, history: list[int], inputs: list[int]) -> list[int]:
        """The token each window position predicts: position ``start + i`` sees the history and inputs 1..i."""
        params = self.plan.sampling
        if params.greedy and params.repetition_penalty == 1.0:
            return logits.argmax(-1).tolist()
        return [self.choose(logits[i], start + i, history + inputs[1:i + 1]) for i in range(logits.shape[0])]


def _relative_change(state: Tensor, previous: Tensor | None) -> float:
    if previous is None:
        return math.inf
    return float((state - previous).float().norm() / state.float().norm().clamp_min(1e-12))


@torch.inference_mode()
def parallel_decode(
    model,
    input_ids: Tensor,
    plan: RowPlan,
    params: ParallelParams,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    cancel: threading.Event | None = None,
    cache=None,
    stats: ParallelStats | None = None,
    stops: RowStops | None = None,
) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per final token, like ``engine.decode.decode`` for a single row; ``steps`` is the
    number of core steps the position that predicted the token received. Batch 1, fixed depth."""
    stats = stats if stats is not None else ParallelStats()
    budget, r = plan.max_new_tokens, plan.num_steps
    if cache is None:
        cache = model.new_cache(1, "compress-layer", capacity=input_ids.shape[1] + budget)
    history = input_ids[0].tolist()
    prompt_len = len(history)
    chooser = _Chooser(plan, input_ids.device)
    inner = replace(plan, num_steps=params.inner_steps)
    began = time.perf_counter()

    def final(token: int, steps: int) -> DecodeStep:
        # A position far ahead in a slow window may think longer than any depth a token record allows.
        steps = min(steps, MAX_NUM_STEPS)
        history.append(token)
        done = token in stop_ids or len(history) - prompt_len >= budget
        return DecodeStep([token], [steps], [[]], steps, finished=(done,))

    try:
        x = input_ids[:, cache.seq_len:]
        prompt, _ = prefill(model, x, [plan], cache, cancel)  # as decode(split_prompt=True), then the last token
        block = run_block(model, x[:, -1:], [plan], cache, cancel=cancel)
        stats.core_passes += r
        step = replace(final(chooser.choose(block.logits[0, -1], prompt_len - 1, history), r), prompt=prompt)
        yield step
        if step.finished[0] or (stops is not None and 0 in stops):
            return
        window = _Window(prompt_len, history[-1], _fresh_state(model, block.latent, plan, prompt_len))
        frozen_tokens = 0
        while len(window):  # empty once the context is full
            reason = _fallback_reason(stats, params, r, frozen_tokens, time.perf_counter() - began)
            if reason is not None:
                stats.fallback = reason
                break
            states = _noised(model, window, params, plan, stats.diffusion_steps)
            ids = torch.tensor([window.tokens], device=input_ids.device)
            block = run_block(model, ids, [inner], cache, input_states=states, pos0=window.start, cancel=cancel,
                              last_only=False, mix_embedded=window.mix(params.ema))
            stats.diffusion_steps += 1
            stats.core_passes += params.inner_steps
            window.on_input = [n + params.inner_steps for n in window.on_input]
            window.total = [n + params.inner_steps for n in window.total]
            drafts = chooser.drafts(block.logits[0], window.start, history, window.tokens)
            count = 0
            for i in range(len(window)):
                if i and window.tokens[i] != drafts[i - 1]:
                    break  # it thought about a token that is not the one its predecessor chose
                converged = _relative_change(block.state[0, i], window.previous[i]) < params.threshold
                if not converged and window.on_input[i] < r:
                    break
                count += 1
            lo = window.start - prompt_len + 1
            stats.wavefront.append((lo, lo + len(window), lo + count))
            for i in range(count):
                step = final(drafts[i], window.total[i])
                frozen_tokens += 1
                yield step
                if step.finished[0] or (stops is not None and 0 in stops):
                    return
            cache.crop(window.start + count)
            window.advance(count, drafts, block.state)
            end = window.start + len(window)  # the next new position; it would predict token end - prompt_len + 1
            for _ in range(params.headway):
                if len(window) >= params.max_window or end - prompt_len + 1 >= budget or end >= model.config.block_size:
                    break
                window.grow(drafts[-1], _fresh_state(model, block.latent[:, :1], plan, end))
                end += 1
    except Cancelled:
        yield DecodeStep([-1], [0], [[]], 0, cancelled=True, finished=(False,))
        return
    if stats.fallback is None:
        return
    # Fallback: decode the rest sequentially from the last final token.
    cache.crop(window.start)
    rest = replace(plan, max_new_tokens=budget - (len(history) - prompt_len))
    ids = torch.tensor([history], device=input_ids.device)
    for out in decode(model, ids, [rest], stop_ids=stop_ids, cancel=cancel, cache=cache, stops=stops):
        stats.core_passes += out.steps[0]
        yield out


def _fresh_state(model, like: Tensor, plan: RowPlan, position: int) -> Tensor:
    """The initial state sequential decoding gives ``position`` (keyed by state seed and position)."""
    key = plan.seed if plan.state_seed is None else plan.state_seed
    return seeded_initial_states(model, like[:, :1], plan.init_scale, key or 0, position)


def _noised(model, window: _Window, params: ParallelParams, plan: RowPlan, step: int) -> Tensor:
    """Mix fresh noise into the window's states, damped by the steps each position already had (beta / (1 + n))."""
    if params.noise <= 0:
        return window.states
    key = ((plan.state_seed or 0) * 1_000_003 + step) % 2**63
    noise = model.initial_state(window.states, plan.init_scale or 1.0, torch.Generator(window.states.device)
                                .manual_seed(key))
    beta = torch.tensor([params.noise / (1 + n) for n in window.total], device=noise.device,
                        dtype=noise.dtype)[None, :, None]
    return (1 - beta) * window.states + beta * noise


def _fallback_reason(stats: ParallelStats, params: ParallelParams, r: int, frozen: int,
                     elapsed: float) -> str | None:
    if stats.diffusion_steps >= params.max_steps:
        return f"step cap: {params.max_steps} diffusion steps reached"
    if params.max_seconds and elapsed >= params.max_seconds:
        return f"time cap: {params.max_seconds:g} s reached"
    passes = stats.diffusion_steps * params.inner_steps
    # At inner_steps == r the sampler is sequential decoding by construction: nothing to fall back from.
    if params.inner_steps < r and passes >= 2 * r and passes >= r * max(frozen, 1):
        return (f"non-converging: {passes / max(frozen, 1):.1f} core steps per token, no fewer than sequential "
                f"decoding's {r}")
    return None
