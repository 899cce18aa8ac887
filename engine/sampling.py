"""Next-token choice: greedy, or temperature / top-k / top-p / min-p sampling with a repetition penalty.

The order follows the authors' ``_sample_next_token``: penalty, temperature, softmax, top-k, top-p (the top token
always survives), min-p relative to the most likely token, draw; every filter sees the mass the earlier ones left,
renormalised (transformers' warpers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF-style: divide positive logits of already-seen tokens by ``penalty``, multiply negative ones."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    logits = logits.clone()
    logits.scatter_(-1, seen, torch.where(picked > 0, picked / penalty, picked * penalty))
    return logits


def filtered_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The distribution a sampled token is drawn from, for a (V,) row of fp32 logits (temperature > 0): each filter
    works on the mass the previous ones left, renormalised, as transformers' logits warpers do."""
    # Shift so the top logit is 0 before dividing: a vanishing temperature then gives large negative numbers (a
    # one-hot after softmax), never inf - inf = NaN. A temperature below the dtype's smallest normal would round to 0.
    temperature = max(params.temperature, torch.finfo(logits.dtype).tiny)
    probs = ((logits - logits.max()) / temperature).softmax(-1)
    if 0 < params.top_k < probs.shape[-1]:
        # Keep exactly k tokens by index: a threshold on the k-th value would keep every token tied with it.
        keep = probs.topk(params.top_k).indices
        probs = torch.zeros_like(probs).scatter(-1, keep, probs.gather(-1, keep))
        probs = probs / probs.sum()
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop_sorted = cumulative - sorted_probs > params.top_p  # keeps the first token that crosses top_p
        probs = probs.scatter(-1, order, torch.where(drop_sorted, torch.zeros_like(sorted_probs), sorted_probs))
    if params.min_p > 0:
        probs = torch.where(probs < params.min_p * probs.max(), torch.zeros_like(probs), probs)
    return probs / probs.sum()


def sample_token(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                 seen: Tensor | None = None) -> int:
    """Choose one token from a (V,) row of fp32 logits."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(filtered_probs(logits, params), 1, generator=generator))
