"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) to compare explanations by a number.

Deletion: remove pixels from the image, most important first (replace them by a baseline) and
follow the class score; a faithful map makes it fall fast (low area under the curve).
Insertion: start from the baseline and put pixels back, most important first; a faithful map
makes the score rise fast (high area). Both are evaluated at `steps + 1` evenly spaced fractions
0, 1/steps, ..., 1 of the pixels, with all perturbed images of a batch sent through the model in
chunks of `batch_size`.

Shapes: B batch, C colour channels, S image side, P = S * S pixels, K = steps + 1 points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.maps import upsample_map
from analysis.modelio import model_targets

# score_fn(perturbed (n, C, S, S), image_index (n,) long) -> (n,) class score of each image
ScoreFn = Callable[[Tensor, Tensor], Tensor]
BASELINES = ("blur", "zero", "mean")


@dataclass
class Curves:
    """Deletion / insertion scores (B, K) at `fractions` (K,) of pixels removed / inserted."""

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """(B,) area under the deletion curve, lower is better."""
        return auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> Tensor:
        """(B,) area under the insertion curve, higher is better."""
        return auc(self.fractions, self.insertion)


def auc(fractions: Tensor, curve: Tensor) -> Tensor:
    """Trapezoidal area of (..., K) curves over the (K,) fractions in [0, 1]."""
    return torch.trapezoid(curve, fractions.to(curve.dtype), dim=-1)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, S, S) images, reflect-padded, each channel on its own."""
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(images: Tensor, kind: str | Tensor = "blur", sigma: float | None = None) -> Tensor:
    """What removed pixels become, (B, C, S, S).

    "blur": a strongly blurred copy (sigma S / 10 by default), which removes the detail a map
    points at without the out-of-distribution sharp edges that a constant fill creates;
    "zero": zeros (the dataset-mean colour for normalised inputs); "mean": each image's own mean
    colour; a tensor is broadcast to the images' shape.
    """
    if isinstance(kind, Tensor):
        return kind.to(images).expand_as(images)
    if kind == "blur":
        return gaussian_blur(images, sigma if sigma is not None else images.shape[-1] / 10)
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    raise ValueError(f"baseline must be a tensor or one of {BASELINES}, got {kind!r}")


def pixel_ranks(saliency: Tensor) -> Tensor:
    """(B, H, W) importance -> (B, H * W) long rank of each pixel, 0 = most important.

    A stable sort keeps ties in raster order, so equal maps give equal rankings.
    """
    order = saliency.flatten(1).argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def deletion_insertion(
    score_fn: ScoreFn,
    images: Tensor,
    saliency: Tensor,
    baseline: str | Tensor = "blur",
    steps: int = 20,
    batch_size: int = 32,
) -> Curves:
    """Deletion and insertion curves of (B, C, S, S) images under (B, h, w) or (B, S, S) maps.

    Token-resolution maps are upsampled bilinearly to pixels first (a smooth order inside each
    token rather than raster order among tied pixels). The B * K deletion and B * K insertion
    images are built on the fly, `batch_size` at a time, so memory stays bounded.
    """
    b, _, s_h, s_w = images.shape
    if saliency.shape[-2:] != images.shape[-2:]:
        saliency = upsample_map(saliency, (s_h, s_w))
    ranks = pixel_ranks(saliency).view(b, 1, s_h, s_w)
    fill = make_baseline(images, baseline)
    fractions = torch.linspace(0, 1, steps + 1, device=images.device)
    counts = torch.round(fractions * s_h * s_w).long()  # pixels perturbed at each point

    # every (curve, step, image) triple as one flat job list: curve 0 = deletion, 1 = insertion
    curve, step, index = torch.meshgrid(
        torch.arange(2), torch.arange(steps + 1), torch.arange(b), indexing="ij"
    )
    curve, step, index = curve.flatten(), step.flatten(), index.flatten()
    scores = torch.empty(curve.numel(), device=images.device)
    for start in range(0, curve.numel(), batch_size):  # chunks of batched forwards
        sl = slice(start, start + batch_size)
        i = index[sl].to(images.device)
        top = ranks[i] < counts[step[sl]].to(images.device).view(-1, 1, 1, 1)  # (n, 1, S, S)
        deleting = (curve[sl] == 0).to(images.device).view(-1, 1, 1, 1)
        # deletion: top pixels -> baseline; insertion: top pixels from the image, rest baseline
        from_image = torch.where(deleting, ~top, top)
        perturbed = torch.where(from_image, images[i], fill[i])
        scores[sl] = score_fn(perturbed, i).detach().float()
    scores = scores.view(2, steps + 1, b).transpose(1, 2)  # (2, B, K)
    return Curves(fractions.cpu(), scores[0].cpu(), scores[1].cpu())


def model_score_fn(model: nn.Module, target: Tensor, score: str = "prob") -> ScoreFn:
    """score_fn for a classifier: softmax probability ("prob") or logit ("logit") of target[i]."""
    if score not in ("prob", "logit"):
        raise ValueError(f"score must be 'prob' or 'logit', got {score!r}")

    @torch.no_grad()
    def fn(x: Tensor, index: Tensor) -> Tensor:
        logits = model(x)
        out = logits.softmax(dim=-1) if score == "prob" else logits
        return out.gather(1, target.to(x.device)[index][:, None])[:, 0]

    return fn


def faithfulness(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    target: int | Tensor | None = None,
    baseline: str | Tensor = "blur",
    steps: int = 20,
    batch_size: int = 32,
    score: str = "prob",
) -> Curves:
    """Deletion / insertion curves of a model's `target` class (default: predicted) under a map."""
    target = model_targets(model, images, target)
    return deletion_insertion(model_score_fn(model, target, score), images, saliency, baseline, steps, batch_size)
