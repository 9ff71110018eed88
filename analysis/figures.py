"""Plotly figure builders from numbers already computed elsewhere in `analysis/` (no model code here).

Inputs are tensors or arrays with the shapes documented per function; every builder returns a
`plotly.graph_objects.Figure` and nothing is shown or saved here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import torch

from analysis.maps import upsample_map

ArrayLike = torch.Tensor | np.ndarray


def to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_hwc(image: ArrayLike) -> np.ndarray:
    """(3, S, S) or (S, S, 3) image in [0, 1] (or uint8) -> (S, S, 3) uint8 for display."""
    img = to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal area under y(x), (K,) each."""
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def heat_to_pixels(heat: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """(h, w) token map or (H, W) pixel map -> (H, W) numpy, bilinearly upsampled if needed."""
    h = torch.as_tensor(to_numpy(heat), dtype=torch.float32)
    if tuple(h.shape) != tuple(size):
        h = upsample_map(h[None], size)[0]
    return h.numpy()


def tile_maps(maps: ArrayLike, ncols: int, pad: int = 1) -> np.ndarray:
    """(K, h, w) maps -> one (rows (h + pad), ncols (w + pad)) mosaic, NaN in the gaps.

    Each map is min-max normalised on its own so flat and strong channels are both visible.
    """
    m = to_numpy(maps).astype(np.float32)
    k, h, w = m.shape
    lo = m.reshape(k, -1).min(1)[:, None, None]
    hi = m.reshape(k, -1).max(1)[:, None, None]
    m = np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0.5)  # flat maps: mid-grey
    rows = -(-k // ncols)
    canvas = np.full((rows * ncols, h + pad, w + pad), np.nan, dtype=np.float32)
    canvas[:k, :h, :w] = m
    return canvas.reshape(rows, ncols, h + pad, w + pad).transpose(0, 2, 1, 3).reshape(rows * (h + pad), -1)


def heatmap_overlay(
    image: ArrayLike, heat: ArrayLike, alpha: float = 0.5, colorscale: str = "Jet", title: str | None = None
) -> go.Figure:
    """Image (3, S, S) / (S, S, 3) with a map (h, w) or (S, S) on top, upsampled to the image."""
    img = image_hwc(image)
    pixels = heat_to_pixels(heat, img.shape[:2])
    fig = go.Figure(go.Image(z=img, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=pixels, colorscale=colorscale, opacity=alpha, showscale=True))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    fig.update_layout(title=title, margin=dict(l=0, r=0, t=40 if title else 0, b=0))
    return fig


def channel_grid(
    maps: ArrayLike,
    invalid: ArrayLike | None = None,
    max_channels: int = 64,
    ncols: int = 8,
    title: str | None = None,
) -> go.Figure:
    """Channel maps (D, h, w) as a mosaic of the first `max_channels`, invalid ones outlined in red."""
    maps = to_numpy(maps)[:max_channels]
    k, h, w = maps.shape
    fig = go.Figure(go.Heatmap(z=tile_maps(maps, ncols), colorscale="Viridis", showscale=False, hoverinfo="skip"))
    if invalid is not None:
        bad = np.flatnonzero(to_numpy(invalid)[:k])
        for i in bad:  # one rectangle per invalid channel shown (at most max_channels)
            r, c = divmod(int(i), ncols)
            fig.add_shape(type="rect", x0=c * (w + 1) - 0.5, x1=c * (w + 1) + w - 0.5,
                          y0=r * (h + 1) - 0.5, y1=r * (h + 1) + h - 0.5, line=dict(color="red", width=2))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    fig.update_layout(title=title, margin=dict(l=0, r=0, t=40 if title else 0, b=0))
    return fig


def metric_vs_depth(
    series: Mapping[str, ArrayLike], metric: str, relative_depth: bool = True, title: str | None = None
) -> go.Figure:
    """One line per model of a per-block metric (L,); x is block / L when `relative_depth`, so models
    of different depth (T2T-ViT-14 vs DeiT's 12 blocks) line up."""
    fig = go.Figure()
    for name, values in series.items():
        y = to_numpy(values)
        x = (np.arange(len(y)) + 1) / len(y) if relative_depth else np.arange(len(y))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name))
    fig.update_layout(title=title or f"{metric} by depth", xaxis_title="relative depth" if relative_depth else "block",
                      yaxis_title=metric)
    return fig


def cka_heatmap(
    matrix: ArrayLike, name1: str = "model 1", name2: str = "model 2", title: str | None = None
) -> go.Figure:
    """(L1, L2) CKA matrix: model 1's blocks on the y axis (first at the bottom), model 2's on x."""
    z = to_numpy(matrix)
    fig = go.Figure(go.Heatmap(z=z, zmin=0, zmax=1, colorscale="Magma", colorbar=dict(title="CKA")))
    fig.update_layout(title=title or "linear CKA", xaxis_title=f"{name2} block", yaxis_title=f"{name1} block")
    return fig


def faithfulness_curves(
    fractions: ArrayLike, curves: Mapping[str, ArrayLike], kind: str = "deletion", title: str | None = None
) -> go.Figure:
    """Deletion or insertion curves (K,) per method at `fractions` (K,), AUC in the legend."""
    x = to_numpy(fractions)
    fig = go.Figure()
    for method, values in curves.items():
        y = to_numpy(values)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{method} (AUC {trapezoid(y, x):.3f})"))
    xlabel = {"deletion": "fraction of pixels deleted", "insertion": "fraction of pixels inserted"}.get(
        kind, "fraction"
    )
    fig.update_layout(title=title or f"{kind} curve", xaxis_title=xlabel, yaxis_title="class score")
    return fig


def attention_distance_scatter(distances: Mapping[str, ArrayLike], title: str | None = None) -> go.Figure:
    """Per-head mean attention distance (L, H) per model against relative depth (ViT paper, Fig. 7)."""
    fig = go.Figure()
    for name, values in distances.items():
        d = to_numpy(values)
        depth = np.repeat((np.arange(d.shape[0]) + 1) / d.shape[0], d.shape[1])
        fig.add_trace(go.Scatter(x=depth, y=d.reshape(-1), mode="markers", name=name, opacity=0.7))
    fig.update_layout(title=title or "mean attention distance per head", xaxis_title="relative depth",
                      yaxis_title="mean attention distance (px)")
    return fig
