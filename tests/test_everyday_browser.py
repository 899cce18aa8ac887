"""Everyday chat as a new user meets it (issue 24), in a real headless Chromium on the demo model: typing while an
answer streams, following the newest message, settings kept per browser, the model card's table, the depth lens's
place and plots, phone and wide screens, the buttons' states and copying."""

from __future__ import annotations

import pytest

from app.store import Store
from tests.test_app_browser import browser, serving, set_number  # noqa: F401 - browser: fixture

pytestmark = pytest.mark.browser

# The transcript's scrolling box: the nearest ancestor of the messages that scrolls.
SCROLLER = """() => {
    for (let n = document.querySelector('#transcript .transcript'); n && n !== document.body; n = n.parentElement) {
        const o = getComputedStyle(n).overflowY;
        if (o === 'auto' || o === 'scroll') return {top: n.scrollTop, height: n.scrollHeight, view: n.clientHeight};
    }
    return null;
}"""
OVERLAP = """([a, b]) => {
    const r = document.querySelector(a).getBoundingClientRect(), s = document.querySelector(b).getBoundingClientRect();
    return Math.max(0, Math.min(r.right, s.right) - Math.max(r.left, s.left)) *
           Math.max(0, Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top));
}"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serving(tmp_path_factory) as (url, store):
        yield url, store


def open_page(browser, url: str, width: int = 1440, height: int = 1000, context=None):
    context = context or browser.new_context()
    page = context.new_page()
    page.set_viewport_size({"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("#prompt textarea")
    page.wait_for_function("() => document.querySelector('#transcript .transcript')")
    return page


def long_conversation(store: Store, turns: int = 15) -> int:
    cid = store.create_conversation("local").id
    for i in range(turns):
        store.add_message("local", cid, "user", f"Question {i}: what is {i} + {i}?")
        tokens = [{"text": w, "steps": 4, "exit_value": None} for w in ["The", " answer", " is", f" {2 * i}", "."]]
        store.add_message("local", cid, "assistant", "".join(t["text"] for t in tokens), tokens=tokens,
                          settings={"num_steps": 4})
    return cid


def at_bottom(page) -> bool:
    box = page.evaluate(SCROLLER)
    assert box and box["height"] > box["view"] + 200, f"the conversation does not overflow its box: {box}"
    return box["top"] + box["view"] >= box["height"] - 4


def typed_while_streaming(page, box, text: str) -> bool:
    """Start a long answer, type ``text`` while it streams; True once several updates came in meanwhile (False when
    the answer ended first: sampled answers vary in length)."""
    box.fill("Write a long story about ravens.")
    box.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.partial .tok", timeout=60_000)
    box.type(text)
    count = page.locator("#transcript .msg.assistant.partial .tok").count()
    page.wait_for_function(f"!document.querySelector('#transcript .msg.assistant.partial') || "
                           f"document.querySelectorAll('#transcript .msg.assistant.partial .tok').length > {count} + 2",
                           timeout=60_000)
    return page.locator("#transcript .msg.assistant.partial").count() == 1


def test_typing_during_an_answer_is_kept_and_enter_then_is_refused_in_sight(served, browser):
    url, store = served
    page = open_page(browser, url)
    page.locator("button:has-text('Advanced')").first.click()
    set_number(page, "num-steps", 128)
    set_number(page, "max-new-tokens", 2000)
    set_number(page, "temperature", 2)  # hot sampling keeps the answer going whatever the model says greedily
    box = page.locator("#prompt textarea")
    for _ in range(4):
        page.click("#new-conv")
        page.wait_for_function("!document.querySelector('#transcript .msg')")
        if typed_while_streaming(page, box, "and then?"):
            break
        box.fill("")
    else:
        pytest.fail("four sampled answers in a row ended before the page had streamed a few updates")
    assert box.input_value() == "and then?"  # several streamed updates came, and what was typed stayed
    box.press("Enter")  # a follow-up while the answer streams: refused, in sight, and kept
    note = page.locator("#prompt-note")
    note.wait_for(state="visible", timeout=5_000)
    assert "still answering" in note.inner_text()
    assert box.input_value() == "and then?"
    assert page.locator("#transcript .msg.user").count() == 1
    page.keyboard.press("Escape")
    page.wait_for_selector("#transcript .msg.assistant.cancelled, #transcript .msg.assistant.complete",
                           timeout=30_000)
    note.wait_for(state="hidden", timeout=5_000)
    set_number(page, "num-steps", 2)
    set_number(page, "max-new-tokens", 3)
    set_number(page, "temperature", 0)
    box.press("Enter")  # now it goes
    page.wait_for_function("document.querySelectorAll('#transcript .msg.user').length === 2 && "
                           "!document.querySelector('#transcript .msg.assistant.partial')", timeout=60_000)
    assert page.locator("#transcript .msg.user").last.inner_text().endswith("and then?")
    assert box.input_value() == ""
    page.close()


def test_the_chat_follows_the_newest_message_on_open_reload_and_send(served, browser):
    url, store = served
    long_conversation(store)
    page = open_page(browser, url, height=900)
    page.wait_for_function("document.querySelectorAll('#transcript .msg').length >= 30")
    page.wait_for_timeout(300)
    assert at_bottom(page), page.evaluate(SCROLLER)
    page.reload()
    page.wait_for_function("document.querySelectorAll('#transcript .msg').length >= 30")
    page.wait_for_timeout(300)
    assert at_bottom(page), page.evaluate(SCROLLER)
    page.evaluate("""() => { for (let n = document.querySelector('#transcript .transcript'); n; n = n.parentElement)
                               if (getComputedStyle(n).overflowY === 'auto') { n.scrollTop = 0; return; } }""")
    page.locator("button:has-text('Advanced')").first.click()
    set_number(page, "num-steps", 2)
    set_number(page, "max-new-tokens", 3)
    page.fill("#prompt textarea", "One more?")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#transcript .msg.user').length === 16 && "
                           "document.querySelector('#transcript .msg.assistant:last-child.complete')", timeout=60_000)
    page.wait_for_timeout(300)
    assert at_bottom(page), page.evaluate(SCROLLER)
    page.close()


def test_settings_are_kept_per_browser_with_presets(tmp_path_factory, browser):
    with serving(tmp_path_factory) as (url, _):
        context = browser.new_context()
        page = open_page(browser, url, context=context)
        assert page.locator("#criterion input").is_disabled()  # adaptive exit is off: its criterion is greyed out
        page.locator("#preset input").click()
        page.get_by_role("option", name="Quick: 4 steps").click()
        page.wait_for_function("document.querySelector('#num-steps input[type=number]').value === '4'")
        page.locator("#preset input").click()
        page.get_by_role("option", name="Adaptive: exit early, at most 32 steps").click()
        page.wait_for_function("document.querySelector('#num-steps input[type=number]').value === '32'")
        assert page.locator("#adaptive input").is_checked()
        page.wait_for_function("!document.querySelector('#criterion input').disabled", timeout=5_000)
        page.locator("#trace input").check()
        page.fill("#system textarea", "Answer in one word.")
        page.locator("#system textarea").blur()
        page.wait_for_timeout(800)

        page.reload()
        page.wait_for_selector("#prompt textarea")
        page.wait_for_function("document.querySelector('#num-steps input[type=number]').value === '32'",
                               timeout=15_000)
        assert page.locator("#adaptive input").is_checked() and page.locator("#trace input").is_checked()
        page.wait_for_function("!document.querySelector('#criterion input').disabled", timeout=5_000)
        assert page.locator("#system textarea").input_value() == "Answer in one word."

        other = open_page(browser, url, context=browser.new_context())  # another browser: its own settings
        other.wait_for_timeout(800)
        assert not other.locator("#adaptive input").is_checked()
        assert other.locator("#num-steps input[type=number]").input_value() == "16"

        page.locator("#preset input").click()
        page.get_by_role("option", name="Defaults (every setting)").click()
        page.wait_for_function("document.querySelector('#num-steps input[type=number]').value === '16'")
        assert not page.locator("#adaptive input").is_checked() and not page.locator("#trace input").is_checked()
        page.wait_for_function("document.querySelector('#criterion input').disabled", timeout=5_000)
        context.close()


def test_the_model_cards_table_keeps_its_words_whole(served, browser):
    url, _ = served
    page = open_page(browser, url)
    page.get_by_role("tab", name="Model").click()
    page.locator("#depth-table").get_by_text("Accuracy by depth").first.click()
    page.wait_for_selector("#depth-table table")
    lines = page.evaluate("""() => [...document.querySelectorAll('#depth-table th, #depth-table td')].map(c => {
        const r = document.createRange(); r.selectNodeContents(c);
        return [c.innerText, new Set([...r.getClientRects()].map(x => Math.round(x.top))).size]; })""")
    assert len(lines) > 13 and all(n <= 1 for _, n in lines), [x for x in lines if x[1] > 1][:5]
    page.close()


def traced_conversation(store: Store) -> None:
    """A confident answer: each token settled at step 1 (an adaptive exit), so each signal has one value."""
    cid = store.create_conversation("local").id
    store.add_message("local", cid, "user", "2 + 2 =")
    tokens = [{"text": "4", "steps": 1, "exit_value": 1e-9}, {"text": ".", "steps": 1, "exit_value": 0.0}]
    mid = store.add_message("local", cid, "assistant", "4.", tokens=tokens,
                            settings={"num_steps": 16, "criterion": "kl"}).id
    one = {"top": [[1, 2]], "probs": [[0.999, 0.001]], "kl": [0.0], "entropy": [1e-9], "latent_change": [0.0],
           "xy": [[0, 0]]}
    store.save_trace("local", mid, {"version": 1, "top_k": 2, "cut": False, "texts": {"1": "4", "2": "."},
                                    "tokens": [{"index": 0, "token_id": 1, "exit_step": 1, **one},
                                               {"index": 1, "token_id": 2, "exit_step": 1, **one}]})


def test_the_depth_lens_says_how_to_open_it_covers_nothing_and_plots_confident_tokens(served, browser):
    url, store = served
    traced_conversation(store)
    page = open_page(browser, url)
    answer = page.locator("#transcript .msg.assistant").last
    answer.wait_for()
    assert "press Depth, then click any token" in answer.inner_text()
    answer.locator(".depth-toggle").click()
    answer.locator(".tok[data-i='0']").click()
    page.wait_for_selector("#lens-panel .lens-chart")
    for other in ("#prompt", "#send-btn", "#depth-panel", "#transcript"):
        assert page.evaluate(OVERLAP, ["#lens-panel", other]) == 0, other
    dots = page.evaluate("""() => [...document.querySelectorAll('#lens-panel svg.lens-chart circle')].map(c => {
        const box = c.ownerSVGElement.viewBox.baseVal;
        return [Number(c.getAttribute('cx')), Number(c.getAttribute('cy')), box.width, box.height]; })""")
    assert len(dots) == 3, dots  # one value per signal, each drawn
    assert all(0 < x < w and 0 < y < h for x, y, w, h in dots), dots
    page.close()


def comparison(store: Store, n: int = 7) -> None:
    cid = store.create_conversation("local").id
    store.add_message("local", cid, "user", "Name a bird.")
    columns = []
    for steps in (1, 2, 4, 8, 16, 32, 64)[:n]:
        tokens = [{"text": w, "steps": steps, "exit_value": None} for w in ("A", " raven", ".")]
        columns.append({"label": f"r={steps}", "settings": {"num_steps": steps}, "tokens": tokens,
                        "content": "A raven.", "stats": {"tokens": 3, "mean_steps": steps, "max_steps": steps,
                                                         "agreement": 1.0}})
    store.add_message("local", cid, "assistant", "A raven.", kind="comparison", settings={"num_steps": 64},
                      tokens=columns[-1]["tokens"], extra={"columns": columns})


def test_phone_and_wide_screens(served, browser):
    url, store = served
    comparison(store)
    phone = open_page(browser, url, width=390, height=844)
    phone.wait_for_timeout(1_000)
    assert phone.evaluate(OVERLAP, [".sidebar", "#transcript"]) == 0
    assert phone.evaluate(OVERLAP, [".sidebar", "#prompt"]) == 0
    phone.get_by_role("tab", name="Depth arena").click()  # nothing covers the tabs
    phone.get_by_role("tab", name="Chat").click()
    tops = phone.locator("#transcript .arena-grid .col").evaluate_all("cs => cs.map(c => c.offsetTop)")
    assert len(tops) == 7 and len(set(tops)) == 1  # one row, scrolled sideways
    phone.close()

    wide = open_page(browser, url, width=1440, height=900)
    wide.wait_for_selector("#transcript .arena-grid .col")
    assert wide.locator(".sidebar").evaluate("s => s.getBoundingClientRect().right") > 100  # the sidebar is open
    grid = wide.locator("#transcript .arena-grid")
    tops = grid.locator(".col").evaluate_all("cs => cs.map(c => c.offsetTop)")
    assert len(tops) == 7 and len(set(tops)) == 1, tops
    assert grid.evaluate("g => g.scrollWidth <= g.clientWidth + 1")  # all seven fit, no sideways scrolling
    # The fewest steps' shade is visibly blue on the page, not nearly white.
    luminance = wide.locator(".legend .swatch.d0").first.evaluate("""s => {
        const [r, g, b] = getComputedStyle(s).backgroundColor.match(/\\d+/g).map(Number);
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; }""")
    assert luminance < 0.9, luminance
    wide.close()


def test_buttons_say_what_they_can_do_and_copy_works_on_plain_http(served, browser):
    url, store = served
    cid = store.create_conversation("local").id
    store.add_message("local", cid, "user", "Code please")
    store.add_message("local", cid, "assistant", "Here:\n\n```python\nprint('hi')\n```\n", settings={"num_steps": 4})
    context = browser.new_context()
    # A plain-http LAN address is not a secure context: the browser offers no clipboard API there.
    context.add_init_script("Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined});"
                            "Object.defineProperty(window, 'isSecureContext', {get: () => false});")
    page = open_page(browser, url, context=context)
    page.wait_for_selector("#transcript pre .code-copy")
    assert page.locator("#regen-btn").is_enabled() and page.locator("#edit-btn").is_enabled()
    code = page.locator("#transcript pre .code-copy")
    code.click()
    page.wait_for_function("document.querySelector('#transcript pre .code-copy').textContent === 'Copied'")
    box = page.locator("#prompt textarea")
    box.focus()
    page.keyboard.press("Control+V")
    assert box.input_value().strip() == "print('hi')"
    box.fill("")
    page.locator("#transcript .msg.assistant .copy").click()
    page.wait_for_function("document.querySelector('#transcript .msg.assistant .copy').textContent === 'Copied'")
    box.focus()
    page.keyboard.press("Control+V")
    assert box.input_value().startswith("Here:") and "```python" in box.input_value()  # the answer as written
    box.fill("")

    page.click("#new-conv")
    page.wait_for_function("!document.querySelector('#transcript .msg')")
    page.wait_for_function("document.querySelector('#regen-btn').disabled && "
                           "document.querySelector('#edit-btn').disabled")
    context.close()


def test_the_prompts_depth_opens_under_the_answer_with_exits_in_the_prompt(served, browser):
    """Issue 23: the prompt's positions get their own heatmap and depth lens; with "exit early in the prompt" their
    depths differ."""
    url, store = served
    page = open_page(browser, url)
    assert page.locator("#prompt-exits input").is_disabled()  # greyed until adaptive exit is on
    page.locator("#adaptive input").check()
    page.wait_for_function("!document.querySelector('#prompt-exits input').disabled", timeout=5_000)
    page.locator("#prompt-exits input").check()
    page.locator("#trace input").check()
    box = page.locator("#prompt textarea")
    box.fill("Swap 12 23 13 12 23 13 12 23 on 312. Final?")
    box.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.complete .prompt-depth summary", timeout=60_000)
    summary = page.locator("#transcript .msg.assistant.complete .prompt-depth summary").last
    assert "Prompt depth:" in summary.inner_text()
    tokens = page.locator("#transcript .msg.assistant.complete .prompt-depth .tok").last
    assert not tokens.is_visible()  # folded until asked for
    summary.click()
    spans = page.locator("#transcript .msg.assistant.complete .prompt-depth .tok")
    spans.first.wait_for(state="visible", timeout=5_000)
    shades = set(page.eval_on_selector_all("#transcript .msg.assistant.complete .prompt-depth .tok",
                                           "els => els.map(e => e.className)"))
    assert spans.count() > 20 and len(shades) > 2, shades  # positions exited at different depths
    assert "step" in (spans.first.get_attribute("title") or "")
    spans.nth(1).click()  # a prompt token opens the lens on its own steps, not on an answer token's
    page.wait_for_selector("#lens-panel .lens-chart", timeout=5_000)
    head = page.locator("#lens-panel .lens-meta").inner_text()
    assert "predicted at prompt position 2" in head, head
    steps = int(spans.nth(1).get_attribute("data-steps"))
    assert page.locator("#lens-panel .lens-step").count() == steps
    answer = page.locator("#transcript .msg.assistant.complete").last
    answer.locator(".depth-toggle").first.click()
    answer.locator(".msg-text .tok[data-i='0']").first.click()
    page.wait_for_function("document.querySelector('#lens-panel .lens-meta').innerText.includes('token 1 ·')",
                           timeout=5_000)
