"""The parallel sampler on the page, in a real headless Chromium: the depth panel's choice, the arena column and the
wavefront view (kept with the answer across a reload)."""

from __future__ import annotations

import pytest

from .test_app_browser import answers, app_url, browser, set_number  # noqa: F401 - app_url, browser: fixtures

pytestmark = pytest.mark.browser


def test_the_parallel_sampler_on_the_page(app_url, browser):  # noqa: F811 - the fixtures imported above
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea")
    page.locator("#advanced-toggle, button:has-text('Advanced')").first.click()
    set_number(page, "max-new-tokens", 40)
    set_number(page, "num-steps", 16)
    page.locator("#sampler").get_by_label("parallel (diffusion forcing)").check()
    page.locator("#parallel-params").get_by_text("Parallel sampler").first.click()
    set_number(page, "inner-steps", 4)

    # The sampler choice: the answer says it ran in parallel, and its wavefront shows one row per diffusion step.
    page.fill("#prompt textarea", "Hello! Tell me something.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#transcript .msg.assistant.complete .stats", timeout=90_000)
    answer = answers(page).last
    stats = answer.locator(".stats").inner_text()
    assert "parallel:" in stats and "diffusion steps" in stats and "tok/s" in stats
    assert "parallel r=16, 4 steps per diffusion step" in answer.locator(".meta").first.inner_text()
    wavefront = answer.locator("details.wavefront")
    assert wavefront.count() == 1
    steps = int(stats.split(" diffusion steps")[0].rsplit(" ", 1)[1])
    wavefront.locator("summary").click()
    assert wavefront.locator("svg rect.wf-window").count() == steps
    assert wavefront.locator("svg rect.wf-frozen").count() >= 1
    assert wavefront.locator("svg.wavefront-grid").is_visible()

    # Stored with the answer: the same view after a reload.
    page.reload()
    page.wait_for_selector("#transcript .msg.assistant details.wavefront", state="attached", timeout=30_000)
    assert answers(page).last.locator("details.wavefront svg rect.wf-window").count() == steps

    # The arena: sequential r=16 beside the parallel sampler, each with its own time.
    page.get_by_role("tab", name="Depth arena").click()
    page.fill("#arena-prompt textarea", "Hello! Tell me something.")
    presets = page.locator("#arena-presets")
    for label in presets.locator("label").all_inner_texts():
        presets.get_by_label(label.strip(), exact=True).uncheck()
    for label in ("16 steps", "parallel sampler"):
        presets.get_by_label(label, exact=True).check()
    page.click("#arena-run")
    page.wait_for_selector("#arena-columns .col", timeout=90_000)
    cols = page.locator("#arena-columns .col")
    assert cols.count() == 2
    assert [cols.nth(i).locator(".col-title").inner_text() for i in range(2)] == ["r=16", "parallel r=16, 4/step"]
    assert "tok/s" not in cols.nth(0).locator(".stats").inner_text()  # a batch's columns share one clock
    parallel_stats = cols.nth(1).locator(".stats").inner_text()
    assert "tok/s" in parallel_stats and "parallel:" in parallel_stats
    assert cols.nth(1).locator("details.wavefront").count() == 1
    page.close()
