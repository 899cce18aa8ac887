"""Self-speculative decoding: draft a few tokens thinking shallowly, verify them all at full depth in one pass.

A recurrent-depth model is its own draft model: the same weights at ``draft_steps`` recurrences guess the next
``lookahead`` tokens one by one; one forward pass at the full ``num_steps`` over those positions then gives the
tokens plain greedy decoding would have produced. The longest agreeing prefix is kept, plus the full-depth token at
the first disagreement, so the output is the plain greedy output. The verification pass reads each weight once for
all its positions, which is where the time is won on bandwidth-bound hardware.

Greedy, fixed depth, full cache, batch 1: the settings refuse other combinations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .decode import DecodeStep, RowPlan, initial_states


@dataclass
class SpeculationStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def _run(model, ids: Tensor, cache, plan: RowPlan, steps: int, all_positions: bool) -> Tensor:
    """Process ``ids`` (1, S) at the cache's current position with ``steps`` recurrences; return logits."""
    pos0, seq = cache.seq_len, ids.shape[1]
    rope = model._rope(slice(pos0, pos0 + seq))
    embedded = model.embed(ids, cache, pos0, rope=rope)
    state = initial_states(model, embedded, plan.init_scale, plan.seed, pos0)
    for step in range(steps):
        state = model.core_step(state, embedded, step, cache, pos0, rope=rope)
    logits, _ = model.predict(state, cache, pos0, rope=rope, last_only=not all_positions)
    cache.seq_len = pos0 + seq
    return logits[0]


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
) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per accepted token, like ``engine.decode.decode`` for a single row."""
    stats = stats if stats is not None else SpeculationStats()
    if cache is None:
        cache = model.new_cache(1, "full", capacity=input_ids.shape[1] + plan.max_new_tokens + lookahead)
    produced, finished = 0, [False]
    pending = int(_run(model, input_ids, cache, plan, plan.num_steps, False)[-1].argmax())
    yield DecodeStep([pending], [plan.num_steps], [[]], plan.num_steps, finished=finished)
    produced += 1
    if pending in stop_ids or produced >= plan.max_new_tokens:
        return

    while not finished[0]:
        if cancel is not None and cancel.is_set():
            yield DecodeStep([-1], [0], [[]], 0, cancelled=True, finished=finished)
            return
        start = cache.seq_len
        room = min(lookahead, plan.max_new_tokens - produced, model.config.block_size - start - 1)
        if room < 1:
            return
        drafts, token = [], pending
        for _ in range(room):
            token = int(_run(model, torch.tensor([[token]], device=input_ids.device), cache, plan, draft_steps,
                             False)[-1].argmax())
            drafts.append(token)
            if token in stop_ids:
                break
        cache.crop(start)
        verify_ids = torch.tensor([[pending] + drafts[:-1]], device=input_ids.device)
        verified = _run(model, verify_ids, cache, plan, plan.num_steps, True).argmax(-1).tolist()
        accepted = 0
        while accepted < len(drafts) and verified[accepted] == drafts[accepted]:
            accepted += 1
        stats.rounds += 1
        stats.drafted += len(drafts)
        stats.accepted += accepted
        new_tokens = verified[:accepted + 1] if accepted < len(drafts) else drafts
        # Positions whose inputs were right keep their full-depth entries; the rest are recomputed next round.
        cache.crop(start + len(new_tokens))
        for token in new_tokens:
            produced += 1
            finished[0] = token in stop_ids or produced >= plan.max_new_tokens
            yield DecodeStep([token], [plan.num_steps], [[]], plan.num_steps, finished=finished)
            if finished[0]:
                return
        pending = new_tokens[-1]
