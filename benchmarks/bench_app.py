"""How fast the app answers in a real browser: `streamlit run` + Debian Chromium (playwright).

    .venv/bin/python benchmarks/bench_app.py [--repeats 3] [--pages tokens explanations] [--port 8521]
        [--server-option runner.postScriptGC=false]

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

Each widget move against the framework's floor (issue 29): a bare Streamlit app (`FLOOR_APP`: a sidebar, one
slider, two 56 x 56 plotly heat maps that the slider changes) is served beside the app and opened in a second
tab of the same browser; right before each pair of widget moves its slider is moved twice (its tab in front,
as the app's is for the app), so both are timed at the same moments. move / floor is the widget's complete
median over the floor's; target <= 1.25 for a move that computes nothing. A new image against compute +
floor: the page's complete median over (its direct compute + the floor median); target <= 1.

A widget move and a floor move are timed with one clock (`timed_move`): from the key press until the
script_finished message of the run it started has reached the browser, what the move changes is on
screen (`PageBench.shows`, the floor's row in both titles) and two more frames are painted. A fragment
run of a few milliseconds can come and go within one frame of the frontend, which then never marks it
"running" (the clock of benchmarks/_browser.py waits for that), so the message itself is counted
(`FINISHED`, a hook on the page's websocket).

`--server-option section.name=value` starts the app's server with a Streamlit option (the environment
variable STREAMLIT_SECTION_NAME), e.g. `runner.postScriptGC=false` to see what Streamlit's full garbage
collection after every run costs in a process that holds torch (~450,000 objects: 0.1-0.4 s a run here;
the floor app's ~80,000 objects take ~0.04 s). The floor app always runs with Streamlit's defaults.

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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._browser import (  # noqa: E402
    COMPLETE,
    RECORDER,
    TWO_FRAMES,
    exception_text,
    launch,
    nudge_slider,
    set_number,
    streamlit_server,
    timed,
    wait_quiet,
)

# Counts the script runs that have finished, as the browser receives them: every ForwardMsg on the page's
# websocket whose field 6 (script_finished) is set, with performance.now() (window.__finished). A minimal
# protobuf walk over the message's top-level fields; Streamlit's websocket carries ArrayBuffers.
FINISHED = """
(() => {
  window.__finished = [];
  const finished = (bytes) => {
    let i = 0;
    const varint = () => { let v = 0, m = 1, b; do { b = bytes[i++]; v += (b & 127) * m; m *= 128; } while (b & 128);
                           return v; };
    while (i < bytes.length) {
      const tag = varint(), field = Math.floor(tag / 8), wire = tag & 7;
      if (field === 6 && wire === 0) return true;
      if (wire === 0) varint();
      else if (wire === 1) i += 8;
      else if (wire === 2) { const length = varint(); i += length; }  // not i += varint(): i is read first
      else if (wire === 5) i += 4;
      else return false;
    }
    return false;
  };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (event) => {
        if (event.data instanceof ArrayBuffer && finished(new Uint8Array(event.data)))
          window.__finished.push(performance.now());
      });
    }
  };
})();
"""
# True when a run finished after t0 (its message received), nothing runs any more nor waits for its code.
FINISHED_AFTER = """(t0) => {
  const runs = window.__runs || [];
  return (window.__finished || []).some(t => t >= t0) && runs.length > 0 && runs[runs.length - 1][1] === 'notRunning'
    && !document.querySelector('[data-testid="stSkeleton"]');
}"""


@dataclass(frozen=True)
class PageBench:
    url_path: str
    widget: str  # what the widget change is
    move: Callable[[object, int], None]  # (page, i) -> change the widget (i = 0, 1, 2, ...)
    new_image_target: float
    widget_target: float
    # (page, i) -> a selector of what move i shows once answered, read before the move (it may name the value
    # the move sets); None: the run's end is enough
    shows: Callable[[object, int], str] | None = None


def slider_value(page, key: str) -> int:
    return int(page.locator(f".st-key-{key} input[type='range']").first.input_value())


def _tokens_shows(page, i: int) -> str:
    """The caption naming the chosen token, with the row move i sets."""
    row = slider_value(page, "tok_row") + (1 if i % 2 == 0 else -1)
    return f"text=Chosen: token ({row}, {slider_value(page, 'tok_col')}) of soft split 0"


def _attention_shows(page, i: int) -> str:
    """The chosen map's title (drawn by plotly), with the block move i sets."""
    block = slider_value(page, "att_block") + (1 if i % 2 == 0 else -1)
    return f".st-key-att_pick .gtitle:has-text('block {block},')"


