"""The app on a projector, in a real browser (issue 12): readable figures, clicks, lesson links, PNGs, photos.

Each test drives `streamlit run app/main.py` through Debian's Chromium (the session-wide `browser`
fixture of tests/conftest.py) and checks what a teacher would see: every figure's text at least
14 px with no two labels overlapping at 1280x720 and 1920x1080, sidebar choices not cut off, the
chosen window visible at a glance, clicks on every figure the text calls clickable, no zoom by
dragging, a PNG button on every figure, a link that reopens the same view in a new browser, and a
warning beside every prediction for an image outside the models' classes.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.app.test_browser import RUN_TIMEOUT_MS, no_exception, server, settle  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SIZES = ((1280, 720), (1920, 1080))
# url paths and links: the first page ("") with all its steps at once, so every figure of it is checked
PAGES = (("", "step=All steps"), ("attention", ""), ("explanations", ""), ("features", ""), ("classify", ""),
         ("attention", "present=1"))  # presentation mode: bigger text must not collide either
SIDEBAR = '[data-testid="stSidebar"]'

# Every visible text of every plotly figure: font size, box, owner figure. Hover labels and the toolbar's
# tooltips are not drawn until hovered; texts with no size (empty) are skipped.
FIGURE_TEXTS = """() => {
  const out = [];
  document.querySelectorAll('.js-plotly-plot').forEach((gd, fig) => {
    gd.querySelectorAll('svg.main-svg text').forEach(t => {
      if (t.closest('.hoverlayer')) return;
      const r = t.getBoundingClientRect();
      if (r.width < 1 || r.height < 1 || !t.textContent.trim()) return;
      const style = getComputedStyle(t);
      if (style.visibility === 'hidden' || style.display === 'none' || style.opacity === '0') return;
      out.push({fig, text: t.textContent, size: parseFloat(style.fontSize), x: r.x, y: r.y, w: r.width,
                h: r.height});
    });
    const bar = gd.querySelector('.modebar');
    if (bar) {
      const r = bar.getBoundingClientRect();
      if (r.width > 0) out.push({fig, text: '[toolbar]', size: 99, x: r.x, y: r.y, w: r.width, h: r.height});
    }
  });
  return out;
}"""

# Texts cut off in `root`: elements ending in an ellipsis, and select boxes (inputs) whose value is wider
# than the box (measured with the input's own font).
CUT_OFF = """(root) => {
  const cut = Array.from(document.querySelectorAll(root + ' *')).filter(e => {
    const s = getComputedStyle(e);
    return s.textOverflow === 'ellipsis' && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1
      && e.textContent.trim();  // (a folded sidebar has zero width: nothing in it is shown)
  }).map(e => e.textContent.trim());
  const ctx = document.createElement('canvas').getContext('2d');
  document.querySelectorAll(root + ' input[role="combobox"]').forEach(e => {
    const s = getComputedStyle(e);
    ctx.font = s.font;
    const room = e.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
    if (e.clientWidth > 0 && ctx.measureText(e.value).width > room + 1) cut.push(e.value);
  });
  return cut;
}"""

CHOSEN_ON_SCREEN = """() => {
  const out = [];
  document.querySelectorAll('.js-plotly-plot').forEach(gd => {
    const chosen = gd.data.find(t => t.name === 'chosen');
    if (!chosen) return;
    const xa = gd._fullLayout.xaxis, span = Math.abs(xa.range[1] - xa.range[0]);
    const xs = chosen.x.filter(v => v !== null), ys = chosen.y.filter(v => v !== null);
    const side = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys)) * xa._length / span;
    const ring = gd.data.find(t => t.name === 'chosen_ring');
    out.push({side, ring: ring ? ring.marker.size : 0, width: chosen.line.width});
  });
  return out;
}"""


def visit(page, base: str, path: str = "", query: str = "") -> None:
    page.goto(f"{base}/{path}{'?' + query if query else ''}")
    page.locator("h1").first.wait_for(timeout=RUN_TIMEOUT_MS)
    steady(page, quiet_ms=800)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot svg.main-svg').length > 0",
                           timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(700)  # plotly lays out its labels after the first paint


def steady(page, quiet_ms: int = 1200, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until the page has stopped changing for `quiet_ms`: no script run, spinner or progress bar,
    the same figures and text. Pages draw progressively and slow results arrive in later runs."""
    settle(page)
    last, quiet, waited = None, 0, 0
    while quiet < quiet_ms:
        if waited > timeout_ms:
            raise TimeoutError("the page kept changing")
        now = page.evaluate("""() => [document.querySelectorAll('.js-plotly-plot svg.main-svg').length,
            document.querySelector('[data-testid="stMain"]').innerText.length,
            document.querySelectorAll('[data-testid="stStatusWidget"], [data-testid="stSpinner"],'
                                      + ' [data-testid="stProgress"], [data-testid="stSkeleton"]').length]""")
        quiet = quiet + 200 if now == last and now[2] == 0 else 0
        last = now
        page.wait_for_timeout(200)
        waited += 200


