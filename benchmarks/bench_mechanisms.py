"""Logit lens + DLA and the heads patching grid of both embedded models, against the forwards they stand for.

    flock /tmp/team/bench.lock python benchmarks/bench_mechanisms.py [--repeats 5] [--images 8] [--patch-images 2]

For each model (L blocks of H heads), timed interleaved (median of --repeats, so that load from other
processes hits all alike):
- lens + DLA: `run_with_cache`, then `logit_lens` and `direct_logit_attribution` of --images images, against
              one traced forward of them (`t2t.trace`, attention maps recorded): target <= 1.2;
- heads grid: `activation_patching(site="heads")` of --patch-images clean / corrupted (background-alone)
              pairs, the (B, L, H) recovered fractions, against one bare forward of the (2 + L * H) * B images
              it stands for (the clean and corrupted runs and one run per patched head): target <= 1.2;
- attribution: the same grid estimated by attribution patching (one forward + backward of the corrupted
              images, plus the clean forward), its time and its correlation with the exact grid;
- resid@0:    exact residual patching of every token after the embedding (index 0), against the bare forward
              of the (2 + T) * B images it stands for, and attribution patching's correlation with it there.
The ratios are measured in this one run; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import t2t
from analysis import mechanisms as mech
from analysis.knockout import num_heads


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    keep = ~(torch.isnan(a) | torch.isnan(b))
    return float(np.corrcoef(a[keep].numpy(), b[keep].numpy())[0, 1])


def timed(jobs: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for job in jobs.values():  # warm-up
        job()
    for _ in range(repeats):
        for k, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, repeats: int, images: int, patch_images: int) -> None:
    model = t2t.create_model(name, pretrained="embedded").eval()
    blocks, heads = len(model.blocks), num_heads(model)
    x, _, _, _ = mech.synthetic_pairs(model, images, kind="background")
    clean, corrupted, labels, _ = mech.synthetic_pairs(model, patch_images, kind="background")
    naive = torch.cat([clean, corrupted, clean.repeat(blocks * heads, 1, 1, 1)])

    def lens_dla():
        cache = mech.run_with_cache(model, x)
        mech.logit_lens(model, cache)
        mech.direct_logit_attribution(model, cache)

    with torch.no_grad():
        tokens = model.grid(*x.shape[-2:])
    t = 1 + tokens[0] * tokens[1]
    jobs = {
        "lens_dla": lens_dla,
        "traced": lambda: t2t.trace(model, x),
        "grid": lambda: mech.activation_patching(model, clean, corrupted, labels, site="heads"),
        "batched": lambda: model(naive),
        "attribution": lambda: mech.activation_patching(model, clean, corrupted, labels, site="heads",
                                                        method="attribution"),
    }
    with torch.no_grad():
        med = timed({k: v for k, v in jobs.items() if k != "attribution"}, repeats)
    med.update(timed({"attribution": jobs["attribution"]}, repeats))
    exact = mech.activation_patching(model, clean, corrupted, labels, site="heads")
    approx = mech.activation_patching(model, clean, corrupted, labels, site="heads", method="attribution")

    # residual patching after the embedding: heavy (T runs of the whole backbone per image), timed once
    one_c, one_k, one_y = clean[:1], corrupted[:1], labels[:1]
    t0 = time.perf_counter()
    resid = mech.activation_patching(model, one_c, one_k, one_y, site="resid", layers=[0])
    resid_s = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        for start in range(0, 2 + t, 64):
            model(one_c.expand(min(64, 2 + t - start), -1, -1, -1))
        resid_forward_s = time.perf_counter() - t0
    resid_attr = mech.activation_patching(model, one_c, one_k, one_y, site="resid", method="attribution")

    print(f"\n{name}: {blocks} blocks x {heads} heads, {t} tokens; median of {repeats}")
    print(f"  run_with_cache + logit_lens + DLA, {images} images  {med['lens_dla'] * 1e3:8.1f} ms   "
          f"/ traced forward ({med['traced'] * 1e3:.1f} ms) = {med['lens_dla'] / med['traced']:.2f} (target <= 1.2)")
    print(f"  heads grid, {patch_images} image pair(s)               {med['grid'] * 1e3:8.1f} ms   "
          f"/ bare forward of {len(naive)} images ({med['batched'] * 1e3:.1f} ms) = "
          f"{med['grid'] / med['batched']:.2f} (target <= 1.2)")
    print(f"  heads grid by attribution patching      {med['attribution'] * 1e3:8.1f} ms   "
          f"/ exact grid = {med['attribution'] / med['grid']:.2f}; correlation with the exact recovered "
          f"fractions r = {correlation(exact.recovered, approx.recovered):.3f}")
    print(f"  resid@0 (every token after the embedding), 1 image  {resid_s:6.2f} s   / bare forward of "
          f"{2 + t} images ({resid_forward_s:.2f} s) = {resid_s / resid_forward_s:.2f}; attribution patching's "
          f"correlation there r = {correlation(resid.recovered[:, 0], resid_attr.recovered[:, 0]):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--patch-images", type=int, default=2)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name in ("t2t_vit_7", "deit_tiny_patch16_224"):
        bench(name, args.repeats, args.images, args.patch_images)
    print(f"\nload average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