def _slider(key: str) -> Callable[[object, int], None]:
    return lambda page, i: nudge_slider(page, key, 1 if i % 2 == 0 else -1)


def _radio(key: str) -> Callable[[object, int], None]:
    return lambda page, i: page.locator(f".st-key-{key} [role='radiogroup'] label").nth((i + 1) % 2).click()


PAGES = {
    "tokens": PageBench("tokens", "token row slider", _slider("tok_row"), 2.0, 0.5, shows=_tokens_shows),
    "attention": PageBench("attention", "block slider", _slider("att_block"), 2.0, 0.5, shows=_attention_shows),
    "explanations": PageBench("explanations", "deletion/insertion steps slider", _slider("exp_steps"), 3.0, 1.0),
    "explanations_discard": PageBench("explanations", "rollout discard ratio slider", _slider("exp_discard"), 3.0,
                                      1.0),
    "features": PageBench("features", "ViT block slider", _slider("fr_block_ViT"), 2.0, 0.5),
    # the radio reruns the batch fragment only (issue 29): the other option's widget on screen
    "classify": PageBench("classify", "batch source radio", _radio("batch_source"), 2.0, 0.5,
                          shows=lambda page, i: ".st-key-batch_upload" if i % 2 == 0 else ".st-key-batch_n"),
}


DEFAULT_PAGE = "tokens"

# The floor: what any Streamlit page pays for a widget move that reruns its script, with a sidebar and two
# figures to send and draw; the slider changes both heat maps (a figure that did not change might not be
# drawn again).
FLOOR_APP = """
import numpy as np
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(layout="wide")
with st.sidebar:
    st.header("Sidebar")
    st.selectbox("Model", ["a", "b", "c"], key="model")
    st.number_input("Example", 0, 999, 0, key="example")
    st.caption("A sidebar like the app's, drawn again on every run.")
value = st.slider("Value", 0, 55, 28, key="floor")
left, right = st.columns(2)
for column, seed in ((left, 0), (right, 1)):
    z = np.random.default_rng(seed).random((56, 56))
    z[value, :] = 2.0
    fig = go.Figure(go.Heatmap(z=z, colorscale="Inferno"))
    fig.update_layout(height=420, margin={"l": 0, "r": 0, "t": 30, "b": 0}, title=f"heat map {seed}, row {value}")
    column.plotly_chart(fig, key=f"heat{seed}", theme=None)
"""


@contextmanager
def floor_server(port: int, timeout_s: float = 120.0) -> Iterator[str]:
    """`streamlit run` of FLOOR_APP (a temporary file) on 127.0.0.1:`port`, headless; its URL."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "floor.py"
        script.write_text(FLOOR_APP)
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                        if response.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the floor app did not start on port {port}")
                time.sleep(0.3)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# True when both heat maps of the floor app are drawn with row `arg` in their titles.
FLOOR_DRAWN = """(row) => {
  const titles = Array.from(document.querySelectorAll('.js-plotly-plot .gtitle')).map(t => t.textContent);
  return titles.length === 2 && titles.every(t => t.endsWith('row ' + row));
}"""


def open_page(browser, url: str, width: int = 1600, height: int = 1000, timeout_s: float = 300):
    """A new page on `url` with the run recorder (benchmarks/_browser.py) and the finished-run hook (`FINISHED`)
    installed, after its first run has finished."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.add_init_script(RECORDER)
    page.add_init_script(FINISHED)
    page.goto(url)
    page.wait_for_function("() => (window.__runs || []).some(r => r[1] === 'notRunning')", timeout=timeout_s * 1000)
    wait_quiet(page, timeout_s)
    return page


def answered(page, move: Callable[[], None], shows: str | None = None, timeout_s: float = 300) -> tuple[float, float]:
    """Seconds from just before `move()` until a run that finished after it has reached the browser, nothing
    runs, `shows` (a selector) is on screen and two more frames are painted (drawn); then until no progress
    bar is left either (complete)."""
    t0 = page.evaluate("() => performance.now()")
    move()
    page.wait_for_function(FINISHED_AFTER, arg=t0, timeout=timeout_s * 1000, polling=20)
    if shows is not None:
        page.wait_for_selector(shows, state="attached", timeout=timeout_s * 1000)
    drawn = page.evaluate(TWO_FRAMES)
    page.wait_for_function(COMPLETE, timeout=timeout_s * 1000, polling=20)
    complete = page.evaluate(TWO_FRAMES)
    return (drawn - t0) / 1000, (complete - t0) / 1000


