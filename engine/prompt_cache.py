"""A conversation's KV cache kept across turns, so that a turn runs only the tokens the cache does not hold yet.

Reuse must not change a single output, so a position is reused only where a run without reuse computes it the same
way (up to floating-point rounding):

* the same depth, ``init_scale``, initial-state key (``state_seed``) and cache strategy;
* the prompt but its last token runs at full depth, with no exits (``decode(split_prompt=True)``), so a prompt
  position's depth never depends on the rest of its block; the last token runs alone, like an answer token. With
  ``prompt_exits`` every prompt position ran alone with its exit rule, which is then part of the key (not with
  warm start as well: a position then starts from the previous one's final state, which the cache does not keep);
* answer positions (and the prompt's last one) count only when the answer was decoded at fixed depth without
  warm start (plain or speculative): then each of its positions is what a prefill of the same tokens computes.
  An answer with early exits or warm start is re-read by the next turn;
* not with write sharing (``compress-*``): there a prefill block reads its own positions at the current recurrence
  but cached positions at their last one, so a prefix computed earlier would be read differently. Such strategies
  always prefill the whole prompt (``reuse_refusal`` says why).

The pool is keyed by token ids: a new prompt reuses the entry with the longest common prefix, leaving at least its
last token to run (its logits choose the first answer token). When the new prompt extends an entry (the next turn
of the same conversation) the entry is taken over; when it shares only part of it (regenerate, an edited message,
another conversation with the same system prompt) the shared prefix is copied and the entry stays for its branch.
Entries are evicted least recently used beyond ``max_entries`` or ``max_bytes``.

On a shared server a visitor's time to first token can tell whether someone else sent the same prefix before
(the usual prompt-cache timing signal); the hosted app therefore names each visitor as the ``owner`` of their
entries, and entries are only reused by their owner.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
import torch

from .cache import CacheStrategy, RecurrentCache, memory_budget
from .settings import GenerationSettings


@dataclass(frozen=True)
class ReuseKey:
    """What must be equal for a position computed in one turn to be reused in another."""

    num_steps: int
    init_scale: float
    state_seed: int
    cache_strategy: str
    owner: str = ""  # whose conversation: a shared server keeps visitors' prefixes apart
    prompt_exits: str = ""  # the exit rule prompt positions ran with (settings.prompt_exits), "" at full depth


def reuse_refusal(cache_strategy: str) -> str | None:
    """Why a cache of this strategy cannot be reused across turns, or None when it can."""
    if CacheStrategy.parse(cache_strategy).share is not None:
        return (f"the {cache_strategy} cache shares slots across recurrences, so a reused prefix would be read at "
                "other recurrences than in one prefill")
    return None


def answer_reusable(settings: GenerationSettings) -> bool:
    """Whether an answer's decoded positions equal a prefill of the same tokens (fixed depth, no warm start, not
    the parallel sampler, whose positions thought in windows)."""
    return not settings.adaptive and not settings.warm_start and not settings.parallel


@dataclass
class _Entry:
    key: ReuseKey
    ids: list[int]  # the tokens at positions 0 .. len(ids) - 1 of cache
    cache: RecurrentCache


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    """A small pool of conversation caches for one model. Thread-safe; a cache in use is out of the pool."""

    def __init__(self, max_entries: int = 4, max_bytes: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        # None: half of what a KV cache may take on the cache's device (engine.cache.memory_budget), asked at every
        # put, since free memory changes.
        self.max_bytes = max_bytes
        self._entries: list[_Entry] = []  # least recently used first
        self._model: weakref.ref | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return sum(e.cache.allocated_bytes() for e in self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @torch.inference_mode()  # the caches were made by decode, in inference mode
    def take(self, model, key: ReuseKey, ids: list[int], capacity: int) -> tuple[RecurrentCache, int] | None:
        """A cache holding the longest reusable prefix of ``ids`` (at most ``len(ids) - 1`` positions) and room for
        ``capacity`` positions, with the number of positions it holds; None when no entry shares a prefix."""
        with self._lock:
            self._bind(model)
            best, shared = None, 0
            for entry in self._entries:
                if entry.key == key:
                    n = min(_common_prefix(entry.ids, ids), len(ids) - 1, entry.cache.seq_len)
                    if n > shared:
                        best, shared = entry, n
            if best is None:
                return None
            if shared == len(best.ids):  # the new prompt extends the entry: take it over
                self._entries.remove(best)
                cache = best.cache
                cache.crop(shared)
                cache.reserve(capacity)
                return cache, shared
            self._entries.remove(best)
            self._entries.append(best)  # the branch it holds stays, as the most recently used
            return best.cache.copy_prefix(shared, capacity), shared  # under the lock: no one takes it over meanwhile

    @torch.inference_mode()
    def put(self, model, key: ReuseKey, ids: list[int], cache: RecurrentCache) -> None:
        """Keep ``cache``, whose positions hold ``ids`` (longer ``ids`` are cut to the cache's length)."""
        length = min(len(ids), cache.seq_len)
        if length < 1:
            return
        cache.crop(length)
        limit = memory_budget(cache.device) // 2 if self.max_bytes is None else self.max_bytes
        with self._lock:
            self._bind(model)
            self._entries = [e for e in self._entries if not (e.key == key and e.ids == ids[:length])]
            self._entries.append(_Entry(key, list(ids[:length]), cache))
            while self._entries and (len(self._entries) > self.max_entries or self.nbytes() > limit):
                self._entries.pop(0)

    def _bind(self, model) -> None:
        """Entries belong to one model: another model (a reload, a switch) empties the pool."""
        if self._model is None or self._model() is not model:
            self._entries.clear()
            self._model = weakref.ref(model)


class TurnCache:
    """One answer's use of a ``PromptCache``: ``open`` before the prefill, ``keep`` when the answer ends."""

    def __init__(self, pool: PromptCache, model, settings: GenerationSettings, owner: str = "") -> None:
        self.pool, self.model, self.settings, self.owner = pool, model, settings, owner
        self.key: ReuseKey | None = None

    def open(self, prompt_ids: list[int], cache_strategy: str, capacity: int) -> tuple[RecurrentCache | None, int]:
        """A cache already holding a prefix of the prompt and how many positions it holds, or (None, 0)."""
        s = self.settings
        if reuse_refusal(cache_strategy) is not None or (s.prompt_exits and s.adaptive and s.warm_start):
            return None, 0  # with warm start a prompt position starts from the previous one's state, kept nowhere
        exits = f"{s.criterion}:{s.threshold!r}:{s.min_steps}:{s.check_every}" if s.prompt_exits and s.adaptive else ""
        self.key = ReuseKey(s.num_steps, float(s.init_scale), s.state_seed, cache_strategy, self.owner, exits)
        taken = self.pool.take(self.model, self.key, prompt_ids, capacity)
        return taken if taken is not None else (None, 0)

    def keep(self, cache: RecurrentCache, prompt_ids: list[int], answer_ids: list[int]) -> None:
        """Return the cache to the pool with the positions a later turn may reuse."""
        if self.key is None:
            return
        if answer_reusable(self.settings):
            ids = list(prompt_ids) + list(answer_ids)
        else:  # the prompt's last token ran like an answer token, with exits or warm start
            ids = list(prompt_ids[:-1])
        self.pool.put(self.model, self.key, ids, cache)