def overlaps(texts: list[dict], slack: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts of the same figure whose boxes intersect by more than `slack` px both ways."""
    bad = []
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            if a["fig"] != b["fig"]:
                continue
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > slack and dy > slack:
                bad.append((a["text"], b["text"]))
    return bad


def test_every_page_readable_at_projector_sizes_with_png_buttons(browser, server: str) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": SIZES[0][0], "height": SIZES[0][1]})
    for path, link in PAGES:
        visit(page, server, path, link)
        for width, height in SIZES:  # the same view at each size: the browser lays it out again, no rerun
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(900)  # plotly redraws on resize
            no_exception(page)
            texts = page.evaluate(FIGURE_TEXTS)
            assert texts, path
            small = sorted({(t["text"], t["size"]) for t in texts if t["size"] < 14})
            assert not small, f"{width}x{height} /{path}: figure text under 14 px: {small[:8]}"
            bad = overlaps(texts)
            assert not bad, f"{width}x{height} /{path}: overlapping labels: {bad[:6]}"
            cut = page.evaluate(CUT_OFF, SIDEBAR) if "present=1" not in link else []  # folded away there
            assert not cut, f"{width}x{height} /{path}: sidebar text cut off: {cut}"
            charts = page.locator(".js-plotly-plot").count()
            buttons = page.locator('.modebar-btn[data-title="Download plot as a PNG"]').count()
            assert buttons == charts, f"/{path}: {buttons} PNG buttons for {charts} figures"
            if path == "":
                chosen = page.evaluate(CHOSEN_ON_SCREEN)
                assert chosen, "the first page outlines the chosen window"
                for c in chosen:  # a 7 px window is ~13 px on screen: it needs its ring to be seen
                    assert c["width"] >= 3 and max(c["side"], c["ring"]) >= 40, c
        page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})
    page.close()

    # the PNG button really downloads a PNG
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server, "classify")
    with page.expect_download() as info:
        page.locator('.modebar-btn[data-title="Download plot as a PNG"]').first.click()
    data = open(info.value.path(), "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    page.close()


FITS = """([label, texts]) => {
  const e = document.querySelector(`[data-testid="stSidebar"] input[aria-label="${label}"]`);
  const s = getComputedStyle(e), ctx = document.createElement('canvas').getContext('2d');
  ctx.font = s.font;
  const room = e.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
  return texts.filter(t => ctx.measureText(t).width > room + 1);
}"""


def test_sidebar_choices_fit_their_boxes(browser, server: str) -> None:  # noqa: F811
    """Every choice of the sidebar's select boxes shows whole once chosen (no "Released ImageNet-1k weig...")."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server, "classify")
    sidebar = page.locator(SIDEBAR)
    for label in ("T2T-ViT model", "T2T-ViT weights", "ViT model", "ViT weights", "Shape class"):
        box = sidebar.get_by_role("combobox", name=label, exact=True)
        box.click()
        box.press("ArrowDown")
        options = [o.inner_text().strip() for o in page.get_by_role("option").all()]
        box.press("Escape")
        assert options, label
        too_wide = page.evaluate(FITS, [label, options])
        assert not too_wide, f"{label}: cut off when chosen: {too_wide}"
    page.close()


def axes(page, index: int) -> list:
    return page.evaluate(f"() => {{ const g = document.querySelectorAll('.js-plotly-plot')[{index}];"
                         " return [g._fullLayout.xaxis.range, g._fullLayout.yaxis.range]; }")


def chosen_token(page) -> tuple[int, int]:
    text = page.get_by_text("Chosen: token").inner_text()
    row, col = re.search(r"Chosen: token \((\d+), (\d+)\)", text).groups()
    return int(row), int(col)


def plot_area(page, index: int) -> dict:
    chart = page.locator(".js-plotly-plot").nth(index)
    chart.scroll_into_view_if_needed()
    return chart.locator(".nsewdrag").first.bounding_box()


def click(page, box: dict, fx: float, fy: float) -> None:
    x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    settle(page)


def test_clicks_move_the_token_and_drags_do_not_zoom(browser, server: str) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server)
    assert chosen_token(page) == (28, 28)
    # drag and double-click on the picker image: the axes stay as they were, the token too
    before = axes(page, 0)
    box = plot_area(page, 0)
    page.mouse.move(box["x"] + 40, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + 160, box["y"] + 160, steps=6)
    page.mouse.up()
    settle(page)
    page.mouse.dblclick(box["x"] + 100, box["y"] + 100)
    settle(page)
    assert axes(page, 0) == before
    assert page.locator(".js-plotly-plot").nth(0).locator(".zoombox, .select-outline").count() == 0
    # "Zoomed in": clicking the right neighbour's window centre chooses it
    token = chosen_token(page)
    zoom = plot_area(page, 1)
    click(page, zoom, 0.5 + 4 / 15, 0.5)  # 15 px crop, windows 4 px apart
    assert chosen_token(page) == (token[0], token[1] + 1)
    no_exception(page)
    # step 2: a channel tile opens that channel; a click on it moves the token
    page.get_by_text("2 · T2T attention 1").click()
    settle(page)
    charts_before = page.locator(".js-plotly-plot").count()
    click(page, plot_area(page, 1), 0.06, 0.08)  # the first tile of the 8 x 8 mosaic
    assert page.get_by_text("Channel 0 of t2t.attn1").count() >= 1
    assert page.locator(".js-plotly-plot").count() == charts_before + 1
    click(page, plot_area(page, 2), 0.25, 0.75)
    row, col = chosen_token(page)
    assert abs(row - 42) <= 1 and abs(col - 14) <= 1, (row, col)
    no_exception(page)
    page.close()


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def view_text(page) -> list[str]:
    """What identifies the view: figure titles, headers and captions (not the timings)."""
    return page.evaluate("""() => [
      ...Array.from(document.querySelectorAll('.js-plotly-plot .gtitle')).map(e => e.textContent),
      ...Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"], h2, h3'))
          .map(e => e.innerText)]""")


