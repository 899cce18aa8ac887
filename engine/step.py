"""One way to run a token block: prelude, initial state, the recurrence with exits, then coda and head.

``run_block`` is the only code that runs the model. ``HuginnForCausalLM.forward``, the prompt prefill and every
decoded token in ``engine.decode``, and the draft and verification passes of ``engine.speculative`` all call it. It
owns the rotary positions, the initial states and the cache position: ``cache.seq_len`` advances here and nowhere
else.

Rows of one block may differ in depth, exit criterion, warm start and seed (``engine.compare``). A row writes the
KV cache only while it is still iterating, so each row computes what it would alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .exits import ExitTracker
from .sampling import SamplingParams
from .trace import StepRecorder, StepTrace


@dataclass(frozen=True)
class RowPlan:
    """How one batch row thinks and samples. ``criterion=None`` is the fixed-depth path (the reference's
    ``generate_minimal``): warm start then carries the ln_f-normalised latent. Any criterion, "none" included, is
    the adaptive path, which carries the raw core output, as the reference does. ``seed`` drives sampling.
    ``state_seed`` keys each position's random initial state by (state_seed, position); ``None`` means "the same as
    ``seed``", and with both ``None`` the states come from torch's global generator (``forward``)."""

    num_steps: int
    criterion: str | None = None
    threshold: float = 0.0
    min_steps: int = 0
    check_every: int = 1
    warm_start: bool = False
    init_scale: float = 1.0
    sampling: SamplingParams = SamplingParams()
    max_new_tokens: int = 256
    seed: int | None = 0
    state_seed: int | None = None
    exit_in_prefill: bool = True  # False: the prompt always runs all steps (the reference's do_not_exit_in_prefill)
    # decode(split_prompt=True): the prompt's positions run one at a time, each exiting like a decoded token (the
    # authors' _prefill_with_varied_exit_steps), instead of one block at full depth
    prompt_exits: bool = False
    trace_top_k: int | None = None  # the depth lens (engine.trace): tokens kept per step; None = not traced


class Cancelled(Exception):
    """The cancel event was set before a recurrence step; the block did not finish and the cache did not advance."""


@dataclass
class BlockResult:
    """What one block produced, per row at the step where that row stopped iterating."""

    logits: Tensor  # (B, S or 1, V) fp32; zeros for rows that were not active
    latent: Tensor  # (B, S, h): ln_f of the final state, the input of the coda
    state: Tensor  # (B, S, h): the raw final core output
    steps: list[int]
    exit_values: list[list[float]]
    core_iterations: int
    traces: list[tuple[list[StepTrace], Tensor] | None] | None = None  # per row, for traced plans (StepRecorder)
    # per row, per traced position (the block's last ``trace_positions``), for traced plans
    position_traces: list[list[tuple[list[StepTrace], Tensor]] | None] | None = None
    # (B, S): per position, how far its state still moved at the row's last step (|s_t - s_t-1| / |s_t|); how
    # converged each position was when its row stopped
    change: Tensor | None = None

    def carry(self, plans: list[RowPlan]) -> Tensor:
        """Each row's warm-start state for the next token (see ``RowPlan``)."""
        return torch.cat([self.latent[r:r + 1, -1:] if p.criterion is None else self.state[r:r + 1, -1:]
                          for r, p in enumerate(plans)])


def seeded_initial_states(model, embedded: Tensor, scale: float, seed: int, pos0: int) -> Tensor:
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


def run_block(model, input_ids: Tensor | None, plans: list[RowPlan], cache=None, *,
              input_embeds: Tensor | None = None, input_states: Tensor | None = None, carried: Tensor | None = None,
              active: list[bool] | None = None, prefill: bool = True, cancel: threading.Event | None = None,
              pos0: int | None = None, positions: Tensor | None = None, grad_steps: int = 0,
              last_only: bool = True, mix_embedded: Callable[[Tensor], Tensor] | None = None,
              trace_positions: int = 1) -> BlockResult:
    """Run a (B, S) block of tokens at the cache position (or ``pos0``) through the whole model.

    ``carried`` holds each row's state from the previous token, used by rows with warm start; ``input_states``
    replaces every initial state (the authors' ``forward``). Rows not ``active`` run the prelude only. The last
    ``grad_steps`` recurrences record gradients when gradients are enabled. ``last_only`` runs the head on the last
    position only. ``mix_embedded`` maps the prelude's output before it is injected at every recurrence (the
    parallel sampler's moving average of a window's embeddings). Traced plans record the block's last
    ``trace_positions`` positions (a traced prompt). Raises ``Cancelled`` when ``cancel`` is set before a recurrence
    step.
    """
    seq = (input_ids if input_embeds is None else input_embeds).shape[1]
    pos0 = (cache.seq_len if cache is not None else 0) if pos0 is None else pos0
    if pos0 + seq > model.config.block_size:
        raise ValueError(f"sequence of {pos0 + seq} tokens exceeds the model's context of "
                         f"{model.config.block_size} tokens")
    rope = model.rotations(slice(pos0, pos0 + seq) if positions is None else positions)
    embedded = model.embed(input_ids, cache, pos0, input_embeds, rope)
    if mix_embedded is not None:
        embedded = mix_embedded(embedded)
    if input_states is None:
        input_states = _initial_states(model, embedded, plans, carried, pos0)
    active = [True] * len(plans) if active is None else list(active)
    result = _Recurrence(model, plans, active, input_states, prefill, min(trace_positions, seq)).run(
        embedded, cache, pos0, rope, cancel, grad_steps, last_only)
    if cache is not None:
        cache.seq_len = max(cache.seq_len, pos0 + seq)  # the one place where the cache position moves
    return result


