"""How fast the app answers in a real browser: `streamlit run` + Debian Chromium (playwright).

    .venv/bin/python benchmarks/bench_app.py [--repeats 3] [--pages tokens explanations] [--port 8521]

With the sidebar defaults (embedded models, synthetic images), for each page:
- new image: from typing a never-seen synthetic example number (Enter) until the script run is over
  and the browser has painted (see benchmarks/_browser.py for the clock): preprocessing, both
  forward passes, the page's analysis, figures, sending and drawing them;
- widget: the same for a change of the page's own widget (a slider moved one step and back, or
  the other radio option), on the current image: the first move may compute something new for
  this image (e.g. a new number of deletion steps), the move back is a value already seen.
Targets (issue 12): Explanations 3 s for a new image and 1 s for a widget; every other page 2 s and
0.5 s. The table gives the medians, the worst runs and median / target (<= 1 meets the target).
The first visit of each page (and two widget moves) is a warm-up and is not counted.

Each page against its own compute (issue 22): right after each page's runs in the browser (the server
idle), the work that page needs for each of the same new images (both preprocessings and traces, the
page's default methods and scores) and for its widget's first move is done directly, one call after
another, on the app's CPU thread count (`cpu_threads`): benchmarks/_page_compute.py. page / compute
is the app's own cost (Streamlit, figures, sending them, the browser's drawing) as a multiple of the
work it cannot skip; page - compute is that cost in seconds. Target: page / compute <= 1.3 for a
new image on every page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._browser import (  # noqa: E402
    exception_text,
    launch,
    nudge_slider,
    open_page,
    set_number,
    streamlit_server,
    timed,
    wait_quiet,
)


@dataclass(frozen=True)
class PageBench:
    url_path: str
    widget: str  # what the widget change is
    move: Callable[[object, int], None]  # (page, i) -> change the widget (i = 0, 1, 2, ...)
    new_image_target: float
    widget_target: float


def _slider(key: str) -> Callable[[object, int], None]:
    return lambda page, i: nudge_slider(page, key, 1 if i % 2 == 0 else -1)


def _radio(key: str) -> Callable[[object, int], None]:
    return lambda page, i: page.locator(f".st-key-{key} [role='radiogroup'] label").nth((i + 1) % 2).click()


PAGES = {
    "tokens": PageBench("tokens", "token row slider", _slider("tok_row"), 2.0, 0.5),
    "attention": PageBench("attention", "block slider", _slider("att_block"), 2.0, 0.5),
    "explanations": PageBench("explanations", "deletion/insertion steps slider", _slider("exp_steps"), 3.0, 1.0),
    "explanations_discard": PageBench("explanations", "rollout discard ratio slider", _slider("exp_discard"), 3.0,
                                      1.0),
    "features": PageBench("features", "ViT block slider", _slider("fr_block_ViT"), 2.0, 0.5),
    "classify": PageBench("classify", "batch source radio", _radio("batch_source"), 2.0, 0.5),
}


DEFAULT_PAGE = "tokens"


def go_to(page, url_path: str) -> float:
    """Open a page from the sidebar navigation; seconds until its run is over."""
    nav = page.locator('[data-testid="stSidebarNav"] a')
    # the default page's link is the app's root URL
    link = nav.first if url_path == DEFAULT_PAGE else nav.and_(page.locator(f'a[href$="/{url_path}"]'))
    return timed(page, link.click)


def checked(page, seconds: tuple[float, float], what: str) -> tuple[float, float]:
    error = exception_text(page)
    if error:
        raise RuntimeError(f"exception on screen after {what}: {error}")
    return seconds


Times = list[tuple[float, float]]  # (drawn, complete) per action


def bench(page, pages: list[str], repeats: int, compute: Callable[[str, list[int]], tuple[list[float], list[float]]],
          ) -> list[tuple[str, PageBench, Times, Times, tuple[list[float], list[float]]]]:
    """Each page in the browser, then (the server idle) the same work done directly on the same images."""
    example = 100  # synthetic examples 100.. are never the default image
    rows = []
    here = DEFAULT_PAGE  # the page the browser shows (opening it again would start no run to time)
    for name in pages:
        pb = PAGES[name]
        first = (0.0, 0.0) if pb.url_path == here else checked(page, go_to(page, pb.url_path), f"opening {name}")
        here = pb.url_path
        for i in range(2):  # warm this page's widget paths on the current image
            checked(page, timed(page, lambda i=i, pb=pb: pb.move(page, i)), f"{pb.widget} on {name}")
        new_image: Times = []
        widget: Times = []
        examples: list[int] = []
        for _ in range(repeats):
            new_image.append(checked(page, timed(page, lambda e=example: set_number(page, "synthetic_example", e)),
                                     f"new image on {name}"))
            examples.append(example)
            example += 1
            for i in range(2):
                widget.append(checked(page, timed(page, lambda i=i, pb=pb: pb.move(page, i)),
                                      f"{pb.widget} on {name}"))
        wait_quiet(page)
        direct = compute(name, examples)  # right after the page's own runs: the same moment's machine
        rows.append((name, pb, new_image, widget, direct))
        ni, wi = summary(new_image), summary(widget)
        print(f"{name:13s} first visit {first[1]:6.2f} s   new image drawn {ni[0]:5.2f} s, complete {ni[1]:5.2f} s "
              f"(max {ni[2]:.2f})   widget drawn {wi[0]:5.2f} s, complete {wi[1]:5.2f} s (max {wi[2]:.2f})  "
              f"[{pb.widget}]", flush=True)
        # the widget's first move after a new image may compute something new, the move back not
        print(f"{'':13s} complete, s: new image {fmt(new_image)}; widget, first move {fmt(widget[0::2])}, "
              f"move back {fmt(widget[1::2])}", flush=True)
        print(f"{'':13s} compute, s: new image {fmt1(direct[0])}; widget, first move {fmt1(direct[1])}", flush=True)
    return rows


def fmt(times: Times) -> str:
    return " ".join(f"{t[1]:.2f}" for t in times)


def summary(times: Times) -> tuple[float, float, float]:
    """(median drawn, median complete, max complete)."""
    return (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times),
            max(t[1] for t in times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", nargs="*", default=list(PAGES), choices=list(PAGES))
    parser.add_argument("--port", type=int, default=8521)
    parser.add_argument("--log", type=Path, default=None, help="write the server's output here")
    args = parser.parse_args()
    import torch
    from playwright.sync_api import sync_playwright

    from app.device import cpu_threads
    from benchmarks._page_compute import compute_seconds, load_pair

    print(f"torch {torch.__version__} on {'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} cores, "
          f"the app computes with {cpu_threads()} CPU thread(s) ($T2T_LENS_THREADS to change), "
          f"load average before {os.getloadavg()[0]:.1f}")
    with streamlit_server(args.port, log=args.log), sync_playwright() as p:
        browser = launch(p)
        start = time.perf_counter()
        page = open_page(browser, f"http://127.0.0.1:{args.port}")
        print(f"cold start (load both models, first trace, page 1, in the browser): "
              f"{time.perf_counter() - start:.2f} s", flush=True)
        models = load_pair()
        rows = bench(page, args.pages, args.repeats, lambda name, examples: compute_seconds(name, examples, models))
        browser.close()
    print(f"load average after {os.getloadavg()[0]:.1f}")
    print("\nSeconds, medians (max: the slowest complete run); drawn: the run is over and painted, complete: "
          "no background work (progress bar) left. Widget: its first move after a new image (it may compute "
          "something new for this image) and the move back (a value already seen), complete. / target: the "
          "larger complete median over the target.")
    print("\n| page | new image drawn | new image complete | max | / target | widget first move | move back | max "
          "| / target | widget |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, pb, new_image, widget, _ in rows:
        ni, first, back = summary(new_image), summary(widget[0::2]), summary(widget[1::2])
        worst = max(first[1], back[1])
        print(f"| {pb.url_path} | {ni[0]:.2f} | {ni[1]:.2f} | {ni[2]:.2f} | {ni[1] / pb.new_image_target:.2f} "
              f"(of {pb.new_image_target:g} s) | {first[1]:.2f} | {back[1]:.2f} | {max(first[2], back[2]):.2f} | "
              f"{worst / pb.widget_target:.2f} (of {pb.widget_target:g} s) | {pb.widget} |")

    print("\nEach page against its own compute (issue 22): the page's complete median over the median of the "
          "same work done directly (the page's compute functions on the same images, one after another, "
          f"{cpu_threads()} thread(s)); overhead = page - compute: Streamlit, figures, sending them, the browser. "
          "Target: new image / compute <= 1.3.")
    print("\n| page | new image | compute | page / compute | overhead | widget first move | compute | "
          "page / compute | overhead | widget |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, pb, new_image, widget, direct in rows:
        ni, first = summary(new_image)[1], summary(widget[0::2])[1]
        ci, cw = statistics.median(direct[0]), statistics.median(direct[1])
        print(f"| {name} | {ni:.2f} | {ci:.2f} | {ratio(ni, ci)} | {ni - ci:.2f} | {first:.2f} | {cw:.2f} | "
              f"{ratio(first, cw)} | {first - cw:.2f} | {pb.widget} |")


def fmt1(seconds: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in seconds)


def ratio(page: float, compute: float) -> str:
    """page / compute, or "-" when the widget computes (next to) nothing: its whole time is overhead."""
    return f"{page / compute:.2f}" if compute >= 0.01 else "-"


if __name__ == "__main__":
    main()
