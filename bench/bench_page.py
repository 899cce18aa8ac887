"""Tokens/s seen in the page against engine.stream alone, at the same settings (the page must not be the bottleneck).

    python bench/bench_page.py [--model auto] [--steps 8] [--tokens 128] [--runs 3]

For each run: engine.stream straight from Python, then the same prompt typed into the page in headless Chromium,
timed inside the page from the Enter key to the finished stats line appearing (page wall clock), and read from the
page's own stats line.
Needs Chromium (apt-get install chromium). Prints a Markdown table and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import engine  # noqa: E402
from app.handlers import AppConfig, ModelSlot, Studio, describe_source  # noqa: E402
from app.store import Store  # noqa: E402
from app.ui import build_demo, launch  # noqa: E402

PROMPT = "Tell me about ravens."
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]


def engine_rate(model, tokenizer, settings: engine.GenerationSettings) -> tuple[float, int]:
    start = time.perf_counter()
    summary = list(engine.stream(model, tokenizer, [{"role": "user", "content": PROMPT}], settings))[-1]
    return summary.tokens / (time.perf_counter() - start), summary.tokens


# Timestamps taken inside the page: Playwright notices a new element only at its next poll, which here added
# 0.2-0.35 s to every answer and made the page look slower than it is.
CLOCK = """() => {
    window.__sent = null; window.__done = null;
    document.addEventListener('keydown', e => { if (e.key === 'Enter' && !window.__sent) window.__sent = performance.now(); },
                              {capture: true});
    new MutationObserver(() => {
        if (window.__sent && !window.__done && document.querySelector('#transcript .msg.assistant.complete .stats'))
            window.__done = performance.now();
    }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


def page_rate(page, steps: int, tokens: int) -> tuple[float, float, int]:
    """(wall-clock tokens/s from Enter to the finished answer, tokens/s on the page's stats line, tokens)."""
    page.click("#new-conv")
    page.wait_for_selector("#transcript .transcript.empty")
    page.fill("#prompt textarea", PROMPT)
    page.evaluate(CLOCK)
    page.keyboard.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.complete .stats", timeout=600_000)
    elapsed = (page.evaluate("window.__done") - page.evaluate("window.__sent")) / 1000
    stats = page.inner_text("#transcript .msg.assistant .stats")
    count = int(stats.split(" tokens")[0])
    shown = float(stats.split(" tok/s")[0].split("· ")[-1])
    return count / elapsed, shown, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    model, tokenizer, report = engine.load(args.model)
    settings = engine.GenerationSettings(num_steps=args.steps, max_new_tokens=args.tokens, seed=0)
    store = Store(Path(tempfile.mkdtemp()) / "bench.db")
    slot = ModelSlot(model, tokenizer, describe_source(args.model, report.source), report=report)
    demo = build_demo(Studio(slot, store, AppConfig()))
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True)
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#prompt textarea")
        page.locator("button:has-text('Advanced')").first.click()
        for elem, value in (("num-steps", args.steps), ("max-new-tokens", args.tokens)):
            page.fill(f"#{elem} input[type=number]", str(value))
            page.press(f"#{elem} input[type=number]", "Enter")
        page_rate(page, args.steps, args.tokens)  # warm-up
        for _ in range(args.runs):
            eng, n_eng = engine_rate(model, tokenizer, settings)
            wall, shown, n_page = page_rate(page, args.steps, args.tokens)
            rows.append((eng, wall, shown, n_eng, n_page))
        browser.close()
    demo.close()
    print(f"model {report.source}, r={args.steps}, max {args.tokens} new tokens, greedy\n")
    print("| run | engine.stream tok/s | page tok/s (wall, Enter to done) | page stats line tok/s | tokens |")
    print("|---|---|---|---|---|")
    for i, (eng, wall, shown, n_eng, n_page) in enumerate(rows, 1):
        print(f"| {i} | {eng:.1f} | {wall:.1f} | {shown:.1f} | {n_eng} / {n_page} |")
    ratio = statistics.median(w / e for e, w, *_ in rows)
    ratio_shown = statistics.median(s / e for e, _, s, *_ in rows)
    print(f"\nmedian page/engine: {ratio:.0%} wall clock, {ratio_shown:.0%} by the stats line")


if __name__ == "__main__":
    main()
