"""The head-importance grid of both embedded models on one image, against the forwards it needs.

    flock /tmp/team/bench.lock python benchmarks/bench_knockout.py [--repeats 5] [--images 1]

For each model (L blocks of H heads), timed interleaved (median of --repeats, so that load from
other processes hits all alike):
- grid:    `head_importance_scores(model, x)`, the (L, H) logit and probability drops;
- batched: one bare forward of the 1 + L * H images the grid stands for (the intact image and one
           copy per knocked-out head), what a plain batched implementation needs: the target is
           grid / batched <= 1.2;
- floor:   the bare work of the grid's own scheme, without hooks: one forward, then for each group of
           blocks l0..l1 the H (l1 - l0) copies of the image through blocks l0..L-1;
- click:   one forward of the image inside `knocked_out` (3 heads), vs a bare forward: what a head
           click in the app costs the model.
The ratios are measured in this one run; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import t2t
from analysis.knockout import _run_from, head_importance_scores, knocked_out, num_heads
from analysis.notebook import synthetic_batch


def floor(model, x):
    """The grid's forwards without hooks or bookkeeping."""
    inputs = []
    handles = [b.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for b in model.blocks]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    heads, n = num_heads(model), len(x)
    group = min(max(1, -(-32 // (heads * n))), max(1, 256 // (heads * n)))  # head_importance_scores' defaults
    for first in range(0, len(model.blocks), group):
        v = heads * len(range(first, min(first + group, len(model.blocks))))
        _run_from(model, inputs[first].repeat(v, 1, 1), first)


def bench(name: str, repeats: int, images: int) -> None:
    model = t2t.create_model(name, pretrained="embedded").eval()
    x, _ = synthetic_batch(model, images)
    blocks, heads = len(model.blocks), num_heads(model)
    naive = x.repeat(1 + blocks * heads, 1, 1, 1)
    some = [(0, 0), (blocks // 2, heads - 1), (blocks - 1, 0)]

    def click():
        with knocked_out(model, some):
            model(x)

    jobs = {"grid": lambda: head_importance_scores(model, x), "batched": lambda: model(naive),
            "floor": lambda: floor(model, x), "click": click, "bare": lambda: model(x)}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    with torch.inference_mode():
        for job in jobs.values():  # warm-up
            job()
        for _ in range(repeats):
            for k, job in jobs.items():
                t0 = time.perf_counter()
                job()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name}: {blocks} blocks x {heads} heads, {images} image(s), median of {repeats}")
    print(f"  grid (head_importance_scores)           {med['grid'] * 1e3:8.1f} ms")
    print(f"  batched forward of {images * (1 + blocks * heads):3d} images             "
          f"{med['batched'] * 1e3:8.1f} ms   grid / batched = {med['grid'] / med['batched']:.2f} (target <= 1.2)")
    print(f"  floor (same scheme, no hooks)           {med['floor'] * 1e3:8.1f} ms   grid / floor   = "
          f"{med['grid'] / med['floor']:.2f}")
    print(f"  click: forward with 3 heads knocked out {med['click'] * 1e3:8.1f} ms   click / bare   = "
          f"{med['click'] / med['bare']:.2f} (bare {med['bare'] * 1e3:.1f} ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=1)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name in ("t2t_vit_7", "deit_tiny_patch16_224"):
        bench(name, args.repeats, args.images)
    print(f"\nload average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
