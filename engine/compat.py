"""``model.generate`` with the authors' keyword arguments, so the model card's snippets run with ``import engine``.

``engine/__init__.py`` attaches these methods to ``HuginnForCausalLM`` (``attach_generate``), so the model module
itself does not import the generation stack.

Routing follows the reference: any of ``criterion``, ``exit_threshold`` selects the adaptive path (per-token steps
in ``scores``); otherwise the fixed-depth path. Both run through ``engine.decode.decode``. With an exit criterion,
``scores`` holds one entry per generated token in the July-2025 format
``[[steps per sequence], [[exit values checked] per sequence]]``; the authors' current code returns ``{}`` there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .decode import RowPlan, RowStops, decode
from .exits import CRITERIA, resolve_threshold
from .generate import IncrementalDecoder, special_stop_ids
from .sampling import SamplingParams
from .stops import StopStrings

# Accepted for compatibility with HF-style calls; they change nothing here (attention_mask is checked below).
_PASSED_THROUGH = {"attention_mask", "use_cache", "cache_implementation"}


def _criterion_name(criterion: str) -> str:
    # The reference maps any name containing "kl" (other than minp-kl) to the KL criterion.
    if criterion not in CRITERIA and "kl" in criterion:
        return "kl"
    if criterion not in CRITERIA:
        raise ValueError(f"unknown exit criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return criterion


def _stops(config: GenerationConfig, tokenizer, model) -> set[int]:
    """Token ids that end a row: eos, Huginn's turn boundaries, and stop strings that are exactly one token."""
    stops: set[int] = set()
    eos = config.eos_token_id
    stops.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer is not None:
        stops |= special_stop_ids(tokenizer)
        for text in _stop_strings(config):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:  # a special token such as <|end_turn|> decodes to no text, so match it by id
                stops.add(ids[0])
    return {s for s in stops if 0 <= s < model.config.vocab_size}


def _stop_strings(config: GenerationConfig) -> list[str]:
    stops = config.stop_strings or []
    return [stops] if isinstance(stops, str) else list(stops)


class _TextStops:
    """Stop rows whose generated text contains a stop string; the string itself stays in the output, as in
    transformers' ``StopStringCriteria``."""

    def __init__(self, tokenizer, strings: list[str], rows: int) -> None:
        self.rows = RowStops()
        self.decoders = [IncrementalDecoder(tokenizer) for _ in range(rows)]
        self.matchers = [StopStrings(strings) for _ in range(rows)]

    def feed(self, tokens: list[int]) -> None:
        for r, token in enumerate(tokens):
            if token >= 0 and not self.matchers[r].hit:
                self.matchers[r].feed(self.decoders[r].add(token))
                if self.matchers[r].hit:
                    self.rows.stop(r)