def _state_key(plan: RowPlan) -> int | None:
    return plan.seed if plan.state_seed is None else plan.state_seed


def _initial_states(model, embedded: Tensor, plans: list[RowPlan], carried: Tensor | None, pos0: int) -> Tensor:
    if all(_state_key(p) is None and not p.warm_start for p in plans) and len({p.init_scale for p in plans}) == 1:
        return model.initial_state(embedded, plans[0].init_scale)  # one draw for the batch, as the reference
    rows = []
    for r, p in enumerate(plans):
        key = _state_key(p)
        if p.warm_start and carried is not None:
            rows.append(carried[r:r + 1])
        elif key is None:
            rows.append(model.initial_state(embedded[r:r + 1], p.init_scale))
        else:
            rows.append(seeded_initial_states(model, embedded[r:r + 1], p.init_scale, key, pos0))
    return torch.cat(rows)


def _mask(rows: list[bool], device: torch.device) -> Tensor | None:
    return None if all(rows) else torch.tensor(rows, device=device)


class _ExitChecks:
    """The exit criteria of a block's rows: which rows check at a step, and which of those exit."""

    def __init__(self, plans: list[RowPlan], active: list[bool], state: Tensor, vocab_size: int,
                 prefill: bool) -> None:
        self.plans, self.prefill = plans, prefill
        device = state.device
        thresholds = torch.tensor([p.threshold for p in plans], device=device)
        self.trackers: dict[str, tuple[ExitTracker, Tensor]] = {}
        for criterion in {p.criterion for p, a in zip(plans, active) if a and p.criterion is not None}:
            members = torch.tensor([p.criterion == criterion for p in plans], device=device)
            self.trackers[criterion] = (ExitTracker(criterion, thresholds, state, vocab_size), members)
        self.values: list[list[float]] = [[] for _ in plans]

    def checking(self, step: int, iterating: list[bool]) -> list[bool]:
        return [it and p.criterion is not None and step >= p.min_steps and (step - p.min_steps) % p.check_every == 0
                and (p.exit_in_prefill or not self.prefill) for p, it in zip(self.plans, iterating)]

    def needs_logits(self, row: int) -> bool:
        return self.trackers[self.plans[row].criterion][0].needs_logits

    def check(self, state: Tensor, logits: Tensor | None, checking: list[bool]) -> list[bool]:
        """Update the criteria of the checking rows; record their values; return which rows exit."""
        device = state.device
        check_mask = torch.tensor(checking, device=device)
        exit_mask = torch.zeros(len(checking), dtype=torch.bool, device=device)
        exit_values = torch.zeros(len(checking), device=device)
        for criterion, (tracker, members) in self.trackers.items():
            if not any(c and self.plans[r].criterion == criterion for r, c in enumerate(checking)):
                continue
            rows_here = check_mask & members
            exits, vals = tracker.check(state, logits, rows_here)
            exit_mask |= exits & rows_here
            exit_values = torch.where(rows_here, vals.float(), exit_values)
        exit_host, values_host = exit_mask.tolist(), exit_values.tolist()
        for r, c in enumerate(checking):
            if c:
                self.values[r].append(values_host[r])
        return [c and e for c, e in zip(checking, exit_host)]


