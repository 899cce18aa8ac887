"""Checking what a visitor sends: generation settings from the form or an API call, texts, histories, arena presets.

Every check runs on the server, for every event and API call, whatever the page's widgets allow; a failure raises
``engine.SettingsError`` (a setting) or ``UserError`` (anything else) with a message that names the field.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import engine

from .config import Limits, UserError, quoted

ARENA_PRESETS = ("4", "8", "16", "32", "64", "128", "adaptive")
ARENA_DEFAULT = ("4", "8", "16", "32", "adaptive")
HISTORY_ROLES = ("user", "assistant")
MAX_SETTING_CHARS = 200  # a text setting (criterion, cache strategy) is a short name


def kind(value: Any) -> str:
    """A value's JSON type, for messages: 'a list', 'null', ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---- texts --------------------------------------------------------------------------------------------------------

def check_text(value: Any, name: str, limit: int, *, what: str = "the text", if_empty: str = "") -> str:
    """A string within ``limit`` characters that is valid Unicode; with ``if_empty``, blank is refused with it."""
    if not isinstance(value, str):
        raise UserError(f"{name}: must be a string, got {kind(value)}")
    if if_empty and not value.strip():
        raise UserError(if_empty)
    if len(value) > limit:
        raise UserError(f"{name}: {what} is {len(value):,} characters; the limit here is {limit:,}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{name}: is not valid Unicode (it holds a lone surrogate)") from None
    return value


def check_message(text: Any, limits: Limits, name: str = "message") -> str:
    return check_text(text, name, limits.max_prompt_chars, what="the message", if_empty="Type a message first.")


def check_system(text: Any, limits: Limits) -> str:
    return check_text(text, "system_prompt", limits.max_system_chars, what="the system prompt")


def check_history(history: Any, limits: Limits) -> list[dict[str, str]]:
    """An API call's earlier turns: a list of {"role": "user" | "assistant", "content": str}, capped in number."""
    if history is None:
        return []
    if not isinstance(history, list):
        raise UserError(f"history: must be a list of {{\"role\", \"content\"}} objects, got {kind(history)}")
    if len(history) > limits.max_history_messages:
        raise UserError(f"history: {len(history):,} messages; the limit here is {limits.max_history_messages:,}.")
    out = []
    for i, m in enumerate(history):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise UserError(f"history[{i}]: must be an object with exactly \"role\" and \"content\"")
        if m["role"] not in HISTORY_ROLES:
            raise UserError(f"history[{i}].role: must be one of {', '.join(HISTORY_ROLES)}")
        out.append({"role": m["role"], "content": check_text(m["content"], f"history[{i}].content",
                                                             limits.max_prompt_chars)})
    return out


def fit_prompt(system: list[dict[str, str]], turns: list[dict[str, str]], max_tokens: int | None,
               count: Callable[[list[dict[str, str]]], int]) -> tuple[list[dict[str, str]], int]:
    """The newest turns that fit in ``max_tokens`` with the system prompt, and how many older ones were left out.
    A binary search over where the kept turns start: O(n log n) tokens counted, however long the history."""
    if max_tokens is None or count(system + turns) <= max_tokens:
        return turns, 0
    low, high = 1, len(turns) - 1  # the last turn (the question) always stays
    if count(system + turns[high:]) > max_tokens:
        raise UserError(f"The question with the system prompt is over this server's limit of {max_tokens:,} "
                        f"prompt tokens; shorten it.")
    while low < high:
        mid = (low + high) // 2
        if count(system + turns[mid:]) <= max_tokens:
            high = mid
        else:
            low = mid + 1
    return turns[low:], low


# ---- settings -----------------------------------------------------------------------------------------------------

def parse_threshold(value: Any) -> float | None:
    """'5e-4 (default)' -> 5e-4; '' -> None (the criterion's pinned default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    head = value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value).split()[0]
    try:
        return float(head)
    except (ValueError, OverflowError):  # OverflowError: an int past a float's range
        raise engine.SettingsError("exit_threshold", f"{quoted(value)} is not a number (e.g. 5e-4)") from None


def threshold_choices(criterion: str) -> tuple[list[str], str]:
    """Presets around the criterion's pinned default, a decade apart; the default is marked and selected."""
    default = engine.DEFAULT_THRESHOLDS.get(criterion)
    if default is None:
        return [], ""
    if criterion == "argmax-stability":
        values = [2, 3, 5, 8, 12]
    else:
        values = [default * f for f in (100, 10, 1, 0.1, 0.01)]
    labels = [f"{v:g} (default)" if v == default else f"{v:g}" for v in values]
    return labels, f"{default:g} (default)"


