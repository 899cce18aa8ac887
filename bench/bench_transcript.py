"""What one streamed update of a long conversation costs the server: time to draw it and bytes sent, the whole
transcript redrawn (what the page sent before issue 21) against the live tail alone (what it sends now).

    python bench/bench_transcript.py [--messages 100] [--tokens 60] [--runs 20]

A real store holds a conversation of ``--messages`` answered turns (each answer ``--tokens`` token records with
steps, as the demo model writes them); one more answer is half written. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import render  # noqa: E402
from app.conversations import Conversations  # noqa: E402
from app.config import AppConfig  # noqa: E402
from app.running import Running  # noqa: E402
from app.store import Store  # noqa: E402
from app.views import STORE_LIMITS, message_views  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "bench.db", limits=STORE_LIMITS) as store:
        conversations = Conversations(store, AppConfig(), Running())
        session = conversations.new_session()
        session = session.opened(store.create_conversation(session.owner).id)
        tokens = [{"text": f" word{i}", "steps": 1 + i % 32, "exit_value": None} for i in range(args.tokens)]
        for i in range(args.messages // 2):
            store.add_message(session.owner, session.conversation_id, "user", f"Question {i}: " + "why? " * 10)
            store.add_message(session.owner, session.conversation_id, "assistant", "".join(t["text"] for t in tokens),
                              tokens=tokens, stats={"tokens": args.tokens, "mean_steps": 16.5, "max_steps": 32})
        thread = store.thread(session.owner, session.conversation_id)
        base = message_views(store.sibling_ids(session.owner, session.conversation_id), thread)
        live = render.MessageView(id=10**9, role="assistant", content="", status="partial",
                                  tokens=tokens[: args.tokens // 2], settings={"num_steps": 32})
        rows = []
        for name, draw in (("whole transcript", lambda: conversations.transcript(session, live, base)),
                           ("live tail", lambda: render.live_tail(live))):
            times, size = [], 0
            for _ in range(args.runs):
                start = time.perf_counter()
                size = len(draw().encode())
                times.append(time.perf_counter() - start)
            rows.append((name, statistics.median(times) * 1000, size))
    print(f"{args.messages} messages, {args.tokens} tokens an answer, median of {args.runs}\n")
    print("| update | draw ms | bytes |\n|---|---|---|")
    for name, ms, size in rows:
        print(f"| {name} | {ms:.2f} | {size:,} |")
    print(f"\nratio: {rows[0][1] / rows[1][1]:.0f}x the time, {rows[0][2] / rows[1][2]:.0f}x the bytes")


if __name__ == "__main__":
    main()
