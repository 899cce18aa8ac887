"""Answers as the model wrote them, in the real headless Chromium: a conversation imported from a JSON file holding
Markdown, LaTeX, code and an HTML payload shows rendered Markdown, MathML maths and highlighted code, runs nothing,
and keeps each answer's per-token heatmap one click away."""

from __future__ import annotations

import json

import pytest

from app.store import LOCAL_OWNER, Store
from tests.test_app_browser import ARTIFACTS, PAYLOAD, answers, app_url, browser, set_number  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

ANSWER = "\n".join([
    "## Working",
    "",
    "The **sum** of the first $n$ odd numbers is $n^2$, and \\(\\alpha + \\beta\\) too:",
    "",
    "$$\\sum_{k=1}^{n} (2k - 1) = n^2$$",
    "",
    "1. check $n = 1$",
    "2. add $2n + 1$",
    "",
    "| n | sum |",
    "|---|-----|",
    "| 3 | 9 |",
    "",
    "```python",
    "def odd_sum(n):",
    "    return sum(2 * k - 1 for k in range(1, n + 1))",
    "```",
    "",
    "Costs $5 and $6. " + PAYLOAD + " ![x](https://example.com/x.png) [doc](javascript:alert(1))",
])


def conversation_file(folder) -> tuple[str, list[dict]]:
    """An export (the app's own JSON format) of one conversation: a question with the payload, a Markdown answer
    with per-token steps."""
    pieces = ANSWER.split(" ")
    tokens = [{"text": p + (" " if i < len(pieces) - 1 else ""), "steps": 1 + i % 8, "exit_value": None}
              for i, p in enumerate(pieces)]
    with Store(folder / "source.db") as store:
        conv = store.create_conversation(LOCAL_OWNER, "Odd numbers")
        store.add_message(LOCAL_OWNER, conv.id, "user", "Sum of odd numbers? " + PAYLOAD)
        store.add_message(LOCAL_OWNER, conv.id, "assistant", ANSWER, model_id="demo", settings={"num_steps": 8},
                          tokens=tokens, stats={"tokens": len(tokens), "mean_steps": 4.5, "max_steps": 8})
        text = store.export_json(LOCAL_OWNER, [conv.id])
    path = folder / "odd-numbers.json"
    path.write_text(text, encoding="utf-8")
    assert json.loads(text)  # a real export
    return str(path), tokens


def test_imported_markdown_renders_with_maths_code_and_a_depth_toggle(app_url, browser, tmp_path):  # noqa: F811
    path, tokens = conversation_file(tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((app_url, "data:", "blob:")) else None)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea")
    page.get_by_text("Rename, delete, export, import").click()
    page.locator("input[type=file]").first.set_input_files(path)
    page.wait_for_selector("#transcript .msg.assistant .msg-text.md h2", timeout=30_000)
    answer = answers(page).last
    md = answer.locator(".msg-text.md")

    # Markdown: heading, bold, list, table, highlighted code.
    assert md.locator("h2").inner_text() == "Working" and md.locator("strong").inner_text() == "sum"
    assert md.locator("ol li").count() == 2 and md.locator("table td").all_inner_texts() == ["3", "9"]
    assert md.locator("pre code span[class^='hl-']").count() > 3
    assert "def odd_sum(n):" in md.locator("pre code").inner_text()
    # LaTeX as MathML, drawn by the browser: inline $..$ and \(..\), and a display block.
    page.wait_for_selector("#transcript .msg-text.md .math math", timeout=30_000)
    assert md.locator(".math.inline math").count() >= 5
    assert md.locator('.math.block math[display="block"]').count() == 1
    assert md.locator(".math math").first.bounding_box()["width"] > 5  # laid out, not an unknown element
    assert "Costs $5 and $6." in md.inner_text()  # currency is not maths
    # Every text escaped: the payload is shown as text in the question and the answer, nothing runs or loads.
    assert PAYLOAD in md.inner_text()
    assert PAYLOAD in page.locator("#transcript .msg.user .msg-text").inner_text()
    assert page.locator("#transcript img, #transcript script, #transcript a[href^='javascript']").count() == 0
    assert page.evaluate("window.__pwned") is None and not dialogs

    # The heatmap is one click away, and back.
    heat = answer.locator(".msg-text.heat")
    assert md.is_visible() and not heat.is_visible()
    answer.locator(".depth-toggle").click()
    assert heat.is_visible() and not md.is_visible()
    steps = heat.locator(".tok[data-steps]").evaluate_all("els => els.map(e => Number(e.dataset.steps))")
    assert steps == [t["steps"] for t in tokens]
    page.screenshot(path=str(ARTIFACTS / "markdown-depth.png"), full_page=True)

    # A new answer redraws the transcript: the toggle stays; the new answer is Markdown with its own toggle.
    page.locator("button:has-text('Advanced')").first.click()
    set_number(page, "max-new-tokens", 12)
    page.fill("#prompt textarea", "What is 2 + 3?")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#transcript .msg.assistant.complete').length >= 2",
                           timeout=60_000)
    assert answers(page).first.locator(".msg-text.heat").is_visible()
    fresh = answers(page).last
    assert fresh.locator(".msg-text.md").is_visible() and fresh.locator(".depth-toggle").count() == 1
    answers(page).first.locator(".depth-toggle").click()
    assert answers(page).first.locator(".msg-text.md").is_visible()
    page.screenshot(path=str(ARTIFACTS / "markdown.png"), full_page=True)
    assert not outside, f"the page reached outside the app: {outside[:5]}"
    page.close()


def test_arena_shows_what_differs_per_column_and_all_five_fit_at_1400px(app_url, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea")
    page.locator("button:has-text('Advanced')").first.click()
    set_number(page, "max-new-tokens", 6)
    page.get_by_role("tab", name="Depth arena").click()
    page.fill("#arena-prompt textarea", "Name a bird.")
    page.click("#arena-run")  # the model's default columns (the demo model: 1, 2, 4, 8, 16, 32 steps and adaptive)
    page.wait_for_selector("#arena-columns .col", timeout=120_000)
    cols = page.locator("#arena-columns .col")
    count = cols.count()
    assert count >= 5
    box = page.locator("#arena-columns").bounding_box()
    for i in range(count):
        col = cols.nth(i).bounding_box()
        assert col["x"] >= box["x"] - 1 and col["x"] + col["width"] <= box["x"] + box["width"] + 1, (i, col, box)
        assert cols.nth(i).locator(".stats").first.is_visible()
        assert "tok/s" not in cols.nth(i).inner_text() and "as in the deepest answer" in cols.nth(i).inner_text()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.wait_for_selector("canvas, svg.marks", timeout=30_000)
    titles = page.locator("#arena").inner_text() if page.locator("#arena").count() else page.inner_text("body")
    assert "Answer length" in titles and "Mean steps per token" in titles and "Agreement" in titles
    assert "Tokens/s" not in titles  # batched columns share one clock: no chart that cannot say anything
    page.screenshot(path=str(ARTIFACTS / "arena-five.png"), full_page=True)
    page.close()
