"""The app-facing generation API: ``stream`` (one answer, token by token) and ``compare`` (one prompt, several depth
settings). Both are thin layers over ``engine.decode.decode`` and ``engine.speculative``; the chat, the depth arena,
the HTTP API and the CLI all go through ``stream`` / ``compare``.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .cache import CacheStrategy, kv_cache_bytes, memory_budget
from .decode import PromptDepth, RowPlan, RowStops, decode
from .parallel import ParallelParams, ParallelStats, parallel_decode, wavefront_text
from .prompt_cache import PromptCache, TurnCache, reuse_refusal
from .records import STATS
from .speculative import SpeculationStats, speculative_decode
from .settings import MAX_NEW_TOKENS, GenerationSettings
from .stops import StopStrings
from .trace import AnswerTraceBuilder, TokenTrace

ROLES = ("system", "user", "assistant")
STOP_TOKENS = ("<|end_turn|>", "<|end_text|>", "<|begin_text|>")
MAX_MESSAGE_CHARS = 1_000_000
MAX_HISTORY_MESSAGES = 1_000  # turns considered for a prompt (besides the system prompt); older ones are dropped


class PromptError(ValueError):
    """The conversation cannot be turned into a prompt (malformed, empty, or too long for the model)."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. At the very end a last event with ``token_id=-1`` and ``steps=0`` may carry text that was
    held back (bytes of an unfinished character, or the start of a possible stop string); it is not a token."""

    index: int
    token_id: int
    text: str  # the text this token adds (may be "" while a multi-byte character is incomplete)
    steps: int
    exit_value: float | None
    seconds: float  # since the start of generation
    trace: TokenTrace | None = None  # its steps through the depth lens, with settings.trace (xy comes in Summary)
    change: float | None = None  # how far its state still moved at its last step (relative L2): its convergence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> dict[str, Any]:
        """The token as the store keeps it and the APIs return it (``engine.records.TOKEN``)."""
        return token_record(self.text, self.steps, self.exit_value, self.token_id, self.change)


def token_record(text: str, steps: int, exit_value: float | None, token_id: int = -1,
                 change: float | None = None) -> dict[str, Any]:
    """One position as ``engine.records.TOKEN`` (answer tokens and prompt positions alike); non-finite values
    become None."""
    out: dict[str, Any] = {"text": text, "steps": steps, "exit_value": _finite(exit_value)}
    if token_id >= 0:  # the last event may be held-back text, not a token
        out["id"] = token_id
    if _finite(change) is not None:
        out["change"] = float(f"{change:.4g}")
    return out


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


@dataclass(frozen=True)
class Summary:
    text: str
    tokens: int
    prompt_tokens: int
    tokens_per_s: float
    mean_steps: float
    min_steps: int
    max_steps: int
    core_iterations: int
    kv_cache_bytes: int
    elapsed_s: float
    first_token_s: float
    stop_reason: str  # end_of_turn | stop_string | max_tokens | cancelled | context_full
    seed: int
    settings: dict[str, Any]
    trimmed_messages: int = 0
    notice: str | None = None
    steps: list[int] = field(default_factory=list)
    acceptance: float | None = None  # share of drafted tokens kept, with speculative decoding
    trace: dict[str, Any] | None = None  # with settings.trace: the answer's AnswerTrace in compact form
    reused_tokens: int = 0  # prompt tokens whose KV came from an earlier turn (engine.prompt_cache), not rerun
    sampler: str = "sequential"  # sequential | speculative | parallel
    core_passes_per_token: float = 0.0  # serial passes through the core block per token (sequential: mean steps)
    diffusion_steps: int = 0  # parallel: window steps run
    fallback: str | None = None  # parallel: why the rest of the answer was decoded sequentially
    # parallel: per diffusion step "lo,hi,done" (token indices: the window's positions produce tokens lo..hi-1,
    # tokens below done are final after the step), space-separated (engine.parallel.wavefront_text)
    wavefront: str | None = None
    cache_strategy: str = "full"  # the KV cache the answer ran with (cache_strategy_for, after fit_cache_strategy)
    # The prompt's positions run for this answer (after the reused ones), as TOKEN records, the last one excepted:
    # it chose the first answer token, so its steps are that token's. Their core steps are prompt_core_steps;
    # core_iterations counts the answer's tokens.
    prompt: list[dict[str, Any]] = field(default_factory=list)
    prompt_core_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stats(self, **added: Any) -> dict[str, Any]:
        """The answer's stats as the store keeps them and the APIs return them (``engine.records.STATS``), with the
        app's own ones (``materialized_parameters``, ``agreement``) added."""
        out = {name: getattr(self, name) for name in STATS.names if hasattr(self, name)}
        out = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in {**out, **added}.items()}
        return STATS.check(out)


