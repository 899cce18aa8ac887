"""The KV cache of a recurrent-depth model: one slot per layer-step.

A token's keys and values differ at every recurrence, so the cache keeps a *slot* per (layer, recurrence) pair, as
the authors' ``HuginnDynamicCache`` does. Slots are addressed as

* ``("prelude", j)`` for prelude layer ``j``,
* ``("core", L * i + l)`` for core layer ``l`` at recurrence ``i`` (``L`` = layers in the recurrent block),
* ``("coda", j)`` for coda layer ``j``.

The reference hard-codes 2 prelude and 4 core layers into its strategies (``step_idx - 2``, ``% 4``); here a core
slot is simply its index ``L * i + l`` and "the same physical layer" means the same ``l``, so any layout works and
``latest-m4`` keeps its name while meaning "latest entry of the same core layer".

Strategy strings combine a read rule and an optional write-sharing rule, e.g. ``"latest-m4-compress-s16"``:

* read ``full`` / ``skip``: a (slot, position) that was never written (the token exited earlier) is left out of
  attention. ``full`` behaves like ``skip``, as in the reference, where "full" stacks only the present entries.
* read ``latest-m4`` (alias ``available-m4``): a missing entry is replaced by the same core layer's entry at the
  deepest recurrence that token reached.
* write ``compress-s{k}``: core slot ``c`` is stored in physical slot ``c % k``; ``compress-r{k}`` uses ``c // k``;
  ``compress-anchor`` keeps the first 8 recurrences and then cycles through one recurrence's worth of slots.
  ``k`` counts layer slots, like the reference: ``compress-s4`` with 4 core layers is one slot per core layer.

Storage is preallocated per slot as ``(B, H, capacity, d)`` tensors with a validity mask ``(B, capacity)``, grown
by doubling. Validity is per batch row so that rows of one batch can stop at different depths (``engine.compare``)
without seeing each other's deeper entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil
import torch
from torch import Tensor

READ_RULES = ("full", "skip", "latest-m4", "available-m4")
_ANCHOR_RECURRENCES = 8


@dataclass(frozen=True)
class CacheStrategy:
    read: str = "full"
    share: str | None = None  # "s", "r" or "anchor"
    share_k: int = 0

    @classmethod
    def parse(cls, text: str) -> "CacheStrategy":
        """Parse strings such as ``full``, ``latest-m4``, ``skip``, ``compress-s4``, ``latest-m4-compress-s16``."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"cache strategy must be a non-empty string, got {text!r}")
        read, sep, share_part = text.partition("compress-")
        read = read.rstrip("-") or "full"
        if read == "available-m4":
            read = "latest-m4"
        if read not in READ_RULES:
            raise ValueError(
                f"unknown cache strategy {text!r}: the read rule must be one of {', '.join(READ_RULES)}, "
                "optionally followed by -compress-s<k>, -compress-r<k> or -compress-anchor"
            )
        if not sep:
            return cls(read=read)
        if share_part == "anchor":
            return cls(read=read, share="anchor")
        match = re.fullmatch(r"([sr])(\d+)", share_part)
        if not match or int(match.group(2)) < 1:
            raise ValueError(f"unknown cache sharing {('compress-' + share_part)!r} in cache strategy {text!r}: "
                             "use compress-s<k> or compress-r<k> with k >= 1, or compress-anchor")
        return cls(read=read, share=match.group(1), share_k=int(match.group(2)))

    def physical_core_slot(self, core_slot: int, layers_per_step: int) -> int:
        if self.share == "s":
            return core_slot % self.share_k
        if self.share == "r":
            return core_slot // self.share_k
        if self.share == "anchor":
            kept = _ANCHOR_RECURRENCES * layers_per_step
            return core_slot if core_slot < kept else kept + (core_slot - kept) % layers_per_step
        return core_slot


