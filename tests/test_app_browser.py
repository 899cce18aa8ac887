"""End to end in a real headless Chromium (Debian's package, driven by Playwright): the page on the demo model.

Uses the bundled demo model when its weights are present, else a tiny random checkpoint (gibberish text, same
machinery). Screenshots of the main views go to test-artifacts/.
"""

from __future__ import annotations

import json
import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

import engine
from app.handlers import AppConfig, ModelSlot, Studio, describe_source
from app.store import Store

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PAYLOAD = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> ${value} {{this}}'

pytestmark = pytest.mark.browser


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is missing: CI must run the browser tests (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def demo_model_ready() -> bool:
    folder = Path(engine.DEMO_MODEL)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


@contextlib.contextmanager
def serving(tmp_path_factory) -> Iterator[tuple[str, Store]]:
    """The page on the demo model (or a tiny checkpoint) with a fresh store: (url, store)."""
    from app.ui import build_demo, launch

    if demo_model_ready():
        model, tokenizer, _ = engine.load("auto", device="cpu")
    else:
        from tests.conftest import make_checkpoint

        model, tokenizer, _ = engine.load(str(make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")))
    store = Store(tmp_path_factory.mktemp("db") / "studio.db")
    slot = ModelSlot(model, tokenizer, describe_source("auto", engine.model_info(model).name))
    demo = build_demo(Studio(slot, store, AppConfig()))
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True, server_port=None)
    try:
        yield url, store
    finally:
        demo.close()
        store.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with serving(tmp_path_factory) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def answers(page):
    return page.locator("#transcript .msg.assistant")


def test_the_page_end_to_end(app_url, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((app_url, "data:", "blob:")) else None)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea")
    assert "Running" in page.inner_text("#banner")

    # Ask: the answer streams (seen while partial), then carries its heatmap, legend and stats.
    page.locator("#advanced-toggle, button:has-text('Advanced')").first.click()
    set_number(page, "max-new-tokens", 24)
    set_number(page, "num-steps", 8)
    # A fast model can finish between two polls, so record every partial render as it happens.
    page.evaluate("""() => {
        window.__partialTokens = [];
        new MutationObserver(() => {
            // The answer being written is the transcript's live tail: only it travels while it streams.
            const live = document.querySelector('#transcript .live-tail .msg.assistant.partial');
            if (live) window.__partialTokens.push(live.querySelectorAll('.tok').length);
        }).observe(document.body, {subtree: true, childList: true});
    }""")
    page.fill("#prompt textarea", "What is 2 + 3?")
    page.keyboard.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.complete .stats", timeout=60_000)
    assert page.evaluate("window.__partialTokens.length") > 0, "the answer never showed while it was generated"
    first = answers(page).last
    assert first.locator(".tok").count() > 0 and first.locator(".legend .swatch").count() > 0
    assert "tok/s" in first.locator(".stats").inner_text()
    assert first.locator(".tok").first.get_attribute("title").startswith("token 1:")
    assert {int(s) for s in first.locator(".tok[data-steps]").evaluate_all("els => els.map(e => e.dataset.steps)")} == {8}
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

    # Change the steps slider: the next answer's tokens take the new number of steps.
    set_number(page, "num-steps", 3)
    page.fill("#prompt textarea", "And 4 + 4?")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#transcript .msg.assistant.complete').length >= 2",
                           timeout=60_000)
    second = answers(page).last
    steps = second.locator(".tok[data-steps]").evaluate_all("els => els.map(e => Number(e.dataset.steps))")
    assert steps and set(steps) == {3} and "r=3" in second.locator(".meta").first.inner_text()

    # Stop mid-answer with Esc: the partial answer stays, marked stopped. Hot sampling keeps the answer going long
    # after the first token, whatever the model would say greedily.
    set_number(page, "num-steps", 128)
    set_number(page, "max-new-tokens", 2000)
    set_number(page, "temperature", 2)
    page.fill("#prompt textarea", "Write a long story about ravens.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.partial .tok", timeout=60_000)
    page.keyboard.press("Escape")
    page.wait_for_selector("#transcript .msg.assistant.cancelled .stats", timeout=30_000)
    stopped = answers(page).last
    assert "stopped" in stopped.locator(".stats").inner_text() and stopped.locator(".tok").count() > 0
    page.screenshot(path=str(ARTIFACTS / "stopped.png"), full_page=True)

    # An HTML payload stays text: in the prompt, the transcript and the sidebar.
    set_number(page, "temperature", 0)
    set_number(page, "num-steps", 4)
    set_number(page, "max-new-tokens", 8)
    page.click("#new-conv")
    page.fill("#prompt textarea", PAYLOAD)
    page.click("#send-btn")
    page.wait_for_selector("#transcript .msg.assistant.complete .stats", timeout=60_000)
    assert page.locator("#transcript .msg.user .msg-text").inner_text() == PAYLOAD
    assert page.locator("#transcript img, #transcript script").count() == 0
    assert page.evaluate("window.__pwned") is None and not dialogs
    page.screenshot(path=str(ARTIFACTS / "html-payload.png"), full_page=True)

    # Reload: the conversations are listed and the latest is open, heatmap and all, from the store.
    page.reload()
    page.wait_for_selector("#transcript .msg.assistant .tok", state="attached", timeout=30_000)  # behind Depth
    assert page.locator("#conv-list label").count() == 2
    page.locator("#conv-list label", has_text="What is 2 + 3?").click()
    page.wait_for_function("document.querySelectorAll('#transcript .msg.assistant').length === 3", timeout=30_000)
    assert answers(page).first.locator(".tok[data-steps='8']").count() > 0
    assert "stopped" in answers(page).last.locator(".stats").inner_text()
    page.screenshot(path=str(ARTIFACTS / "reloaded.png"), full_page=True)

    # Depth arena: three settings side by side, with plots, saved into the conversation.
    page.get_by_role("tab", name="Depth arena").click()
    page.fill("#arena-prompt textarea", "Name a bird.")
    # The default columns come from the model (the demo model's span its curve); choose 4, 16 and adaptive.
    presets = page.locator("#arena-presets")
    for label in ("4 steps", "16 steps", "adaptive exit"):
        presets.get_by_label(label, exact=True).check()
    for label in presets.locator("label").all_inner_texts():
        if label.strip() not in ("4 steps", "16 steps", "adaptive exit"):
            presets.get_by_label(label.strip(), exact=True).uncheck()
    page.click("#arena-run")
    page.wait_for_selector("#arena-columns .col", timeout=90_000)
    cols = page.locator("#arena-columns .col")
    assert cols.count() == 3
    titles = [cols.nth(i).locator(".col-title").inner_text() for i in range(3)]
    assert titles == ["r=4", "r=16", "kl<0.0005, r<=16"]
    assert all(cols.nth(i).locator(".stats").inner_text() for i in range(3))
    page.wait_for_selector("canvas, svg.marks", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "arena.png"), full_page=True)
    page.click("#arena-save")
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_selector("#transcript .arena-grid .col", timeout=30_000)
    assert page.locator("#transcript .arena-grid .col").count() == 3

    # The model card's accuracy-by-depth table is one click away in the model panel (the demo model's card has one).
    if demo_model_ready():
        page.get_by_role("tab", name="Model").click()
        page.locator("#depth-table").get_by_text("Accuracy by depth").first.click()
        page.wait_for_selector("#depth-table table", timeout=30_000)
        assert "r=32" in page.locator("#depth-table table").inner_text()

    assert not outside, f"the page reached outside the app: {outside[:5]}"
    page.close()


