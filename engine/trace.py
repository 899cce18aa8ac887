"""The depth lens: what a token looked like at every recurrence step.

With ``GenerationSettings(trace=True)`` the token loop runs the coda and head on the state after every step (a "logit
lens" through the coda) and records, per generated token and step:

* the ``top_k`` tokens and their probabilities,
* ``kl``: KL(p_previous || p_step), the ``kl`` exit criterion's value (step 1 against the uniform distribution),
* ``entropy`` of p_step in nats,
* ``latent_change``: ||s_step - s_previous|| / ||s_step|| at the token's position, the ``latent-diff`` criterion's
  value (step 1 against the initial state),
* ``xy``: the state's position in a 2-D PCA fitted on all states of the answer (filled in when the answer ends).

A token's trace holds steps 1..``exit_step``, where ``exit_step`` is the token's reported ``steps``. The logit lens
reads the coda's cache as the run left it: earlier positions at their own final depth.

Compact form (``AnswerTrace.to_dict``, JSON, what the app stores and the API returns)::

    {"version": 1, "top_k": 5, "cut": false, "texts": {"<id>": "<token text>", ...},
     "tokens": [{"index": 0, "token_id": 17, "exit_step": 12,
                 "top": [[ids at step 1], ...], "probs": [[p at step 1], ...],
                 "kl": [...], "entropy": [...], "latent_change": [...], "xy": [[x, y], ...]}, ...]}

``cut`` is true when tokens at the end of the answer were left out (``MAX_TRACED_TOKENS`` here, a byte cap in the
store). Off by default, and then the loop does no extra work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TRACE_VERSION = 1
MAX_TRACE_TOP_K = 20
MAX_TRACED_TOKENS = 2048  # tokens of one answer whose steps are kept; later ones are cut
PROJECTION_DIMS = 256  # wider states are randomly projected to this many dimensions before the PCA


def _round(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class StepTrace:
    """One recurrence step of one token."""

    step: int  # 1-based
    top_ids: tuple[int, ...]
    top_texts: tuple[str, ...]
    top_probs: tuple[float, ...]
    kl: float
    entropy: float
    latent_change: float
    xy: tuple[float, float] | None = None


@dataclass(frozen=True)
class TokenTrace:
    """All steps of one generated token; ``steps[-1].step == exit_step``."""

    index: int
    token_id: int
    exit_step: int
    steps: tuple[StepTrace, ...]

    def leaders(self) -> list[int]:
        """The top-1 token id at each step."""
        return [s.top_ids[0] for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """The compact form of one token (texts live in the answer's ``texts`` map)."""
        out = {"index": self.index, "token_id": self.token_id, "exit_step": self.exit_step,
               "top": [list(s.top_ids) for s in self.steps],
               "probs": [[_round(p) for p in s.top_probs] for s in self.steps],
               "kl": [_round(s.kl) for s in self.steps], "entropy": [_round(s.entropy) for s in self.steps],
               "latent_change": [_round(s.latent_change) for s in self.steps]}
        if all(s.xy is not None for s in self.steps):
            out["xy"] = [[_round(s.xy[0], 3), _round(s.xy[1], 3)] for s in self.steps]
        return out


@dataclass(frozen=True)
class AnswerTrace:
    top_k: int
    tokens: tuple[TokenTrace, ...]
    cut: bool = False

    def to_dict(self) -> dict[str, Any]:
        texts = {str(i): t for tok in self.tokens for s in tok.steps for i, t in zip(s.top_ids, s.top_texts)}
        return {"version": TRACE_VERSION, "top_k": self.top_k, "cut": self.cut, "texts": texts,
                "tokens": [t.to_dict() for t in self.tokens]}


# ---- recording (used by the token loop) -------------------------------------------------------------------------

class StepRecorder:
    """Records the lens for the traced rows of a batch, for the last ``positions`` positions of a block (one for a
    decoded token, more for a traced prompt), without host syncs until the block ends. ``top_k`` holds each row's
    k, or None for rows that are not traced."""

    def __init__(self, top_k: list[int | None], hidden: int, device: torch.device, positions: int = 1) -> None:
        self.top_k, self.positions = top_k, positions
        self.k = max(k for k in top_k if k is not None)
        self.rows = [k is not None for k in top_k]
        self.projection: Tensor | None = None
        if hidden > PROJECTION_DIMS:  # Johnson-Lindenstrauss: distances (and so the PCA) survive approximately
            gen = torch.Generator(device="cpu").manual_seed(0)
            self.projection = (torch.randn(hidden, PROJECTION_DIMS, generator=gen) / math.sqrt(PROJECTION_DIMS)
                               ).to(device)
        self._steps: list[tuple[list[bool], Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]] = []

    def begin(self, initial_state: Tensor) -> None:
        """A new block: step 1 compares against the uniform distribution and the initial state."""
        self._prev_logp: Tensor | None = None
        self._prev_state = initial_state[:, -self.positions:].float()
        self._steps = []

    def observe(self, state: Tensor, logits: Tensor, iterating: list[bool]) -> None:
        """After one recurrence: ``state`` (B, S, h), ``logits`` (B, >= positions, V) from the coda and head at this
        step."""
        logp = F.log_softmax(logits[:, -self.positions:].float(), -1)
        if self._prev_logp is None:
            self._prev_logp = torch.full_like(logp, -math.log(logp.shape[-1]))
        probs = logp.exp()
        kl = (self._prev_logp.exp() * (self._prev_logp - logp)).sum(-1)
        entropy = -(probs * logp).sum(-1)
        last = state[:, -self.positions:].float()
        change = (last - self._prev_state).norm(dim=-1) / last.norm(dim=-1).clamp_min(1e-12)
        top_p, top_i = probs.topk(min(self.k, probs.shape[-1]), -1)
        point = last if self.projection is None else last @ self.projection
        live = [it and traced for it, traced in zip(iterating, self.rows)]
        self._steps.append((live, top_i, top_p, kl, entropy, change, point))
        self._prev_logp, self._prev_state = logp, last

    def end(self) -> list[list[tuple[list[StepTrace], Tensor]] | None]:
        """Per row, per recorded position (oldest first): its steps (without texts or xy) and its states (steps, d)
        for the PCA; None for a row that is not traced."""
        if not self._steps:
            return [None] * len(self.rows)
        host = [(live, top_i.tolist(), top_p.tolist(), kl.tolist(), ent.tolist(), ch.tolist())
                for live, top_i, top_p, kl, ent, ch, _ in self._steps]
        out: list[list[tuple[list[StepTrace], Tensor]] | None] = []
        for r, k in enumerate(self.top_k):
            if k is None:
                out.append(None)
                continue
            taken = [n for n, step in enumerate(host) if step[0][r]]
            row = []
            for p in range(self.positions):
                steps = [StepTrace(n + 1, tuple(host[n][1][r][p][:k]), (), tuple(host[n][2][r][p][:k]),
                                   host[n][3][r][p], host[n][4][r][p], host[n][5][r][p]) for n in taken]
                points = torch.stack([self._steps[n][6][r, p] for n in taken]).cpu() if taken else torch.empty(0)
                row.append((steps, points))
            out.append(row)
        self._steps = []
        return out


class AnswerTraceBuilder:
    """Collects one answer's token traces and fits the PCA of its states when the answer ends."""

    def __init__(self, top_k: int, max_tokens: int = MAX_TRACED_TOKENS) -> None:
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.tokens: list[TokenTrace] = []
        self.points: list[Tensor] = []
        self.cut = False

    def add(self, index: int, token_id: int, exit_step: int, steps: list[StepTrace], points: Tensor,
            text_of: Callable[[int], str]) -> TokenTrace | None:
        if len(self.tokens) >= self.max_tokens:
            self.cut = True
            return None
        steps = [StepTrace(s.step, s.top_ids, tuple(text_of(i) for i in s.top_ids), s.top_probs, s.kl, s.entropy,
                           s.latent_change) for s in steps]
        token = TokenTrace(index, token_id, exit_step, tuple(steps))
        self.tokens.append(token)
        self.points.append(points)
        return token

    def finish(self) -> AnswerTrace:
        coords = pca_2d(torch.cat(self.points)) if self.points else torch.empty(0, 2)
        tokens, at = [], 0
        for token in self.tokens:
            xy = coords[at:at + len(token.steps)].tolist()
            at += len(token.steps)
            tokens.append(TokenTrace(token.index, token.token_id, token.exit_step, tuple(
                StepTrace(s.step, s.top_ids, s.top_texts, s.top_probs, s.kl, s.entropy, s.latent_change,
                          (p[0], p[1])) for s, p in zip(token.steps, xy))))
        return AnswerTrace(self.top_k, tuple(tokens), self.cut)


def pca_2d(points: Tensor) -> Tensor:
    """(N, d) -> (N, 2): the coordinates on the two leading principal axes (zeros where there are fewer)."""
    centred = points.double() - points.double().mean(0, keepdim=True)
    if centred.shape[0] < 2:
        return torch.zeros(centred.shape[0], 2)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2].T
    # A sign convention, so the same states always give the same picture.
    signs = torch.sign(axes[axes.abs().argmax(0), torch.arange(axes.shape[1])])
    coords = (centred @ (axes * signs)).float()
    return F.pad(coords, (0, 2 - coords.shape[1]))
