"""The records that leave the engine: a generated token and an answer's stats, each defined once.

The engine's events (``TokenEvent.record()``, ``Summary.stats()``) write them, the store checks every write and
import against them (the app hands these definitions to ``app.store.RecordLimits``; the store never imports the
engine), the views check stored ones before drawing, and ``/chat`` and the OpenAI API return them. A new stat is
one ``Field`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .settings import MAX_NEW_TOKENS, MAX_NUM_STEPS, field_name, finite, shown

INT_BOUND = 2**63  # SQLite's integers
MAX_TOKEN_ID = 2**31 - 1  # vocabularies are far smaller; ids past int32 are not token ids


class RecordError(ValueError):
    """A record field that is not what its definition says; the message starts with the field's name."""


@dataclass(frozen=True)
class Field:
    name: str
    kind: type  # int, float or str
    low: float = 0
    high: float | None = None  # None: SQLite's integer range
    chars: int = 1_000  # text fields: the most characters

    def check(self, value: Any, where: str) -> Any:
        """None, or the value as this field allows it; raises RecordError naming ``where``."""
        item = getattr(value, "item", None)  # numpy / torch scalars
        value = item() if callable(item) and not isinstance(value, (int, float, str)) else value
        if value is None:
            return None
        if self.kind is str:
            if not isinstance(value, str):
                raise RecordError(f"{where} must be a string, not {type(value).__name__}")
            if len(value) > self.chars:
                raise RecordError(f"{where} is {len(value):,} characters; the limit is {self.chars:,}")
            return value
        integer = self.kind is int
        high = INT_BOUND - 1 if self.high is None else self.high
        rule = f"{where} must be {'an integer' if integer else 'a number'} from {self.low:g} to {high:g}"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise RecordError(f"{rule}, not {type(value).__name__}")
        if not (finite(value) and self.low <= value <= high):
            raise RecordError(f"{rule}, got {value:g}" if finite(value) else f"{rule}, got {shown(value)}")
        return value


@dataclass(frozen=True)
class Record:
    """A JSON object's known fields and one validator for it. ``closed``: no other keys allowed; otherwise other keys
    may hold plain values (a newer version's stats stay readable)."""

    name: str
    fields: tuple[Field, ...]
    closed: bool = False
    required: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def check(self, data: Any, where: str | None = None) -> dict[str, Any]:
        """The record with every known field checked, in the given order; raises RecordError naming the field."""
        where = where or self.name
        if not isinstance(data, dict):
            raise RecordError(f"{where} must be an object, not {type(data).__name__}")
        unknown = [k for k in data if self.field(k) is None] if self.closed else []
        if unknown:
            raise RecordError(f"{where} has unknown fields: {', '.join(shown(k) for k in sorted(map(str, unknown))[:5])}")
        for name in self.required:
            if data.get(name) is None:
                spec = self.field(name)
                raise RecordError(f"{where}.{name} must be " + ("a string" if spec.kind is str else
                                  f"{'an integer' if spec.kind is int else 'a number'} from {spec.low:g} to "
                                  f"{INT_BOUND - 1 if spec.high is None else spec.high:g}"))
        out = {}
        for key, value in data.items():
            spec = self.field(key)
            label = f"{where}.{field_name(key)}"
            out[key] = spec.check(value, label) if spec is not None else _plain_value(value, label)
        return out

    def clean(self, data: Any) -> tuple[dict[str, Any] | None, list[str]]:
        """What of a stored record can be drawn: its well-formed fields, and the names of the others."""
        if not isinstance(data, dict):
            return None, [self.name]
        good, bad = {}, []
        for key, value in data.items():
            try:
                good[key] = self.check({key: value})[key]
            except RecordError:
                bad.append(str(key))
        return good, bad


def _plain_value(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return Field("", str, chars=4_000).check(value, where)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Field("", float, -INT_BOUND).check(value, where)
    if value is None or isinstance(value, bool):
        return value
    raise RecordError(f"{where} must be a string, number, true/false or null, not {type(value).__name__}")


TOKEN = Record("token", (
    Field("text", str, chars=100_000),
    Field("steps", int, 0, MAX_NUM_STEPS),  # core iterations this token received
    Field("exit_value", float, -INT_BOUND),  # the exit criterion's last value (None at fixed depth)
    Field("id", int, 0, MAX_TOKEN_ID),  # absent on held-back text and on answers from before ids were kept
    Field("change", float, 0),  # the state's relative change at its last step (absent on older answers)
), closed=True, required=("text", "steps"))

STATS = Record("stats", (
    Field("tokens", int, 0, MAX_NEW_TOKENS),
    Field("prompt_tokens", int),
    Field("tokens_per_s", float),
    Field("mean_steps", float, 0, MAX_NUM_STEPS),
    Field("min_steps", int, 0, MAX_NUM_STEPS),
    Field("max_steps", int, 0, MAX_NUM_STEPS),
    Field("core_iterations", int),  # the answer tokens' core steps
    Field("prompt_core_steps", int),  # the prompt positions' run for this answer (Summary.prompt)
    Field("kv_cache_bytes", int),
    Field("elapsed_s", float),
    Field("first_token_s", float),
    Field("stop_reason", str, chars=64),  # end_of_turn | stop_string | max_tokens | cancelled | context_full
    Field("seed", int, -INT_BOUND),
    Field("notice", str, chars=10_000),
    Field("trimmed_messages", int),
    Field("reused_tokens", int),  # prompt tokens whose KV came from an earlier turn
    Field("acceptance", float, 0, 1),  # share of drafted tokens kept, with speculative decoding
    Field("cache_strategy", str, chars=64),
    Field("sampler", str, chars=64),  # sequential | speculative | parallel
    Field("core_passes_per_token", float),  # serial passes through the core block per token
    Field("diffusion_steps", int),  # parallel: window steps run
    Field("fallback", str, chars=1_000),  # parallel: why the rest of the answer was decoded sequentially
    Field("wavefront", str, chars=40_000),  # parallel: "lo,hi,done" per diffusion step (engine.parallel)
    Field("materialized_parameters", int),  # added by the app: a non-recurrent model of that depth
    Field("agreement", float, 0, 1),  # added by the arena: share of positions agreeing with the deepest column
))
