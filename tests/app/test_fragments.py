"""Pages that answer at once, and every page's own address (issue 29), in a real browser.

- A move of a page's own control reruns that page's `st.fragment` only, not the whole app (the sidebar, main.py):
  the browser's rerun request (a BackMsg over the websocket, read here with Streamlit's own protobuf) names the
  fragment; a new image in the sidebar still reruns the app. The address bar follows a fragment's moves (a
  lesson link must hold the view on screen, and main.py, which writes it after a full run, does not run).
- Every page's path opens that page: each address of the navigation, and /tokens, the first page's address in
  lesson links (the default page is served at "/", and Streamlit answers its own url_path with "Page not
  found" unless main.py registers that address too).

AppTest runs whole scripts only (no websocket, no fragment reruns), so those need Chromium; they are skipped
where it is missing, as the other browser tests. AppTest checks what a fragment rerun draws: the Attention page
reuses the charts a move leaves as they were, and must never show one that is out of date.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.test_browser import RUN_TIMEOUT_MS, no_exception, server, settle  # noqa: F401 (fixture)

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")

SIDEBAR = '[data-testid="stSidebar"]'
NAV_LINKS = '[data-testid="stSidebarNav"] a'
NOT_FOUND = "Page not found"


class Reruns:
    """The rerun requests a page's browser sends (BackMsg.rerun_script): the fragment each names ("" = the app)."""

    def __init__(self, page) -> None:
        self.fragments: list[str] = []
        page.on("websocket", lambda ws: ws.on("framesent", self._frame))

    def _frame(self, payload) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        if not isinstance(payload, (bytes, bytearray)):
            return
        msg = BackMsg()
        try:
            msg.ParseFromString(bytes(payload))
        except Exception:  # not a BackMsg (nothing else is sent on this socket today)
            return
        if msg.WhichOneof("type") == "rerun_script":
            self.fragments.append(msg.rerun_script.fragment_id)


def open_page(browser, url: str, width: int = 1600, height: int = 1400):
    page = browser.new_page(viewport={"width": width, "height": height})
    reruns = Reruns(page)
    page.goto(url)
    page.locator("h2").first.wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page, started=False)
    return page, reruns


def moved(page, reruns: Reruns, action) -> list[str]:
    start = len(reruns.fragments)
    action()
    settle(page)
    page.wait_for_timeout(300)
    return reruns.fragments[start:]


def nudge(page, key: str) -> None:
    thumb = page.locator(f".st-key-{key} input[type='range']").first
    thumb.focus()
    thumb.press("ArrowRight")


def slider_value(page, key: str) -> int:
    return int(page.locator(f".st-key-{key} input[type='range']").first.input_value())


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


@pytest.mark.browser
@pytest.mark.slow
def test_every_page_path_opens_that_page(browser, server: str) -> None:  # noqa: F811
    page, _ = open_page(browser, server)
    links = page.locator(NAV_LINKS)
    titles = {urlparse(links.nth(i).get_attribute("href")).path.strip("/"): links.nth(i).inner_text().split("\n")[-1]
              for i in range(links.count())}
    first = titles[""]
    assert first.startswith("Tokens-to-Token")
    titles["tokens"] = first  # the first page's lesson-link address (README: `/attention?...`, `/tokens?...`)
    page.close()
    for path, title in titles.items():
        page, _ = open_page(browser, f"{server}/{path}?tok=5,6" if path == "tokens" else f"{server}/{path}")
        header = page.locator("h2").first.inner_text()
        assert page.get_by_text(NOT_FOUND).count() == 0, f"/{path}: {NOT_FOUND}"
        assert header.startswith(title), (path, header, title)
        no_exception(page)
        if path == "tokens":  # a lesson link for the first page is read on its own address
            assert slider_value(page, "tok_row") == 5
        page.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize(("path", "key", "param"), [("", "tok_row", "tok"), ("attention", "att_block", "block")])
def test_a_slider_move_reruns_its_fragment_only(browser, server: str, path: str, key: str, param: str,  # noqa: F811
                                                ) -> None:
    page, reruns = open_page(browser, f"{server}/{path}")
    before = query(page).get(param)
    value = slider_value(page, key)
    sent = moved(page, reruns, lambda: nudge(page, key))
    assert sent and all(sent), f"a move of {key} asked for a rerun of the whole app: {sent}"
    no_exception(page)
    now = slider_value(page, key)
    assert now == value + 1
    written = query(page)[param]
    assert written != before and int(written.split(",")[0]) == now  # the address bar holds the new view
    # a new image (the sidebar, outside every fragment) still reruns the app: the check above can fail
    box = page.locator(f'{SIDEBAR} .st-key-synthetic_example input')
    sent = moved(page, reruns, lambda: (box.fill("7"), box.press("Enter")))
    assert "" in sent, sent
    no_exception(page)
    page.close()


@pytest.mark.browser
@pytest.mark.slow
def test_sandbox_controls_rerun_the_fragment_and_explain_an_invalid_choice(browser, server: str) -> None:  # noqa: F811
    page, reruns = open_page(browser, server)
    if page.locator(f'{NAV_LINKS}[href$="/sandbox"]').count() == 0:
        pytest.skip("main.py does not list the soft-split sandbox (url_path 'sandbox') yet")
    page.close()
    page, reruns = open_page(browser, f"{server}/sandbox")
    assert page.locator("h2").first.inner_text() == "Soft-split sandbox"

    def set_number(key: str, value: int) -> list[str]:
        box = page.locator(f".st-key-{key} input")
        return moved(page, reruns, lambda: (box.fill(str(value)), box.press("Enter")))

    sent = set_number("sb_s0", 8)
    assert sent and all(sent), sent
    assert page.get_by_text("stride 8 > window 7").count() >= 1
    for key, value in (("sb_k0", 15), ("sb_size", 32), ("sb_k1", 7)):
        set_number(key, value)
    no_exception(page)
    assert page.get_by_text("no token at all").count() >= 1
    page.close()


def specs(at: AppTest) -> dict[str, str]:
    """Plotly chart specs (JSON text) by widget key."""
    return {el.proto.id.split("-", 2)[-1]: el.proto.spec for el in at.get("plotly_chart")}


def test_attention_reuses_unchanged_charts_and_never_shows_a_stale_one() -> None:
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    at.switch_page("views/2_attention.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.toggle(key="present").set_value(True).run()  # presentation mode: styled once, on a copy, every run
    before = specs(at)
    at.slider(key="att_block").set_value(1).run()
    after = specs(at)
    assert after["att_pick"] != before["att_pick"]  # the map of block 1
    for key in ("att_tiles", "att_distance", "att_entropy"):  # the mean of heads: nothing to move on these
        assert after[key] == before[key], key
    assert json.loads(after["att_distance"])["layout"]["font"]["size"] == 20  # 15 x 1.3, not compounded
    at.selectbox(key="att_head").set_value(2).run()
    chosen = specs(at)
    for key in ("att_tiles", "att_distance", "att_entropy"):  # the chosen head is marked: built anew
        assert chosen[key] != after[key], key
    at.slider(key="att_block").set_value(3).run()
    moved = specs(at)
    assert moved["att_distance"] != chosen["att_distance"]  # the ring follows block 3, head 2
    assert not at.exception, [e.value for e in at.exception]