@dataclass(frozen=True)
class CompareResult:
    settings: GenerationSettings
    events: list[TokenEvent]
    summary: Summary


# ---- prompts ----------------------------------------------------------------------------------------------------

def validate_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("messages must be a non-empty list of {'role', 'content'} dicts")
    clean = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or msg.get("role") not in ROLES:
            raise PromptError(f"message {i} must be a dict with role in {ROLES} and string content")
        if len(msg["content"]) > MAX_MESSAGE_CHARS:
            raise PromptError(f"message {i} is {len(msg['content']):,} characters; the limit is {MAX_MESSAGE_CHARS:,}")
        clean.append({"role": msg["role"], "content": msg["content"]})
        ids = msg.get("token_ids")
        if ids is not None:
            if msg["role"] != "assistant" or not isinstance(ids, (list, tuple)) or len(ids) > MAX_NEW_TOKENS or \
                    not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise PromptError(f"message {i} token_ids must be a list of at most {MAX_NEW_TOKENS:,} integer "
                                  "token ids, on an assistant message")
            clean[-1]["token_ids"] = list(ids)
    if not clean[-1]["content"].strip() and clean[-1]["role"] == "user":
        raise PromptError("the last message is empty")
    return clean


def _render(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt's token ids. An assistant message with ``token_ids`` (checked by ``_checked_answer_ids``) is kept
    as those ids instead of its text re-tokenized; the template is rendered with a random marker in its place."""
    nonce = secrets.token_hex(8)  # a marker no message can contain
    marks = {i: f"\ue000{nonce}.{i}\ue000" for i, m in enumerate(messages) if "token_ids" in m}
    shown = [{"role": m["role"], "content": marks.get(i, m["content"])} for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(shown, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    for i, mark in marks.items():
        before, found, after = text.partition(mark)
        if not found:  # the template left the message out
            continue
        ids += tokenizer(before, add_special_tokens=False)["input_ids"] + messages[i]["token_ids"]
        text = after
    return ids + tokenizer(text, add_special_tokens=False)["input_ids"]


def _checked_answer_ids(tokenizer, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep an assistant message's ``token_ids`` (without its end token) only where they are in the vocabulary and
    decode to its content. A model's tokens seldom survive a round trip through text (Huginn's chat template trims
    the answer; a tokenizer splits text its own way), and only the ids the model produced let a later turn reuse the
    answer's cache positions (``engine.prompt_cache``)."""
    if not any("token_ids" in m for m in messages):
        return messages
    special = set(tokenizer.all_special_ids)
    out = []
    for m in messages:
        ids = m.get("token_ids") or []
        while ids and ids[-1] in special:
            ids = ids[:-1]
        m = {"role": m["role"], "content": m["content"]}
        if ids and all(0 <= t < len(tokenizer) for t in ids) and \
                tokenizer.decode(ids, skip_special_tokens=True).strip() == m["content"].strip():
            m["token_ids"] = ids
        out.append(m)
    return out


def build_prompt(tokenizer, messages: Any, context: int, reserve: int) -> tuple[list[int], int]:
    """Render with the tokenizer's own chat template, dropping the oldest turns (never the system prompt or the
    last message) until ``reserve`` new tokens fit in ``context``. Returns (ids, number of messages dropped).

    At most ``MAX_HISTORY_MESSAGES`` turns are considered. The number of turns to drop is found by bisection, so a
    long history is rendered O(log n) times, not once per dropped message."""
    messages = validate_messages(messages)
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    capped = max(0, len(turns) - MAX_HISTORY_MESSAGES)
    turns = _checked_answer_ids(tokenizer, turns[capped:])  # once, not at every render of the bisection

    def render_if_fits(drop: int) -> list[int] | None:
        ids = _render(tokenizer, system + turns[drop:])
        return ids if len(ids) + reserve <= context else None

    ids = render_if_fits(0)
    if ids is not None:
        return ids, capped
    fits_at, best = len(turns) - 1, render_if_fits(len(turns) - 1)
    if best is None:
        length = len(_render(tokenizer, system + turns[-1:]))
        raise PromptError(
            f"the prompt is {length:,} tokens; with {reserve} new tokens it exceeds the model's context of "
            f"{context:,} tokens. Shorten the message or the system prompt, or lower max new tokens."
        )
    too_long = 0  # invariant: dropping too_long turns does not fit, dropping fits_at turns does
    while fits_at - too_long > 1:
        middle = (too_long + fits_at) // 2
        ids = render_if_fits(middle)
        if ids is None:
            too_long = middle
        else:
            fits_at, best = middle, ids
    return best, capped + fits_at


def special_stop_ids(tokenizer) -> set[int]:
    """Ids of Huginn's turn and text boundaries that this tokenizer has."""
    ids: set[int] = set()
    for token in STOP_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


def stop_token_ids(model, tokenizer) -> set[int]:
    ids = special_stop_ids(tokenizer)
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = model.config.eos_token_id if eos is None else eos  # not `or`: token id 0 is a valid end token
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


class IncrementalDecoder:
    """Turn token ids into text pieces, holding back bytes of a character that is not complete yet."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        """The text of bytes still held back (a character that never completed), at the end of generation."""
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


# ---- generation -------------------------------------------------------------------------------------------------

def cache_strategy_for(settings: GenerationSettings) -> str:
    """The cache an answer runs with: the asked-for one, else ``full`` at fixed depth and ``latest-m4`` with an exit
    criterion. With early exits a token leaves deeper slots empty; later tokens then read that layer's deepest entry
    (the model card's advice) instead of losing the token from attention, which costs accuracy. Resolved here, never
    stored in the settings, so a setting derived from another (the arena's adaptive column) gets its own."""
    if settings.cache_strategy is not None:
        return settings.cache_strategy
    if settings.parallel:  # the paper's cache: a window position reads every earlier position's latest entry
        return "compress-layer"
    return "latest-m4" if settings.adaptive else "full"


def fit_cache_strategy(model, settings: GenerationSettings, length: int, rows: int = 1) -> tuple[str, str | None]:
    """Keep the answer's cache when it fits; a per-step cache (``full``, ``latest-m4``, ``skip``) that does not fit
    becomes one KV slot per core layer ("latest-m4-compress-s<L>", the vLLM port's layout; the paper found no loss
    on MT-Bench), with a notice. Caches that already share slots are kept as asked."""
    strategy = cache_strategy_for(settings)
    weight = model.transformer.wte.weight
    element = torch.empty((), dtype=weight.dtype if weight.dtype.is_floating_point else torch.bfloat16).element_size()
    need = kv_cache_bytes(model.config, strategy, length, settings.num_steps, element, rows)
    budget = memory_budget(weight.device)
    if CacheStrategy.parse(strategy).share is not None or need <= budget:
        return strategy, None
    shared = f"latest-m4-compress-s{model.config.n_layers_in_recurrent_block}"
    return shared, (f"KV cache shared across recurrence steps ({shared}): a full cache would need "
                    f"{need / 1e9:.1f} GB and {budget / 1e9:.1f} GB is available")


def _plan(settings: GenerationSettings, seed: int, max_new_tokens: int) -> RowPlan:
    return RowPlan(
        num_steps=settings.num_steps,
        criterion=settings.criterion if settings.adaptive else None,
        threshold=settings.threshold,
        min_steps=settings.min_steps,
        check_every=settings.check_every,
        warm_start=settings.warm_start,
        init_scale=settings.init_scale,
        sampling=settings.sampling,
        max_new_tokens=max_new_tokens,
        seed=seed,
        state_seed=settings.state_seed,
        prompt_exits=settings.prompt_exits and settings.adaptive,
        trace_top_k=settings.trace_top_k if settings.trace else None,
    )


class _Row:
    """One row's answer as it grows: its text (decoded and stop-string filtered), tokens, steps, reason, trace."""

    def __init__(self, tokenizer, settings: GenerationSettings, plan: RowPlan) -> None:
        self.settings, self.plan = settings, plan
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_filter = StopStrings(settings.stop_strings)
        self.lens = AnswerTraceBuilder(settings.trace_top_k) if settings.trace else None
        self.prompt_lens = AnswerTraceBuilder(settings.trace_top_k) if settings.trace else None
        self.text = ""
        self.tokens: list[int] = []
        self.steps: list[int] = []
        self.reason: str | None = None  # set when the row is done
        self.first_token = 0.0
        self.done_at: float | None = None

    def add(self, token: int, steps: int, exit_values: list[float], traced, now: float, stop_ids: set[int],
            text_of: Callable[[int], str], change: float | None = None) -> TokenEvent:
        self.tokens.append(token)
        self.steps.append(steps)
        self.first_token = self.first_token or now
        index = len(self.steps) - 1
        exit_value = exit_values[-1] if exit_values else None
        trace = self.lens.add(index, token, steps, *traced, text_of) if self.lens and traced is not None else None
        if token in stop_ids:
            self.reason = "end_of_turn"
            return TokenEvent(index, token, "", steps, exit_value, now, trace, change)
        piece = self.stop_filter.feed(self.decoder.add(token))
        self.text += piece
        if self.stop_filter.hit:
            self.reason = "stop_string"
        elif len(self.steps) >= self.plan.max_new_tokens:
            self.reason = "max_tokens" if self.plan.max_new_tokens == self.settings.max_new_tokens else "context_full"
        return TokenEvent(index, token, piece, steps, exit_value, now, trace, change)

    def finish(self, elapsed: float) -> TokenEvent | None:
        """End the row; the text still held back (an unfinished character, a possible stop string's start)."""
        self.reason = self.reason or "context_full"
        if self.reason == "stop_string":
            return None
        tail = self.stop_filter.feed(self.decoder.flush())
        tail += "" if self.stop_filter.hit else self.stop_filter.flush()
        self.text += tail
        return TokenEvent(len(self.steps), -1, tail, 0, None, elapsed) if tail else None

    def summary(self, elapsed: float, **shared: Any) -> Summary:
        steps = self.steps or [0]
        shared.setdefault("core_passes_per_token", sum(steps) / len(steps))
        row_elapsed = self.done_at or elapsed  # rows of a batch finish at different times
        return Summary(
            text=self.text, tokens=len(self.steps),
            tokens_per_s=len(self.steps) / row_elapsed if row_elapsed > 0 else 0.0,
            mean_steps=sum(steps) / len(steps), min_steps=min(steps), max_steps=max(steps),
            core_iterations=sum(self.steps), elapsed_s=row_elapsed, first_token_s=self.first_token,
            stop_reason=self.reason, seed=self.plan.seed,
            settings=self.settings.replace(seed=self.plan.seed).to_dict(),
            steps=list(self.steps), trace=self._trace(), **shared)

    def trace_prompt(self, traces: list, next_ids: list[int], text_of: Callable[[int], str]) -> None:
        """The prompt positions' lens: position j predicted ``next_ids[j]`` (the prompt's next token)."""
        if self.prompt_lens is None:
            return
        for j, (traced, token) in enumerate(zip(traces, next_ids)):
            if traced is not None:
                self.prompt_lens.add(j, token, len(traced[0]), *traced, text_of)

    def _trace(self) -> dict[str, Any] | None:
        """The answer's trace; with a traced prompt its positions under "prompt" (indices into Summary.prompt)."""
        if self.lens is None:
            return None
        trace = self.lens.finish().to_dict()
        if self.prompt_lens is not None and self.prompt_lens.tokens:
            prompt = self.prompt_lens.finish().to_dict()
            trace["texts"] = {**prompt["texts"], **trace["texts"]}
            trace["prompt"] = prompt["tokens"]
        return trace


def _run_rows(model, tokenizer, prompt_ids: list[int], settings_list: Sequence[GenerationSettings],
              cancel: threading.Event | None, trimmed: int,
              turn: TurnCache | None = None) -> Iterator[tuple[int, TokenEvent | Summary]]:
    """Generate for several settings of one cache strategy in one batch; yield (row, event) and per-row summaries.
    With ``turn`` (one row), the prefill starts after the prefix an earlier turn left in the prompt cache."""
    context = model.config.block_size
    room = context - len(prompt_ids)
    seeds = [s.seed if s.seed is not None else random.SystemRandom().randrange(2**31) for s in settings_list]
    budgets = [min(s.max_new_tokens, room) for s in settings_list]
    plans = [_plan(s, seed, b) for s, seed, b in zip(settings_list, seeds, budgets)]
    stop_ids = stop_token_ids(model, tokenizer)
    capacity = len(prompt_ids) + max(budgets)
    deepest = max(settings_list, key=lambda s: s.num_steps)
    strategy, cache_notice = fit_cache_strategy(model, deepest, capacity, len(plans))
    rows = [_Row(tokenizer, s, p) for s, p in zip(settings_list, plans)]
    cache, reused = turn.open(prompt_ids, strategy, capacity) if turn is not None else (None, 0)
    cache = cache or model.new_cache(len(plans), strategy, capacity=capacity)
    notices = [f"{trimmed} earlier message(s) were left out to fit the model's context of {context} tokens"
               if trimmed else None, cache_notice]
    text_of = _token_texts(tokenizer)
    row_stops = RowStops()
    first = settings_list[0]
    speculation = SpeculationStats() if first.draft_steps else None
    parallel = ParallelStats() if first.parallel else None
    refusal = reuse_refusal(strategy) if turn is not None else None
    notices.append(f"prompt cache not used: {refusal}" if refusal else None)
    input_ids = torch.tensor([prompt_ids], device=cache.device)
    if parallel is not None:
        steps_iter = parallel_decode(model, input_ids, plans[0], ParallelParams.of(first), stop_ids, cancel, cache,
                                     parallel, row_stops)
    elif speculation is not None:
        steps_iter = speculative_decode(model, input_ids, plans[0], settings_list[0].draft_steps,
                                        settings_list[0].lookahead, stop_ids, cancel, cache, speculation, row_stops)
    else:
        steps_iter = decode(model, input_ids, plans, strategy, stop_ids, cancel, cache, row_stops, split_prompt=True)
    start = time.perf_counter()
    prompts: list[list[dict[str, Any]]] = [[] for _ in rows]
    try:
        for out in steps_iter:
            now = time.perf_counter() - start
            if out.prompt is not None:
                prompts = _prompt_records(out.prompt, prompt_ids[reused:-1], text_of)
                for row, traces in zip(rows, out.prompt.traces or []):
                    row.trace_prompt(traces, prompt_ids[reused + 1:], text_of)
            if out.cancelled:
                for row in rows:
                    row.reason = row.reason or "cancelled"
                break
            for r, token in enumerate(out.tokens):
                if token >= 0 and rows[r].reason is None:
                    traced = out.traces[r] if out.traces else None
                    change = out.changes[r] if out.changes else None
                    yield r, rows[r].add(token, out.steps[r], out.exit_values[r], traced, now, stop_ids, text_of,
                                         change)
                    if rows[r].reason == "stop_string":
                        row_stops.stop(r)
            for row in rows:
                row.done_at = row.done_at or (now if row.reason is not None else None)
    except Exception:
        turn = None  # an error mid-answer (out of memory, ...): the cache is not worth its memory
        raise
    finally:  # also when the consumer stops listening: the positions below cache.seq_len are complete
        if turn is not None:
            turn.keep(cache, prompt_ids, rows[0].tokens)
    elapsed = time.perf_counter() - start
    for r, row in enumerate(rows):
        tail = row.finish(elapsed)
        if tail is not None:
            yield r, tail
        yield r, row.summary(
            elapsed, prompt_tokens=len(prompt_ids), kv_cache_bytes=cache.nbytes() // len(rows),
            trimmed_messages=trimmed, notice="; ".join(part for part in notices if part) or None,
            acceptance=speculation.acceptance if speculation else None, reused_tokens=reused,
            cache_strategy=strategy, prompt=prompts[r], prompt_core_steps=sum(p["steps"] for p in prompts[r]),
            **_sampler_fields(first, speculation, parallel, len(row.steps)))


def _prompt_records(depth: PromptDepth, ids: list[int], text_of: Callable[[int], str]) -> list[list[dict[str, Any]]]:
    """Per row, the prompt positions run for this answer as TOKEN records."""
    return [[token_record(text_of(i), s, e, i, c) for i, s, e, c in zip(ids, steps, values, changes)]
            for steps, values, changes in zip(depth.steps, depth.exit_values, depth.changes)]


def _sampler_fields(settings: GenerationSettings, speculation: SpeculationStats | None,
                    parallel: ParallelStats | None, tokens: int) -> dict[str, Any]:
    """The summary's sampler, its serial core passes per token and, for the parallel sampler, its steps."""
    tokens = max(tokens, 1)
    if parallel is not None:
        return dict(sampler="parallel", core_passes_per_token=parallel.core_passes / tokens,
                    diffusion_steps=parallel.diffusion_steps, fallback=parallel.fallback,
                    wavefront=wavefront_text(parallel.wavefront))
    if speculation is not None:  # each round drafts one token per pass, then verifies them all in one pass
        passes = (speculation.drafted * settings.draft_steps + (speculation.rounds + 1) * settings.num_steps)
        return dict(sampler="speculative", core_passes_per_token=passes / tokens)
    return {}


def _token_texts(tokenizer) -> Callable[[int], str]:
    """Each token id's own text (the depth lens names the candidates at every step), decoded once per id."""
    cache: dict[int, str] = {}

    def text_of(token_id: int) -> str:
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id])
        return cache[token_id]
    return text_of


def stream(model, tokenizer, messages: Any, settings: GenerationSettings | None = None,
           cancel: threading.Event | None = None, prompt_cache: PromptCache | None = None,
           cache_owner: str = "") -> Iterator[TokenEvent | Summary]:
    """Answer a chat: yield a ``TokenEvent`` per token, then one ``Summary``.

    ``messages`` are ``{"role", "content"}`` dicts rendered with the tokenizer's chat template. Setting ``cancel``
    stops within one recurrence step; the summary then keeps the partial text with ``stop_reason="cancelled"``.
    With a ``prompt_cache``, the prompt's prefix that an earlier turn of ``cache_owner`` computed is not run again
    (``Summary.reused_tokens``); the output is the same as without it.
    """
    settings = settings or GenerationSettings(num_steps=model.config.mean_recurrence)
    prompt_ids, trimmed = build_prompt(tokenizer, messages, model.config.block_size, min(settings.max_new_tokens, 16))
    turn = TurnCache(prompt_cache, model, settings, cache_owner) if prompt_cache is not None else None
    for _, event in _run_rows(model, tokenizer, prompt_ids, [settings], cancel, trimmed, turn):
        yield event


def compare(model, tokenizer, messages: Any, settings_list: Sequence[GenerationSettings],
            cancel: threading.Event | None = None) -> list[CompareResult]:
    """Run one prompt at several settings, batching those that share a cache strategy. Each row keeps its own
    per-token steps, and its output is the one it would have run alone (same seed)."""
    if not settings_list:
        raise ValueError("compare needs at least one settings entry")
    settings_list = [s.replace(seed=s.seed if s.seed is not None else random.SystemRandom().randrange(2**31))
                     for s in settings_list]
    reserve = min(16, min(s.max_new_tokens for s in settings_list))
    prompt_ids, trimmed = build_prompt(tokenizer, messages, model.config.block_size, reserve)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(settings_list):
        # Speculative and parallel rows run several positions per pass, so they run alone.
        key = f"alone-{i}" if s.draft_steps or s.parallel else f"{cache_strategy_for(s)}/{_plan(s, 0, 1).prompt_exits}"
        groups.setdefault(key, []).append(i)
    events: list[list[TokenEvent]] = [[] for _ in settings_list]
    summaries: list[Summary | None] = [None] * len(settings_list)
    for members in groups.values():
        rows = [settings_list[i] for i in members]
        for r, event in _run_rows(model, tokenizer, prompt_ids, rows, cancel, trimmed):
            if isinstance(event, Summary):
                summaries[members[r]] = event
            else:
                events[members[r]].append(event)
    return [CompareResult(s, e, summ) for s, e, summ in zip(settings_list, events, summaries)]