class ReferenceGenerateMixin:
    """The authors' ``generate`` signature for ``HuginnForCausalLM`` (attached by ``attach_generate``)."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        generation_config: GenerationConfig | None = None,
        tokenizer=None,
        streamer=None,
        num_steps: int | None = None,
        criterion: str | None = None,
        exit_threshold: float | str | None = None,
        continuous_compute: bool = False,
        init_scale: float = 1.0,
        cache_lookup_strategy: str = "full",
        min_steps: int = 0,
        check_criterion_every_n_steps: int = 1,
        do_not_exit_in_prefill: bool = False,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Tensor | GenerateDecoderOnlyOutput:
        if isinstance(input_ids, Mapping):  # apply_chat_template(..., return_tensors="pt") gives a BatchEncoding
            kwargs.setdefault("attention_mask", input_ids.get("attention_mask"))
            input_ids = input_ids["input_ids"]
        lookup = (kwargs.pop("cache_kwargs", None) or {}).get("lookup_strategy")
        if lookup:  # the model card's older spelling of cache_lookup_strategy
            cache_lookup_strategy = lookup
        unknown = sorted(k for k in kwargs if k not in _PASSED_THROUGH and not hasattr(GenerationConfig(), k))
        if unknown:
            raise TypeError(f"generate() got unsupported keyword arguments: {', '.join(unknown)}")
        config = generation_config if generation_config is not None else self.generation_config
        config = GenerationConfig(**{**config.to_dict(), **{k: v for k, v in kwargs.items()
                                                            if hasattr(config, k) and k != "num_steps"}})
        if kwargs.get("attention_mask") is not None and bool((kwargs["attention_mask"] == 0).any()):
            raise ValueError("padded batches are not supported: Huginn's attention ignores attention_mask")
        prompt_len = input_ids.shape[1]
        if max_new_tokens is None:
            limit = max_length or config.max_length
            if limit is None:
                max_new_tokens = config.max_new_tokens or 20
            else:
                max_new_tokens = limit - prompt_len
        elif max_length is not None:
            max_new_tokens = min(max_new_tokens, max_length - prompt_len)
        max_new_tokens = min(max_new_tokens, self.config.block_size - prompt_len)
        if max_new_tokens < 1:
            raise ValueError(f"nothing to generate: max length leaves no room after {prompt_len} prompt tokens")

        adaptive = criterion is not None or exit_threshold is not None
        name = _criterion_name(criterion or "none") if adaptive else None
        if config.do_sample:
            sampling = SamplingParams(temperature=config.temperature or 1.0, top_k=config.top_k or 0,
                                      top_p=config.top_p or 1.0, min_p=config.min_p or 0.0,
                                      repetition_penalty=config.repetition_penalty or 1.0)
        else:
            sampling = SamplingParams(repetition_penalty=config.repetition_penalty or 1.0)
        base_seed = seed if seed is not None else int(torch.randint(0, 2**31, ()).item())
        plans = [
            RowPlan(num_steps=int(num_steps or self.config.mean_recurrence), criterion=name,
                    threshold=resolve_threshold(name, exit_threshold) if name else 0.0, min_steps=min_steps,
                    check_every=check_criterion_every_n_steps, warm_start=continuous_compute, init_scale=init_scale,
                    sampling=sampling, max_new_tokens=max_new_tokens, seed=base_seed + row,
                    exit_in_prefill=not do_not_exit_in_prefill)
            for row in range(input_ids.shape[0])
        ]
        if _stop_strings(config) and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer: pass tokenizer=... to generate()")
        text_stops = _TextStops(tokenizer, _stop_strings(config), len(plans)) if _stop_strings(config) else None
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        sequences, scores = input_ids, []
        cache = self.new_cache(len(plans), cache_lookup_strategy, capacity=prompt_len + max_new_tokens)
        for out in decode(self, input_ids, plans, cache_lookup_strategy, _stops(config, tokenizer, self),
                          cache=cache, stops=text_stops.rows if text_stops else None):
            if text_stops is not None:
                text_stops.feed(out.tokens)
            tokens = torch.tensor([[t if t >= 0 else pad] for t in out.tokens], device=input_ids.device)
            sequences = torch.cat((sequences, tokens), dim=1)
            scores.append([list(out.steps), [list(v) for v in out.exit_values]])
            if streamer is not None:
                streamer.put(tokens.cpu())
        if streamer is not None:
            streamer.end()
        if not config.return_dict_in_generate:
            return sequences
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores if adaptive else None,
                                         cache=cache)

    def generate_with_adaptive_compute(self, input_ids: Tensor, generation_config: GenerationConfig | None = None,
                                       criterion: str = "none", **kwargs: Any) -> Tensor | GenerateDecoderOnlyOutput:
        """The reference's explicit adaptive entry point (the model card calls it): always the adaptive path."""
        return self.generate(input_ids, generation_config, criterion=criterion, **kwargs)

    def generate_minimal(self, input_ids: Tensor, generation_config: GenerationConfig | None = None,
                         **kwargs: Any) -> Tensor | GenerateDecoderOnlyOutput:
        """The reference's fixed-depth loop."""
        return self.generate(input_ids, generation_config, **kwargs)


def attach_generate(model_class: type) -> None:
    """Give ``model_class`` the authors' generation methods (in place of transformers' ``generate``)."""
    for name in ("generate", "generate_with_adaptive_compute", "generate_minimal"):
        setattr(model_class, name, ReferenceGenerateMixin.__dict__[name])