def test_lesson_link_reopens_the_same_view(browser, server: str) -> None:  # noqa: F811
    # a link written by hand opens that view: photo, ViT, block 3, head 1, token (2, 5)
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server, "attention", "img=photo&photo=cat&model=ViT&block=3&head=1&tok=2,5")
    no_exception(page)
    titles = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot .gtitle'))"
                           ".map(e => e.textContent)")
    wanted = "deit_tiny_patch16_224: block 3, head 1, query token (2, 5)".replace(" ", "")
    assert any(wanted in t.replace(" ", "") for t in titles), titles  # (a long title wraps: no space kept)
    assert page.locator(SIDEBAR).get_by_text("sample photo 'cat'").count() >= 1
    page.close()

    # the address bar follows every change; a new browser context (a new session) restores it exactly
    cases = [  # (page, link to start from, what to do there)
        ("", "img=shape&shape=ring&ex=3",
         lambda p: (p.get_by_text("4 · T2T attention 2").click(), settle(p), click(p, plot_area(p, 0), 0.7, 0.3))),
        ("explanations", "methods=rollout,grad_rollout&rule=row&discard=0.5&faith=0", None),
    ]
    for path, start, act in cases:
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        page = context.new_page()
        visit(page, server, path, start)
        if act is not None:
            act(page)
        steady(page)
        link = page.url
        shown = view_text(page)
        params = query(page)
        context.close()
        for key, value in (p.split("=") for p in start.split("&")):
            assert params.get(key) == value, (path, key, params)
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        fresh = context.new_page()
        page_path = urlparse(link).path.lstrip("/")
        visit(fresh, server, page_path, urlparse(link).query)
        for _ in range(240):  # the page draws progressively: wait (at most 2 min) until it is complete
            if view_text(fresh) == shown:
                break
            fresh.wait_for_timeout(500)
        no_exception(fresh)
        assert view_text(fresh) == shown, (path, link)
        assert query(fresh) == params
        context.close()