class _Recurrence:
    """The recurrence of one block: core steps for the rows still iterating, exit checks, the head per row."""

    def __init__(self, model, plans: list[RowPlan], active: list[bool], state: Tensor, prefill: bool,
                 trace_positions: int = 1) -> None:
        self.model, self.plans, self.state = model, plans, state
        self.trace_positions = trace_positions
        self.iterating = list(active)
        self.exits = _ExitChecks(plans, active, state, model.config.vocab_size, prefill)
        batch = len(plans)
        self.steps = [0] * batch
        self.core_iterations = 0
        self.logits: list[Tensor | None] = [None] * batch
        self.latent: list[Tensor | None] = [None] * batch
        self.change: list[Tensor | None] = [None] * batch
        self.whole: tuple[Tensor, Tensor] | None = None  # set when every row stopped at one head run (forward)
        self.traced = [p.trace_top_k is not None and a for p, a in zip(plans, active)]
        self.recorder = None  # no tracing, no extra work
        if any(self.traced):
            self.recorder = StepRecorder([p.trace_top_k if t else None for p, t in zip(plans, self.traced)],
                                         state.shape[-1], state.device, trace_positions)
            self.recorder.begin(state)

    def run(self, embedded: Tensor, cache, pos0: int, rope: Tensor, cancel: threading.Event | None,
            grad_steps: int, last_only: bool) -> BlockResult:
        model, device = self.model, embedded.device
        num_steps = max((p.num_steps for p, it in zip(self.plans, self.iterating) if it), default=0)
        for step in range(num_steps):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            rows = _mask(self.iterating, device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and step >= num_steps - grad_steps):
                new_state = model.core_step(self.state, embedded, step, cache, pos0, rows, rope)
            before, self.state = self.state, (new_state if rows is None
                                              else torch.where(rows[:, None, None], new_state, self.state))
            self.core_iterations += sum(self.iterating)
            self._after_step(step, cache, pos0, rope, last_only, before)
            if not any(self.iterating):
                break
        return self._result(embedded, last_only)

    def _after_step(self, step: int, cache, pos0: int, rope: Tensor, last_only: bool, before: Tensor) -> None:
        """Exit checks and head runs after recurrence ``step``; rows that exit or reach their depth stop here."""
        ending = [it and step + 1 >= p.num_steps for p, it in zip(self.plans, self.iterating)]
        checking = self.exits.checking(step, self.iterating)
        wants = [e or (c and self.exits.needs_logits(r)) for r, (c, e) in enumerate(zip(checking, ending))]
        if self.recorder is not None:  # the lens runs the coda and head at every step of a traced row
            wants = [w or (t and it) for w, t, it in zip(wants, self.traced, self.iterating)]
        logits = latent = None
        if any(wants):
            traced = self.recorder is not None and self.trace_positions > 1
            logits, latent = self._head(wants, cache, pos0, rope, last_only, self.trace_positions if traced else None)
        if self.recorder is not None and logits is not None:  # None: no traced row is iterating any more
            self.recorder.observe(self.state, logits, self.iterating)
            logits = logits[:, -1:] if last_only else logits
        exiting = self.exits.check(self.state, logits, checking) if any(checking) else [False] * len(checking)
        # The hard part: a row that exits on a latent criterion (latent-diff, cosine) had no head run at this step.
        # It gets one now, alone, so that its logits and its coda cache entries come from its final state. Rows
        # whose criterion needed logits got them above; a coda entry written at an earlier check is overwritten by
        # the head run at the step where the row stops, so the cache always holds the final one.
        late = [x and not w for x, w in zip(exiting, wants)]
        late_logits = late_latent = None
        if any(late):
            late_logits, late_latent = self._head(late, cache, pos0, rope, last_only)
        if all(e or x for e, x in zip(ending, exiting)) and not any(late):
            self.whole = (logits, latent)  # every row stops here, from one head run: no per-row assembly needed
        for r in range(len(self.plans)):
            if exiting[r] or ending[r]:
                source_logits, source_latent = (late_logits, late_latent) if late[r] else (logits, latent)
                self.logits[r], self.latent[r] = source_logits[r:r + 1], source_latent[r:r + 1]
                self.change[r] = _relative_change(self.state[r], before[r])
                self.steps[r] = step + 1
                self.iterating[r] = False

    def _head(self, rows: list[bool], cache, pos0: int, rope: Tensor, last_only: bool,
              last: int | None = None) -> tuple[Tensor, Tensor]:
        return self.model.predict(self.state, cache, pos0, _mask(rows, self.state.device), rope, last_only=last_only,
                                  head_rows=[r for r, w in enumerate(rows) if w], last=last)

    def _result(self, embedded: Tensor, last_only: bool) -> BlockResult:
        positions = self.recorder.end() if self.recorder is not None else None
        traces = [row[-1] if row else None for row in positions] if positions is not None else None
        change = torch.stack([c if c is not None else embedded.new_zeros(embedded.shape[1], dtype=torch.float32)
                              for c in self.change])
        if self.whole is not None:
            logits, latent = self.whole
            return BlockResult(logits, latent, self.state, self.steps, self.exits.values, self.core_iterations, traces,
                               change=change, position_traces=positions)
        done = [r for r, lg in enumerate(self.logits) if lg is not None]
        if len(done) == len(self.plans):
            logits, latent = torch.cat(self.logits), torch.cat(self.latent)
        else:  # rows that were not active get zero logits and their (unused) initial state's latent
            shape = (len(self.plans),) + (self.logits[done[0]].shape[1:] if done else (1, 1))
            logits = embedded.new_zeros(shape, dtype=torch.float32)
            latent = self.model.transformer.ln_f(self.state).clone()
            for r in done:
                logits[r:r + 1], latent[r:r + 1] = self.logits[r], self.latent[r]
        return BlockResult(logits, latent, self.state, self.steps, self.exits.values, self.core_iterations, traces,
                           change=change, position_traces=positions)


def _relative_change(state: Tensor, before: Tensor) -> Tensor:
    """Per position of one row: |state - before| / |state|, in fp32 and without gradients."""
    state, before = state.detach().float(), before.detach().float()
    return (state - before).norm(dim=-1) / state.norm(dim=-1).clamp_min(1e-12)
