"""AttnLRP's cost against a bare forward + backward, with Chefer's relevance beside; and its faithfulness by gamma.

    flock /tmp/team/bench.lock python benchmarks/bench_lrp.py [--batch 8] [--repeats 5]
    flock /tmp/team/bench.lock python benchmarks/bench_lrp.py --faithfulness [--images 32]

Speed, for each embedded model (T2T-ViT-7, DeiT-Tiny) on a batch of synthetic test images, timed
interleaved (median of --repeats after a warm-up, so that load from other processes hits all alike):
- bare:    `model(x)` and the gradient of the target logits with respect to x (the reference);
- attnlrp: one AttnLRP map, `lrp(model, x)` with the default gamma (`DEFAULT_GAMMA`, 0.25; target:
           <= 2.5 x bare), and with gamma None (plain gradients through the linear layers);
- cp:      one CP-LRP map (default gamma);
- chefer:  Chefer's relevance, `relevance_map(model, x)` (its traced forward with attention maps + backward).
The ratios are measured in this one run, of the medians and of the fastest runs (the least disturbed by
other processes); the load average is printed with them.

--faithfulness: deletion / insertion (`analysis.faithfulness`, blur baseline, softmax probability of the
predicted class, 20 steps) of the AttnLRP token map for gamma in GAMMAS, of CP-LRP, and of Chefer's map,
on --images synthetic test images per model: the mean AUC and its standard error. `DEFAULT_GAMMA` in
analysis/lrp.py is the gamma this measures best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import t2t  # noqa: E402
from analysis.faithfulness import faithfulness  # noqa: E402
from analysis.lrp import DEFAULT_GAMMA, lrp  # noqa: E402
from analysis.notebook import synthetic_batch  # noqa: E402
from analysis.relevance import relevance_map  # noqa: E402

MODELS = ("t2t_vit_7", "deit_tiny_patch16_224")
GAMMAS: tuple[float | None, ...] = (None, 0.01, 0.05, 0.1, 0.25, 1.0)


def bare(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward and the gradient of the predicted logits with respect to the input: what any gradient map costs."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    score = logits.gather(1, logits.detach().argmax(-1, keepdim=True)).sum()
    return torch.autograd.grad(score, x)[0]


def speed(name: str, batch: int, repeats: int) -> None:
    model = t2t.create_model(name, pretrained="embedded").eval()
    x, _ = synthetic_batch(model, batch)
    jobs = {
        "bare": lambda: bare(model, x),
        "attnlrp": lambda: lrp(model, x),
        "attnlrp gamma=None": lambda: lrp(model, x, gamma=None),
        "cp": lambda: lrp(model, x, variant="cp"),
        "chefer": lambda: relevance_map(model, x),
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for job in jobs.values():  # warm-up
        job()
    for _ in range(repeats):
        for k, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the fastest run: the least disturbed by other processes
    print(f"\n{name}: batch {batch} at {model.default_cfg['img_size']} px, default gamma {DEFAULT_GAMMA}, "
          f"median and min of {repeats}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for k, t in med.items():
        note = "  (default gamma; target <= 2.5)" if k == "attnlrp" else ""
        print(f"  {k:22s} {t * 1e3:9.1f} ms   / bare = {t / med['bare']:5.2f}   min {best[k] * 1e3:9.1f} ms   "
              f"/ bare = {best[k] / best['bare']:5.2f}{note}")


def faithfulness_table(name: str, images: int, gammas: list[float | None], steps: int, chefer: bool = True,
                       chunk: int = 8) -> None:
    model = t2t.create_model(name, pretrained="embedded").eval()
    x, _ = synthetic_batch(model, images)
    with torch.no_grad():
        target = torch.cat([model(x[i:i + chunk]).argmax(-1) for i in range(0, images, chunk)])
    methods: dict[str, object] = {f"attnlrp gamma={g}": ("attnlrp", g) for g in gammas}
    methods["cp gamma=None"] = ("cp", None)
    if chefer:
        methods["chefer"] = None
    print(f"\n{name}: {images} synthetic test images, predicted class, blur baseline, probability, {steps} steps; "
          "mean (standard error); the differences are paired, per image, against the first row")
    print(f"  {'map':22s} {'deletion AUC (lower)':>20s} {'difference':>18s} {'insertion AUC (higher)':>24s} "
          f"{'difference':>18s}")
    first: tuple[torch.Tensor, torch.Tensor] | None = None
    for label, spec in methods.items():
        dels, ins = [], []
        for i in range(0, images, chunk):
            xi, ti = x[i:i + chunk], target[i:i + chunk]
            if spec is None:
                heat = relevance_map(model, xi, ti)
            else:
                heat = lrp(model, xi, ti, variant=spec[0], gamma=spec[1]).tokens
            curves = faithfulness(model, xi, heat, ti, steps=steps)
            dels.append(curves.deletion_auc)
            ins.append(curves.insertion_auc)
        d, n = torch.cat(dels).double(), torch.cat(ins).double()
        first = first or (d, n)
        print(f"  {label:22s} {_mean_sem(d):>20s} {_mean_sem(d - first[0]):>18s} {_mean_sem(n):>24s} "
              f"{_mean_sem(n - first[1]):>18s}", flush=True)


def _mean_sem(v: torch.Tensor) -> str:
    return f"{v.mean():+.4f} ({v.std() / len(v) ** 0.5:.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--faithfulness", action="store_true", help="the gamma table instead of the timings")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="deletion / insertion steps")
    parser.add_argument("--gammas", nargs="+", default=[str(g) for g in GAMMAS], help="'None' or numbers")
    parser.add_argument("--no-chefer", action="store_true", help="leave Chefer's map out of the faithfulness table")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)  # one thread: timings less at the mercy of other processes' load
    for name in args.models:
        if args.faithfulness:
            gammas = [None if g == "None" else float(g) for g in args.gammas]
            faithfulness_table(name, args.images, gammas, args.steps, chefer=not args.no_chefer)
        else:
            speed(name, args.batch, args.repeats)


if __name__ == "__main__":
    main()
