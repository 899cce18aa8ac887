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
  ``compress-layer`` is that for any layout (slot ``c % L``): every recurrence of a core layer shares one slot, so
  later positions read each position's latest entry (the parallel sampler's cache, ``engine.parallel``).

Storage is preallocated per slot as ``(B, H, capacity, d)`` tensors with a validity mask ``(B, capacity)``, grown
by doubling. Validity is per batch row so that rows of one batch can stop at different depths (``engine.compare``)
without seeing each other's deeper entries.

A *static* cache (``static=True``, what a compiled model's ``new_cache`` makes) is the same cache with fixed shapes
and addresses, for the captured core step of ``engine.compile`` (gpt-fast's static KV cache): its capacity is a power
of two (``static_capacity``), its core slots are views into one stacked buffer per keys and values (``_CoreStore``)
that the captured step indexes with a slot-id tensor, and its validity masks are always exact. The stacked buffer is
kept in a pool the model owns and handed to the next static cache of the same shapes once the previous one is gone,
so that successive answers replay the same CUDA graph instead of recording a new one.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass

import psutil
import torch
from torch import Tensor

READ_RULES = ("full", "skip", "latest-m4", "available-m4")
_ANCHOR_RECURRENCES = 8
_MIN_STATIC_CAPACITY = 256
_POOL_LOCK = threading.Lock()  # two answers starting at once must not both take the pooled core store


@dataclass(frozen=True)
class CacheStrategy:
    read: str = "full"
    share: str | None = None  # "s", "r", "anchor" or "layer"
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
                "optionally followed by -compress-s<k>, -compress-r<k>, -compress-anchor or -compress-layer"
            )
        if not sep:
            return cls(read=read)
        if share_part in ("anchor", "layer"):
            return cls(read=read, share=share_part)
        match = re.fullmatch(r"([sr])(\d+)", share_part)
        if not match or int(match.group(2)) < 1:
            raise ValueError(f"unknown cache sharing {('compress-' + share_part)!r} in cache strategy {text!r}: "
                             "use compress-s<k> or compress-r<k> with k >= 1, compress-anchor or compress-layer")
        return cls(read=read, share=match.group(1), share_k=int(match.group(2)))

    def physical_core_slot(self, core_slot: int, layers_per_step: int) -> int:
        if self.share == "s":
            return core_slot % self.share_k
        if self.share == "r":
            return core_slot // self.share_k
        if self.share == "layer":
            return core_slot % layers_per_step
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
    __slots__ = ("k", "v", "valid", "dense_upto", "exact")

    def __init__(self, k: Tensor, v: Tensor, valid: Tensor, exact: bool = False) -> None:
        self.k, self.v, self.valid = k, v, valid
        # Every row holds an entry for positions [0, dense_upto). While a slot stays dense (fixed depth), its
        # ``valid`` mask is not kept up to date there; _materialize writes it before the mask is needed. An ``exact``
        # slot (static caches) writes its mask at every write, because a captured core step reads it directly.
        self.dense_upto = 0
        self.exact = exact


def _materialize(slot: _Slot) -> None:
    slot.valid[:, :slot.dense_upto] = True


def _note_write(slot: _Slot, pos0: int, end: int, all_rows: bool) -> None:
    """Advance a slot's dense prefix after a write of positions [pos0, end) (by every row, or only some)."""
    if not all_rows:
        slot.dense_upto = min(slot.dense_upto, pos0)
    elif slot.dense_upto >= pos0:
        slot.dense_upto = max(slot.dense_upto, end)


def static_capacity(length: int) -> int:
    """The capacity of a static cache that must hold ``length`` positions: a power of two, at least 256, so that
    the few shapes a captured core step sees are compiled once each."""
    return max(_MIN_STATIC_CAPACITY, 1 << max(int(length) - 1, 0).bit_length())


class _CoreStore:
    """A static cache's core slots: keys and values stacked as (slots, B, H, T, d), validity as (slots, B, T), and
    latest-m4's per-layer entries as (L, B, H, T, d). Fixed addresses that a captured core step indexes."""

    def __init__(self, n_slots: int, n_latest: int, batch: int, heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        import torch._dynamo  # the static-address mark is what lets CUDA graphs use these buffers in place

        shape = (batch, heads, capacity, head_dim)
        self.k = torch.zeros((n_slots, *shape), dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros((n_slots, batch, capacity), dtype=torch.bool, device=device)
        self.latest_k = torch.zeros((n_latest, *shape), dtype=dtype, device=device) if n_latest else None
        self.latest_v = torch.zeros_like(self.latest_k) if n_latest else None
        for tensor in self.tensors():
            if tensor is not None:
                torch._dynamo.mark_static_address(tensor)
        self.owner: weakref.ref = lambda: None  # the cache using it; a dead reference once that cache is gone

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        return self.k, self.v, self.valid, self.latest_k, self.latest_v

    @property
    def n_slots(self) -> int:
        return self.k.shape[0]

    def geometry(self) -> tuple:
        n_latest = 0 if self.latest_k is None else self.latest_k.shape[0]
        return (n_latest, *self.k.shape[1:], self.k.dtype, self.k.device, self.k.is_inference())

    def resized(self, n_slots: int, capacity: int) -> "_CoreStore":
        n_latest = 0 if self.latest_k is None else self.latest_k.shape[0]
        batch, heads, old_cap, head_dim = self.k.shape[1:]
        new = _CoreStore(n_slots, n_latest, batch, heads, capacity, head_dim, self.k.dtype, self.k.device)
        for old, grown in zip(self.tensors(), new.tensors()):
            if old is not None:
                grown[:old.shape[0]].narrow(3 if old.dim() == 5 else 2, 0, old_cap).copy_(old)
        return new

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors() if t is not None)


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
        static: bool = False,
        steps_hint: int = 32,
        pool: dict | None = None,
    ) -> None:
        """``static``: fixed shapes and addresses for a captured core step (see the module docstring); the core
        slots for ``steps_hint`` recurrences are allocated at the first core write, and ``pool`` (a dict the model
        owns) lends the stacked buffer of an earlier static cache of the same shapes that is no longer used."""
        self.strategy = strategy if isinstance(strategy, CacheStrategy) else CacheStrategy.parse(strategy)
        self.n_prelude, self.n_core, self.n_coda = n_prelude, n_core, n_coda
        self.batch_size, self.n_heads, self.head_dim = batch_size, n_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.static = bool(static)
        self.capacity = static_capacity(capacity) if self.static else max(int(capacity), 1)
        self.seq_len = 0
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._latest: dict[int, _Slot] = {}  # per core layer: its entry at the deepest recurrence reached
        self._steps_hint, self._pool = max(int(steps_hint), 1), pool
        self._core: _CoreStore | None = None  # static caches: the stacked core slots
        self._step_inputs: dict = {}  # static caches: device tensors of slot ids, positions, all rows

    @classmethod
    def for_model(cls, config, batch_size: int, strategy: str | CacheStrategy = "full",
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  capacity: int = 64, static: bool = False, pool: dict | None = None) -> "RecurrentCache":
        return cls(config.n_layers_in_prelude, config.n_layers_in_recurrent_block, config.n_layers_in_coda,
                   batch_size, config.num_key_value_heads, config.head_dim, strategy, dtype, device, capacity,
                   static=static, steps_hint=config.mean_recurrence, pool=pool)

    # ---- bookkeeping -------------------------------------------------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_len

    def reserve(self, length: int) -> None:
        """Grow every buffer to hold ``length`` positions (called once with prompt + max new tokens)."""
        if length <= self.capacity:
            return
        new_cap = static_capacity(length) if self.static else max(length, self.capacity * 2)
        if self._core is not None:
            self._replace_core(self._core.resized(self._core.n_slots, new_cap))
        own = [slot for key, slot in self._slots.items() if not self._in_core(key)]
        for slot in own + ([] if self.static else list(self._latest.values())):
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
                                                          device=self.device), exact=self.static)

    def _slot(self, key: tuple[str, int]) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            if self._in_core(key):
                store = self._core_store(key[1] + 1)
                slot = _Slot(store.k[key[1]], store.v[key[1]], store.valid[key[1]], exact=True)
            else:
                slot = self._new_slot()
            self._slots[key] = slot
        return slot

    def _latest_slot(self, layer: int) -> _Slot:
        latest = self._latest.get(layer)
        if latest is None:
            if self.static:
                store = self._core_store(0)  # a mask of its own, written by _write but never read
                valid = torch.zeros(self.batch_size, self.capacity, dtype=torch.bool, device=self.device)
                latest = _Slot(store.latest_k[layer], store.latest_v[layer], valid, exact=True)
            else:
                latest = self._new_slot()
            self._latest[layer] = latest
        return latest

    # ---- static caches: the stacked core slots -------------------------------------------------------------------

    def _in_core(self, key: tuple[str, int]) -> bool:
        return self.static and key[0] == "core"

    def _core_store(self, n_slots: int) -> _CoreStore:
        """The stacked core slots, holding at least ``n_slots`` physical slots: taken from the pool (when the cache
        that had it is gone and the shapes agree), else allocated for ``steps_hint`` recurrences, grown if needed."""
        if self._core is None:
            hinted = max(self.strategy.physical_core_slot(c, self.n_core)
                         for c in range(self.n_core * self._steps_hint)) + 1
            n_latest = self.n_core if self.strategy.read == "latest-m4" else 0
            geometry = (n_latest, self.batch_size, self.n_heads, self.capacity, self.head_dim, self.dtype,
                        self.device, torch.is_inference_mode_enabled())
            with _POOL_LOCK:
                pooled = (self._pool or {}).get("core")
                if (pooled is not None and pooled.owner() is None and pooled.geometry() == geometry
                        and pooled.n_slots >= n_slots):
                    pooled.valid.zero_()  # the entries of the previous owner are not ours
                    self._core = pooled
                else:
                    self._core = _CoreStore(max(hinted, n_slots), n_latest, self.batch_size, self.n_heads,
                                            self.capacity, self.head_dim, self.dtype, self.device)
                self._core.owner = weakref.ref(self)
                if self._pool is not None:
                    self._pool["core"] = self._core
        elif n_slots > self._core.n_slots:
            self._replace_core(self._core.resized(max(n_slots, 2 * self._core.n_slots), self.capacity))
        return self._core

    def _replace_core(self, store: _CoreStore) -> None:
        """Point every core slot view at a grown store (new shapes: a captured step compiles once more)."""
        store.owner = weakref.ref(self)
        self._core = store
        if self._pool is not None:
            self._pool["core"] = store
        for (kind, index), slot in self._slots.items():
            if kind == "core":
                slot.k, slot.v, slot.valid = store.k[index], store.v[index], store.valid[index]
        for layer, slot in self._latest.items():
            valid = slot.valid.new_zeros(self.batch_size, store.k.shape[3])
            valid[:, :slot.valid.shape[1]] = slot.valid
            slot.k, slot.v, slot.valid = store.latest_k[layer], store.latest_v[layer], valid

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
                             self.head_dim, self.strategy, self.dtype, self.device, max(capacity, length, 1),
                             static=self.static, steps_hint=self._steps_hint, pool=self._pool)
        pairs = [(slot, out._slot(key)) for key, slot in self._slots.items()]
        pairs += [(slot, out._latest_slot(layer)) for layer, slot in self._latest.items()]
        for slot, twin in pairs:
            twin.k[:, :, :length] = slot.k[:, :, :length]
            twin.v[:, :, :length] = slot.v[:, :, :length]
            twin.valid[:, :length] = slot.valid[:, :length]
            twin.dense_upto = min(slot.dense_upto, length)
        out.seq_len = length
        return out

    def reset(self) -> None:
        self._slots.clear()
        self._latest.clear()
        if self._core is not None:
            self._core.valid.zero_()
        self.seq_len = 0

    @property
    def num_slots(self) -> int:
        return len(self._slots)

    def nbytes(self) -> int:
        """Bytes held by the entries of the positions seen so far (keys and values, every slot)."""
        per_position = 2 * self.batch_size * self.n_heads * self.head_dim * self.dtype.itemsize
        return (len(self._slots) + len(self._latest)) * per_position * self.seq_len

    def allocated_bytes(self) -> int:
        own = [s for key, s in self._slots.items() if not self._in_core(key)]
        if not self.static:
            own += list(self._latest.values())
        return sum(s.k.nbytes + s.v.nbytes for s in own) + (self._core.nbytes() if self._core is not None else 0)

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
            latest = self._latest_slot(index % self.n_core)
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
            if slot.dense_upto < pos0 or slot.exact:  # while dense the mask is implied: skip writing it
                slot.valid[:, pos0:end] = True
            _note_write(slot, pos0, end, all_rows=True)
            return
        _materialize(slot)
        sel = rows[:, None, None, None]
        slot.k[:, :, pos0:end] = torch.where(sel, k, slot.k[:, :, pos0:end])
        slot.v[:, :, pos0:end] = torch.where(sel, v, slot.v[:, :, pos0:end])
        slot.valid[:, pos0:end] |= rows[:, None]
        _note_write(slot, pos0, end, all_rows=False)

    # ---- the captured core step of a static cache ----------------------------------------------------------------

    def static_step_inputs(self, step: int, pos0: int, rows: Tensor | None) -> tuple:
        """What a captured core step at recurrence ``step`` for the one position ``pos0`` needs besides the model:
        (slot ids (L,), position (1,), rows (B,), k, v, valid, latest k, latest v) as device tensors, see
        ``attend_static``. Creates the slots it will write, so that host-side bookkeeping sees them."""
        if not self.static:
            raise ValueError("static_step_inputs needs a static cache (RecurrentCache(static=True))")
        if pos0 + 1 > self.capacity:
            self.reserve(pos0 + 1)
        keys = [self.physical_key("core", self.n_core * step + layer) for layer in range(self.n_core)]
        for key in keys:
            self._slot(key)
        if self.strategy.read == "latest-m4":
            for layer in range(self.n_core):
                self._latest_slot(layer)
        memo = self._step_inputs
        if ("slots", step) not in memo:
            memo["slots", step] = torch.tensor([index for _, index in keys], device=self.device)
        if memo.get("pos0") != pos0:
            memo["pos0"], memo["pos"] = pos0, torch.tensor([pos0], device=self.device)
        if "all rows" not in memo:
            memo["all rows"] = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        return (memo["slots", step], memo["pos"], memo["all rows"] if rows is None else rows, *self._core.tensors())

    def static_step_done(self, step: int, pos0: int, rows: Tensor | None) -> None:
        """Host-side bookkeeping after a captured core step wrote position ``pos0`` of its slots."""
        slots = [self._slots[self.physical_key("core", self.n_core * step + layer)] for layer in range(self.n_core)]
        for slot in slots + list(self._latest.values()):  # latest-m4's own masks are never read: left as they are
            _note_write(slot, pos0, pos0 + 1, all_rows=rows is None)

    @staticmethod
    def attend_static(layer: int, slot: Tensor, pos: Tensor, rows: Tensor, k: Tensor, v: Tensor, store_k: Tensor,
                      store_v: Tensor, valid: Tensor, latest_k: Tensor | None,
                      latest_v: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``update`` for one position as traceable tensor code: write ``k, v`` (B, H, 1, d) of core layer ``layer``
        at position ``pos`` of stacked slot ``slot`` (one-element tensors, so that no value reaches the host) for
        ``rows``; return keys and values over the whole capacity with the (B or 1, 1, 1, T) bool mask of the entries
        this step may use. The same entries and read rule as ``update``, so attention agrees up to rounding."""
        sel = rows[None, :, None, None]
        new_k, new_v = k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3)  # (1, B, H, d), as store[slot, :, :, pos] is
        store_k[slot, :, :, pos] = torch.where(sel, new_k, store_k[slot, :, :, pos])
        store_v[slot, :, :, pos] = torch.where(sel, new_v, store_v[slot, :, :, pos])
        valid[slot, :, pos] = valid[slot, :, pos] | rows[None]
        upto = torch.arange(valid.shape[-1], device=valid.device) <= pos  # (T,): this position and before
        have = valid[slot][0]  # (B, T)
        if latest_k is None:
            return store_k[slot][0], store_v[slot][0], (have & upto)[:, None, None, :]
        sel = rows[:, None, None, None]
        latest_k[layer][:, :, pos] = torch.where(sel, k, latest_k[layer][:, :, pos])  # (B, H, 1, d)
        latest_v[layer][:, :, pos] = torch.where(sel, v, latest_v[layer][:, :, pos])
        have = have[:, None, :, None]
        return (torch.where(have, store_k[slot][0], latest_k[layer]),
                torch.where(have, store_v[slot][0], latest_v[layer]), upto[None, None, None, :])
