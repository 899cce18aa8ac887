"""Figures for the conversation store: streaming write rates, search time, write-lock hold during a
maximal import, the per-owner byte cap's check, crash runs.

Usage: python bench/bench_store.py [--messages 10000] [--crash-runs 20] [--dir DIR]
                                   [--import-conversations 10000] [--import-messages 10] [--cap-messages 40000]

Prints a table and a one-line summary. Every run uses a fresh database in a temporary directory
(or under --dir, to measure a particular disk).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.store import EXPORT_FORMAT, EXPORT_VERSION, LOCAL_OWNER, RecordLimits, Store, quota  # noqa: E402
from tests.store_crash_writer import damage, kill_mid_stream  # noqa: E402
WORDS = (
    "depth recurrent token exit criterion threshold latent state model answer question cache "
    "entropy steps iteration prompt reasoning number proof compute budget warm start sample "
    "temperature gradient layer attention embedding vector memory branch conversation search"
).split()


def stream_rate(store: Store, answers: int, tokens: int, flush_interval: float) -> tuple[float, float]:
    """(flush transactions per second, tokens per second) for answers streamed back to back."""
    conv = store.create_conversation(LOCAL_OWNER, "bench")
    flushes = 0
    start = time.perf_counter()
    for _ in range(answers):
        writer = store.begin_answer(LOCAL_OWNER, conv.id, flush_interval=flush_interval)
        for i in range(tokens):
            writer.add_token(f" w{i}", i % 32 + 1, 0.01)
        writer.finish("complete", {"tokens": tokens})
        flushes += writer.flushes
    elapsed = time.perf_counter() - start
    return flushes / elapsed, answers * tokens / elapsed


def concurrent_stream_rate(store: Store, threads: int, tokens: int) -> float:
    """Flush transactions per second summed over ``threads`` streams flushing every token."""
    done = []

    def run() -> None:
        conv = store.create_conversation(LOCAL_OWNER, "bench")
        with store.begin_answer(LOCAL_OWNER, conv.id, flush_interval=0) as writer:
            for i in range(tokens):
                writer.add_token(f" w{i}", 8, None)
        done.append(writer.flushes + 1)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - start)


def message_rate(store: Store, count: int) -> float:
    conv = store.create_conversation(LOCAL_OWNER, "bench")
    start = time.perf_counter()
    for i in range(count):
        store.add_message(LOCAL_OWNER, conv.id, "user" if i % 2 else "assistant", f"message {i}")
    return count / (time.perf_counter() - start)


def synthetic_export(messages: int, per_conversation: int = 20) -> dict:
    rng = random.Random(5)
    conversations = []
    for c in range(messages // per_conversation):
        msgs = []
        for j in range(per_conversation):
            words = rng.choices(WORDS, k=rng.randint(20, 120))
            if j == per_conversation - 1 and c % 100 == 0:
                words.append("xylophone")  # a rare word: 1 message in 2,000
            role = "user" if j % 2 == 0 else "assistant"
            tokens = [{"text": " " + w, "steps": rng.randint(4, 32), "exit_value": 1e-3} for w in words]
            msgs.append(
                {
                    "id": j + 1,
                    "parent_id": j or None,
                    "role": role,
                    "content": " ".join(words),
                    "created": "2026-01-01T00:00:00.000000+00:00",
                    "updated": "2026-01-01T00:00:00.000000+00:00",
                    "tokens": tokens if role == "assistant" else None,
                    "settings": {"num_steps": 32} if role == "assistant" else None,
                }
            )
        conversations.append(
            {
                "title": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {c}",
                "created": "2026-01-01T00:00:00.000000+00:00",
                "updated": "2026-01-01T00:00:00.000000+00:00",
                "current_leaf": per_conversation,
                "messages": msgs,
            }
        )
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "conversations": conversations}


def lock_hold_during_import(directory: Path, conversations: int, messages: int) -> dict[str, float]:
    """A maximal import (``conversations`` x ``messages`` per conversation, the default caps) while
    another visitor adds a message every 20 ms through the same store, as hosted visitors do.

    Returns the import's seconds, the longest write transaction (``StoreFile.longest_write_s``,
    measured inside the store) and the visitor's slowest and median ``add_message``.
    """
    store = Store(directory / "import.db")
    conv = store.create_conversation("visitor", "waiting")
    doc = synthetic_export(conversations * messages, per_conversation=messages)
    waits: list[float] = []
    done = threading.Event()

    def visitor() -> None:
        while not done.is_set():
            start = time.perf_counter()
            store.add_message("visitor", conv.id, "user", "a question")
            waits.append(time.perf_counter() - start)
            time.sleep(0.02)

    thread = threading.Thread(target=visitor)
    thread.start()
    start = time.perf_counter()
    try:
        store.import_json(LOCAL_OWNER, doc)
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        thread.join()
    result = {
        "import_s": elapsed,
        "longest_write_s": store.file.longest_write_s,
        "visitor_max_s": max(waits),
        "visitor_median_s": statistics.median(waits),
        "visitor_messages": len(waits),
    }
    store.close()
    return result


def cap_check_times(directory: Path, messages: int, repeat: int = 30) -> dict[str, float]:
    """Median ms of the byte cap's check for an owner of ``messages`` messages: summing the owner's rows (the check
    before schema 5, ``quota.stored_bytes``) against reading the running total (``quota.used_bytes``), alone and as
    part of ``add_message``, the two paths interleaved in one run; and ``add_message`` without a cap."""
    capped = Store(directory / "cap.db", limits=RecordLimits(max_owner_bytes=10**12))
    capped.import_json(LOCAL_OWNER, synthetic_export(messages), RecordLimits(max_messages=messages))
    conv = capped.create_conversation(LOCAL_OWNER, "bench")
    uncapped = Store(directory / "cap.db")
    new_check = quota.used_bytes
    paths = {"recount": quota.stored_bytes, "running total": new_check}
    times: dict[str, list[float]] = {}
    try:
        for i in range(repeat):
            for name, check in paths.items():
                start = time.perf_counter()
                capped.file.read(lambda db: check(db, LOCAL_OWNER))
                times.setdefault(f"check, {name}", []).append(time.perf_counter() - start)
                quota.used_bytes = check  # what check_room calls
                start = time.perf_counter()
                capped.add_message(LOCAL_OWNER, conv.id, "user", f"message {i}")
                times.setdefault(f"add_message, {name}", []).append(time.perf_counter() - start)
                quota.used_bytes = new_check
            start = time.perf_counter()
            uncapped.add_message(LOCAL_OWNER, conv.id, "user", f"message {i}")
            times.setdefault("add_message, no cap", []).append(time.perf_counter() - start)
    finally:
        quota.used_bytes = new_check
        capped.close()
        uncapped.close()
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def search_times(store: Store, queries: list[str], repeat: int = 20) -> dict[str, tuple[float, int]]:
    out = {}
    for q in queries:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            hits = store.search(LOCAL_OWNER, q, limit=50)
            times.append(time.perf_counter() - start)
        out[q] = (statistics.median(times) * 1000, len(hits))
    return out


def crash_runs(directory: Path, runs: int) -> tuple[int, int]:
    """(intact runs, total): SIGKILL a streaming writer, reopen, check the partial message."""
    db = directory / "crash.db"
    ok = 0
    for _ in range(runs):
        conv_id, msg_id = kill_mid_stream(db, random.uniform(0.0, 0.3))
        with Store(db) as s:
            problems = damage(s, conv_id, msg_id)
        if problems:
            print("crash run damaged:", "; ".join(problems), file=sys.stderr)
        ok += not problems
    return ok, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--crash-runs", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--import-conversations", type=int, default=10_000)
    parser.add_argument("--import-messages", type=int, default=10, help="per conversation")
    parser.add_argument("--cap-messages", type=int, default=40_000, help="the byte cap's owner holds this many")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp_path = Path(tmp)
        rows: list[tuple[str, str]] = []
        with Store(tmp_path / "write.db") as store:
            flushes, _ = stream_rate(store, answers=10, tokens=200, flush_interval=0)
            rows.append(("stream, 1 writer, flush every token", f"{flushes:,.0f} flushes/s"))
            conc = concurrent_stream_rate(store, threads=4, tokens=200)
            rows.append(("stream, 4 writers, flush every token", f"{conc:,.0f} flushes/s total"))
            _, tok_s = stream_rate(store, answers=2, tokens=20_000, flush_interval=0.5)
            rows.append(("stream, default 0.5 s flush", f"{tok_s:,.0f} tokens/s accepted"))
            msg_s = message_rate(store, 500)
            rows.append(("add_message (one transaction each)", f"{msg_s:,.0f} messages/s"))

        with Store(tmp_path / "search.db") as store:
            start = time.perf_counter()
            store.import_json(LOCAL_OWNER, synthetic_export(args.messages))
            build = time.perf_counter() - start
            rows.append((f"import {args.messages:,} messages", f"{build:.2f} s"))
            queries = ["xylophone", "depth", "entropy threshold", "recur", '"unbalanced AND (']
            times = search_times(store, queries)
            for q, (ms, n) in times.items():
                rows.append((f"search {q!r} over {args.messages:,} messages", f"{ms:.1f} ms ({n} hits)"))
            # One busy conversation whose messages all match and rank first: read before any other hit.
            busy = synthetic_export(args.messages * 4 // 5, per_conversation=args.messages * 4 // 5)
            for m in busy["conversations"][0]["messages"]:
                m["content"] = "depth recur depth"
            store.import_json(LOCAL_OWNER, busy)
            for q, (ms, n) in search_times(store, ["depth"], repeat=10).items():
                rows.append((f"search {q!r}, plus one conversation of {args.messages * 4 // 5:,} matching messages",
                             f"{ms:.1f} ms ({n} hits)"))

        hold = lock_hold_during_import(tmp_path, args.import_conversations, args.import_messages)
        rows.append((
            f"import {args.import_conversations:,} x {args.import_messages} messages (the caps)",
            f"{hold['import_s']:.1f} s, longest write lock {hold['longest_write_s'] * 1000:.0f} ms",
        ))
        rows.append((
            "  meanwhile, another visitor's add_message",
            f"max {hold['visitor_max_s'] * 1000:.0f} ms, median {hold['visitor_median_s'] * 1000:.1f} ms "
            f"({hold['visitor_messages']} saved)",
        ))  # fmt: skip

        for name, ms in cap_check_times(tmp_path, args.cap_messages).items():
            rows.append((f"byte cap at {args.cap_messages:,} messages: {name}", f"{ms:.2f} ms (median)"))

        ok, runs = crash_runs(tmp_path, args.crash_runs)
        rows.append(("SIGKILL mid-stream, reopen", f"{ok}/{runs} intact"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  result")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    worst = max(ms for ms, _ in times.values())
    print(
        f"\nsummary: {flushes:,.0f} streamed message writes/s (1 writer), {conc:,.0f}/s (4 writers); "
        f"search over {args.messages:,} messages <= {worst:.1f} ms; longest write lock during a maximal "
        f"import {hold['longest_write_s'] * 1000:.0f} ms; crash runs {ok}/{runs} intact"
    )


if __name__ == "__main__":
    main()