def check_settings(limits: Limits, settings: engine.GenerationSettings) -> engine.GenerationSettings:
    """The engine validated the ranges; these are this server's caps on top."""
    if settings.num_steps > limits.max_num_steps:
        raise engine.SettingsError("num_steps", f"must be at most {limits.max_num_steps} here, got {settings.num_steps}")
    if settings.max_new_tokens > limits.max_new_tokens:
        raise engine.SettingsError("max_new_tokens",
                                   f"must be at most {limits.max_new_tokens} here, got {settings.max_new_tokens}")
    return settings


def check_num_steps(limits: Limits, value: Any) -> Any:
    """Out of range, the message gives this server's cap, not the engine's looser one (MAX_NUM_STEPS)."""
    if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= limits.max_num_steps:
        raise engine.SettingsError("num_steps", f"must be from 1 to {limits.max_num_steps} here, got {value}")
    return value


# What the depth panel's widgets may set, by name: engine settings fields, and "adaptive" (the checkbox that turns
# the criterion on; off means fixed depth).
FORM_FIELDS = ("num_steps", "adaptive", "criterion", "exit_threshold", "min_steps", "prompt_exits", "warm_start",
               "temperature",
               "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_new_tokens", "trace", "sampler",
               "inner_steps", "freeze_threshold", "max_window", "embed_ema", "state_noise")


def settings_from_form(limits: Limits, form: dict[str, Any]) -> engine.GenerationSettings:
    """Validated settings from the depth panel's widgets by field name (``FORM_FIELDS``; a missing one keeps the
    engine's default); raises engine.SettingsError naming the field."""
    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        raise engine.SettingsError(unknown[0], f"not a field of the depth panel (known: {', '.join(FORM_FIELDS)})")
    base = engine.GenerationSettings()
    value = lambda name: form.get(name, getattr(base, name, None))  # noqa: E731
    num_steps = check_num_steps(limits, _as_int("num_steps", value("num_steps")))
    seed = value("seed")
    seed = None if seed is None or seed == "" or _as_int("seed", seed) < 0 else _as_int("seed", seed)
    adaptive = bool(form.get("adaptive", False))
    criterion = form.get("criterion")
    criterion = criterion if isinstance(criterion, str) and criterion else "kl"
    settings = engine.GenerationSettings(
        num_steps=num_steps,
        criterion=criterion if adaptive else "none",
        exit_threshold=parse_threshold(form.get("exit_threshold")) if adaptive else None,
        min_steps=min(_as_int("min_steps", value("min_steps")), num_steps),
        warm_start=bool(value("warm_start")), prompt_exits=bool(value("prompt_exits")) and adaptive,
        max_new_tokens=_as_int("max_new_tokens", value("max_new_tokens")),
        temperature=_as_float("temperature", value("temperature")), top_p=_as_float("top_p", value("top_p")),
        top_k=_as_int("top_k", value("top_k")), min_p=_as_float("min_p", value("min_p")),
        repetition_penalty=_as_float("repetition_penalty", value("repetition_penalty")), seed=seed,
        trace=bool(value("trace")), sampler=str(value("sampler")),
        # the panel's inner-steps slider may sit above a lowered depth: the sampler then runs r steps at once
        inner_steps=min(_as_int("inner_steps", value("inner_steps")), num_steps),
        freeze_threshold=_as_float("freeze_threshold", value("freeze_threshold")),
        max_window=_as_int("max_window", value("max_window")), embed_ema=_as_float("embed_ema", value("embed_ema")),
        state_noise=_as_float("state_noise", value("state_noise")),
    )
    return check_settings(limits, settings)


def check_stop_strings(stops: Any, limits: Limits) -> None:
    """This server's caps on stop strings, before the engine looks at them (its own caps are looser)."""
    if stops is None:
        return
    if not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise engine.SettingsError("stop_strings", f"must be a list of strings, got {kind(stops)}")
    if len(stops) > limits.max_stop_strings:
        raise engine.SettingsError("stop_strings", f"at most {limits.max_stop_strings} here, got {len(stops)}")
    for i, stop in enumerate(stops):
        check_text(stop, f"stop_strings[{i}]", limits.max_stop_string_chars, what="the stop string")


