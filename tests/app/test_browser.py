"""The app in a real browser: `streamlit run app/main.py` driven through Debian's Chromium by Playwright.

Upload an image, visit every page, click a token, upload a bad file; no exception box may appear.
Screenshots of every page go to screenshots/ (gitignored) at the repository root.

Needs /usr/bin/chromium (`apt-get install chromium chromium-driver`); never `playwright install`.
Skipped when it is missing, unless T2T_LENS_REQUIRE_BROWSER is set (CI), where that is a failure.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._browser import streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "screenshots"
PAGES = {  # navigation title -> page header
    "Tokens-to-Token, step by step": "Tokens-to-Token, step by step",
    "Attention explorer": "Attention explorer",
    "Explanations": "Explanations: which pixels made the decision?",
    "Feature richness": "Feature richness: how much do the channels carry?",
    "Classify": "Classify",
}
EXCEPTION = '[data-testid="stException"]'
RUN_TIMEOUT_MS = 180_000  # a page's first visit on a busy 2-core CPU computes maps and scores


def _require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("T2T_LENS_REQUIRE_BROWSER"):
            pytest.fail("the playwright package is missing")
        pytest.skip("the playwright package is missing")
    if not CHROMIUM.exists():
        if os.environ.get("T2T_LENS_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served by `streamlit run` on a free port; stopped after the module's tests."""
    _require_browser()
    port = _port()
    with streamlit_server(port, log=tmp_path_factory.mktemp("streamlit") / "server.log", start_timeout=90):
        yield f"http://127.0.0.1:{port}"


# `browser` is the session-wide Chromium of tests/conftest.py: one playwright per process, since
# a second sync_playwright() beside a live one fails ("Sync API inside the asyncio loop").


def settle(page, started: bool = True) -> None:
    """Wait until the script run triggered by the last action has finished and painted."""
    if started:
        try:  # the running indicator appears shortly after an interaction
            page.wait_for_selector('[data-testid="stStatusWidget"]', timeout=1500)
        except Exception:
            pass  # the run was quicker than that, or needed nothing
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(400)  # let plotly draw


def shoot(page, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def no_exception(page) -> None:
    boxes = page.locator(EXCEPTION)
    assert boxes.count() == 0, boxes.first.inner_text()


def open_app(browser, url: str):
    page = browser.new_page(viewport={"width": 1600, "height": 2400})
    page.goto(url)
    page.get_by_role("heading", name="Tokens-to-Token, step by step").wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page, started=False)
    return page


def upload(page, path: Path) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload", exact=True).click()
    settle(page)
    page.locator('[data-testid="stSidebar"] input[type="file"]').first.set_input_files(str(path))
    settle(page)


def test_upload_visit_every_page_and_click_a_token(browser, server: str) -> None:
    from t2t.images import sample_images

    page = open_app(browser, server)
    no_exception(page)
    upload(page, sample_images()["cat"])
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_text("cat.jpg").count() >= 1  # the uploaded image is in use
    no_exception(page)

    for title, header in PAGES.items():
        sidebar.get_by_role("link", name=title).click()
        page.get_by_role("heading", name=header).wait_for(timeout=RUN_TIMEOUT_MS)
        settle(page)
        no_exception(page)
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1
        shoot(page, title.split(",")[0].lower().replace(" ", "_").replace("-", "_"))

    # page 1: click a token on the image of soft split 0
    sidebar.get_by_role("link", name="Tokens-to-Token, step by step").click()
    settle(page)
    caption = page.get_by_text("Chosen: token")
    before = caption.inner_text()
    assert "Chosen: token (28, 28)" in before
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.scroll_into_view_if_needed()
    area = chart.locator(".nsewdrag").first.bounding_box()
    x, y = area["x"] + area["width"] * 0.25, area["y"] + area["height"] * 0.75
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    settle(page)
    no_exception(page)
    after = page.get_by_text("Chosen: token").inner_text()
    assert after != before
    # 0.25 and 0.75 of the 56-token grid: column 14, row 42 (give or take the cell under the pointer)
    row, col = (int(v) for v in after.split("(")[1].split(")")[0].split(","))
    assert abs(row - 42) <= 1 and abs(col - 14) <= 1, after
    shoot(page, "tokens_after_click")
    page.close()


def test_bad_upload_shows_an_error_and_the_app_goes_on(browser, server: str, tmp_path: Path) -> None:
    page = open_app(browser, server)
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not an image\n")
    upload(page, bad)
    no_exception(page)
    alert = page.locator('[data-testid="stSidebar"] [data-testid="stAlertContentError"]')
    assert "Cannot use 'notes.png': Not an image file (it looks like a text file)" in alert.first.inner_text()
    assert page.get_by_text("Showing the synthetic 'triangle' #0 instead").count() == 1
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1  # the page still shows the default image
    shoot(page, "bad_upload")
    page.close()


def chosen_token(page) -> tuple[int, int]:
    """(row, col) of soft split 0 from the page's "Chosen: token (r, c) ..." caption."""
    text = page.get_by_text("Chosen: token").inner_text()
    row, col = (int(v) for v in text.split("(")[1].split(")")[0].split(","))
    return row, col


def test_clicks_pick_the_token_under_the_pointer(browser, server: str) -> None:
    """The token picker draws none of its 3136 markers (marker.maxdisplayed, for speed), yet a click
    anywhere inside a cell of the 56 x 56 grid chooses exactly that cell: plotly finds the clicked
    point from all of its data (hover), drawn or not."""
    page = open_app(browser, server)
    for (row, col), (dy, dx) in [((0, 0), (0.0, 0.0)), ((5, 50), (0.3, -0.3)), ((55, 55), (-0.3, 0.3)),
                                 ((30, 7), (0.3, 0.3)), ((41, 22), (-0.3, -0.3))]:
        chart = page.locator(".st-key-pick_split0 .nsewdrag").first
        chart.scroll_into_view_if_needed()
        area = chart.bounding_box()
        x = area["x"] + area["width"] * (col + 0.5 + dx) / 56
        y = area["y"] + area["height"] * (row + 0.5 + dy) / 56
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        settle(page)
        no_exception(page)
        assert chosen_token(page) == (row, col), (row, col, dy, dx)
    page.close()
