"""Small shape helpers shared by every explanation: token vectors <-> grids <-> pixel maps.

Conventions used across `analysis/`:
    B  batch, N patch tokens (class token excluded), h x w token grid with N = h * w (row-major,
    as the models flatten their token grids), S image side in pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def infer_grid(num_tokens: int, image_hw: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Token grid (h, w) with h * w == num_tokens whose aspect ratio is closest to the image's.

    Used where only a token count is at hand (e.g. a Captum layer output), so that no grid
    size such as 14 x 14 is ever hard-coded. Ties go to the taller grid.
    """
    H, W = image_hw
    best: tuple[float, int] | None = None
    for h in range(1, math.isqrt(num_tokens) + 1):
        if num_tokens % h:
            continue
        for hh in sorted({h, num_tokens // h}, reverse=True):  # taller first wins ties
            cost = abs(math.log((hh / (num_tokens // hh)) / (H / W)))
            if best is None or cost < best[0] - 1e-12:
                best = (cost, hh)
    assert best is not None
    return best[1], num_tokens // best[1]


def tokens_to_grid(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N) per-token values -> (B, h, w) map (row-major token order)."""
    return rearrange(values, "b (h w) -> b h w", h=grid[0], w=grid[1])


def upsample_map(heat: Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(B, h, w) token-resolution map -> (B, S, S) pixel-resolution map.

    Bilinear with align_corners=False puts each token value at the centre of its cell, which
    matches where a token's receptive field is centred for both ViT and T2T-ViT.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(heat[:, None].float(), size=size, mode=mode, **kwargs)[:, 0]


def pool_to_grid(pixel_map: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, S, S) pixel map -> (B, h, w) token-resolution map by adaptive average pooling."""
    return F.adaptive_avg_pool2d(pixel_map[:, None], grid)[:, 0]


def normalize_map(heat: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise each map of a batch (B, ...) to [0, 1]; constant maps become 0."""
    flat = heat.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(heat)


def denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(B, 3, S, S) model inputs -> (B, 3, S, S) images in [0, 1] for display."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def display_scale(heat: Tensor, upper: float = 0.995) -> Tensor:
    """A map (any shape) scaled to [0, 1] for showing: min to the `upper` quantile, so a few hot
    pixels do not wash out the rest (rankings, hence faithfulness scores, use the unclipped map)."""
    lo = heat.min()
    hi = torch.quantile(heat.flatten().float(), upper) if heat.numel() <= 16_000_000 else heat.max()
    return ((heat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def keep_mass(maps: np.ndarray, mass: float = 0.6) -> np.ndarray:
    """Zero all but the largest weights that together hold `mass` of each map's total, (..., h, w).

    The weight that crosses the threshold is kept, so the kept weights hold at least `mass`.
    """
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    total = np.maximum(flat.sum(axis=1, keepdims=True), 1e-12)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranked = np.take_along_axis(flat, order, axis=1)
    before = np.cumsum(ranked, axis=1) - ranked  # mass of the larger weights
    keep = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(keep, order, before / total < mass, axis=1)
    return (flat * keep).reshape(maps.shape)
