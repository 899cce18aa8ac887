"""One greedy visitor against another on a hosted server: a small answer's time alone and while the worst request
the hosted caps allow is running.

    python bench/bench_hosted.py [--model auto] [--runs 3]

Starts the hosted app (``hosted_config()``: public caps, one generation at a time) in this process and speaks to it
with gradio_client, as visitors' scripts would. It times each candidate for "worst request" alone (a maximal plain
answer, a maximal history with maximal stop strings, a maximal comparison), takes the slowest, then times the second
visitor's 4-step, 16-token answer alone and while that worst request runs. The issue's target: with the worst
request running, the small answer completes within 2x its time alone plus one maximal plain answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import engine  # noqa: E402
from app.handlers import ModelSlot, Studio, describe_source  # noqa: E402
from app.hosted import HOSTED_LIMITS, OwnerKeys, hosted_config  # noqa: E402
from app.store import Store  # noqa: E402
from app.ui import build_demo, launch  # noqa: E402

SMALL = ("What is 2 + 3?", {"num_steps": 4, "max_new_tokens": 16, "seed": 0})


def fill(studio: Studio, make: callable, budget_chars: int, budget_tokens: int) -> int:
    """The largest n <= budget_chars whose messages ``make(n)`` fit ``budget_tokens`` (a binary search)."""
    low, high = 1, budget_chars
    while low < high:
        mid = (low + high + 1) // 2
        if studio.chat.count_tokens(make(mid)) <= budget_tokens:
            low = mid
        else:
            high = mid - 1
    return low


def worst_requests(studio: Studio) -> dict[str, tuple[tuple, str]]:
    """The largest request of each kind the hosted caps allow and the model takes: prompts fill half its context
    (the other half is for the answer), hot sampling keeps answers from ending early."""
    lim, context = HOSTED_LIMITS, studio.slot.info().context
    tokens = min(lim.max_prompt_tokens or context, context // 2)
    deep = {"num_steps": lim.max_num_steps, "max_new_tokens": lim.max_new_tokens, "temperature": 2.0, "seed": 0}
    n = fill(studio, lambda k: [{"role": "user", "content": "w" * k}], lim.max_prompt_chars, tokens)
    turns = lim.max_history_messages
    per_turn = fill(studio, lambda k: [{"role": ("user", "assistant")[i % 2], "content": "w" * k}
                                       for i in range(turns + 1)], lim.max_prompt_chars // (turns + 1), tokens)
    history = [{"role": ("user", "assistant")[i % 2], "content": "h" * per_turn} for i in range(turns)]
    stops = ["\u2603" * lim.max_stop_string_chars] * lim.max_stop_strings  # never generated, checked every token
    chat = ("w" * per_turn, deep, "", history)
    return {
        "maximal plain answer": (chat, "/chat"),
        "the same with maximal stop strings": (("w" * per_turn, {**deep, "stop_strings": stops}, "", history), "/chat"),
        "maximal comparison": (("w" * n, [deep] * lim.max_compare_settings), "/compare"),
    }


def timed(client, args: tuple, api: str, sizes: list | None = None) -> float:
    start = time.perf_counter()
    out = client.predict(*args, api_name=api)
    seconds = time.perf_counter() - start
    if sizes is not None:  # tokens generated, per answer
        sizes.append([c["stats"]["tokens"] for c in out] if isinstance(out, list) else out["stats"]["tokens"])
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable numbers on a shared machine)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from gradio_client import Client

    model, tokenizer, report = engine.load(args.model, device="cpu" if args.model == "auto" else "auto")
    data = Path(tempfile.mkdtemp())
    store = Store(data / "bench.db")
    slot = ModelSlot(model, tokenizer, describe_source(args.model, report.source), report=report)
    studio = Studio(slot, store, hosted_config(), owners=OwnerKeys(b"bench" * 8))
    demo = build_demo(studio)
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True)
    greedy, visitor = Client(url, verbose=False), Client(url, verbose=False)
    timed(visitor, SMALL, "/chat")  # warm-up

    requests = worst_requests(studio)
    sizes: list = []
    alone = {name: timed(greedy, a, api, sizes) for name, (a, api) in requests.items()}
    worst = max(alone, key=alone.get)
    worst_args, worst_api = requests[worst]
    small_alone, small_during, greedy_during = [], [], []
    for _ in range(args.runs):
        small_alone.append(timed(visitor, SMALL, "/chat"))
        job = threading.Thread(target=lambda: greedy_during.append(timed(greedy, worst_args, worst_api)))
        job.start()
        time.sleep(0.5)  # the greedy request is running when the visitor asks
        small_during.append(timed(visitor, SMALL, "/chat"))
        job.join()
    assert len(greedy_during) == args.runs, "the worst request failed while the visitor waited"
    demo.close()
    store.close()

    print(f"model {report.source} (context {slot.info().context} tokens), hosted caps: "
          f"{HOSTED_LIMITS}\n")
    print("| request | seconds alone | tokens generated |\n|---|---|---|")
    for (name, seconds), size in zip(alone.items(), sizes):
        print(f"| {name}{' (worst)' if name == worst else ''} | {seconds:.2f} | {size} |")
    print(f"\nthe worst request while the visitor asked: {', '.join(f'{x:.2f}' for x in greedy_during)} s")
    a, d = statistics.median(small_alone), statistics.median(small_during)
    budget = 2 * a + alone["maximal plain answer"]
    print(f"\nsecond visitor's 4-step, 16-token answer, median of {args.runs}: alone {a:.2f} s, while the worst "
          f"request runs {d:.2f} s; target 2 x alone + one maximal plain answer = {budget:.2f} s: "
          f"{'met' if d <= budget else 'NOT met'}")


if __name__ == "__main__":
    main()
