"""Screenshots of every app page for the README and the docs: `python scripts/screenshots.py`.

Starts the real app (`streamlit run app/main.py`, headless, on a free local port, the embedded default
models and the default image), opens each page of its navigation in Debian's headless Chromium at
1280 x 720 and, once the page is complete (no script run going on, no element waiting for its code, no
progress bar of background work left, two more animation frames painted), writes the viewport to
`docs/screenshots/<url_path>.png`. The viewport, not the full page: at 1280 x 720 it is what a projector
shows on opening the page, and it stays legible when a README scales it to its column width.

The pages are read from `app/main.py`'s `st.Page(...)` calls (`app_pages`), so a new page gets its
screenshot here and `tests/test_docs.py` fails until it has one. Re-run after changing a page.

Needs /usr/bin/chromium (`apt-get install chromium`) and the `playwright` package; never `playwright
install`. Takes a few minutes on 2 cores (the Explanations page computes its maps and scores).
"""

from __future__ import annotations

import argparse
import ast
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python scripts/screenshots.py` puts scripts/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

from benchmarks._browser import COMPLETE, TWO_FRAMES, exception_text, launch, open_page, streamlit_server  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
WIDTH, HEIGHT = 1280, 720
PAGE_TIMEOUT_S = 600  # a first visit on a busy 2-core machine computes maps and faithfulness scores
# A lesson link's query per page where the page's default view shows little (Knock-outs with nothing knocked out
# draws uniform grids): the same page, with the view a teacher would open it on (README's example link).
VIEWS = {"knockouts": "t2t_heads=6.0,6.1&vit_heads=11.0"}
ABOVE_FIGURE_PX = 150  # room left above the first figure for its heading or caption
# Streamlit scrolls its main column, not the document: scroll that element so that the first figure of the page
# (a plotly chart or an image in the main column, not the sidebar's preprocessing pictures) sits `above` px
# below the top of the viewport. A page without a figure stays at its top.
SCROLL_TO_FIRST_FIGURE = """
(above) => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return;
  const figure = main.querySelector('[data-testid="stPlotlyChart"], [data-testid="stImage"]');
  if (!figure) return;
  main.scrollTop += Math.max(0, figure.getBoundingClientRect().top - main.getBoundingClientRect().top - above);
}
"""


def app_pages(main: Path = ROOT / "app" / "main.py") -> list[dict[str, object]]:
    """The app's navigation, read from the source of `main`: one dict per `st.Page(...)` call, in order,
    with its `title`, `url_path` and `default` (the page Streamlit serves at `/`); hidden pages (another
    address of a page) are left out.

    Read with `ast`, not by importing: importing app/main.py would start a Streamlit run."""
    tree = ast.parse(main.read_text())
    # module-level NAME = "text" (or A, B = "x", "y") assignments, for arguments given by name
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                     else [(target, value)])
            names.update({t.id: v.value for t, v in pairs if isinstance(t, ast.Name) and isinstance(v, ast.Constant)})

    def constant(node: ast.expr | None) -> object:
        if isinstance(node, ast.Constant):
            return node.value
        return names.get(node.id) if isinstance(node, ast.Name) else None

    pages = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Page":
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if constant(kw.get("visibility")) == "hidden":
                continue  # another address of a page in the navigation, not a page of its own
            script = constant(node.args[0]) if node.args else None
            url_path = constant(kw.get("url_path"))
            if url_path is None:  # Streamlit's own rule: the script's file name without the numeric prefix
                url_path = Path(str(script)).stem.split("_", 1)[-1]
            title = constant(kw.get("title")) or url_path
            default = constant(kw.get("default")) is True
            pages.append({"title": title, "url_path": url_path, "default": default})
    marked = [p for p in pages if p["default"]] or pages[:1]
    for p in pages:  # st.navigation's default: the page marked default=True, else the first
        p["default"] = p is marked[0]
    return pages


def screenshot_path(url_path: str) -> Path:
    """Where the screenshot of the page served at /<url_path> is kept."""
    return OUT / f"{url_path}.png"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot(browser, base: str, page_info: dict[str, object], out: Path) -> float:
    """Open one page in a fresh tab, wait until it is complete, write the viewport to `out`; seconds taken.

    Raises RuntimeError when the page shows an exception box: a screenshot of an error is worse than none."""
    url = base + "/" if page_info["default"] else f"{base}/{page_info['url_path']}"
    if page_info["url_path"] in VIEWS:
        url += "?" + VIEWS[str(page_info["url_path"])]
    t0 = time.monotonic()
    page = open_page(browser, url, width=WIDTH, height=HEIGHT, timeout_s=PAGE_TIMEOUT_S)
    try:
        # background work (faithfulness scores, heavy methods) shows a progress bar until it is done
        page.wait_for_function(COMPLETE, timeout=PAGE_TIMEOUT_S * 1000, polling=100)
        page.evaluate(TWO_FRAMES)
        page.wait_for_timeout(1000)  # plotly's transitions and lazily decoded images settle
        page.wait_for_function(COMPLETE, timeout=PAGE_TIMEOUT_S * 1000, polling=100)
        error = exception_text(page)
        if error:
            raise RuntimeError(f"{page_info['title']}: the page shows an exception: {error[:500]}")
        # The page's first figure near the top: the viewport then shows what the page draws (its title and
        # explanation for students fill the first screen), and the sidebar's navigation says which page it is.
        page.evaluate(SCROLL_TO_FIRST_FIGURE, ABOVE_FIGURE_PX)
        page.evaluate(TWO_FRAMES)
        page.wait_for_timeout(300)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
    finally:
        page.close()
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help="url paths of the pages to shoot (default: every page)")
    parser.add_argument("--log", type=Path, default=None, help="write the Streamlit server's log here")
    args = parser.parse_args(argv)
    pages = app_pages()
    unknown = set(args.pages) - {str(p["url_path"]) for p in pages}
    if unknown:
        parser.error(f"no such page: {sorted(unknown)}; the app has {[p['url_path'] for p in pages]}")
    chosen = [p for p in pages if not args.pages or p["url_path"] in args.pages]

    from playwright.sync_api import sync_playwright

    port = _port()
    # The toolbar without Streamlit's "Deploy" button, which is no part of the app.
    env = {"STREAMLIT_CLIENT_TOOLBAR_MODE": "minimal"}
    with streamlit_server(port, env=env, log=args.log, start_timeout=180), sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for info in chosen:
                out = screenshot_path(str(info["url_path"]))
                seconds = shoot(browser, f"http://127.0.0.1:{port}", info, out)
                print(f"{info['title']}: {out.relative_to(ROOT)} ({seconds:.0f} s)", flush=True)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
