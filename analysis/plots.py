"""Matplotlib figure builders (static: papers, notebooks, reports), mirroring `analysis.figures`.

Figures are made with `matplotlib.figure.Figure` directly, not pyplot, so nothing depends on a
GUI backend or global state; save with `fig.savefig(path)`. Inputs are computed numbers only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.figures import ArrayLike, heat_to_pixels, image_hwc, tile_maps, to_numpy, trapezoid


def heatmap_overlay(
    image: ArrayLike, heat: ArrayLike, alpha: float = 0.5, cmap: str = "jet", title: str | None = None
) -> Figure:
    """Image (3, S, S) / (S, S, 3) with a map (h, w) or (S, S) on top, upsampled to the image."""
    img = image_hwc(image)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.imshow(img)
    im = ax.imshow(heat_to_pixels(heat, img.shape[:2]), cmap=cmap, alpha=alpha)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def channel_grid(
    maps: ArrayLike,
    invalid: ArrayLike | None = None,
    max_channels: int = 64,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """Channel maps (D, h, w) as a mosaic of the first `max_channels`, invalid ones outlined in red."""
    maps = to_numpy(maps)[:max_channels]
    k, h, w = maps.shape
    mosaic = tile_maps(maps, ncols)
    fig = Figure(figsize=(ncols, mosaic.shape[0] / mosaic.shape[1] * ncols))
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="viridis", interpolation="nearest")
    if invalid is not None:
        for i in np.flatnonzero(to_numpy(invalid)[:k]):
            r, c = divmod(int(i), ncols)
            ax.add_patch(Rectangle((c * (w + 1) - 0.5, r * (h + 1) - 0.5), w, h, fill=False, edgecolor="red", lw=1.5))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def metric_vs_depth(
    series: Mapping[str, ArrayLike], metric: str, relative_depth: bool = True, title: str | None = None
) -> Figure:
    """One line per model of a per-block metric (L,), against block / L (or the block index)."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for name, values in series.items():
        y = to_numpy(values)
        x = (np.arange(len(y)) + 1) / len(y) if relative_depth else np.arange(len(y))
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel("relative depth" if relative_depth else "block")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by depth")
    ax.legend()
    return fig


def cka_heatmap(matrix: ArrayLike, name1: str = "model 1", name2: str = "model 2", title: str | None = None) -> Figure:
    """(L1, L2) CKA matrix, model 1's blocks on y (first at the bottom), model 2's on x."""
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    im = ax.imshow(to_numpy(matrix), origin="lower", vmin=0, vmax=1, cmap="magma", aspect="auto")
    fig.colorbar(im, ax=ax, label="CKA")
    ax.set_xlabel(f"{name2} block")
    ax.set_ylabel(f"{name1} block")
    ax.set_title(title or "linear CKA")
    return fig


def faithfulness_curves(
    fractions: ArrayLike, curves: Mapping[str, ArrayLike], kind: str = "deletion", title: str | None = None
) -> Figure:
    """Deletion or insertion curves (K,) per method at `fractions` (K,), AUC in the legend."""
    x = to_numpy(fractions)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for method, values in curves.items():
        y = to_numpy(values)
        ax.plot(x, y, label=f"{method} (AUC {trapezoid(y, x):.3f})")
    ax.set_xlabel({"deletion": "fraction of pixels deleted", "insertion": "fraction of pixels inserted"}.get(
        kind, "fraction"))
    ax.set_ylabel("class score")
    ax.set_title(title or f"{kind} curve")
    ax.legend()
    return fig


def attention_distance_scatter(distances: Mapping[str, ArrayLike], title: str | None = None) -> Figure:
    """Per-head mean attention distance (L, H) per model against relative depth (ViT paper, Fig. 7)."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for name, values in distances.items():
        d = to_numpy(values)
        depth = np.repeat((np.arange(d.shape[0]) + 1) / d.shape[0], d.shape[1])
        ax.scatter(depth, d.reshape(-1), s=12, alpha=0.7, label=name)
    ax.set_xlabel("relative depth")
    ax.set_ylabel("mean attention distance (px)")
    ax.set_title(title or "mean attention distance per head")
    ax.legend()
    return fig
