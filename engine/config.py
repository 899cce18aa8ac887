"""The configuration of a recurrent-depth (Huginn / "raven") model.

Field names follow the official ``config.json`` of tomg-group-umd/huginn-0125 so that its file, and any checkpoint
saved by this project, round-trips unchanged. Derived fields (``head_dim``, ``init_values`` ...) are recomputed from
the primary ones rather than trusted from the file.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

MODEL_TYPE = "huginn_raven"

# Written into saved configs for readers; recomputed on load.
_DERIVED = ("head_dim", "num_key_value_heads", "effective_expected_depth", "init_values", "padded_vocab_size")


class HuginnConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    attribute_map = {"num_attention_heads": "n_heads", "hidden_size": "n_embd", "num_hidden_layers": "n_layers"}

    def __init__(
        self,
        n_embd: int = 5280,
        n_heads: int = 55,
        n_layers: int | None = None,
        block_size: int = 4096,
        vocab_size: int = 65536,
        padding_multiple: int = 4096,
        tie_embeddings: bool = True,
        intermediate_size: int = 17920,
        bias: bool = False,
        qk_bias: bool = True,
        norm_eps: float = 1e-6,
        rope_base: float = 50_000.0,
        n_layers_in_prelude: int = 2,
        n_layers_in_recurrent_block: int = 4,
        n_layers_in_coda: int = 2,
        mean_recurrence: int = 32,
        mean_backprop_depth: int = 8,
        sampling_scheme: str = "poisson-lognormal-filling",
        state_init: str = "like-init",
        injection_type: str = "linear",
        init_strategy: str = "takase",
        init_orthogonal: bool = False,
        block_class_name: str = "SandwichBlock",
        norm_class_name: str = "RMSNorm_llama",
        mlp_class_name: str = "GatedMLP",
        nonlin_name: str = "SiLU",
        test_time_noise: float = 0.0,
        bos_token_id: int = 65504,
        eos_token_id: int | list[int] = 65505,
        pad_token_id: int = 65509,
        **kwargs: Any,
    ) -> None:
        for name in _DERIVED:
            kwargs.pop(name, None)
        kwargs.pop("tie_word_embeddings", None)
        self.n_embd = int(n_embd)
        self.n_heads = int(n_heads)
        self.block_size = int(block_size)
        self.vocab_size = int(vocab_size)
        self.padding_multiple = int(padding_multiple)
        self.tie_embeddings = bool(tie_embeddings)
        self.intermediate_size = int(intermediate_size)
        self.bias = bool(bias)
        self.qk_bias = bool(qk_bias)
        self.norm_eps = float(norm_eps)
        self.rope_base = float(rope_base)
        self.n_layers_in_prelude = int(n_layers_in_prelude)
        self.n_layers_in_recurrent_block = int(n_layers_in_recurrent_block)
        self.n_layers_in_coda = int(n_layers_in_coda)
        expected_layers = self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda
        self.n_layers = expected_layers if n_layers is None else int(n_layers)
        self.mean_recurrence = int(mean_recurrence)
        self.mean_backprop_depth = int(mean_backprop_depth)
        self.sampling_scheme = sampling_scheme
        self.state_init = state_init
        self.injection_type = injection_type
        self.init_strategy = init_strategy
        self.init_orthogonal = bool(init_orthogonal)
        self.block_class_name = block_class_name
        self.norm_class_name = norm_class_name
        self.mlp_class_name = mlp_class_name
        self.nonlin_name = nonlin_name
        self.test_time_noise = float(test_time_noise)
        self._validate(expected_layers)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=self.tie_embeddings,
            **kwargs,
        )

    def _validate(self, expected_layers: int) -> None:
        problems = []
        if self.n_embd <= 0 or self.n_heads <= 0 or self.n_embd % self.n_heads:
            problems.append(f"n_embd ({self.n_embd}) must be a positive multiple of n_heads ({self.n_heads})")
        elif (self.n_embd // self.n_heads) % 2:
            problems.append(f"head_dim ({self.n_embd // self.n_heads}) must be even for rotary embeddings")
        if self.n_layers != expected_layers:
            problems.append(
                f"n_layers ({self.n_layers}) must equal prelude + recurrent block + coda ({expected_layers})"
            )
        if self.n_layers_in_recurrent_block < 1:
            problems.append("n_layers_in_recurrent_block must be at least 1")
        if self.n_layers_in_prelude < 0 or self.n_layers_in_coda < 0:
            problems.append("layer counts must not be negative")
        for name in ("vocab_size", "block_size", "intermediate_size", "mean_recurrence"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if self.injection_type != "linear":
            problems.append(f"injection_type {self.injection_type!r} is not supported (only 'linear')")
        if problems:
            raise ValueError("invalid Huginn config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        # The reference sets padded_vocab_size = vocab_size; padding_multiple is informational only.
        return self.vocab_size

    @property
    def effective_expected_depth(self) -> int:
        outer = self.n_layers_in_prelude + self.n_layers_in_coda
        return outer + self.n_layers_in_recurrent_block * self.mean_recurrence

    @property
    def init_values(self) -> dict[str, float]:
        std = math.sqrt(2 / (5 * self.n_embd))
        return {
            "std": std,
            "out_proj": std / math.sqrt(2 * self.effective_expected_depth),
            "embedding": std,
            "embed_scale": math.sqrt(self.n_embd),
        }

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for name in _DERIVED:
            out[name] = getattr(self, name)
        out.pop("tie_word_embeddings", None)
        # A checkpoint we write must load with our classes, never with the authors' remote code.
        out.pop("auto_map", None)
        return out

    def materialized_parameters(self, num_steps: int) -> int:
        """Parameters a non-recurrent model of the same depth would need at ``num_steps`` recurrences."""
        h, i = self.n_embd, self.intermediate_size
        per_layer = 3 * h * h + h * h + 2 * h * i + h * i + 4 * h + (2 * h if self.qk_bias else 0)
        embedding = self.padded_vocab_size * h
        head = 0 if self.tie_embeddings else embedding
        adapter = 2 * h * h
        core = self.n_layers_in_recurrent_block * per_layer + adapter
        outer = (self.n_layers_in_prelude + self.n_layers_in_coda) * per_layer + embedding + head + h
        return outer + num_steps * core
