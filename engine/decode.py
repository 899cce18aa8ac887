"""The token loop: every way of generating in this project runs through ``decode``.

For each new token: prelude, an initial state per row, recurrences until each row's depth or exit criterion says
stop, the coda, and a choice of token per row. Rows of one batch may use different depths, criteria, warm start
and sampling (``engine.compare``): each row writes the KV cache only while it is still iterating, so its output is
the one it would have alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from .exits import ExitTracker
from .sampling import SamplingParams, sample_token


@dataclass(frozen=True)
class RowPlan:
    """How one batch row thinks and samples. ``criterion=None`` is the fixed-depth path (the reference's
    ``generate_minimal``): warm start then carries the ln_f-normalised latent. Any criterion, "none" included, is
    the adaptive path, which carries the raw core output, as the reference does."""

    num_steps: int
    criterion: str | None = None
    threshold: float = 0.0
    min_steps: int = 0
    check_every: int = 1
    warm_start: bool = False
    init_scale: float = 1.0
    sampling: SamplingParams = SamplingParams()
    max_new_tokens: int = 256
    seed: int = 0
    exit_in_prefill: bool = True  # False: the prompt always runs all steps (the reference's do_not_exit_in_prefill)


@dataclass
class DecodeStep:
    """One generated position: per row the token (-1 for finished rows), steps used and exit values checked."""

    tokens: list[int]
    steps: list[int]
    exit_values: list[list[float]]
    core_iterations: int
    cancelled: bool = False
    finished: list[bool] = field(default_factory=list)


def initial_states(model, embedded: Tensor, scale: float, seed: int, pos0: int) -> Tensor:
    """Random initial states for positions ``pos0 ..`` of one row, each drawn from its own (seed, position) stream,
    so a token's state is the same whether it is decoded alone, in a batch, or verified with others."""
    if scale <= 0:
        return torch.zeros_like(embedded)
    gen = torch.Generator(device=embedded.device)
    states = []
    for offset in range(embedded.shape[1]):
        gen.manual_seed((seed * 1_000_003 + pos0 + offset) % 2**63)
        states.append(model.initial_state(embedded[:, offset:offset + 1], scale, gen))
    return torch.cat(states, dim=1)


def _mask(rows: list[bool], device: torch.device) -> Tensor | None:
    return None if all(rows) else torch.tensor(rows, device=device)


