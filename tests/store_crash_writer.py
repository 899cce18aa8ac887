"""Streams tokens into a store until it is killed; used by the SIGKILL test and bench/bench_store.py.

Usage: python tests/store_crash_writer.py DB_PATH [FLUSH_INTERVAL]

Prints ``READY <conversation id> <message id>`` once a few flushes have reached the database, then
keeps writing until the parent kills it. Token i is " t<i>" with (i % 32) + 1 steps, so the reader
can check that what survived is an unbroken prefix (``damage``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import LOCAL_OWNER, Store  # noqa: E402

READY_FLUSHES = 3


def kill_mid_stream(db_path: Path, after_s: float, flush_interval: float = 0.02) -> tuple[int, int]:
    """Run this script on ``db_path``, SIGKILL it ``after_s`` seconds after READY.

    Returns (conversation id, message id) of the answer it was streaming.
    """
    proc = subprocess.Popen(
        [sys.executable, __file__, str(db_path), str(flush_interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().split() if proc.stdout else []
        if len(line) != 3 or line[0] != "READY":
            raise RuntimeError(f"crash writer did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(after_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"crash writer ended by itself with status {proc.returncode}")
    return int(line[1]), int(line[2])


def damage(store: Store, conversation_id: int, message_id: int) -> list[str]:
    """What is wrong with the database reopened after a kill; empty when it is as the store promises."""
    problems = []
    if store.integrity_check() != "ok":
        problems.append(f"integrity_check: {store.integrity_check()}")
    if store.recovered_from is not None:
        problems.append(f"file was moved aside to {store.recovered_from}")
    thread = store.thread(LOCAL_OWNER, conversation_id)
    if [m.role for m in thread] != ["user", "assistant"] or thread[-1].id != message_id:
        problems.append(f"conversation is not [user, answer]: {[(m.id, m.role) for m in thread]}")
        return problems
    msg = thread[-1]
    tokens = msg.tokens or []
    if msg.status != "interrupted":
        problems.append(f"status is {msg.status}, not interrupted")
    if len(tokens) < READY_FLUSHES:
        problems.append(f"only {len(tokens)} tokens survived")
    if [t["text"] for t in tokens] != [f" t{i}" for i in range(len(tokens))]:
        problems.append("tokens are not an unbroken prefix")
    if [t["steps"] for t in tokens] != [i % 32 + 1 for i in range(len(tokens))]:
        problems.append("token steps do not match")
    if msg.content != "".join(t["text"] for t in tokens):
        problems.append("content and tokens disagree (half-written row)")
    if (msg.settings or {}).get("num_steps") != 32:
        problems.append(f"settings lost: {msg.settings}")
    return problems


def main() -> None:
    db_path = sys.argv[1]
    flush_interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    store = Store(db_path)
    conv = store.create_conversation(LOCAL_OWNER, "crash test")
    store.add_message(LOCAL_OWNER, conv.id, "user", "Count for me, please.")
    writer = store.begin_answer(
        LOCAL_OWNER,
        conv.id,
        model_id="fake/huginn",
        settings={"num_steps": 32, "criterion": "kl", "exit_threshold": 5e-4},
        flush_interval=flush_interval,
    )
    announced = False
    i = 0
    while True:
        writer.add_token(f" t{i}", i % 32 + 1, 1.0 / (i + 1))
        i += 1
        if not announced and writer.flushes >= READY_FLUSHES:
            print(f"READY {conv.id} {writer.message_id}", flush=True)
            announced = True
        time.sleep(0.0005)


if __name__ == "__main__":
    main()