def floor_moves(floor, count: int) -> Times:
    """`count` moves of the floor app's slider (one step right, then back), its tab in front, each timed as a
    widget move (`answered`) until, besides, both heat maps show the new row."""
    floor.bring_to_front()
    times: Times = []
    for i in range(count):
        row = slider_value(floor, "floor") + (1 if i % 2 == 0 else -1)
        t0 = floor.evaluate("() => performance.now()")
        nudge_slider(floor, "floor", 1 if i % 2 == 0 else -1)
        floor.wait_for_function(FINISHED_AFTER, arg=t0, timeout=300_000, polling=20)
        floor.wait_for_function(FLOOR_DRAWN, arg=row, timeout=300_000, polling=20)
        done = (floor.evaluate(TWO_FRAMES) - t0) / 1000
        times.append((done, done))
    return times


def go_to(page, url_path: str) -> float:
    """Open a page from the sidebar navigation; seconds until its run is over."""
    nav = page.locator('[data-testid="stSidebarNav"] a')
    # the default page's link is the app's root URL
    link = nav.first if url_path == DEFAULT_PAGE else nav.and_(page.locator(f'a[href$="/{url_path}"]'))
    return timed(page, link.click)


def timed_move(page, pb: PageBench, i: int) -> tuple[float, float]:
    """`answered` for move i of a page's widget (with what it shows, read before the move)."""
    shows = pb.shows(page, i) if pb.shows is not None else None
    return answered(page, lambda: pb.move(page, i), shows)


def checked(page, seconds: tuple[float, float], what: str) -> tuple[float, float]:
    error = exception_text(page)
    if error:
        raise RuntimeError(f"exception on screen after {what}: {error}")
    return seconds


Times = list[tuple[float, float]]  # (drawn, complete) per action


