"""Self-speculative decoding: draft a few tokens thinking shallowly, verify them all at full depth in one pass.

A recurrent-depth model is its own draft model: the same weights at ``draft_steps`` recurrences guess the next
``lookahead`` tokens one by one; one block at the full ``num_steps`` over those positions then gives the tokens plain
greedy decoding would have produced. The longest agreeing prefix is kept, plus the full-depth token at the first
disagreement, so the output is the plain greedy output (repetition penalty included: each position's choice sees the
tokens before it). The verification pass reads each weight once for all its positions, which is where the time is
won on bandwidth-bound hardware.

Greedy, fixed depth, full cache, batch 1: the settings refuse other combinations. Every pass is one
``engine.step.run_block``, so cancel is honoured before each recurrence step, as in ``decode``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import Tensor

from .decode import DecodeStep, PromptDepth, RowPlan, RowStops
from .sampling import sample_token
from .step import Cancelled, run_block


@dataclass
class SpeculationStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class _Speculator:
    """One row's draft / verify rounds over a shared cache; ``history`` is the prompt and every token produced."""

    def __init__(self, model, plan: RowPlan, draft_steps: int, cache, cancel: threading.Event | None,
                 history: list[int], device: torch.device) -> None:
        self.model, self.plan, self.cache, self.cancel = model, plan, cache, cancel
        self.draft_plan = replace(plan, num_steps=draft_steps)
        self.history, self.device = history, device
        self.prompt: PromptDepth | None = None  # set by first()

    def choose(self, logits: Tensor, extra: list[int]) -> int:
        seen = torch.tensor(self.history + extra, device=logits.device)
        return sample_token(logits, self.plan.sampling, None, seen)

    def first(self, input_ids: Tensor) -> int:
        """The first token, after prefilling the prompt positions the cache does not hold yet."""
        rest = input_ids[:, self.cache.seq_len:]
        block = run_block(self.model, rest, [self.plan], self.cache, cancel=self.cancel)
        self.prompt = PromptDepth.of_block(block, rest.shape[1] - 1)
        return self.choose(block.logits[0, -1], [])

    def draft(self, room: int, stop_ids: set[int] | frozenset[int]) -> list[int]:
        drafts: list[int] = []
        token = self.history[-1]
        for _ in range(room):
            ids = torch.tensor([[token]], device=self.device)
            logits = run_block(self.model, ids, [self.draft_plan], self.cache, cancel=self.cancel).logits[0, -1]
            token = self.choose(logits, drafts)
            drafts.append(token)
            if token in stop_ids:
                break
        return drafts

    def verify(self, start: int, drafts: list[int]) -> list[int]:
        """The full-depth tokens after the last token and after each draft but the last; the cache is rewound to
        ``start`` first, so the drafts' shallow entries are replaced."""
        self.cache.crop(start)
        ids = torch.tensor([[self.history[-1]] + drafts[:-1]], device=self.device)
        logits = run_block(self.model, ids, [self.plan], self.cache, cancel=self.cancel, last_only=False).logits[0]
        return [self.choose(logits[i], drafts[:i]) for i in range(len(drafts))]


@torch.inference_mode()
def speculative_decode(
    model,
    input_ids: Tensor,
    plan: RowPlan,
    draft_steps: int,
    lookahead: int,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    cancel: threading.Event | None = None,
    cache=None,
    stats: SpeculationStats | None = None,
    stops: RowStops | None = None,
) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per accepted token, like ``engine.decode.decode`` for a single row."""
    stats = stats if stats is not None else SpeculationStats()
    if cache is None:
        cache = model.new_cache(1, "full", capacity=input_ids.shape[1] + plan.max_new_tokens + lookahead)
    spec = _Speculator(model, plan, draft_steps, cache, cancel, input_ids[0].tolist(), input_ids.device)
    new_tokens: list[int] = []
    try:
        new_tokens = [spec.first(input_ids)]
        produced = 0
        while True:
            for token in new_tokens:
                spec.history.append(token)
                produced += 1
                done = token in stop_ids or produced >= plan.max_new_tokens
                yield DecodeStep([token], [plan.num_steps], [[]], plan.num_steps, finished=(done,),
                                 prompt=spec.prompt if produced == 1 else None)
                if done or (stops is not None and 0 in stops):
                    return
            start = cache.seq_len
            room = min(lookahead, plan.max_new_tokens - produced, model.config.block_size - start - 1)
            if room < 1:
                return
            drafts = spec.draft(room, stop_ids)
            verified = spec.verify(start, drafts)
            accepted = next((i for i, (v, d) in enumerate(zip(verified, drafts)) if v != d), len(drafts))
            stats.rounds, stats.drafted, stats.accepted = (stats.rounds + 1, stats.drafted + len(drafts),
                                                           stats.accepted + accepted)
            new_tokens = verified[:accepted + 1] if accepted < len(drafts) else drafts
            # Positions whose inputs were right keep their full-depth entries; the rest are recomputed next round.
            cache.crop(start + len(new_tokens))
    except Cancelled:
        yield DecodeStep([-1], [0], [[]], 0, cancelled=True, finished=(False,))
