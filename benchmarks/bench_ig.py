"""Integrated Gradients: time and completeness of the old rule against the new default, in one run.

    python benchmarks/bench_ig.py [--synthetic 4] [--models t2t_vit_7,deit_tiny_patch16_224]

On each embedded model, for `--synthetic` test images of the synthetic dataset and the shipped
sample photos, with the zero (dataset-mean) baseline and the predicted class, it runs
  - Captum's Gauss-Legendre rule with 32 points: the previous default of
    `integrated_gradients_map` (Captum's default method, n_steps=32),
  - Captum's uniform trapezoid rule with 32 points,
  - the new default, the adaptive composite log-mean rule (n_steps=32, max_steps=128),
and prints, per rule, the wall time for all images, the gradient evaluations per image, and the
completeness gap |sum(attributions) - (f(x) - f(b))| / |f(x) - f(b)| (mean, max, images above
COMPLETENESS_TOLERANCE), then the time ratios against the old rule. One run, one repeat: IG takes
seconds per image, and the gaps do not depend on the timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import t2t  # noqa: E402
from analysis.attributions import COMPLETENESS_TOLERANCE, integrated_gradients_map  # noqa: E402
from t2t.data import LocalStructureDataset  # noqa: E402
from t2t.images import open_image, preprocess, sample_images  # noqa: E402

RULES = {  # key -> (label, integrated_gradients_map keyword arguments); "old" first: the ratios' reference
    "old": ("old default: Captum gausslegendre, 32", {"method": "gausslegendre", "n_steps": 32}),
    "uniform": ("Captum riemann_trapezoid (uniform), 32", {"method": "riemann_trapezoid", "n_steps": 32}),
    "new": ("new default: adaptive_log_mean, 32..128", {}),
}


def inputs(model: torch.nn.Module, synthetic: int) -> tuple[torch.Tensor, list[str]]:
    """(B, 3, 224, 224) synthetic test images and sample photos, preprocessed for `model`, and their names."""
    cfg = model.default_cfg
    ds = LocalStructureDataset("test", size=synthetic, mean=cfg["mean"], std=cfg["std"])
    images = [ds[i][0] for i in range(synthetic)]
    names = [f"synthetic {i} ({ds.classes[ds.label(i)]})" for i in range(synthetic)]
    for name, path in sample_images().items():
        images.append(preprocess(open_image(path), cfg["mean"], cfg["std"], 224, cfg["crop_pct"])[0])
        names.append(f"photo {name}")
    return torch.stack(images), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="t2t_vit_7,deit_tiny_patch16_224")
    parser.add_argument("--synthetic", type=int, default=4, help="synthetic test images per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--per-image", action="store_true", help="also print every image's gap")
    parser.add_argument("--rules", default="old,uniform,new", help=f"some of {','.join(RULES)}, old first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU; tolerance {COMPLETENESS_TOLERANCE:.0%}")
    for name in args.models.split(","):
        model = t2t.create_model(name, pretrained="embedded")
        images, names = inputs(model, args.synthetic)
        print(f"\n{name}: {len(names)} images ({args.synthetic} synthetic, {len(names) - args.synthetic} photos)")
        print(f"{'rule':44s} {'time s':>8s} {'grads/img':>10s} {'mean gap':>9s} {'max gap':>8s} {'> tol':>6s}")
        times = {}
        for key in args.rules.split(","):
            label, kwargs = RULES[key]
            start = time.perf_counter()
            _, comp = integrated_gradients_map(model, images, return_completeness=True, **kwargs)
            times[label] = time.perf_counter() - start
            gap = comp.relative_gap
            print(f"{label:44s} {times[label]:8.1f} {comp.steps.double().mean():10.1f} {gap.mean():9.3f} "
                  f"{gap.max():8.3f} {int((gap > COMPLETENESS_TOLERANCE).sum()):6d}", flush=True)
            if args.per_image:
                for n, g, c in zip(names, gap.tolist(), comp.output_change.tolist(), strict=True):
                    print(f"    {n:36s} gap {g:7.3f}  f(x) - f(b) {c:6.2f}")
        old = times[RULES[args.rules.split(",")[0]][0]]
        print(f"time ratios to the {args.rules.split(',')[0]} rule: " + ", ".join(f"{label.split(':')[0]} {t / old:.2f}"
                                                          for label, t in times.items()))


if __name__ == "__main__":
    main()
