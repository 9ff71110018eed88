"""How fast the synthetic dataset renders, alone and through a DataLoader.

    python benchmarks/bench_dataset.py [--workers 0 2 16] [--batch-size 256] [--batches 40]

Prints ms/image on one core, then images/s delivered by the loader the trainer uses
(uint8 batches, pinned and copied to the GPU when there is one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from t2t.data.synthetic import LocalStructureDataset, benchmark  # noqa: E402
from t2t.train import loader, pick_device  # noqa: E402


def loader_rate(workers: int, batch_size: int, batches: int, img_size: int, device: torch.device) -> float:
    ds = LocalStructureDataset("train", size=batch_size * (batches + 8), img_size=img_size, as_uint8=True)
    dl = loader(ds, batch_size, workers, device, persistent=False)
    it = iter(dl)
    for _ in range(min(8, batches)):  # workers start and fill their queues
        next(it)
    t0 = time.perf_counter()
    n = 0
    for x, _ in it:
        x = x.to(device, non_blocking=True)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--img-size", type=int, default=224)
    args = p.parse_args()
    torch.set_num_threads(1)
    device = pick_device("auto")
    print(f"render {args.img_size}: {benchmark(img_size=args.img_size):.2f} ms/image (one core, incl. normalise)")
    for w in args.workers:
        rate = loader_rate(w, args.batch_size, args.batches, args.img_size, device)
        print(f"loader, {w:2d} workers, batch {args.batch_size} -> {device.type}: {rate:8.0f} images/s")


if __name__ == "__main__":
    main()