@torch.inference_mode()
def decode(
    model,
    input_ids: Tensor,
    plans: list[RowPlan],
    cache_strategy: str = "full",
    stop_ids: set[int] | frozenset[int] = frozenset(),
    cancel: threading.Event | None = None,
    cache=None,
) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per generated position until every row stopped (stop token or its token budget).

    ``input_ids`` is (1, S) (shared by all rows) or (B, S). A set ``cancel`` event ends the loop before the next
    recurrence step, with a final ``DecodeStep`` marked ``cancelled``.
    """
    batch = len(plans)
    if input_ids.shape[0] == 1 and batch > 1:
        input_ids = input_ids.expand(batch, -1)
    device = model.transformer.wte.weight.device
    config = model.config
    prompt_len = input_ids.shape[1]
    budget = max(p.max_new_tokens for p in plans)
    if cache is None:
        cache = model.new_cache(batch, cache_strategy, capacity=prompt_len + budget)
    sample_gens = [torch.Generator(device=device).manual_seed(p.seed) for p in plans]
    history = input_ids.clone()
    finished = [False] * batch
    produced = [0] * batch
    carried: Tensor | None = None
    x = input_ids

    while not all(finished):
        prefill = carried is None
        pos0, seq = cache.seq_len, x.shape[1]
        rope = model._rope(slice(pos0, pos0 + seq))
        embedded = model.embed(x, cache, pos0, rope=rope)
        state = torch.cat([
            carried[r:r + 1] if not prefill and plans[r].warm_start
            else initial_states(model, embedded[r:r + 1], plans[r].init_scale, plans[r].seed, pos0)
            for r in range(batch)
        ])
        next_carried = state[:, -1:].clone() if prefill else carried.clone()

        iterating = [not f for f in finished]
        trackers: dict[str, tuple[ExitTracker, Tensor]] = {}
        for criterion in {p.criterion for p, it in zip(plans, iterating) if it and p.criterion is not None}:
            members = torch.tensor([p.criterion == criterion for p in plans], device=device)
            thresholds = torch.tensor([p.threshold for p in plans], device=device)
            trackers[criterion] = (ExitTracker(criterion, thresholds, state, config.vocab_size), members)
        steps = [0] * batch
        values: list[list[float]] = [[] for _ in range(batch)]
        final_logits: list[Tensor | None] = [None] * batch
        core_iterations = 0
        max_steps = max(p.num_steps for p, it in zip(plans, iterating) if it)

        for step in range(max_steps):
            if cancel is not None and cancel.is_set():
                yield DecodeStep([-1] * batch, steps, values, core_iterations, cancelled=True, finished=finished)
                return
            rows = _mask(iterating, device)
            new_state = model.core_step(state, embedded, step, cache, pos0, rows, rope)
            state = new_state if rows is None else torch.where(rows[:, None, None], new_state, state)
            core_iterations += sum(iterating)

            checking = [it and p.criterion is not None and step >= p.min_steps
                        and (step - p.min_steps) % p.check_every == 0 and (p.exit_in_prefill or not prefill)
                        for p, it in zip(plans, iterating)]
            ending = [it and step + 1 >= p.num_steps for p, it in zip(plans, iterating)]
            wants_logits = [e or (c and trackers[plans[r].criterion][0].needs_logits)
                            for r, (c, e) in enumerate(zip(checking, ending))]
            logits = latent = None
            if any(wants_logits):
                logits, latent = model.predict(state, cache, pos0, _mask(wants_logits, device), rope, last_only=True,
                                               head_rows=[r for r, w in enumerate(wants_logits) if w])

            exiting = [False] * batch
            if any(checking):
                check_mask = torch.tensor(checking, device=device)
                exit_mask = torch.zeros(batch, dtype=torch.bool, device=device)
                exit_values = torch.zeros(batch, device=device)
                for criterion, (tracker, members) in trackers.items():
                    if not any(c and p.criterion == criterion for c, p in zip(checking, plans)):
                        continue
                    rows_here = check_mask & members
                    exits, vals = tracker.check(state, logits, rows_here)
                    exit_mask |= exits & rows_here
                    exit_values = torch.where(rows_here, vals.float(), exit_values)
                exit_host, values_host = exit_mask.tolist(), exit_values.tolist()
                for r in range(batch):
                    if checking[r]:
                        values[r].append(values_host[r])
                        exiting[r] = exit_host[r]
            late = [ex and not w for ex, w in zip(exiting, wants_logits)]
            late_logits = None
            if any(late):
                late_logits, _ = model.predict(state, cache, pos0, _mask(late, device), rope, last_only=True,
                                               head_rows=[r for r, w in enumerate(late) if w])

            for r in range(batch):
                if not (exiting[r] or ending[r]):
                    continue
                final_logits[r] = (late_logits if late[r] else logits)[r, -1]
                steps[r] = step + 1
                iterating[r] = False
                fixed_path = plans[r].criterion is None
                next_carried[r] = (latent[r, -1:] if fixed_path else state[r, -1:])
            if not any(iterating):
                break

        cache.seq_len = pos0 + seq
        carried = next_carried
        tokens = [-1] * batch
        for r in range(batch):
            if finished[r]:
                continue
            tokens[r] = sample_token(final_logits[r], plans[r].sampling, sample_gens[r], history[r])
            produced[r] += 1
            if tokens[r] in stop_ids or produced[r] >= plans[r].max_new_tokens:
                finished[r] = True
        step_out = DecodeStep(tokens, steps, values, core_iterations, finished=finished)
        yield step_out  # the caller may set more rows finished (stop strings, context)
        next_ids = torch.tensor([[t if t >= 0 else config.pad_token_id or 0] for t in tokens], device=device)
        history = torch.cat((history, next_ids), dim=1)
        x = next_ids
        if cache.seq_len + 1 > config.block_size:
            break