def settings_from_dict(limits: Limits, data: Any, name: str = "settings", default_steps: int | None = None
                       ) -> engine.GenerationSettings:
    """Settings for the scripted APIs: engine fields by name, checked against the limits. ``num_steps`` defaults to
    ``default_steps`` (the loaded model's own depth, as in the page) within the limits."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{name}: must be an object of settings by name, e.g. {{\"num_steps\": 16}}, "
                        f"got {kind(data)}")
    if default_steps is not None:
        data = {"num_steps": min(default_steps, limits.max_num_steps), **data}
    check_num_steps(limits, data.get("num_steps"))
    check_stop_strings(data.get("stop_strings"), limits)
    for key, value in data.items():
        if isinstance(value, str):
            check_text(value, f"{name}.{key}", MAX_SETTING_CHARS)
    return check_settings(limits, engine.GenerationSettings.from_dict(data))


def _as_int(name: str, value: Any) -> int:
    number = _as_float(name, value)
    if number != int(number):
        raise engine.SettingsError(name, f"must be a whole number, got {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise engine.SettingsError(name, f"must be a number, got {kind(value)}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise engine.SettingsError(name, f"must be a finite number, got {value!r}")
    return number


def arena_presets(suggested: Sequence[int], limits: Limits) -> tuple[list[str], list[str]]:
    """The arena's choices and default columns for a model: the standard depths plus the model's suggested ones
    (``engine.ModelInfo.suggested_depths``), and by default those suggested depths with adaptive exit, or
    ``ARENA_DEFAULT`` when the model suggests none. Depths over the app's limit are left out, and the default keeps
    within the columns one comparison may have (the shallowest suggested depths first)."""
    depths = sorted({int(p) for p in ARENA_PRESETS if p != "adaptive"} | {int(d) for d in suggested})
    choices = [str(d) for d in depths if d <= limits.max_num_steps] + ["adaptive", "parallel"]
    fixed = [str(d) for d in sorted(set(suggested))] if suggested else [p for p in ARENA_DEFAULT if p != "adaptive"]
    default = [p for p in fixed if p in choices][: max(limits.max_compare_settings - 1, 0)]
    return choices, default + ["adaptive"] if limits.max_compare_settings > len(default) else default


def arena_settings(base: engine.GenerationSettings, presets: Sequence[str], limits: Limits
                   ) -> list[engine.GenerationSettings]:
    """One settings entry per chosen preset: fixed depths, 'adaptive' with the panel's criterion, and 'parallel'
    (the parallel sampler with the panel's parameters at the deepest column's depth); the others decode
    sequentially whatever the panel's sampler."""
    if not presets:
        raise UserError("Choose at least one setting to compare.")
    if not isinstance(presets, (list, tuple)) or not all(
            p in ("adaptive", "parallel") or (isinstance(p, str) and p.isdigit() and 0 < int(p) < 10**6)
            for p in presets):
        raise UserError("presets: each must be a number of steps, \"adaptive\" or \"parallel\"")
    if len(presets) > limits.max_compare_settings:
        raise UserError(f"Compare at most {limits.max_compare_settings} settings at once.")
    out = []
    # Adaptive exit may go as deep as the deepest fixed column, so it is compared against its full budget.
    deepest = max([base.num_steps] + [int(p) for p in presets if p.isdigit()])
    base = base.replace(sampler="sequential")
    for preset in presets:
        if preset == "parallel":
            steps = min(deepest, limits.max_num_steps)
            out.append(base.replace(sampler="parallel", num_steps=steps, criterion="none", exit_threshold=None,
                                    warm_start=False, trace=False, inner_steps=min(base.inner_steps, steps)))
        elif preset == "adaptive":
            criterion = base.criterion if base.adaptive else "kl"
            out.append(base.replace(num_steps=min(deepest, limits.max_num_steps), criterion=criterion,
                                    exit_threshold=base.exit_threshold if base.adaptive else None))
        else:
            steps = int(preset)
            if steps > limits.max_num_steps:
                raise UserError(f"{steps} steps is over this app's limit of {limits.max_num_steps}.")
            out.append(base.replace(num_steps=steps, criterion="none", exit_threshold=None,
                                    min_steps=min(base.min_steps, steps)))
    return out
