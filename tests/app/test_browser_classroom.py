"""A class's server in a real browser: classroom mode, a visitor from another machine, hostile links, big uploads.

`streamlit run app/main.py -- --classroom` driven through Debian's Chromium: the weights boxes offer no
checkpoint path, URL or upload, a forged lesson link cannot add one, hostile links and an unknown page
give a notice and a working page, and an image over the server's upload cap is refused by the uploader.
Without --classroom, a browser reaching the server through a network address (not loopback) gets
the same classroom set.

Needs /usr/bin/chromium and playwright (never `playwright install`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._browser import QUIET, RECORDER, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXCEPTION = '[data-testid="stException"]'
CHECKPOINT_LABELS = ("File on this machine", "From a URL", "Upload a file")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def network_address() -> str | None:
    """This machine's address on its network (the one a packet to another host would leave from), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent by a UDP connect
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def open_app(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(RECORDER)
    page.goto(url)
    page.wait_for_function("() => (window.__runs || []).some(r => r[1] === 'notRunning')", timeout=300_000)
    page.wait_for_function(QUIET, timeout=300_000)
    return page


def weight_options(page, role: str) -> list[str]:
    """The labels the weights box of `role` offers (opened, read, closed)."""
    box = page.locator(f".st-key-{role}_source input")  # react-aria's combo box: opened from the keyboard
    box.focus()
    box.press("ArrowDown")
    options = page.locator('[role="option"]')
    options.first.wait_for(timeout=10_000)
    labels = [options.nth(i).inner_text().strip() for i in range(options.count())]
    page.keyboard.press("Escape")
    return labels


def sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


@pytest.fixture(scope="module")
def classroom(browser) -> Iterator[str]:
    port = free_port()
    with streamlit_server(port, app_args=("--classroom",)):
        yield f"http://127.0.0.1:{port}"


def test_classroom_mode_offers_no_checkpoint_source_and_a_forged_link_cannot_add_one(browser, classroom) -> None:
    page = open_app(browser, f"{classroom}/?t2t_w=path&vit_w=url")
    assert page.locator(EXCEPTION).count() == 0
    shown = page.locator('[data-testid="stMain"]').inner_text()
    assert "The link's t2t_w value path was not used: not a weight source of this session" in shown
    assert "Classroom mode: the server was started with --classroom" in sidebar_text(page)
    for role in ("T2T-ViT", "ViT"):
        labels = weight_options(page, role)
        assert "Project-trained (shipped)" in labels and not set(CHECKPOINT_LABELS) & set(labels), labels
    assert "t2t_w=embedded" in page.url and "vit_w=embedded" in page.url  # the view shown, not the forged one
    page.close()


def test_hostile_links_and_an_unknown_page_give_a_working_page(browser, classroom) -> None:
    for path, notice in ((f"/attention?tok=-1,-1&block={'9' * 40}&head=-4&model={'Q' * 3000}", "The link's tok value"),
                         ("/explanations?discard=nan&steps=1e9&methods=" + ",".join(["x"] * 500), "discard"),
                         ("/no-such-page?ex=abc", "The link's ex value")):
        page = open_app(browser, classroom + path)
        assert page.locator(EXCEPTION).count() == 0, (path, page.locator(EXCEPTION).first.inner_text())
        assert notice in page.locator("body").inner_text(), path
        main = (ROOT / "app" / "main.py").read_text()
        visible = main.count("st.Page(") - main.count('visibility="hidden"')  # /tokens: an alias, not listed
        assert page.locator('[data-testid="stSidebarNav"] a').count() == visible == 8  # the app is there, every page
        page.close()


def test_an_image_over_the_upload_cap_is_refused(browser, classroom) -> None:
    page = open_app(browser, classroom)
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload", exact=True).click()
    page.wait_for_function(QUIET, timeout=60_000)
    caption = page.locator('[data-testid="stSidebar"] [data-testid="stImageCaption"]').first.inner_text()
    big = {"name": "huge.png", "mimeType": "image/png", "buffer": b"\0" * (26 * 2**20)}  # 26 MB > 25 MB
    page.locator('[data-testid="stSidebar"] input[type="file"]').first.set_input_files(files=[big])
    page.get_by_text("File must be 25.0MB or smaller.").wait_for(timeout=30_000)
    page.wait_for_function(QUIET, timeout=60_000)
    assert page.locator('[data-testid="stSidebar"] [data-testid="stImageCaption"]').first.inner_text() == caption
    assert page.locator(EXCEPTION).count() == 0
    page.close()


def test_a_browser_on_another_machine_gets_the_classroom_set(browser) -> None:
    """No --classroom: the server listens on every interface and the browser comes through the machine's
    network address, as a student's laptop would; its peer is not loopback."""
    address = network_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    port = free_port()
    with streamlit_server(port, address="0.0.0.0"):
        page = open_app(browser, f"http://{address}:{port}/")
        assert "Classroom mode: a browser on another machine" in sidebar_text(page)
        assert not set(CHECKPOINT_LABELS) & set(weight_options(page, "ViT"))
        page.close()
        page = open_app(browser, f"http://127.0.0.1:{port}/")  # the teacher's own browser: every source
        assert "Local mode" in sidebar_text(page)
        assert set(CHECKPOINT_LABELS) <= set(weight_options(page, "ViT"))
        page.close()