def kv_cache_bytes(config, strategy: str | CacheStrategy, length: int, num_steps: int, element_size: int,
                   batch_size: int = 1) -> int:
    """Bytes a cache needs for ``length`` positions at ``num_steps`` recurrences, from the shapes alone."""
    strategy = strategy if isinstance(strategy, CacheStrategy) else CacheStrategy.parse(strategy)
    n_core = config.n_layers_in_recurrent_block
    core = {strategy.physical_core_slot(c, n_core) for c in range(n_core * num_steps)}
    slots = config.n_layers_in_prelude + config.n_layers_in_coda + len(core)
    if strategy.read == "latest-m4":
        slots += n_core
    per_position = 2 * batch_size * config.num_key_value_heads * config.head_dim * element_size
    return slots * per_position * length


def memory_budget(device: torch.device) -> int:
    """Bytes the KV cache may take: most of the free GPU memory, or half of the available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    return psutil.virtual_memory().available // 2


class _Slot:
    __slots__ = ("k", "v", "valid", "dense_upto")

    def __init__(self, k: Tensor, v: Tensor, valid: Tensor) -> None:
        self.k, self.v, self.valid = k, v, valid
        # Every row holds an entry for positions [0, dense_upto). While a slot stays dense (fixed depth), its
        # ``valid`` mask is not kept up to date there; _materialize writes it before the mask is needed.
        self.dense_upto = 0


def _materialize(slot: _Slot) -> None:
    slot.valid[:, :slot.dense_upto] = True


class RecurrentCache:
    """Per-layer-step KV cache for prefill, decoding, adaptive exits and batched depth comparison."""

    def __init__(
        self,
        n_prelude: int,
        n_core: int,
        n_coda: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        strategy: str | CacheStrategy = "full",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        capacity: int = 64,
    ) -> None:
        self.strategy = strategy if isinstance(strategy, CacheStrategy) else CacheStrategy.parse(strategy)
        self.n_prelude, self.n_core, self.n_coda = n_prelude, n_core, n_coda
        self.batch_size, self.n_heads, self.head_dim = batch_size, n_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.capacity = max(int(capacity), 1)
        self.seq_len = 0
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._latest: dict[int, _Slot] = {}  # per core layer: its entry at the deepest recurrence reached

    @classmethod
    def for_model(cls, config, batch_size: int, strategy: str | CacheStrategy = "full",
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  capacity: int = 64) -> "RecurrentCache":
        return cls(config.n_layers_in_prelude, config.n_layers_in_recurrent_block, config.n_layers_in_coda,
                   batch_size, config.num_key_value_heads, config.head_dim, strategy, dtype, device, capacity)

    # ---- bookkeeping -------------------------------------------------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_len

    def reserve(self, length: int) -> None:
        """Grow every buffer to hold ``length`` positions (called once with prompt + max new tokens)."""
        if length <= self.capacity:
            return
        new_cap = max(length, self.capacity * 2)
        for slot in list(self._slots.values()) + list(self._latest.values()):
            self._grow(slot, new_cap)
        self.capacity = new_cap

    def _grow(self, slot: _Slot, new_cap: int) -> None:
        old = slot.k.shape[2]
        if old >= new_cap:
            return
        for name in ("k", "v"):
            buf = getattr(slot, name)
            grown = buf.new_zeros(buf.shape[0], buf.shape[1], new_cap, buf.shape[3])
            grown[:, :, :old] = buf
            setattr(slot, name, grown)
        valid = slot.valid.new_zeros(slot.valid.shape[0], new_cap)
        valid[:, :old] = slot.valid
        slot.valid = valid

    def _new_slot(self) -> _Slot:
        shape = (self.batch_size, self.n_heads, self.capacity, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return _Slot(k, torch.zeros_like(k), torch.zeros(self.batch_size, self.capacity, dtype=torch.bool,
                                                          device=self.device))

    def _slot(self, key: tuple[str, int]) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._new_slot()
        return slot

    def physical_key(self, kind: str, index: int) -> tuple[str, int]:
        if kind == "core":
            return ("core", self.strategy.physical_core_slot(index, self.n_core))
        return (kind, index)

    def crop(self, length: int) -> None:
        """Forget every entry at positions >= ``length`` (rejected speculative tokens, the part of a prompt cache
        entry that a new turn does not share). ``length == seq_len`` clears what a cancelled block left beyond."""
        if length > self.seq_len:
            return
        for slot in list(self._slots.values()) + list(self._latest.values()):
            slot.valid[:, length:] = False
            slot.dense_upto = min(slot.dense_upto, length)
        self.seq_len = length

    def copy_prefix(self, length: int, capacity: int) -> "RecurrentCache":
        """A new cache with this one's entries at positions below ``length`` and room for ``capacity`` positions;
        this cache is left as it is (a prompt cache entry shared by two branches of a conversation)."""
        length = min(length, self.seq_len)
        out = RecurrentCache(self.n_prelude, self.n_core, self.n_coda, self.batch_size, self.n_heads,
                             self.head_dim, self.strategy, self.dtype, self.device, max(capacity, length, 1))
        for table, copied in ((self._slots, out._slots), (self._latest, out._latest)):
            for key, slot in table.items():
                twin = copied[key] = out._new_slot()
                twin.k[:, :, :length] = slot.k[:, :, :length]
                twin.v[:, :, :length] = slot.v[:, :, :length]
                twin.valid[:, :length] = slot.valid[:, :length]
                twin.dense_upto = min(slot.dense_upto, length)
        out.seq_len = length
        return out

    def reset(self) -> None:
        self._slots.clear()
        self._latest.clear()
        self.seq_len = 0

    @property
    def num_slots(self) -> int:
        return len(self._slots)

    def nbytes(self) -> int:
        """Bytes held by the entries of the positions seen so far (keys and values, every slot)."""
        per_position = 2 * self.batch_size * self.n_heads * self.head_dim * self.dtype.itemsize
        return (len(self._slots) + len(self._latest)) * per_position * self.seq_len

    def allocated_bytes(self) -> int:
        return sum(s.k.nbytes + s.v.nbytes for s in list(self._slots.values()) + list(self._latest.values()))

    # ---- the attention-side API --------------------------------------------------------------------------------

    def update(
        self, kind: str, index: int, k: Tensor, v: Tensor, pos0: int, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store ``k, v`` (B, H, S, d) at positions ``pos0 ..`` of a slot; return what this step attends to.

        ``rows`` (bool, (B,)) limits the write to some batch rows; the others keep what they had. Returns keys and
        values for positions ``0 .. pos0 + S`` and, when some entries are missing, a (B, 1, 1, T) bool mask of the
        usable ones (None when all are usable).
        """
        end = pos0 + k.shape[2]
        if end > self.capacity:
            self.reserve(end)
        slot = self._slot(self.physical_key(kind, index))
        self._write(slot, k, v, pos0, end, rows)
        if kind == "core" and self.strategy.read == "latest-m4":
            layer = index % self.n_core
            latest = self._latest.get(layer)
            if latest is None:
                latest = self._latest[layer] = self._new_slot()
            self._write(latest, k, v, pos0, end, rows)
            if slot.dense_upto >= end:
                return slot.k[:, :, :end], slot.v[:, :, :end], None
            _materialize(slot)
            have = slot.valid[:, None, :end, None]
            return (torch.where(have, slot.k[:, :, :end], latest.k[:, :, :end]),
                    torch.where(have, slot.v[:, :, :end], latest.v[:, :, :end]), None)
        if slot.dense_upto >= end:
            return slot.k[:, :, :end], slot.v[:, :, :end], None
        _materialize(slot)
        return slot.k[:, :, :end], slot.v[:, :, :end], slot.valid[:, None, None, :end]

    @staticmethod
    def _write(slot: _Slot, k: Tensor, v: Tensor, pos0: int, end: int, rows: Tensor | None) -> None:
        if rows is None:
            slot.k[:, :, pos0:end] = k
            slot.v[:, :, pos0:end] = v
            if slot.dense_upto >= pos0:  # still dense: the mask is implied, skip writing it
                slot.dense_upto = max(slot.dense_upto, end)
            else:
                slot.valid[:, pos0:end] = True
            return
        _materialize(slot)
        sel = rows[:, None, None, None]
        slot.k[:, :, pos0:end] = torch.where(sel, k, slot.k[:, :, pos0:end])
        slot.v[:, :, pos0:end] = torch.where(sel, v, slot.v[:, :, pos0:end])
        slot.valid[:, pos0:end] |= rows[:, None]
        slot.dense_upto = min(slot.dense_upto, pos0)