def bench(page, pages: list[str], repeats: int, compute: Callable[[str, list[int]], tuple[list[float], list[float]]],
          floor=None) -> list[tuple[str, PageBench, Times, Times, tuple[list[float], list[float]], Times]]:
    """Each page in the browser, then (the server idle) the same work done directly on the same images.

    With `floor` (a tab on FLOOR_APP): right before each pair of widget moves, two floor slider moves, the
    floor's tab in front, then the app's tab back in front: the floor is timed at the same moments as the
    page, which a machine shared with other work needs (blocks of moves a minute apart differed by 1.5x)."""
    example = 100  # synthetic examples 100.. are never the default image
    rows = []
    here = DEFAULT_PAGE  # the page the browser shows (opening it again would start no run to time)
    for name in pages:
        pb = PAGES[name]
        floor_times: Times = []
        if floor is not None:
            floor_moves(floor, 2)  # warm-up: the floor tab's first frames in front
            page.bring_to_front()
        first = (0.0, 0.0) if pb.url_path == here else checked(page, go_to(page, pb.url_path), f"opening {name}")
        here = pb.url_path
        for i in range(2):  # warm this page's widget paths on the current image
            checked(page, timed_move(page, pb, i), f"{pb.widget} on {name}")
        new_image: Times = []
        widget: Times = []
        examples: list[int] = []
        for _ in range(repeats):
            new_image.append(checked(page, timed(page, lambda e=example: set_number(page, "synthetic_example", e)),
                                     f"new image on {name}"))
            examples.append(example)
            example += 1
            if floor is not None:
                floor_times += floor_moves(floor, 2)
                page.bring_to_front()
            for i in range(2):
                widget.append(checked(page, timed_move(page, pb, i), f"{pb.widget} on {name}"))
        wait_quiet(page)
        direct = compute(name, examples)  # right after the page's own runs: the same moment's machine
        rows.append((name, pb, new_image, widget, direct, floor_times))
        ni, wi = summary(new_image), summary(widget)
        print(f"{name:13s} first visit {first[1]:6.2f} s   new image drawn {ni[0]:5.2f} s, complete {ni[1]:5.2f} s "
              f"(max {ni[2]:.2f})   widget drawn {wi[0]:5.2f} s, complete {wi[1]:5.2f} s (max {wi[2]:.2f})  "
              f"[{pb.widget}]", flush=True)
        # the widget's first move after a new image may compute something new, the move back not
        print(f"{'':13s} complete, s: new image {fmt(new_image)}; widget, first move {fmt(widget[0::2])}, "
              f"move back {fmt(widget[1::2])}", flush=True)
        print(f"{'':13s} compute, s: new image {fmt1(direct[0])}; widget, first move {fmt1(direct[1])}", flush=True)
        if floor_times:
            print(f"{'':13s} floor app slider, complete, s: {fmt(floor_times)}", flush=True)
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
    parser.add_argument("--no-floor", action="store_true", help="do not time the bare Streamlit app beside")
    parser.add_argument("--server-option", action="append", default=[], metavar="SECTION.NAME=VALUE",
                        help="a Streamlit option of the app's server (not the floor's): runner.postScriptGC=false")
    args = parser.parse_args()
    env = server_env(args.server_option)
    import torch
    from playwright.sync_api import sync_playwright

    from app.device import cpu_threads
    from benchmarks._page_compute import compute_seconds, load_pair

    print(f"torch {torch.__version__} on {'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} cores, "
          f"the app computes with {cpu_threads()} CPU thread(s) ($T2T_LENS_THREADS to change), "
          f"load average before {os.getloadavg()[0]:.1f}"
          + (f"; the app's server with {', '.join(args.server_option)}" if args.server_option else ""))
    with streamlit_server(args.port, env=env, log=args.log), sync_playwright() as p, \
            (floor_server(args.port + 1) if not args.no_floor else _nothing()) as floor_url:
        browser = launch(p)
        start = time.perf_counter()
        page = open_page(browser, f"http://127.0.0.1:{args.port}")
        print(f"cold start (load both models, first trace, page 1, in the browser): "
              f"{time.perf_counter() - start:.2f} s", flush=True)
        floor = open_page(browser, floor_url) if floor_url else None
        page.bring_to_front()
        models = load_pair()
        rows = bench(page, args.pages, args.repeats, lambda name, examples: compute_seconds(name, examples, models),
                     floor)
        browser.close()
    print(f"load average after {os.getloadavg()[0]:.1f}")
    print("\nSeconds, medians (max: the slowest complete run); drawn: the run is over and painted, complete: "
          "no background work (progress bar) left. Widget: its first move after a new image (it may compute "
          "something new for this image) and the move back (a value already seen), complete. / target: the "
          "larger complete median over the target.")
    print("\n| page | new image drawn | new image complete | max | / target | widget first move | move back | max "
          "| / target | widget |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, pb, new_image, widget, _, _ in rows:
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
    for name, pb, new_image, widget, direct, _ in rows:
        ni, first = summary(new_image)[1], summary(widget[0::2])[1]
        ci, cw = statistics.median(direct[0]), statistics.median(direct[1])
        print(f"| {name} | {ni:.2f} | {ci:.2f} | {ratio(ni, ci)} | {ni - ci:.2f} | {first:.2f} | {cw:.2f} | "
              f"{ratio(first, cw)} | {first - cw:.2f} | {pb.widget} |")


    if any(floor_times for *_, floor_times in rows):
        floor_table(rows)


def floor_table(rows) -> None:
    """Each widget move over the floor app's slider move, timed just before it; each new image over its
    compute + that floor."""
    print("\nAgainst the framework's floor (issue 29): a bare Streamlit app with a sidebar, one slider and two "
          "plotly heat maps, its slider moved twice in the same browser before each pair of widget moves (complete "
          "medians, seconds). Targets: move / floor <= 1.25 for a move that computes nothing; new image / "
          "(compute + floor) <= 1.")
    print("\n| page | widget | floor | first move | move back | move / floor (first, back) | new image | compute "
          "| new image / (compute + floor) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pb, new_image, widget, direct, floor_times in rows:
        if not floor_times:
            continue
        fl = statistics.median(t[1] for t in floor_times)
        first, back = summary(widget[0::2])[1], summary(widget[1::2])[1]
        ni, ci = summary(new_image)[1], statistics.median(direct[0])
        print(f"| {name} | {pb.widget} | {fl:.2f} | {first:.2f} | {back:.2f} | {first / fl:.2f}, {back / fl:.2f} | "
              f"{ni:.2f} | {ci:.2f} | {ni / (ci + fl):.2f} |")


def server_env(options: list[str]) -> dict[str, str]:
    """`section.name=value` Streamlit options as the environment variables Streamlit reads them from."""
    from streamlit.config import _config_options_template as known

    env = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in known or not value:
            raise SystemExit(f"--server-option {option!r}: expected section.name=value with a Streamlit option")
        env[known[key].env_var] = value
    return env


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def fmt1(seconds: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in seconds)


def ratio(page: float, compute: float) -> str:
    """page / compute, or "-" when the widget computes (next to) nothing: its whole time is overhead."""
    return f"{page / compute:.2f}" if compute >= 0.01 else "-"


if __name__ == "__main__":
    main()
