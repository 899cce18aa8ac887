"""End to end in a real headless Chromium (Debian's package, driven by Playwright): the page on the demo model.

Uses the bundled demo model when its weights are present, else a tiny random checkpoint (gibberish text, same
machinery). Screenshots of the main views go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from app.ui import build_demo, launch

    if demo_model_ready():
        model, tokenizer = engine.load("auto", device="cpu")
    else:
        from tests.conftest import make_checkpoint

        model, tokenizer = engine.load(str(make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")))
    store = Store(tmp_path_factory.mktemp("db") / "studio.db")
    slot = ModelSlot(model, tokenizer, describe_source("auto", engine.model_info(model).name))
    demo = build_demo(Studio(slot, store, AppConfig()))
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True, server_port=None)
    yield url
    demo.close()
    store.close()


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
            const live = document.querySelector('#transcript .msg.assistant.partial');
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
    for label in ("8 steps", "32 steps"):
        page.locator("#arena-presets").get_by_label(label, exact=True).uncheck()  # leaves 4, 16 and adaptive
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

    assert not outside, f"the page reached outside the app: {outside[:5]}"
    page.close()
