"""The depth lens in a real headless Chromium: click a token, see its convergence panel (engine traces on the demo
model, in the chat, after a reload, and in the arena), and a hostile token text never runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from app.store import Store
from tests.test_app_browser import PAYLOAD, browser, serving, set_number  # noqa: F401 - browser: fixture

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serving(tmp_path_factory) as (url, store):
        yield url, store


def hostile_conversation(store: Store) -> None:
    """An answer whose token texts (in the transcript and in its trace) are markup and template syntax."""
    cid = store.create_conversation("local").id
    store.add_message("local", cid, "user", "hi")
    tokens = [{"text": PAYLOAD, "steps": 3, "exit_value": None}, {"text": " ok", "steps": 3, "exit_value": None}]
    mid = store.add_message("local", cid, "assistant", PAYLOAD + " ok", tokens=tokens, settings={"num_steps": 3}).id
    step = {"top": [[1, 2], [2, 1], [1, 2]], "probs": [[0.5, 0.3], [0.6, 0.2], [0.9, 0.05]],
            "kl": [1.0, 0.1, 0.01], "entropy": [2.0, 1.0, 0.5], "latent_change": [0.5, 0.2, 0.05],
            "xy": [[0, 0], [1, 1], [2, 0]]}
    store.save_trace("local", mid, {"version": 1, "top_k": 2, "cut": False, "texts": {"1": PAYLOAD, "2": "{{x}}"},
                                    "tokens": [{"index": 0, "token_id": 1, "exit_step": 3, **step},
                                               {"index": 1, "token_id": 2, "exit_step": 3, **step}]})


def lens_shows(page, token, steps: int) -> None:
    if page.locator("#lens-panel .lens-close").count():  # the open panel closes (and uncovers the page)
        page.locator("#lens-panel .lens-close").click()
        assert page.locator("#lens-panel").evaluate("p => p.childElementCount") == 0
    for _ in range(5):  # a finished answer shows Markdown; its Depth button shows the heatmap (a redraw may race it)
        if token.is_visible():
            break
        toggle = token.locator("xpath=ancestor::*[contains(concat(' ', @class, ' '), ' msg ')][1]").locator(
            ".depth-toggle").first
        if toggle.count() and toggle.get_attribute("aria-pressed") != "true":
            toggle.click()
        page.wait_for_timeout(500)
    token.click()
    page.wait_for_selector("#lens-panel .lens-chart")
    panel = page.locator("#lens-panel")
    assert panel.locator("svg.lens-chart polyline").count() == 3  # KL, entropy, latent change
    assert panel.locator("svg.lens-chart .exit-mark").count() == 1
    assert panel.locator(".lens-step").count() == steps
    assert panel.locator(".lens-step.exit").count() == 1
    assert panel.locator("svg.lens-path circle").count() == steps
    assert panel.locator("canvas.lens-image").count() == 1
    assert "led at step 1:" in panel.locator(".lens-note").inner_text()


def test_a_hostile_token_text_is_shown_as_text_and_never_runs(served, browser):
    url, store = served
    hostile_conversation(store)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    first = page.locator("#transcript .msg.assistant .tok[data-i='0']")
    first.wait_for(state="attached")
    lens_shows(page, first, 3)
    head = page.locator("#lens-panel .lens-token").inner_text()
    assert "<script>window.__pwned = 1</script>" in head and "{{this}}" in head
    assert page.locator("#lens-panel").evaluate("p => p.querySelectorAll('img, script').length") == 0
    assert "{{x}}" in page.locator("#lens-panel .lens-strip").inner_text()
    assert page.evaluate("window.__pwned") is None and not dialogs
    page.close()


def test_click_a_token_of_a_real_answer_and_see_it_converge(served, browser, tmp_path: Path):
    url, _ = served
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#prompt textarea")
    page.click("#new-conv")  # a conversation of its own, not the hostile one another test stored
    page.wait_for_function("() => !document.querySelector('#transcript .msg.assistant')")
    page.locator("button:has-text('Advanced')").first.click()
    set_number(page, "max-new-tokens", 10)
    set_number(page, "num-steps", 8)
    page.locator("#trace input[type=checkbox]").check()
    page.fill("#prompt textarea", "What is 2 + 3?")
    page.keyboard.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.complete > .lens-src", state="attached", timeout=120_000)
    answer = page.locator("#transcript .msg.assistant.complete").last
    token = answer.locator(".tok[data-i]").nth(1)
    lens_shows(page, token, int(token.get_attribute("data-steps")))
    shot = tmp_path / "lens.png"
    page.locator("#lens-panel").screenshot(path=str(shot))
    image = Image.open(shot).convert("RGB")
    assert image.width > 400 and image.height > 300
    assert len(set(image.resize((200, 150)).getdata())) > 40, "the panel screenshot is (nearly) blank"
    page.screenshot(path=str(tmp_path / "lens-page.png"))

    # The arena: every column has its own lens.
    page.locator("button[role=tab]:has-text('Depth arena')").click()
    page.fill("#arena-prompt textarea", "2 + 2 =")
    for label in ("16 steps", "32 steps", "adaptive exit"):
        page.locator("#arena-presets").get_by_label(label, exact=True).uncheck()  # leaves 4 and 8
    page.locator("#arena-run").click()
    page.wait_for_selector("#arena-columns .col > .lens-src", state="attached", timeout=180_000)
    columns = page.locator("#arena-columns .col")
    assert columns.count() >= 2
    for i in (0, columns.count() - 1):
        token = columns.nth(i).locator(".tok[data-i]").first
        lens_shows(page, token, int(token.get_attribute("data-steps")))

    # Opened again from the store (a reload resets the form, so this comes last), the answer keeps its lens.
    page.reload()
    token = page.locator("#transcript .msg.assistant.complete > .lens-src").last.locator(
        "xpath=..").locator(".tok[data-i]").first
    token.wait_for(state="attached")
    lens_shows(page, token, int(token.get_attribute("data-steps")))

    page.close()
