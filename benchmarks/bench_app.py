"""How fast the app answers, measured with streamlit.testing.v1.AppTest (no browser).

    .venv/bin/python benchmarks/bench_app.py [--repeats 3]

Two numbers per page, with the models already loaded (the sidebar defaults):
- new image: the time of the script run after a never-seen image is chosen (a synthetic example
  with a fresh index), i.e. preprocessing, both forward passes, the page's analysis and figures.
  Target: under 3 s on a CPU.
- widget: the time of a run after a widget change that needs no new forward pass (a token, block,
  head or step). Target: under 200 ms.
AppTest adds its own overhead (building and parsing the element tree), so the numbers are an
upper bound on what the server itself spends; the browser's drawing is not included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

MAIN = str(ROOT / "app" / "main.py")

Action = Callable[[AppTest, int], None]


def _slider(key: str, values: list[int]) -> Action:
    return lambda at, i: at.slider(key=key).set_value(values[i % len(values)])


def _radio(key: str, values: list[str]) -> Action:
    return lambda at, i: at.radio(key=key).set_value(values[i % len(values)])


def _select(key: str, values: list[object]) -> Action:
    return lambda at, i: at.selectbox(key=key).set_value(values[i % len(values)])


# page -> (a widget change that needs no forward pass, what it is)
PAGES: dict[str, tuple[Action, str]] = {
    "views/1_tokens_to_token.py": (_slider("tok_row", [10, 40, 20, 50]), "token row slider"),
    "views/2_attention.py": (_slider("att_block", [1, 3, 5, 2]), "block slider"),
    "views/3_explanations.py": (_select("exp_journey", ["chefer", "rollout"]), "journey method selectbox"),
    "views/4_feature_richness.py": (_slider("fr_block_ViT", [2, 5, 8, 3]), "ViT block slider"),
    "views/5_classify.py": (_radio("batch_source", ["My uploads", "Synthetic test images (with labels)"]),
                            "batch source radio"),
}


def timed_run(at: AppTest) -> float:
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return elapsed


def bench(repeats: int, pages: list[str]) -> list[tuple[str, float, float, float, str]]:
    at = AppTest.from_file(MAIN, default_timeout=600)
    start = time.perf_counter()
    at.run()
    print(f"cold start (load both models, first trace, page 1): {time.perf_counter() - start:.2f} s")
    example = 100  # synthetic examples 100.. are never the default image
    rows = []
    for page in pages:
        action, what = PAGES[page]
        at.switch_page(page)
        timed_run(at)  # first visit: warm this page's own code paths on the current image
        # the widget's first change may compute something once (e.g. a map for a mode): warm it
        for i in range(2):
            action(at, i)
            timed_run(at)
        new_image, widget = [], []
        for _ in range(repeats):
            at.number_input(key="synthetic_example").set_value(example)
            example += 1
            new_image.append(timed_run(at))
            for i in range(2):  # alternate between two already-seen values
                action(at, i)
                widget.append(timed_run(at))
        rows.append((page, statistics.median(new_image), max(new_image), statistics.median(widget), what))
        print(f"{page:32s} new image {rows[-1][1]:6.2f} s (max {rows[-1][2]:.2f})   "
              f"widget {1000 * rows[-1][3]:6.0f} ms  ({what})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", nargs="*", default=list(PAGES), choices=list(PAGES))
    args = parser.parse_args()
    import os

    import torch

    from app._state import cpu_threads

    print(f"torch {torch.__version__} on {'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} cores, "
          f"the app computes with {cpu_threads()} CPU thread(s) ($T2T_LENS_THREADS to change), "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = bench(args.repeats, args.pages)
    print("\n| page | new image (median) | new image (max) | widget change (median) | widget |")
    print("|---|---|---|---|---|")
    for page, med, worst, widget, what in rows:
        print(f"| {Path(page).stem} | {med:.2f} s | {worst:.2f} s | {1000 * widget:.0f} ms | {what} |")


if __name__ == "__main__":
    main()
