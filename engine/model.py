"""The recurrent-depth transformer of Huginn-0125, written from the paper and the authors' description.

prelude -> (state, embedding) -> adapter -> core block, iterated r times -> ln_f -> coda -> ln_f -> lm_head

Module and parameter names follow the official checkpoint (``transformer.prelude.0.attn.Wqkv.weight`` ...), so
its safetensors load as they are. The pieces of a forward pass are public methods: ``rotations``,
``embed``, ``initial_state``, ``core_step`` and ``predict``. ``engine.step.run_block`` composes them, for ``forward``
(the authors' signature) and for every generation path. ``generate`` is attached by ``engine.compat`` when the
``engine`` package is imported, so this module does not depend on the generation stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from .cache import RecurrentCache
from .config import HuginnConfig
from .step import RowPlan, run_block


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, eps=self.eps)
        # Normalise in fp32 and cast back before the weight multiply, as the reference does.
        return F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype) * self.weight


def _trunc_normal(tensor: Tensor, std: float) -> None:
    init.trunc_normal_(tensor, 0.0, std, -3 * std, 3 * std)


def rope_table(head_dim: int, length: int, base: float, device: torch.device | None = None) -> Tensor:
    """Rotations by angle p * theta_j as a real fp32 (length, head_dim // 2, 2) table of (cos, sin).

    Real-valued on purpose: complex tensors make torch.compile fall back to eager, and this layout is also the
    official checkpoint's ``freqs_cis`` (without its two broadcast axes)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)


def apply_rope(x: Tensor, rotations: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, S, ..., d) by (S, d/2, 2) (cos, sin) rotations, in fp32.

    Interleaved pairs, as the official checkpoint was trained: not Llama's rotate_half layout. The arithmetic is the
    complex product (a + ib)(cos + i sin) written out in real numbers."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    shape = (1, rotations.shape[0]) + (1,) * (x.dim() - 3) + (rotations.shape[1],)
    cos, sin = rotations[..., 0].reshape(shape), rotations[..., 1].reshape(shape)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: HuginnConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj.init_role = "out"
        if config.qk_bias:
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, config.n_heads, config.head_dim))

    def project(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, H, S, d): the qk bias is added before the rotation, as in the reference."""
        B, S, _ = x.shape
        qkv = self.Wqkv(x).view(B, S, 3, self.n_heads, self.head_dim)
        qk = qkv[:, :, :2] + self.qk_bias[:, 0] if hasattr(self, "qk_bias") else qkv[:, :, :2]
        q, k = apply_rope(qk, rope).transpose(1, 3).unbind(2)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    @staticmethod
    def attend(q: Tensor, k: Tensor, v: Tensor, slot: tuple[str, int] | None, cache: RecurrentCache | None,
               pos0: int, rows: Tensor | None) -> Tensor:
        """Store this step's keys and values, attend causally, return (B, S, H * d) before the out-projection."""
        S = q.shape[2]
        mask = None
        if cache is not None and slot is not None:
            k, v, mask = cache.update(slot[0], slot[1], k, v, pos0, rows)
        T = k.shape[2]
        if mask is None and S == T:
            return Attention.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        if mask is None and S == 1:
            return Attention.merge_heads(F.scaled_dot_product_attention(q, k, v))
        causal = torch.ones(S, T, dtype=torch.bool, device=q.device).tril(T - S)
        mask = causal if mask is None else mask & causal
        return Attention.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    @staticmethod
    def merge_heads(y: Tensor) -> Tensor:
        """(B, H, S, d) attention output -> (B, S, H * d), the out-projection's input."""
        return y.transpose(1, 2).flatten(2)


