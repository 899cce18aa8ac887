"""Escaped HTML for the chat transcript, per-token depth heatmaps, their legend and stats lines.

Every piece of text that reaches the page goes through ``esc``: prompts, answers, titles, tooltips, errors.
Pure functions of plain values (no Gradio, no engine), so they are tested directly.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import markdown_view

log = logging.getLogger(__name__)

BUCKETS = 8  # colour classes d0..d7 in assets/style.css, light (few steps) to dark (many)
STOP_REASONS = {
    "end_of_turn": "end of turn",
    "stop_string": "stop string",
    "max_tokens": "max new tokens reached",
    "cancelled": "stopped",
    "context_full": "context full",
}


def esc(text: Any) -> str:
    """HTML-escape, also ``$ { }``: gr.HTML renders through a JS/Handlebars template, which must never see a
    template expression coming from user or model text."""
    return (html.escape(str(text), quote=True)
            .replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;"))


def human_count(n: float) -> str:
    """3_530_000_000 -> '3.53B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def plural(n: int, word: str) -> str:
    """'1 step', '2 steps'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def bucket(steps: int, scale: int) -> int:
    """Colour class of a token that took ``steps`` recurrences on a 1..``scale`` step scale."""
    if scale <= 1:
        return BUCKETS - 1
    frac = (min(max(steps, 1), scale) - 1) / (scale - 1)
    return min(BUCKETS - 1, int(frac * BUCKETS))


def _exit_text(value: float | None) -> str:
    if value is None:
        return "none"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


def heatmap(tokens: Sequence[dict[str, Any]], scale: int, index: str = "i") -> str:
    """The answer text as one span per token, coloured by its steps; the tooltip gives steps, exit value and how far
    the state still moved at the last step. ``index`` names the attribute holding the token's place (``data-i``:
    the depth lens opens answer tokens by it)."""
    parts = []
    for i, tok in enumerate(tokens):
        text = tok.get("text") or ""
        if not text:
            continue  # stop tokens and held-back bytes take steps but show nothing
        steps = int(tok.get("steps") or 0)
        if steps == 0:  # text the engine released at the end (held-back bytes), computed by no step of its own
            parts.append(f'<span class="tok tail" title="held-back text released at the end">{esc(text)}</span>')
            continue
        tip = f"token {i + 1}: {plural(steps, 'step')}, exit value {_exit_text(tok.get('exit_value'))}"
        if tok.get("change") is not None:
            tip += f", last step moved the state {_exit_text(tok['change'])}"
        parts.append(f'<span class="tok d{bucket(steps, scale)}" data-{index}="{i}" data-steps="{steps}" '
                     f'title="{esc(tip)}">'
                     f"{esc(text)}</span>")
    return "".join(parts)


def lens_holder(trace: dict[str, Any] | None) -> str:
    """An answer's depth-lens trace for ``assets/lens.js``, which draws it when a token is clicked: the JSON in one
    hidden element's attribute, escaped here; the script builds the panel with ``textContent`` and SVG attributes
    only, so no token text is ever parsed as HTML. "" for an answer without a trace."""
    if not trace:
        return ""
    data = json.dumps(trace, ensure_ascii=False, separators=(",", ":"))
    return f'<div class="lens-src" data-lens="{esc(data)}"></div>'


def bucket_range(b: int, scale: int) -> tuple[int, int] | None:
    """The steps that colour ``b`` stands for on a 1..``scale`` scale, or None when none do: the inverse of
    ``bucket``, in constant time whatever the scale (an imported answer may claim millions of steps)."""
    if scale <= 1:
        return (1, 1) if b == BUCKETS - 1 else None

    def first(k: int) -> int:  # the fewest steps with bucket(steps) >= k: 1 + ceil(k * (scale - 1) / BUCKETS)
        return 1 - (-k * (scale - 1) // BUCKETS)

    low, high = first(b), scale if b == BUCKETS - 1 else first(b + 1) - 1
    return (low, high) if low <= high else None


def legend(scale: int) -> str:
    """Swatches with the step range each colour stands for, on a 1..scale scale."""
    scale = max(int(scale), 1)
    items = []
    for b in range(BUCKETS):
        span = bucket_range(b, scale)
        if span is not None:
            low, high = span
            items.append(f'<span class="swatch d{b}">{low if low == high else f"{low}–{high}"}</span>')
    return f'<div class="legend"><span class="legend-title">steps per token</span>{"".join(items)}</div>'


def stats_line(stats: dict[str, Any] | None) -> str:
    """tokens · tokens/s · mean and max steps · materialized size · prompt tokens reused · speculative acceptance ·
    why it stopped."""
    if not stats:
        return ""
    parts = [f"{stats.get('tokens', 0)} tokens"]
    if stats.get("tokens_per_s") is not None:
        parts.append(f"{stats['tokens_per_s']:.1f} tok/s")
    if stats.get("mean_steps") is not None:
        parts.append(f"steps mean {stats['mean_steps']:.1f}, max {stats.get('max_steps', 0)}")
    if stats.get("materialized_parameters"):
        parts.append(f"materialized {human_count(stats['materialized_parameters'])} params")
    if stats.get("prompt_core_steps"):
        parts.append(f"core steps: prompt {stats['prompt_core_steps']:,}, answer {stats.get('core_iterations', 0):,}")
    if stats.get("reused_tokens"):
        parts.append(f"{stats['reused_tokens']} of {stats.get('prompt_tokens', '?')} prompt tokens from the cache")
    if stats.get("acceptance") is not None:
        parts.append(f"{stats['acceptance']:.0%} of drafted tokens kept")
    if stats.get("sampler") == "parallel" and stats.get("core_passes_per_token") is not None:
        parts.append(f"parallel: {stats['core_passes_per_token']:.1f} serial core passes per token, "
                     f"{stats.get('diffusion_steps', 0)} diffusion steps")
    if stats.get("fallback"):
        parts.append(f"fell back to sequential decoding: {stats['fallback']}")
    reason = stats.get("stop_reason")
    if reason:
        parts.append(STOP_REASONS.get(reason, reason))
    line = " · ".join(esc(p) for p in parts)
    notice = f'<div class="notice">{esc(stats["notice"])}</div>' if stats.get("notice") else ""
    return f'<div class="stats">{line}</div>{notice}'


WAVEFRONT_CELL = 6  # pixels per token and per diffusion step in the wavefront view


def _wavefront_steps(text: Any) -> list[tuple[int, int, int]]:
    """The steps of a stored wavefront ("lo,hi,done lo,hi,done ..."); [] when it is not one."""
    if not isinstance(text, str):
        return []
    steps = []
    for part in text.split():
        numbers = part.split(",")
        if len(numbers) != 3 or not all(n.isdigit() and len(n) < 7 for n in numbers):
            return []
        lo, hi, done = map(int, numbers)
        if not lo <= done <= hi:
            return []
        steps.append((lo, hi, done))
    return steps


def wavefront(stats: dict[str, Any] | None) -> str:
    """The parallel sampler's wavefront: tokens across, diffusion steps down; per step the final tokens (grey),
    the window (blue) and the tokens frozen at that step (orange). Collapsed under the answer."""
    steps = _wavefront_steps((stats or {}).get("wavefront"))
    if not steps:
        return ""
    cell, width = WAVEFRONT_CELL, max(hi for _, hi, _ in steps)
    rects = []
    for row, (lo, hi, done) in enumerate(steps):
        y = row * cell
        if lo > 0:
            rects.append(f'<rect class="wf-final" x="0" y="{y}" width="{lo * cell}" height="{cell}"/>')
        rects.append(f'<rect class="wf-window" x="{lo * cell}" y="{y}" width="{(hi - lo) * cell}" height="{cell}"/>')
        if done > lo:
            rects.append(f'<rect class="wf-frozen" x="{lo * cell}" y="{y}" width="{(done - lo) * cell}" '
                         f'height="{cell}"><title>step {row + 1}: tokens {lo}–{done - 1} froze</title></rect>')
    total = (stats or {}).get("diffusion_steps")
    note = f" (the first {len(steps)} of {total})" if isinstance(total, int) and total > len(steps) else ""
    fallback = (stats or {}).get("fallback")
    summary = (f"Wavefront: {len(steps)} diffusion steps{note} for {max(d for _, _, d in steps)} tokens"
               + (f"; then sequential ({fallback})" if fallback else ""))
    return (f'<details class="wavefront"><summary>{esc(summary)}</summary>'
            f'<svg class="wavefront-grid" width="{width * cell}" height="{len(steps) * cell}" role="img" '
            f'aria-label="tokens across, diffusion steps down">{"".join(rects)}</svg>'
            '<div class="wf-legend"><span class="wf-final">final</span><span class="wf-window">in the window</span>'
            '<span class="wf-frozen">froze at this step</span></div></details>')


@dataclass
class MessageView:
    """What the transcript needs of one message; built from a store Message or from a live answer."""

    id: int | None
    role: str
    content: str
    status: str = "complete"
    kind: str = "message"
    tokens: list[dict[str, Any]] | None = None
    stats: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    error: str | None = None
    sibling_index: int = 1
    sibling_count: int = 1
    prev_sibling: int | None = None
    next_sibling: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    damaged: tuple[str, ...] = ()  # the stored fields that were malformed and are left out of the drawing
    trace: dict[str, Any] | None = None  # the depth-lens trace (checked), drawn on click by assets/lens.js


def scale_of(settings: dict[str, Any] | None, tokens: Sequence[dict[str, Any]] | None = None) -> int:
    """The colour scale of an answer: its num_steps setting, else the largest step count seen."""
    if settings and settings.get("num_steps"):
        return max(int(settings["num_steps"]), 1)
    return max((int(t.get("steps") or 0) for t in tokens or ()), default=1) or 1


def _settings_label(settings: dict[str, Any] | None) -> str:
    if not settings:
        return ""
    if settings.get("criterion", "none") == "none":
        label = f"r={settings.get('num_steps')}"
    else:
        threshold = settings.get("exit_threshold")
        label = f"{settings['criterion']} exit{'' if threshold is None else f' <{threshold:g}'}, r≤{settings.get('num_steps')}"
    if settings.get("warm_start"):
        label += ", warm start"
    if settings.get("sampler") == "parallel":
        label = f"parallel r={settings.get('num_steps')}, {settings.get('inner_steps')} steps per diffusion step"
    return label


def _nav(m: MessageView) -> str:
    if m.sibling_count <= 1 or m.id is None:
        return ""
    prev = (f'<button class="nav" data-action="sibling" data-message="{m.prev_sibling}" title="previous version">‹</button>'
            if m.prev_sibling is not None else '<button class="nav" disabled>‹</button>')
    nxt = (f'<button class="nav" data-action="sibling" data-message="{m.next_sibling}" title="next version">›</button>'
           if m.next_sibling is not None else '<button class="nav" disabled>›</button>')
    return f'<span class="siblings">{prev}<span class="pos">{m.sibling_index} / {m.sibling_count}</span>{nxt}</span>'


def prompt_depth(prompt: Sequence[dict[str, Any]] | None, stats: dict[str, Any] | None, scale: int) -> str:
    """The prompt positions this answer ran, coloured by their steps like the answer (what the prompt's depth was:
    with a deep prompt the answer's tokens may need few steps of their own), folded away under one line."""
    if not prompt:
        return ""
    steps = [int(t.get("steps") or 0) for t in prompt]
    stats = stats or {}
    reused = stats.get("reused_tokens") or 0
    ran = (stats.get("prompt_tokens") or 0) - reused - 1  # an answer keeps only the latest (views.PROMPT_KEPT)
    shown = (f"the last {len(prompt):,} of {ran:,} positions" if ran > len(prompt)
             else plural(len(prompt), "position"))
    head = (f"Prompt depth: {shown}, {sum(steps):,} core steps (mean {sum(steps) / len(steps):.1f}, min "
            f"{min(steps)}, max {max(steps)})" + (f"; {reused} earlier positions came from the cache" if reused else ""))
    return (f'<details class="prompt-depth"><summary>{esc(head)}</summary>'
            f'<div class="msg-text prompt-tokens">{heatmap(prompt, scale, index="p")}</div></details>')


def answer_body(tokens: Sequence[dict[str, Any]] | None, content: str, scale: int) -> str:
    """Heatmap when per-token records exist (answers), plain escaped text otherwise (imported or typed text)."""
    if tokens:
        return heatmap(tokens, scale)
    return esc(content)


def column(title: str, tokens: Sequence[dict[str, Any]], content: str, stats: dict[str, Any] | None,
           scale: int, trace: dict[str, Any] | None = None, prompt: Sequence[dict[str, Any]] | None = None) -> str:
    """One depth-arena column: heading, heatmap, stats, agreement (and its depth-lens trace). No tokens/s where
    columns ran batched (they share one clock); a parallel or speculative column ran alone and keeps its own."""
    alone = (stats or {}).get("sampler") in ("parallel", "speculative")
    shown = {k: v for k, v in (stats or {}).items() if k != "tokens_per_s" or alone}
    agree = (stats or {}).get("agreement")
    agree_html = (f'<div class="agreement">{esc(f"{agree:.0%}")} of tokens as in the deepest answer</div>'
                  if isinstance(agree, (int, float)) else "")
    return (f'<div class="col"><div class="col-title">{esc(title)}</div>'
            f'<div class="msg-text">{answer_body(tokens, content, scale)}</div>{stats_line(shown)}{agree_html}'
            f'{prompt_depth(prompt, stats, scale)}{wavefront(stats)}{lens_holder(trace)}</div>')


def columns(cols: Sequence[dict[str, Any]]) -> str:
    """A row of arena columns sharing one colour scale, so colours compare across settings."""
    if not cols:
        return ""
    scale = max(scale_of(c.get("settings"), c.get("tokens")) for c in cols)
    body = "".join(column(c.get("label") or _settings_label(c.get("settings")), c.get("tokens") or [],
                          c.get("content", ""), c.get("stats"), scale, c.get("trace"), c.get("prompt"))
                   for c in cols)
    return f'<div class="arena-grid" style="--cols:{len(cols)}">{body}</div>{legend(scale)}'


def _meta(m: MessageView) -> list[str]:
    meta = []
    if m.role == "assistant" and m.settings:
        meta.append(_settings_label(m.settings))
    if m.status == "partial":
        meta.append("generating…")
    elif m.status in ("cancelled", "failed", "interrupted"):
        meta.append(m.status)
    if m.damaged:
        meta.append(f"damaged record ({', '.join(m.damaged)})")
    return meta


LENS_HINT = ('<div class="lens-hint">Depth lens recorded: press Depth, then click any token to see how it '
             "converged over the steps.</div>")
REGENERATE = ('<button class="regen" data-action="regenerate" title="answer this question again">'
              "Regenerate</button>")


def message(m: MessageView) -> str:
    role_class = "user" if m.role == "user" else "system" if m.role == "system" else "assistant"
    who = {"user": "You", "system": "System", "assistant": "Huginn"}[role_class]
    meta_html = "".join(f'<span class="meta">{esc(x)}</span>' for x in _meta(m))
    if m.kind == "comparison" and m.extra.get("columns"):
        body = columns(m.extra["columns"])
        footer = ""
    else:
        scale = scale_of(m.settings, m.tokens)
        live = m.status == "partial"
        body = (markdown_view.answer(m.content, m.tokens, answer_body(m.tokens, m.content, scale), live)
                if m.role == "assistant" else f'<div class="msg-text">{answer_body(m.tokens, m.content, scale)}</div>')
        footer = (stats_line(m.stats) + prompt_depth(m.extra.get("prompt"), m.stats, scale)
                  + (legend(scale) if m.tokens else "") + wavefront(m.stats)
                  + lens_holder(m.trace) + (LENS_HINT if m.trace and m.tokens else "") if m.role == "assistant" else "")
    error = f'<div class="error">{esc(m.error)}</div>' if m.error else ""
    if m.status == "interrupted":
        error += ('<div class="error">The answer was cut off when the server stopped. '
                  f"{REGENERATE} makes a new one.</div>")
    copy = '<button class="copy" data-action="copy" title="copy the text">Copy</button>'
    depth = markdown_view.depth_button(m.tokens, m.status == "partial") if m.role == "assistant" else ""
    ident = f' data-id="{m.id}"' if m.id is not None else ""
    return (f'<div class="msg {role_class} {esc(m.status)}"{ident}>'
            f'<div class="msg-head"><span class="who">{who}</span>{meta_html}{_nav(m)}{copy}{depth}</div>'
            f"{body}{footer}{error}</div>")


def damaged_message(m: MessageView) -> str:
    """What is left to show of a message whose record could not be drawn: its text, escaped."""
    return (f'<div class="msg assistant damaged" data-id="{esc(m.id)}"><div class="msg-head"><span class="meta">'
            f'damaged record</span></div><div class="msg-text">{esc(m.content)}</div></div>')


def _safe_message(m: MessageView) -> str:
    try:
        return message(m)
    except Exception:  # noqa: BLE001 - one damaged record must not take the page down
        log.exception("message %s could not be drawn", m.id)
        return damaged_message(m)


def transcript(messages: Sequence[MessageView], placeholder: str = "") -> str:
    if not messages:
        return f'<div class="transcript empty"><div class="placeholder">{esc(placeholder)}</div></div>'
    return f'<div class="transcript">{"".join(_safe_message(m) for m in messages)}</div>'


def live_tail(m: MessageView) -> str:
    """The answer being written, drawn under the transcript: while it streams only this part is sent to the page."""
    return f'<div class="transcript live-tail">{_safe_message(m)}</div>'


def banner(text: str, kind: str = "info") -> str:
    return f'<div class="banner {esc(kind)}">{esc(text)}</div>' if text else ""


def error_box(text: str) -> str:
    return f'<div class="error">{esc(text)}</div>'


def agreement(tokens: Sequence[int], reference: Sequence[int]) -> float:
    """Share of positions where two answers have the same token, over the longer length (1.0 = identical)."""
    longest = max(len(tokens), len(reference))
    if longest == 0:
        return 1.0
    same = sum(1 for a, b in zip(tokens, reference) if a == b)
    return same / longest


def finite(value: float | None) -> float | None:
    """JSON cannot hold NaN or infinity (the store refuses them): keep them out of stats."""
    return value if value is None or math.isfinite(value) else None
