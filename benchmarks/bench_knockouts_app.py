"""What the Knock-outs page and the Explanations page's sanity checks cost (issue 23).

    flock /tmp/team/bench.lock .venv/bin/python benchmarks/bench_knockouts_app.py [--clicks 4] [--prune-n 40]

1. A head click in a real browser (`streamlit run` + Debian Chromium, the clock of benchmarks/_browser.py):
   from the click on a cell of ViT's blocks x heads grid until the run is over and painted (*drawn*: both
   models' top-5 and maps with that head out, and, waited for at the end of the same run, both importance
   grids given the knocked-out heads) and until no progress bar is left (*complete*). Each click knocks
   one more head out (a set never seen: everything is computed); "back" clicks the same head again (a
   set already seen: cached). Then, the server idle, the same work done directly on the app's thread
   count (two knocked-out traces, two importance grids): page / compute is the app's own cost.
2. The pruning curves of both embedded models as the page computes them (n labelled synthetic test
   images, n / 2 to rank the heads, 9 removal counts, 1000 bootstrap resamples), directly.
3. The sanity check of each quick explanation method for both models on one image, directly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._browser import exception_text, launch, open_page, streamlit_server, timed, wait_quiet  # noqa: E402


def click_head(page, block: int, head: int, blocks: int = 12, heads: int = 3) -> None:
    area = page.locator(".st-key-ko_grid_ViT .nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    x, y = box["x"] + box["width"] * (head + 0.5) / heads, box["y"] + box["height"] * (block + 0.5) / blocks
    page.mouse.move(x, y)
    page.mouse.click(x, y)


Times = list[tuple[float, float]]


def browser_clicks(port: int, clicks: list[tuple[int, int]]) -> tuple[Times, Times]:
    """(new set, back) (drawn, complete) seconds per click."""
    from playwright.sync_api import sync_playwright

    new, back = [], []
    with streamlit_server(port), sync_playwright() as p:
        browser = launch(p)
        page = open_page(browser, f"http://127.0.0.1:{port}/knockouts", height=1400)
        wait_quiet(page)
        for b, h in [(0, 0), (0, 0)]:  # warm-up: the figures' code, the intact importance
            timed(page, lambda b=b, h=h: click_head(page, b, h))
        for b, h in clicks:
            new.append(timed(page, lambda b=b, h=h: click_head(page, b, h)))
            if exception_text(page):
                raise RuntimeError(exception_text(page))
            back.append(timed(page, lambda b=b, h=h: click_head(page, b, h)))  # back in: a set seen before
            timed(page, lambda b=b, h=h: click_head(page, b, h))  # out again (seen), for the next click's set
            print(f"click block {b} head {h}: new set drawn {new[-1][0]:.2f} s complete {new[-1][1]:.2f} s; "
                  f"seen set {back[-1][1]:.2f} s", flush=True)
        browser.close()
    return new, back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=4)
    parser.add_argument("--prune-n", type=int, default=40)
    parser.add_argument("--port", type=int, default=8531)
    parser.add_argument("--skip", nargs="*", default=[], choices=["browser", "pruning", "sanity"])
    args = parser.parse_args()
    import torch

    import t2t
    from analysis.knockout import head_importance_scores, knocked_out, pruning_curve
    from analysis.sanity import cascading_randomization
    from app.device import cpu_threads
    from app.knockouts import PRUNE_RANK_FIRST, _synthetic, prune_counts
    from benchmarks._page_compute import load_pair

    threads = cpu_threads()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, app threads {threads}, "
          f"load average before {os.getloadavg()[0]:.1f}", flush=True)
    clicks = [(11 - i, i % 3) for i in range(args.clicks)]
    if "browser" not in args.skip:
        new, back = browser_clicks(args.port, clicks)
    torch.set_num_threads(threads)
    models = {lm.name: lm.model for lm in load_pair()}
    from t2t.images import preprocess_steps

    def inputs(model, images):
        cfg = model.default_cfg
        return torch.cat([preprocess_steps(im.image, cfg["mean"], cfg["std"], 224, 1.0).tensor for im in images])

    from app.images import default_image

    image = default_image()
    xs = {name: inputs(m, [image]) for name, m in models.items()}
    if "browser" not in args.skip:
        # the same work as each new click, done directly: ViT with the heads so far out, T2T-ViT intact (cached
        # by the page, so not counted), each a trace and an importance grid
        direct = []
        vit = next(m for m in models.values() if not hasattr(m, "tokens_to_token"))
        x = next(xs[n] for n, m in models.items() if m is vit)
        out: list[tuple[int, int]] = []
        with torch.no_grad():
            target = int(vit(x).argmax())
        for b, h in clicks:
            out.append((b, h))
            start = time.perf_counter()
            with torch.no_grad(), knocked_out(vit, out):
                t2t.trace(vit, x, attention=True)
            head_importance_scores(vit, x, target, given=out)
            direct.append(time.perf_counter() - start)
        drawn, complete = statistics.median(t[0] for t in new), statistics.median(t[1] for t in new)
        seen = statistics.median(t[1] for t in back)
        c = statistics.median(direct)
        print(f"\nhead click (new set): drawn {drawn:.2f} s, complete {complete:.2f} s (max "
              f"{max(t[1] for t in new):.2f}); a set seen before: {seen:.2f} s; the same work directly "
              f"{c:.2f} s; page / compute {complete / c:.2f}, overhead {complete - c:.2f} s", flush=True)
    if "pruning" not in args.skip:
        n = args.prune_n
        for name, m in models.items():
            batch, ranking = _synthetic(n, 0), _synthetic(max(1, n // 2), PRUNE_RANK_FIRST)
            x, rx = inputs(m, [im for im, _ in batch]), inputs(m, [im for im, _ in ranking])
            y, ry = torch.tensor([lb for _, lb in batch]), torch.tensor([lb for _, lb in ranking])
            counts = prune_counts(len(m.blocks) * m.blocks[0].attn.num_heads, 8)
            start = time.perf_counter()
            curve = pruning_curve(m, x, y, rx, ry, counts=counts)
            print(f"pruning curve {name}: {time.perf_counter() - start:.1f} s for {n} images, {len(ranking)} to rank, "
                  f"{len(counts)} counts; {curve.removable} of {curve.num_heads} heads removable", flush=True)
    if "sanity" not in args.skip:
        for method in ("rollout", "chefer", "grad_rollout", "gradcam"):
            for name, m in models.items():
                start = time.perf_counter()
                curve = cascading_randomization(method, m, xs[name])
                print(f"sanity check {method:12s} {name}: {time.perf_counter() - start:.1f} s "
                      f"({len(curve.layers)} maps); |Spearman| at the end {float(curve.mean('spearman_abs')[-1]):.2f}",
                      flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
