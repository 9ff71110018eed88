"""Peak memory of `python -m analysis.report` does not grow with the number of images.

    python benchmarks/bench_memory.py [--images 20000] [--small 2000] [--size 32] [--img-size 32] [--validate]

Writes a synthetic folder of `--images` small PNGs (`--size` px: cheap to write and decode) in
sub-folders of `--small` images, then runs the report (`--only rollout`, one model, default
pictures) in a fresh process on the first sub-folder and on the whole folder, and prints each
run's peak resident memory (ru_maxrss of the main process, and of its DataLoader workers). The
model runs at `--img-size` (32 px: 2 x 2 tokens) so that 20,000 images take minutes on a 2-core
CPU: what could grow with the dataset is the pipeline around the model (file list, records,
summaries, pictures, the journal), not the model. With `--validate`, `python -m t2t validate`
too (on a file list of the same images). Flat means the 20,000-image run peaks within a few MB of
the 2,000-image run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "report":
    from analysis.report import main
else:
    from t2t.validate import main
main(sys.argv[2:])
print(json.dumps({"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0}))
"""


def write_folder(root: Path, n: int, per_folder: int, size: int) -> None:
    """n images, `per_folder` to a sub-folder; labels.txt lists them all and labels_0.txt the first sub-folder,
    with labels 0-9 (the random models' 10 classes) for validate."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / str(i // per_folder)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    lines = [f"{i // per_folder}/{i:06d}.png {i % 10}" for i in range(n)]
    (root.parent / "labels.txt").write_text("\n".join(f"images/{x}" for x in lines) + "\n")
    (root.parent / "labels_0.txt").write_text("\n".join(f"images/{x}" for x in lines[:per_folder]) + "\n")


def measure(what: str, argv: list[str]) -> dict:
    # one intra-op thread: on a busy 2-core machine two threads wait on each other (memory is the same)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, what, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--small", type=int, default=2_000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=32, help="the model's input size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--validate", action="store_true", help="also measure python -m t2t validate")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        t0 = time.perf_counter()
        write_folder(root, args.images, args.small, args.size)
        print(f"wrote {args.images} images of {args.size} px in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for n, data, labels in ((args.small, root / "0", "labels_0.txt"), (args.images, root, "labels.txt")):
            out = Path(tmp) / f"out{n}"
            r = measure("report", ["--models", args.model, "--weights", "random", "--images", str(data), "--out",
                                   str(out), "--only", "rollout", "--batch-size", str(args.batch_size),
                                   "--img-size", str(args.img_size)])
            rows.append(("report", n, r))
            print(f"report   {n:6d} images: peak RSS {r['self_mb']:7.1f} MB (workers {r['workers_mb']:6.1f} MB), "
                  f"{r['seconds']:.0f} s, {n / r['seconds']:.1f} images/s", flush=True)
            if args.validate:
                r = measure("validate", ["--model", args.model, "--weights", "random", "--data",
                                         str(Path(tmp) / labels), "--out", str(out / "validate.json"),
                                         "--batch-size", str(args.batch_size), "--img-size", str(args.img_size)])
                rows.append(("validate", n, r))
                print(f"validate {n:6d} images: peak RSS {r['self_mb']:7.1f} MB (workers {r['workers_mb']:6.1f} MB),"
                      f" {r['seconds']:.0f} s, {n / r['seconds']:.1f} images/s", flush=True)
    for what in ("report", "validate"):
        runs = [(n, r) for w, n, r in rows if w == what]
        if len(runs) == 2:
            (n0, a), (n1, b) = runs
            print(f"{what}: {n1 / n0:.0f}x the images, peak RSS {b['self_mb'] - a['self_mb']:+.1f} MB "
                  f"({b['self_mb'] / a['self_mb']:.3f}x)")


if __name__ == "__main__":
    main()
