"""The Knock-outs page in a real browser (Debian's Chromium through Playwright): clicking a head of ViT's
blocks x heads grid knocks it out, and the top-5 and its sentence change; clicking it again brings it back.

Needs /usr/bin/chromium; skipped without it unless T2T_LENS_REQUIRE_BROWSER is set (tests/app/test_browser.py).
"""

from __future__ import annotations

import re

import pytest

from tests.app.test_browser import RUN_TIMEOUT_MS, no_exception, open_app, server, settle, shoot  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def vit_line(page) -> str:
    return page.get_by_text(re.compile(r"^ViT with ")).first.inner_text()


def top5_text(page) -> str:
    """The text of ViT's top-5 bars (class names, percentages) as drawn now (not a stale copy of the last run)."""
    return page.locator('.st-key-ko_top5_ViT[data-stale="false"]').first.inner_text()


def click_head(page, block: int, head: int, blocks: int = 12, heads: int = 3) -> None:
    """Click the centre of cell (block, head) of ViT's grid (blocks top to bottom, heads left to right)."""
    area = page.locator(".st-key-ko_grid_ViT .nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    x = box["x"] + box["width"] * (head + 0.5) / heads
    y = box["y"] + box["height"] * (block + 0.5) / blocks
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    settle(page)
    no_exception(page)


def test_clicking_a_head_knocks_it_out_and_the_top5_changes(browser, server: str) -> None:  # noqa: F811
    page = open_app(browser, server)
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name="Knock-outs").click()
    page.get_by_role("heading", name="Knock-outs: switch parts off and watch").wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page)
    no_exception(page)
    before = vit_line(page)
    assert before.startswith("ViT with nothing knocked out"), before
    bars = top5_text(page)
    click_head(page, 11, 0)
    after = vit_line(page)
    assert after.startswith("ViT with 1 of 36 heads out (zero ablation)"), after
    assert top5_text(page) != bars  # the bars' labels (percentages) changed
    assert "block 11, head 0" in page.locator(".st-key-ko_heads_ViT").first.inner_text()  # the multiselect follows
    assert "vit_heads=11.0" in page.url
    shoot(page, "knockouts_after_click")
    click_head(page, 11, 0)  # again: back in
    assert vit_line(page).startswith("ViT with nothing knocked out")
    page.close()