class GatedMLP(nn.Module):
    def __init__(self, config: HuginnConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 2 * config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.fc.init_role, self.proj.init_role = "glu", "out"

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class SandwichBlock(nn.Module):
    """Four RMSNorms: the residual stream itself is re-normalised after attention and after the MLP."""

    def __init__(self, config: HuginnConfig) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        self.norm_3 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = GatedMLP(config)
        self.norm_4 = RMSNorm(config.n_embd, config.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, slot: tuple[str, int] | None = None,
                cache: RecurrentCache | None = None, pos0: int = 0, rows: Tensor | None = None) -> Tensor:
        q, k, v = self.begin(x, rope)
        return self.end(x, Attention.attend(q, k, v, slot, cache, pos0, rows))

    # The cache-free halves around attention: pure tensor functions that engine.compile can compile.
    def begin(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.attn.project(self.norm_1(x), rope)

    def end(self, x: Tensor, attended: Tensor) -> Tensor:
        x = self.norm_2(x + self.attn.proj(attended))
        return self.norm_4(x + self.mlp(self.norm_3(x)))


class HuginnTransformer(nn.Module):
    def __init__(self, config: HuginnConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.prelude = nn.ModuleList(SandwichBlock(config) for _ in range(config.n_layers_in_prelude))
        self.adapter = nn.Linear(2 * config.n_embd, config.n_embd, bias=config.bias)
        self.core_block = nn.ModuleList(SandwichBlock(config) for _ in range(config.n_layers_in_recurrent_block))
        self.coda = nn.ModuleList(SandwichBlock(config) for _ in range(config.n_layers_in_coda))
        self.ln_f = RMSNorm(config.n_embd, config.norm_eps)


@dataclass
class HuginnOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: RecurrentCache | None = None  # transformers 5 renames a `past_key_values` field to `cache`
    latent_states: Tensor | None = None
    num_steps_no_grad: int | None = None
    num_steps_with_grad: int | None = None

    @property
    def past_key_values(self) -> RecurrentCache | None:
        return self.cache


def sample_depth(mean_recurrence: int, backprop_depth: int,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """The paper's training-time depth: Poisson(LogNormal) + 1 steps, the last ``backprop_depth`` with gradients."""
    t = max(mean_recurrence - backprop_depth, 0)
    s = backprop_depth
    sigma = 0.5
    mu = math.log(t + s) - sigma**2 / 2
    tau = torch.exp(torch.randn((), generator=generator) * sigma + mu)
    total = int(torch.poisson(tau.reshape(1), generator=generator).item()) + 1
    return max(total - s, 0), min(s, total)


def split_num_steps(num_steps: Any, config: HuginnConfig, training: bool) -> tuple[int, int]:
    """Normalise ``num_steps`` (None, int, 0-d tensor, or an (n, k) pair) into (steps without grad, steps with grad)."""
    if num_steps is None:
        if training:
            return sample_depth(config.mean_recurrence, config.mean_backprop_depth)
        return config.mean_recurrence, 0
    if isinstance(num_steps, Tensor):
        num_steps = num_steps.tolist()
    if isinstance(num_steps, (list, tuple)):
        if len(num_steps) != 2:
            raise ValueError(f"num_steps as a sequence must be a pair (no_grad_steps, grad_steps), got {num_steps!r}")
        n, k = (int(v) for v in num_steps)
    else:
        n, k = int(num_steps), 0
    if n < 0 or k < 0 or n + k < 1:
        raise ValueError(f"num_steps must give at least one recurrence and no negative count, got {num_steps!r}")
    return n, k


class HuginnForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = HuginnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["SandwichBlock"]
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _supports_sdpa = True

    def __init__(self, config: HuginnConfig) -> None:
        super().__init__(config)
        self.transformer = HuginnTransformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.init_role = "tied" if config.tie_embeddings else "in"
        # Kept only so that state-dict names match the official checkpoint; the rotary table actually used is
        # rebuilt in fp32 (see rotations), because a bf16 load would round this buffer.
        self.register_buffer("freqs_cis", self._freqs_cis_buffer(), persistent=True)
        self._rope_cache: Tensor | None = None
        # Decoding with fixed-shape caches, for the captured core step; engine.compile.compile_model turns it on.
        self.static_kv_cache = False
        self.post_init()

    # ---- weights ------------------------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        """Takase init: truncated normal at sqrt(2/(5h)) (out-projections scaled by 1/sqrt(2 * depth)), cut at 3 std.

        Works per leaf module through transformers' init functions, which leave loaded (or quantized) weights alone.
        """
        values = self.config.init_values
        if isinstance(module, nn.Embedding):
            _trunc_normal(module.weight, values["embedding"])
        elif isinstance(module, nn.Linear):
            role = getattr(module, "init_role", "in")
            if role == "glu":  # [gate | up]: the up half is an output-side projection
                if not getattr(module.weight, "_is_hf_initialized", False):
                    half = module.weight.shape[0] // 2
                    with torch.no_grad():
                        _trunc_normal(module.weight[:half], values["std"])
                        _trunc_normal(module.weight[half:], values["out_proj"])
            elif role != "tied":
                _trunc_normal(module.weight, values["out_proj"] if role == "out" else values["std"])
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, Attention) and hasattr(module, "qk_bias"):
            init.zeros_(module.qk_bias)
        elif module is self and self.freqs_cis.device.type != "meta":
            init.copy_(self.freqs_cis, self._freqs_cis_buffer().to(self.freqs_cis))

    def _freqs_cis_buffer(self) -> Tensor:
        """The official checkpoint's (1, block_size, 1, head_dim / 2, 2) layout of (cos, sin)."""
        return rope_table(self.config.head_dim, self.config.block_size, self.config.rope_base)[None, :, None]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def rotations(self, positions: Tensor | slice) -> Tensor:
        """The fp32 RoPE rotations of ``positions`` (a slice or a tensor of indices), from a table kept per device:
        a (S, head_dim / 2, 2) tensor of (cos, sin) that every layer of the block receives as it is."""
        device = self.transformer.wte.weight.device
        if self._rope_cache is None or self._rope_cache.device != device:
            self._rope_cache = rope_table(self.config.head_dim, self.config.block_size, self.config.rope_base, device)
        return self._rope_cache[positions]

    # ---- the pieces of a forward pass ----------------------------------------------------------------------------

    def embed(self, input_ids: Tensor | None = None, cache: RecurrentCache | None = None, pos0: int = 0,
              input_embeds: Tensor | None = None, rope: Tensor | None = None) -> Tensor:
        """Token embedding times sqrt(h), then the prelude: the embedding injected at every recurrence."""
        x = self.transformer.wte(input_ids) if input_embeds is None else input_embeds
        x = x * self.config.init_values["embed_scale"]
        rope = self.rotations(slice(pos0, pos0 + x.shape[1])) if rope is None else rope
        for j, layer in enumerate(self.transformer.prelude):
            x = layer(x, rope, ("prelude", j), cache, pos0)
        return x

    def initial_state(self, like: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """s0 ~ TruncNormal(0, std * scale, +-3 std) * sqrt(h); zeros when ``scale`` is 0 (deterministic)."""
        std = self.config.init_values["std"] * scale
        if std <= 0:
            return torch.zeros_like(like)
        x = torch.empty(like.shape, dtype=torch.float32, device=like.device)
        if generator is None:
            nn.init.trunc_normal_(x, 0.0, std, -3 * std, 3 * std)
        else:
            nn.init.trunc_normal_(x, 0.0, std, -3 * std, 3 * std, generator=generator)
        return (x * self.config.init_values["embed_scale"]).to(like.dtype)

    def core_step(self, state: Tensor, embedded: Tensor, step: int, cache: RecurrentCache | None = None,
                  pos0: int = 0, rows: Tensor | None = None, rope: Tensor | None = None) -> Tensor:
        """One recurrence: adapter(concat(state, embedding)) through the core layers. No residual around it."""
        rope = self.rotations(slice(pos0, pos0 + state.shape[1])) if rope is None else rope
        x = self.transformer.adapter(torch.cat((state, embedded), dim=-1))
        n_core = len(self.transformer.core_block)
        for l, layer in enumerate(self.transformer.core_block):
            x = layer(x, rope, ("core", n_core * step + l), cache, pos0, rows)
        return x

    def static_core_step(self, state: Tensor, embedded: Tensor, rope: Tensor, slots: Tensor, pos: Tensor,
                         rows: Tensor, *kv: Tensor | None) -> Tensor:
        """``core_step`` for one position (S = 1) on a static cache, as tensor code with fixed shapes that
        ``engine.compile`` captures whole (one CUDA graph, replayed at every recurrence). ``slots``, ``pos``,
        ``rows`` and ``kv`` come from ``RecurrentCache.static_step_inputs``. The layers' own ``begin`` / ``end`` are
        called through the class, so that the per-layer compiled halves of ``engine.compile`` are not nested in
        this graph."""
        x = self.transformer.adapter(torch.cat((state, embedded), dim=-1))
        for l, layer in enumerate(self.transformer.core_block):
            q, k, v = SandwichBlock.begin(layer, x, rope)
            keys, values, mask = RecurrentCache.attend_static(l, slots[l:l + 1], pos, rows, k, v, *kv)
            y = Attention.merge_heads(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
            x = SandwichBlock.end(layer, x, y)
        return x

    def predict(self, state: Tensor, cache: RecurrentCache | None = None, pos0: int = 0,
                rows: Tensor | None = None, rope: Tensor | None = None,
                last_only: bool = False, head_rows: list[int] | None = None,
                last: int | None = None) -> tuple[Tensor, Tensor]:
        """ln_f, coda, ln_f, head. Returns (fp32 logits, the normalised latent that entered the coda).

        ``last_only`` runs the head on the last position only: generation needs no more, and a long prompt's
        full (S, vocab) logits would cost more memory than the rest of the step; ``last`` on the last ``last``
        positions instead (a traced prompt). ``head_rows`` runs the head only for those batch rows (the others get
        zero logits): in a batch where one row stops, the others need no head."""
        rope = self.rotations(slice(pos0, pos0 + state.shape[1])) if rope is None else rope
        latent = self.transformer.ln_f(state)
        x = latent
        for j, layer in enumerate(self.transformer.coda):
            x = layer(x, rope, ("coda", j), cache, pos0, rows)
        if last is not None:
            x = x[:, -last:]
        elif last_only:
            x = x[:, -1:]
        if head_rows is None or len(head_rows) == x.shape[0]:
            return self.lm_head(self.transformer.ln_f(x)).float(), latent
        index = torch.tensor(head_rows, device=x.device)
        logits = self.lm_head(self.transformer.ln_f(x[index])).float()
        return logits.new_zeros(x.shape[0], *logits.shape[1:]).index_copy_(0, index, logits), latent

    def new_cache(self, batch_size: int, strategy: str = "full", capacity: int = 64,
                  static: bool | None = None) -> RecurrentCache:
        """A cache for ``capacity`` positions (it grows when needed). ``static`` (default: ``static_kv_cache``, which
        ``engine.compile`` sets) makes the fixed-shape cache that the captured core step needs."""
        weight = self.transformer.wte.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.bfloat16
        static = self.static_kv_cache if static is None else static
        pool = self.__dict__.setdefault("_static_kv_pool", {}) if static else None
        return RecurrentCache.for_model(self.config, batch_size, strategy, dtype, weight.device, capacity,
                                        static=static, pool=pool)

    def forward(
        self,
        input_ids: Tensor | None = None,
        input_embeds: Tensor | None = None,
        input_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        num_steps: int | Tensor | Sequence[int] | None = None,
        past_key_values: RecurrentCache | None = None,
        output_details: dict | None = None,
        use_cache: bool = False,
        cache_position: Tensor | None = None,
        init_scale: float = 1.0,
        cache_lookup_strategy: str = "full",
        **kwargs: Any,
    ) -> HuginnOutput:
        """The authors' signature. ``attention_mask`` is accepted and ignored, as in the reference."""
        if input_ids is None and input_embeds is None:
            raise ValueError("forward needs input_ids or input_embeds")
        batch = (input_ids if input_embeds is None else input_embeds).shape[0]
        cache = past_key_values
        if use_cache and cache is None:
            cache = self.new_cache(batch, cache_lookup_strategy)
        pos0 = int(cache_position.reshape(-1)[0]) if cache_position is not None else None
        positions = (position_ids.reshape(-1, position_ids.shape[-1])[0].to(torch.long)
                     if position_ids is not None else None)
        n_no_grad, n_grad = split_num_steps(num_steps, self.config, self.training)
        plan = RowPlan(num_steps=n_no_grad + n_grad, init_scale=init_scale, seed=None)
        block = run_block(self, input_ids, [plan] * batch, cache, input_embeds=input_embeds, input_states=input_states,
                          pos0=pos0, positions=positions, grad_steps=n_grad, last_only=False)
        logits = block.logits
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return HuginnOutput(loss=loss, logits=logits, cache=cache if use_cache or past_key_values is not None
                            else None, latent_states=block.latent, num_steps_no_grad=n_no_grad,
                            num_steps_with_grad=n_grad)
