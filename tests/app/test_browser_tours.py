"""Guided tours and the lesson to take home in a real browser (Debian's Chromium through Playwright).

- The exported paper tour opens from disk with every request but the file itself blocked: nothing is
  asked for, no script error, every step's text is there and every figure is drawn (an svg).
- In the app at 1280x720 and 1920x1080: a tour link opens its step's page with the bar in view (and
  still in view when the page is scrolled), the figure the step is about framed and scrolled into view
  below the bar (the soft-split sandbox's too, drawn inside a fragment); Next and Back change the step,
  its page and the address.

Needs /usr/bin/chromium; skipped without it unless T2T_LENS_REQUIRE_BROWSER is set (tests/app/test_browser.py).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from app import export, images, tours
from app.compute import Context
from tests.app.test_browser import RUN_TIMEOUT_MS, no_exception, server, settle  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def plain(markdown: str) -> str:
    """The text a browser shows for a step's Markdown (tags dropped, entities decoded, spaces collapsed)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", export.markdown_html(markdown)))).strip()


def squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_exported_lesson_works_offline(browser, tmp_path: Path) -> None:
    tour = tours.load_tours().tours["paper"]
    ctx = Context(export.model_for("T2T-ViT", "t2t_vit_7", "", "cpu"),
                  export.model_for("ViT", "deit_tiny_patch16_224", "", "cpu"), images.default_image(), "cpu")
    path = tmp_path / "lesson.html"
    path.write_text(export.lesson_html(tour, ctx), encoding="utf-8")
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    asked: list[str] = []

    def only_the_file(route) -> None:
        if route.request.url == path.as_uri():
            route.continue_()
        else:
            asked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_file)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(path.as_uri())
    expected = sum(len(export.step_figures(step)) for step in tour.steps)
    page.wait_for_function(f"() => document.querySelectorAll('.plotly-graph-div svg.main-svg').length >= {expected}",
                           timeout=120_000)
    assert asked == [] and errors == []
    for step in tour.steps:
        section = page.locator(f"#step-{step.number}")
        text, problems = tours.fill(step.text, tours.StepView(ctx, tours.step_state(step)))
        assert problems == []
        assert plain(text) in squeeze(section.locator("div.step-text").inner_text()), step.number
        drawn = section.evaluate("s => Array.from(s.querySelectorAll('.plotly-graph-div')).map(d => "
                                 "!!d.querySelector('svg.main-svg') && d.getBoundingClientRect().width > 200)")
        assert drawn == [True] * len(export.step_figures(step)), (step.number, drawn)
    page.screenshot(path=str(tmp_path / "lesson.png"))
    context.close()


BOXES = """(key) => {
  const r = (sel) => { const e = document.querySelector(sel); if (!e) return null;
                       const b = e.getBoundingClientRect(); return {top: b.top, bottom: b.bottom}; };
  const figure = document.querySelector('.st-key-' + key);
  return {bar: r('.st-key-tour_bar'), figure: r('.st-key-' + key), height: window.innerHeight,
          outline: figure ? getComputedStyle(figure).outlineStyle : null};
}"""


def framed(page, key: str) -> dict:
    """Wait until the step's figure is framed and scrolled to, below the bar; returns the boxes."""
    page.wait_for_function(f"() => {{ const e = document.querySelector('.st-key-{key}');"
                           " return e && getComputedStyle(e).outlineStyle === 'solid'; }", timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(800)  # the scroll runs once the figure is on the page
    boxes = page.evaluate(BOXES, key)
    assert 0 <= boxes["bar"]["top"] and boxes["bar"]["bottom"] < boxes["height"] / 2, boxes  # the bar, in view
    assert boxes["bar"]["bottom"] - 2 <= boxes["figure"]["top"] < boxes["height"] - 100, boxes  # the figure, below it
    return boxes


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)])
def test_a_tour_in_the_app(browser, server: str, size: tuple[int, int]) -> None:  # noqa: F811
    tour = tours.load_tours().tours["paper"]
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{server}/?tour=paper&step=1")
    page.locator(".st-key-tour_bar").wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page, started=False)
    no_exception(page)
    bar = page.locator(".st-key-tour_bar")
    assert f"step 1 of {len(tour.steps)}" in bar.inner_text()
    framed(page, tour.steps[0].look_at)
    page.mouse.move(size[0] * 0.6, size[1] * 0.8)
    page.mouse.wheel(0, 900)  # the page scrolls; the bar stays
    page.wait_for_timeout(500)
    boxes = page.evaluate(BOXES, tour.steps[0].look_at)
    assert 0 <= boxes["bar"]["top"] and boxes["bar"]["bottom"] < boxes["height"] / 2, boxes
    for number in (2, 3):
        bar.get_by_role("button", name="Next").click()
        page.wait_for_url(re.compile(rf"step={number}$"), timeout=RUN_TIMEOUT_MS)
        settle(page)
        no_exception(page)
        assert f"step {number} of {len(tour.steps)}" in bar.inner_text()
        framed(page, tour.steps[number - 1].look_at)
    bar.get_by_role("button", name="Back").click()
    page.wait_for_url(re.compile(r"step=2$"), timeout=RUN_TIMEOUT_MS)
    settle(page)
    assert "step 2 of" in bar.inner_text()
    # a step on another page: the link opens that page
    number = next(s.number for s in tour.steps if s.page == "attention")
    page.goto(f"{server}/?tour=paper&step={number}")
    page.wait_for_url(re.compile(rf"/attention\?tour=paper&step={number}$"), timeout=RUN_TIMEOUT_MS)
    page.get_by_role("heading", name="Attention explorer").wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page)
    no_exception(page)
    framed(page, tour.steps[number - 1].look_at)
    # a step on the sandbox page: its figures are drawn inside a fragment, framed all the same
    number = next(s.number for s in tour.steps if s.page == "sandbox")
    page.goto(f"{server}/?tour=paper&step={number}")
    page.wait_for_url(re.compile(rf"/sandbox\?tour=paper&step={number}$"), timeout=RUN_TIMEOUT_MS)
    page.get_by_role("heading", name="Soft-split sandbox").wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page)
    no_exception(page)
    framed(page, tour.steps[number - 1].look_at)
    page.close()
