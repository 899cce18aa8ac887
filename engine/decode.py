"""The token loop: ``decode`` turns a prompt into tokens, one ``DecodeStep`` per generated position.

Each position is one ``engine.step.run_block`` call (the prompt's prefill is the first), then a choice of token per
row. Rows of one batch may use different depths, criteria, warm start and sampling (``engine.compare``); each
row's output is the one it would have alone. The consumer ends rows early (stop strings, its own limits) through a
``RowStops`` it passes in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from torch import Tensor

from .sampling import sample_token
from .step import BlockResult, Cancelled, RowPlan, run_block

# A traced answer also traces the prompt's last positions, at most this many (shared by a batch's traced rows).
MAX_TRACED_PROMPT = 256

__all__ = ["DecodeStep", "PromptDepth", "RowPlan", "RowStops", "decode", "prefill"]


@dataclass(frozen=True)
class PromptDepth:
    """Per row, what each prompt position run in this call received, the last one excepted (its steps are the
    first ``DecodeStep``'s: it chose the first answer token). ``exit_values`` is None where no exit was checked."""

    steps: list[list[int]]
    exit_values: list[list[float | None]]
    changes: list[list[float]]  # the state's relative change at the position's last step
    # traced rows: per position its (steps, states) from engine.trace.StepRecorder, or None where not recorded
    traces: list[list[tuple | None]] | None = None

    @classmethod
    def of_block(cls, block: BlockResult, width: int | None = None) -> "PromptDepth":
        """The first ``width`` positions (default all) of a block run at one depth per row, without exits; the
        traced ones are the block's last ones."""
        changes = block.change[:, :width].tolist()
        traces = None
        if block.position_traces is not None:
            length = block.change.shape[1]
            traces = [([None] * (length - len(recorded or [])) + list(recorded or []))[:len(c)]
                      for c, recorded in zip(changes, block.position_traces)]
        return cls([[steps] * len(c) for steps, c in zip(block.steps, changes)], [[None] * len(c) for c in changes],
                   changes, traces)

    def extend(self, block: BlockResult) -> None:
        """Add one position run alone (``block`` of width 1)."""
        for r in range(len(self.steps)):
            self.steps[r].append(block.steps[r])
            self.exit_values[r].append(block.exit_values[r][-1] if block.exit_values[r] else None)
            self.changes[r].append(float(block.change[r, -1]))
            if self.traces is not None:
                self.traces[r].append(block.traces[r] if block.traces else None)


@dataclass
class DecodeStep:
    """One generated position: per row the token (-1 for finished rows), steps used and exit values checked.
    ``finished`` is a snapshot: which rows will produce no more tokens."""

    tokens: list[int]
    steps: list[int]
    exit_values: list[list[float]]
    core_iterations: int
    cancelled: bool = False
    finished: tuple[bool, ...] = field(default_factory=tuple)
    traces: list | None = None  # per row, with traced plans: (steps, states) from engine.trace.StepRecorder
    changes: list[float] | None = None  # per row: the state's relative change at the token's last step
    prompt: PromptDepth | None = None  # on the first step of decode(split_prompt=True): the prompt's positions


class RowStops:
    """The consumer's way to end rows early: ``stop(row)`` after a ``DecodeStep``; decode then gives that row no
    more tokens (and ends when no row is left)."""

    def __init__(self) -> None:
        self._rows: set[int] = set()

    def stop(self, row: int) -> None:
        self._rows.add(row)

    def __contains__(self, row: int) -> bool:
        return row in self._rows


class _TokenChooser:
    """Per row: sampling with its own seeded generator, the token history for the repetition penalty, the budget."""

    def __init__(self, plans: list[RowPlan], input_ids: Tensor, stop_ids: set[int] | frozenset[int]) -> None:
        self.plans, self.stop_ids = plans, stop_ids
        self.generators = [torch.Generator(device=input_ids.device).manual_seed(p.seed or 0) for p in plans]
        self.history = input_ids.clone()
        self.produced = [0] * len(plans)

    def choose(self, block: BlockResult, finished: list[bool]) -> list[int]:
        """One token per unfinished row (-1 for finished rows); marks rows finished by a stop token or budget."""
        tokens = [-1] * len(self.plans)
        for r, plan in enumerate(self.plans):
            if finished[r]:
                continue
            tokens[r] = sample_token(block.logits[r, -1], plan.sampling, self.generators[r], self.history[r])
            self.produced[r] += 1
            finished[r] = tokens[r] in self.stop_ids or self.produced[r] >= plan.max_new_tokens
        return tokens

    def append(self, next_ids: Tensor) -> None:
        self.history = torch.cat((self.history, next_ids), dim=1)


@torch.inference_mode()
def decode(
    model,
    input_ids: Tensor,
    plans: list[RowPlan],
    cache_strategy: str = "full",
    stop_ids: set[int] | frozenset[int] = frozenset(),
    cancel: threading.Event | None = None,
    cache=None,
    stops: RowStops | None = None,
    split_prompt: bool = False,
) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per generated position until every row stopped (stop token, its token budget, the
    context, or ``stops``).

    ``input_ids`` is (1, S) (shared by all rows) or (B, S). A ``cache`` that already holds the first positions of
    the prompt (``engine.prompt_cache``) is continued: the prefill runs only the tokens after ``cache.seq_len``.
    ``split_prompt`` runs the prompt but its last token as one block at full depth, then the last token alone
    like a decoded one: the prompt's positions then never depend on where the prompt ends, and the first answer
    token exits like the others. With plans that ask for ``prompt_exits`` every prompt position runs alone instead,
    exiting by the row's criterion. The first ``DecodeStep`` then carries the prompt's depth. A set ``cancel`` event
    ends the loop before the next recurrence step, with a final ``DecodeStep`` marked ``cancelled``.
    """
    batch = len(plans)
    if input_ids.shape[0] == 1 and batch > 1:
        input_ids = input_ids.expand(batch, -1)
    config = model.config
    if cache is None:
        cache = model.new_cache(batch, cache_strategy, capacity=input_ids.shape[1] + max(p.max_new_tokens
                                                                                         for p in plans))
    chooser = _TokenChooser(plans, input_ids, stop_ids)
    finished = [False] * batch
    carried: Tensor | None = None
    x = input_ids[:, cache.seq_len:]
    prompt = None
    if len({p.prompt_exits for p in plans}) > 1:
        raise ValueError("the rows of one batch must agree on prompt_exits")
    try:
        if split_prompt:
            prompt, carried = prefill(model, x, plans, cache, cancel)
            x = x[:, -1:]
        while not all(finished):
            block = run_block(model, x, plans, cache, carried=carried, active=[not f for f in finished],
                              prefill=carried is None and not split_prompt, cancel=cancel)
            carried = block.carry(plans)
            tokens = chooser.choose(block, finished)
            yield DecodeStep(tokens, block.steps, block.exit_values, block.core_iterations,
                             finished=tuple(finished), traces=block.traces, changes=block.change[:, -1].tolist(),
                             prompt=prompt)
            prompt = None
            if stops is not None:
                finished = [f or r in stops for r, f in enumerate(finished)]
            x = torch.tensor([[t if t >= 0 else config.pad_token_id or 0] for t in tokens], device=input_ids.device)
            chooser.append(x)
            if cache.seq_len + 1 > config.block_size:
                break
    except Cancelled as stop:  # the prompt positions that ran before the cancel still count
        yield DecodeStep([-1] * batch, [0] * batch, [[] for _ in plans], 0, cancelled=True, finished=tuple(finished),
                         prompt=prompt or getattr(stop, "prompt", None))


def prefill(model, x: Tensor, plans: list[RowPlan], cache, cancel: threading.Event | None = None
            ) -> tuple[PromptDepth, Tensor | None]:
    """Run the new prompt tokens ``x`` but the last (``decode(split_prompt=True)``); their depth, and the warm-start
    states the last token starts from (None: a fresh state, as after a block)."""
    body = x[:, :-1]
    traced_rows = sum(p.trace_top_k is not None for p in plans)
    # The traced rows share the budget: a batch of traced columns holds no more logits than one row would.
    traced = MAX_TRACED_PROMPT // traced_rows if traced_rows else 0
    if not plans[0].prompt_exits:
        if body.shape[1] == 0:
            return PromptDepth([[] for _ in plans], [[] for _ in plans], [[] for _ in plans]), None
        block = run_block(model, body, [replace(p, exit_in_prefill=False) for p in plans], cache, cancel=cancel,
                          trace_positions=max(traced, 1))
        return PromptDepth.of_block(block), None
    depth = PromptDepth([[] for _ in plans], [[] for _ in plans], [[] for _ in plans],
                        [[] for _ in plans] if traced else None)
    carried, untraced = None, [replace(p, trace_top_k=None) for p in plans]
    try:
        for i in range(body.shape[1]):
            step_plans = plans if body.shape[1] - i <= traced else untraced
            block = run_block(model, body[:, i:i + 1], step_plans, cache, carried=carried, prefill=False,
                              cancel=cancel)
            depth.extend(block)
            carried = block.carry(step_plans)
    except Cancelled as stop:
        stop.prompt = depth  # type: ignore[attr-defined]
        raise
    return depth, carried
