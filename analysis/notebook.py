"""What the notebooks in notebooks/ share: the model pair they compare, their inputs, a legible figure style.

    from analysis.notebook import load_models, synthetic_batch, use_style
    MODELS = load_models()          # {"T2T-ViT": model, "ViT": model}, chosen by T2T_LENS_* variables

Which weights (`load_models`), read from the environment so that one command re-runs every notebook
on other weights:

- T2T_LENS_WEIGHTS: "embedded" (default: the project's models, trained from scratch on the synthetic
  dataset and shipped in t2t/assets/embedded), "imagenet" or "released" (the model's released weights,
  downloaded once: ImageNet-1k, or CIFAR-10 / CIFAR-100 for the `*_cifar*` names; `default_cfg["dataset"]`
  says which), "random", or a checkpoint path or URL; for both models.
- T2T_LENS_WEIGHTS_T2T / T2T_LENS_WEIGHTS_VIT: the same, per model (override T2T_LENS_WEIGHTS).
- T2T_LENS_MODEL_T2T / T2T_LENS_MODEL_VIT: the registry names (default t2t_vit_7 and
  deit_tiny_patch16_224, any of `python -m t2t list`, e.g. t2t_vit_14_cifar100); a checkpoint of another
  architecture is loaded into that one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import matplotlib
import numpy as np
import torch
from torch import Tensor, nn

from t2t.loading import load_model

# captum imports tqdm.auto, which warns in a kernel without ipywidgets ("IProgress not found") about a progress
# bar the notebooks never show; the notebooks import this module before anything that imports captum.
warnings.filterwarnings("ignore", message="IProgress not found")

DEFAULT_MODELS = {"T2T-ViT": "t2t_vit_7", "ViT": "deit_tiny_patch16_224"}
ENV_SUFFIX = {"T2T-ViT": "T2T", "ViT": "VIT"}

# Jupyter and GitHub show an inline PNG one image pixel per CSS pixel (1/96 inch) unless it is wider than
# the page, when it is scaled down. At 96 dpi a matplotlib point is therefore a displayed point, and a
# figure at most 8.4 inches wide (806 px, a little more with the inline backend's tight bounding box) fits
# GitHub's notebook view and JupyterLab's output area unscaled: text of 10 pt is then 10 pt on screen.
# (tests/notebooks checks the saved figures' widths.)
STYLE = {
    "figure.dpi": 96,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 11,
}


def use_style() -> None:
    """Set matplotlib's rcParams to `STYLE` (call after importing pyplot: the inline backend sets its own)."""
    matplotlib.rcParams.update(STYLE)


def load_models(environ: Mapping[str, str] = os.environ) -> dict[str, nn.Module]:
    """{"T2T-ViT": model, "ViT": model} in eval mode on the CPU, weights as the module docstring says.

    Embedded weights missing from this checkout fall back to random ones with a warning (see
    `t2t.loading.load_model`), so the notebooks still run; `is_trained` tells the two apart.
    """
    weights = environ.get("T2T_LENS_WEIGHTS", "embedded")
    return {label: load_model(environ.get(f"T2T_LENS_MODEL_{ENV_SUFFIX[label]}", name),
                              environ.get(f"T2T_LENS_WEIGHTS_{ENV_SUFFIX[label]}", weights), fallback=True)
            for label, name in DEFAULT_MODELS.items()}


def is_trained(model: nn.Module) -> bool:
    """False for a model with random (untrained) weights."""
    return not str(model.default_cfg.get("weights", "random")).startswith("random")


def describe(models: Mapping[str, nn.Module]) -> str:
    """One line per model: name, weights, size, classes and the test accuracy its card states."""
    lines = []
    for label, m in models.items():
        cfg = m.default_cfg
        acc = cfg.get("card", {}).get("test_acc")
        lines.append(f"{label:8s} {cfg['name']:24s} weights: {cfg.get('weights', 'random')}, "
                     f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M parameters, {len(m.blocks)} blocks, "
                     f"{m.num_classes} classes" + (f", synthetic test accuracy {acc:.1%}" if acc is not None else ""))
    return "\n".join(lines)


def synthetic_batch(model: nn.Module, n: int, start: int = 0) -> tuple[Tensor, Tensor]:
    """Test images start..start+n-1 of the synthetic dataset, normalised for `model`: (n, 3, S, S) and labels (n,)."""
    from t2t.data import LocalStructureDataset

    cfg = model.default_cfg
    ds = LocalStructureDataset("test", size=start + n, img_size=cfg["img_size"], mean=cfg["mean"], std=cfg["std"])
    x = torch.stack([ds[i][0] for i in range(start, start + n)])
    return x, torch.tensor([ds.label(i) for i in range(start, start + n)])


def photo_batch(model: nn.Module) -> tuple[Tensor, list[str]]:
    """The bundled sample photos, preprocessed as `model` expects (its own eval transform): (P, 3, S, S), names."""
    from t2t.data.folder import eval_transform
    from t2t.images import open_image, preprocess, sample_images

    transform = eval_transform(model)
    photos = sample_images()
    x = torch.cat([preprocess(open_image(p), *transform) for p in photos.values()])
    return x, list(photos)


def denormalize(x: Tensor, model: nn.Module) -> np.ndarray:
    """A (3, S, S) input normalised for `model` -> (S, S, 3) array in [0, 1], for imshow."""
    mean = torch.tensor(model.default_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.default_cfg["std"]).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def class_name(model: nn.Module, i: int) -> str:
    """The model's name for class i (its index as text when the checkpoint names none)."""
    names = getattr(model, "class_names", None)
    return names[i] if names else str(i)
