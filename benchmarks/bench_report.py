"""Throughput of `python -m analysis.report --only rollout` against the bare forward pass, in one run.

    python benchmarks/bench_report.py [--images 192] [--batch-size 16] [--weights random] [--device auto] [--workers 1]

Writes `--images` synthetic test images (224 px PNG) to a temporary folder, then measures:
- bare forward: the models' plain `model(x)` (fused attention, no trace) on the already
  preprocessed batches, under inference_mode: images per second through all models;
- report: the whole command in this process (`analysis.report.main`, timed around the call):
  reading and decoding the files (in `--workers` DataLoader processes), each model's
  preprocessing, the trace, rollout, the journal, the summaries, CSV, JSON, the overlay pictures
  (the report's default: the first 64 images and the 16 least confident) and HTML. "loop" leaves
  out the one-off start (building the models) and the final writing.

Each is repeated (`--repeats`, interleaved: forward, report, forward, report, ...). Two ratios are
printed: fastest over fastest (what the machine can do when other processes leave it alone), and
the median of the ratios of each forward run and the report run right after it (paired runs see the
same machine, so the drift of a shared machine cancels). The target is report / forward >= 0.85.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import t2t
from analysis import report
from t2t.data import LocalStructureDataset


def write_images(folder: Path, n: int) -> None:
    ds = LocalStructureDataset("test", size=n)
    for i in range(n):
        ds.image(i).save(folder / f"test_{i:05d}.png")


def forward_seconds(models, folder: Path, batch_size: int, device: torch.device) -> float:
    """Seconds for the bare forward of every model over every image (inputs prepared beforehand)."""
    files, _ = report.find_images([folder])
    keys = [report.transform_key(m) for m in models]
    items = [report.prepare(p, label, i, list(dict.fromkeys(keys))) for i, (p, label) in enumerate(files)]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    inputs = [[torch.stack([it.inputs[k] for it in b]).to(device) for k in keys] for b in batches]
    elapsed = 0.0
    with torch.inference_mode():
        for xs in inputs:
            for model, x in zip(models, xs, strict=True):
                t0 = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed += time.perf_counter() - t0
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--models", nargs="+", default=["t2t_vit_7", "deit_tiny_patch16_224"])
    p.add_argument("--weights", default=None, help="default: embedded when present, else random")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=None, help="the report's DataLoader workers (default: its own)")
    args = p.parse_args()
    weights = args.weights or ("embedded" if all(m in t2t.list_embedded() for m in args.models) else "random")
    device = t2t.default_device(None if args.device == "auto" else args.device)
    models = [report.load_model(m, weights, device) for m in args.models]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_images(folder, args.images)
        argv = ["--models", *args.models, "--weights", weights, "--images", str(folder),
                "--out", str(Path(tmp) / "out"), "--batch-size", str(args.batch_size), "--device", str(device),
                "--only", "rollout", *(["--workers", str(args.workers)] if args.workers is not None else [])]
        forward_seconds(models, folder, args.batch_size, device)  # warm-up: allocator, kernels, file cache
        fwd, full, loop, parts = [], [], [], []
        for _ in range(args.repeats):
            fwd.append(forward_seconds(models, folder, args.batch_size, device))
            t0 = time.perf_counter()
            timing = report.main(argv)["timing"]
            full.append(time.perf_counter() - t0)  # the JSON and HTML are written after "timing"
            loop.append(timing["images_s"])
            parts.append((timing["setup_s"], timing["write_s"], full[-1] - timing["total_s"]))

    n = args.images
    print("runs (s): forward " + " ".join(f"{t:.2f}" for t in fwd) + " | report " + " ".join(f"{t:.2f}" for t in full))
    print("fixed cost (s) of each report run: setup (models) / final CSV, JSON, pictures / HTML: " + " | ".join(
        f"{a:.2f} / {b:.2f} / {c:.2f}" for a, b, c in parts))
    rate = lambda seconds: n / min(seconds)
    print(f"\n{n} images of 224 px, batch {args.batch_size}, models {', '.join(args.models)} ({weights} weights), "
          f"{device}, {torch.get_num_threads()} threads, report workers "
          f"{args.workers if args.workers is not None else 'default'}")
    print(f"bare forward (all models):        {rate(fwd):7.2f} images/s")
    paired = lambda runs: statistics.median(f / r for f, r in zip(fwd, runs, strict=True))  # noqa: E731
    print(f"report --only rollout, end to end: {rate(full):7.2f} images/s  ratio {min(fwd) / min(full):.2f} "
          f"(fastest runs), {paired(full):.2f} (median of paired runs)")
    print(f"report --only rollout, loop only:  {rate(loop):7.2f} images/s  ratio {min(fwd) / min(loop):.2f} "
          f"(fastest runs), {paired(loop):.2f} (median of paired runs)")
    print("target: ratio >= 0.85")


if __name__ == "__main__":
    main()