LINK = '<a href="https://evil.example/x">click me</a><img src=x onerror="window.__pwned = 3"><form action="https://evil.example/"><input name=pw></form>'


def toast_text(page) -> str:
    toast = page.locator(".toast-body").last
    toast.wait_for(timeout=30_000)
    return toast.inner_text()


def test_messages_quoting_the_visitor_show_as_text(app_url, browser, tmp_path):
    """Error toasts quote what the visitor sent (a setting's value, an import's field): links, images and forms in
    it stay text."""
    from app.store import EXPORT_FORMAT

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea")

    # A typed exit threshold is sent as it is; the error names the field and quotes the value.
    page.locator("#adaptive input").check()
    threshold = page.locator("#threshold input")
    threshold.fill(LINK)
    threshold.press("Enter")
    page.fill("#prompt textarea", "hi")
    page.click("#send-btn")
    text = toast_text(page)
    assert "exit_threshold" in text and '<a href="https://evil.example/x">' in text
    assert page.locator(".toast-body a, .toast-body img, .toast-body form").count() == 0

    # An import whose error message quotes the file.
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps({"format": LINK, "version": 1, "conversations": []}), encoding="utf-8")
    page.get_by_text("Rename, delete, export, import").click()
    with page.expect_file_chooser() as chooser:
        page.click("#import-btn")
    chooser.value.set_files(str(hostile))
    page.wait_for_function("document.querySelectorAll('.toast-body').length >= 1 && "
                           "[...document.querySelectorAll('.toast-body')].some(t => t.innerText.includes('export'))",
                           timeout=30_000)
    texts = page.locator(".toast-body").all_inner_texts()
    assert any("evil.example" in t and EXPORT_FORMAT in t for t in texts), texts
    assert page.locator(".toast-body a, .toast-body img, .toast-body form").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.close()