def test_photo_outside_the_classes_is_said_beside_every_prediction(browser, server: str) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server, "classify", "img=photo&photo=grace_hopper")
    main = page.locator('[data-testid="stMain"]')
    warnings = main.locator('[data-testid="stAlertContentWarning"]')
    notes = [w.inner_text() for w in warnings.all()]
    assert sum("is not one of the synthetic shapes" in n for n in notes) == 2, notes  # one per model
    assert any("outside their training" in n for n in notes), notes  # on the banner naming the answers
    main.get_by_text("The classes these models know").click()
    assert main.get_by_text("stripes, checkerboard").count() >= 1
    visit(page, server, "explanations", "img=photo&photo=grace_hopper")
    notes = [w.inner_text() for w in page.locator('[data-testid="stMain"] [data-testid="stAlertContentWarning"]').all()]
    assert sum("is not one of the synthetic shapes" in n for n in notes) == 2, notes
    page.close()


def choose(page, scope, label: str, option: str) -> None:
    """Pick `option` in the select box `label` (a react-aria combobox: the down arrow opens its list)."""
    box = scope.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.press("ArrowDown")
    page.get_by_role("option", name=option, exact=True).click()


def test_chosen_class_does_not_follow_a_new_image_and_weights_box_says_random(browser, server: str) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server, "explanations", "img=shape&shape=ring&ex=0&explain=a class I choose&methods=rollout&faith=0")
    choose(page, page, "Class for T2T-ViT (t2t_vit_7)", "zigzag")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("explaining zigzag").wait_for(timeout=RUN_TIMEOUT_MS)  # the rerun may start late
    steady(page)
    no_exception(page)
    sidebar = page.locator(SIDEBAR)
    choose(page, sidebar, "Shape class", "stripes")
    main.get_by_text("start again from each model's prediction").wait_for(timeout=RUN_TIMEOUT_MS)
    steady(page)
    assert "explaining zigzag" not in main.inner_text()
    assert "explaining stripes" in main.inner_text()  # the new image's prediction
    # a model without project-trained weights, even asked for by a link: the weights box says what is in use
    visit(page, server, "classify", "t2t=t2t_vit_10&t2t_w=embedded")
    weights = sidebar.get_by_role("combobox", name="T2T-ViT weights").input_value()
    assert weights == "Random (untrained)", weights
    no_exception(page)
    page.close()


def test_explanations_scores_follow_the_steps_slider(browser, server: str) -> None:  # noqa: F811
    """A new number of deletion steps: the maps stay, progress bars hold the scores' places, and a
    second move made while those scores are computed is taken; the scores shown at the end are
    those of the last move, equal to AppTest's for the same view (where every value is waited for)."""
    from streamlit.testing.v1 import AppTest

    from tests.app.test_pages import MAIN, TIMEOUT

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    visit(page, server, "explanations", "methods=rollout,chefer&steps=5")
    thumb = page.locator(".st-key-exp_steps input[type='range']").first
    thumb.focus()
    thumb.press("ArrowRight")  # 6 steps: curves not computed yet for this image
    page.wait_for_selector('[data-testid="stProgress"]', timeout=RUN_TIMEOUT_MS)
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 4  # the maps are on screen meanwhile
    thumb.press("ArrowRight")  # 7 steps, while the scores for 6 are computed
    steady(page)
    no_exception(page)
    assert query(page)["steps"] == "7"
    main = page.locator('[data-testid="stMain"]')
    shown = [m.inner_text() for m in main.locator('[data-testid="stMetricValue"]').all()]
    verdicts = [c for c in view_text(page) if c.startswith("On this image, with")]

    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()
    at.switch_page("views/3_explanations.py").run()
    at.slider(key="exp_steps").set_value(7).run()
    assert not at.exception
    assert shown == [m.value for m in at.metric] and len(shown) == 8  # 2 methods x 2 models x 2 scores
    assert verdicts == [c.value.replace("**", "") for c in at.caption if c.value.startswith("On this image, with")]
    assert len(verdicts) == 2
    page.close()
