"""Plotly charts: mosaics of small maps (channels of a block, blocks x heads) and data charts
(top-k bars, metrics across depth, one dot per head, a block x block matrix, a strip of maps).

May import: app.figures (style, encoding, image figures, specs), plotly, numpy. No Streamlit calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from app.figures import (
    BOTTOM_LEGEND,
    CHART,
    FONT,
    GRID,
    Box,
    Spec,
    add_boxes,
    add_trace,
    colorize,
    image_spec,
    merge_layout,
    png_uri,
    scale,
    upscale,
    upscale_factor,
    wrap,
)

# ----------------------------------------------------------------------------------------------
# Mosaics (channel grids, head x block thumbnails)
# ----------------------------------------------------------------------------------------------


def mosaic(maps: np.ndarray, ncols: int, normalize: bool = True, pad: int = 1) -> np.ndarray:
    """(n, h, w) maps -> one (rows (h + pad), ncols (w + pad)) array, tiles separated by NaN.

    With `normalize`, each tile is min-max scaled to [0, 1] on its own (a flat tile becomes 0.5).
    """
    n, h, w = maps.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), np.nan, dtype=np.float32)
    tiles = maps.astype(np.float32)
    if normalize:
        lo = tiles.min(axis=(1, 2), keepdims=True)
        hi = tiles.max(axis=(1, 2), keepdims=True)
        span = hi - lo
        tiles = np.where(span > 1e-12, (tiles - lo) / np.where(span > 1e-12, span, 1), 0.5)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[i]
    return out


def mosaic_figure(maps: np.ndarray, ncols: int, **options) -> go.Figure:
    """`mosaic_spec` as a (validated) go.Figure."""
    return go.Figure(mosaic_spec(maps, ncols, **options))


def mosaic_spec(maps: np.ndarray, ncols: int, *, labels: Sequence[str] | None = None,
                marked: Sequence[int] = (), cmap: str = "gray", height: int = 420,
                title: str | None = None, normalize: bool = True, pickable: bool = False,
                hover_names: Sequence[str] | None = None, mark_color: str = "#ff1744",
                highlight: int | None = None, uri: str | None = None, row_labels: Sequence[str] = (),
                col_labels: Sequence[str] = ()) -> Spec:
    """A grid of small maps drawn as one image: channels of a block, or heads x blocks (a figure spec:
    app/figures.py).

    `marked` tiles get a red frame (e.g. invalid channels), `highlight` a thick yellow one;
    `pickable` overlays a transparent scatter of tile centres whose customdata is the tile index.
    `uri` is the already encoded mosaic image (see `mosaic_uri`), to skip re-encoding on reruns.
    `row_labels` / `col_labels` are written left of the rows / above the columns.
    """
    n, h, w = maps.shape
    nrows = -(-n // ncols)
    size = (nrows * (h + 1) - 1, ncols * (w + 1) - 1)
    spec = image_spec(uri or mosaic_uri(maps, ncols, normalize, cmap), size, height, title,
                      pixel=1 / upscale_factor(size))

    def tile(i: int, grow: float = 0.0) -> Box:
        r, c = divmod(i, ncols)
        return (r * (h + 1) - grow, c * (w + 1) - grow, r * (h + 1) + h + grow, c * (w + 1) + w + grow)

    if marked:
        add_boxes(spec, [tile(i) for i in marked], mark_color, width=2.5, name="marked")
    if highlight is not None:
        add_boxes(spec, [tile(highlight, 0.5)], "#ffd600", width=4, name="highlight")
    annotations = []
    for i, text in enumerate(labels or []):
        if not text:
            continue
        r, c = divmod(i, ncols)
        annotations.append({"x": c * (w + 1) + 0.3, "y": r * (h + 1) + 0.3, "text": text, "showarrow": False,
                            "xanchor": "left", "yanchor": "top", "font": {"size": 14, "color": "#ffd600"},
                            "bgcolor": "rgba(0,0,0,0.5)"})
    for r, text in enumerate(row_labels):
        annotations.append({"x": -0.5, "y": r * (h + 1) + h / 2, "text": text, "showarrow": False,
                            "xanchor": "right", "font": {"size": 14}})
    for c, text in enumerate(col_labels):
        annotations.append({"x": c * (w + 1) + w / 2, "y": -0.5, "text": text, "showarrow": False,
                            "yanchor": "bottom", "font": {"size": 14}})
    if row_labels or col_labels:  # annotations outside the axis ranges are hidden: widen the ranges
        merge_layout(spec, {"xaxis": {"range": [-1.4 * w if row_labels else 0, size[1]]},
                            "yaxis": {"range": [size[0], -0.6 * h if col_labels else 0]}})
    if pickable:
        idx = np.arange(n)
        rr, cc = np.divmod(idx, ncols)
        names = list(hover_names) if hover_names else [str(i) for i in idx]
        add_trace(spec, {
            "type": "scatter", "x": cc * (w + 1) + w / 2, "y": rr * (h + 1) + h / 2, "mode": "markers",
            "marker": {"size": max(10.0, 0.8 * height / nrows), "color": "rgba(255,255,255,0.01)",
                       "symbol": "square"},
            "selected": {"marker": {"color": "rgba(255,255,255,0.01)"}}, "unselected": {"marker": {"opacity": 1}},
            "customdata": np.stack([idx, idx], axis=-1), "text": names, "hovertemplate": "%{text}<extra></extra>",
        })
    if annotations:  # plotly leaves out an empty list
        merge_layout(spec, {"annotations": annotations})
    return spec


def mosaic_uri(maps: np.ndarray, ncols: int, normalize: bool = True, cmap: str = "gray") -> str:
    """The PNG data URI of `mosaic(maps)` through a colormap, enlarged for crisp tiles."""
    grid = mosaic(maps, ncols, normalize)
    lo, hi = (0.0, 1.0) if normalize else (float(np.nanmin(grid)), float(np.nanmax(grid)))
    return png_uri(upscale(colorize(grid, cmap, lo, hi)))


# ----------------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------------


def topk_figure(pairs: Sequence[tuple[str, float]], title: str, color: str, height: int = 300) -> go.Figure:
    """Horizontal bars of (class name, probability), the most likely on top."""
    names = [n for n, _ in pairs][::-1]
    probs = [p for _, p in pairs][::-1]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=color,
                           text=[f"{p:.1%}" for p in probs], textposition="auto",
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 0, "r": 10, "t": 40, "b": 70}, title={"text": title, "font": FONT},
                      xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability", **GRID},
                      yaxis={"automargin": True}, font=FONT, **CHART)
    return fig


def depth_figure(series: dict[str, tuple[np.ndarray, str]], title: str, ytitle: str, height: int = 380,
                 relative: bool = True, yrange: tuple[float, float] | None = None) -> go.Figure:
    """Lines of a metric across depth, one per model: {label: (values (L,), colour)}.

    With `relative`, x is the block's relative depth (block / (L - 1)) so a 7-block and a 12-block
    model line up; the hover still names the block.
    """
    fig = go.Figure()
    for label, (values, color) in series.items():
        n = len(values)
        x = np.arange(n) / max(n - 1, 1) if relative else np.arange(n)
        fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=label, line={"color": color, "width": 3},
                                 customdata=np.arange(n),
                                 hovertemplate="block %{customdata}: %{y:.3g}<extra>" + label + "</extra>"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 110}, title={"text": title, "font": FONT},
                      xaxis={"title": "relative depth (first block → last)" if relative else "block", **GRID},
                      yaxis={"title": ytitle, "range": list(yrange) if yrange else None, **GRID},
                      legend=BOTTOM_LEGEND, font=FONT, **CHART)
    return fig


def head_scatter(values: dict[str, tuple[np.ndarray, str]], title: str, ytitle: str, height: int = 400,
                 highlight: tuple[str, int, int] | None = None) -> go.Figure:
    """One dot per head and block, per model: {label: ((L, H) values, colour)}; x = relative depth."""
    fig = go.Figure()
    for label, (vals, color) in values.items():
        nb, nh = vals.shape
        blocks = np.repeat(np.arange(nb), nh)
        heads = np.tile(np.arange(nh), nb)
        x = blocks / max(nb - 1, 1)
        fig.add_trace(go.Scatter(x=x, y=vals.ravel(), mode="markers", name=label,
                                 marker={"color": color, "size": 9, "opacity": 0.75},
                                 customdata=np.stack([blocks, heads], axis=-1),
                                 hovertemplate="block %{customdata[0]}, head %{customdata[1]}: %{y:.3g}<extra>"
                                 + label + "</extra>"))
        if highlight and highlight[0] == label:
            b, h = highlight[1], highlight[2]
            fig.add_trace(go.Scatter(x=[b / max(nb - 1, 1)], y=[vals[b, h]], mode="markers", showlegend=False,
                                     marker={"color": "rgba(0,0,0,0)", "size": 18, "line": {"color": "black",
                                                                                          "width": 3}},
                                     hoverinfo="skip"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 110}, title={"text": title, "font": FONT},
                      xaxis={"title": "relative depth (first block → last)", **GRID}, yaxis={"title": ytitle, **GRID},
                      legend=BOTTOM_LEGEND, font=FONT, **CHART)
    return fig


def matrix_figure(values: np.ndarray, xtitle: str, ytitle: str, title: str, height: int = 420,
                  zmin: float = 0.0, zmax: float = 1.0) -> go.Figure:
    """A labelled matrix (rows = y blocks, columns = x blocks), e.g. CKA; blocks numbered from 0 as elsewhere."""
    ny, nx = values.shape
    fig = go.Figure(go.Heatmap(z=values, x=np.arange(nx), y=np.arange(ny), colorscale=scale("Viridis"),
                               zmin=zmin, zmax=zmax, colorbar={"title": {"text": "CKA", "side": "right"}},
                               hovertemplate=f"{ytitle} %{{y}}, {xtitle} %{{x}}: %{{z:.2f}}<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 40, "b": 40}, title={"text": title, "font": FONT},
                      xaxis={"title": xtitle, "dtick": 1, "automargin": True},
                      yaxis={"title": ytitle, "dtick": 1, "autorange": "reversed", "automargin": True},
                      font=FONT, **CHART)
    return fig


def strip_figure(maps: Sequence[np.ndarray], titles: Sequence[str], height: int = 260,
                 colorscale: str = "Inferno") -> go.Figure:
    """Maps of different resolutions side by side, each in its own square panel (one figure)."""
    n = len(maps)
    gap = 0.02
    width = (1 - gap * (n - 1)) / n
    fig = go.Figure()
    layout: dict = {}
    annotations = []
    for i, (m, t) in enumerate(zip(maps, titles, strict=True)):
        ax = "" if i == 0 else str(i + 1)
        fig.add_trace(go.Heatmap(z=m, colorscale=scale(colorscale), showscale=False, xaxis=f"x{ax}", yaxis=f"y{ax}",
                                 hovertemplate="%{z:.3g}<extra></extra>"))
        x0 = i * (width + gap)
        layout[f"xaxis{ax}"] = {"domain": [x0, x0 + width], "visible": False, "constrain": "domain"}
        layout[f"yaxis{ax}"] = {"visible": False, "autorange": "reversed", "scaleanchor": f"x{ax}",
                                "constrain": "domain"}
        annotations.append({"x": x0 + width / 2, "y": 1.0, "xref": "paper", "yref": "paper", "text": wrap(t, 12),
                            "showarrow": False, "xanchor": "center", "yanchor": "bottom", "font": {"size": 14}})
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 80, "b": 0}, annotations=annotations,
                      showlegend=False, font=FONT, **layout)
    return fig


# ----------------------------------------------------------------------------------------------
# Knock-outs and sanity checks (issue 23)
# ----------------------------------------------------------------------------------------------


def head_grid_figure(values: np.ndarray | None, shape: tuple[int, int], out: Sequence[tuple[int, int]], title: str,
                     colorbar: str = "", height: int = 340, pickable: bool = False) -> go.Figure:
    """A blocks (rows) x heads (columns) grid: `values` (L, H) as a heat map (None: a plain grid), the
    heads in `out` crossed; with `pickable`, a transparent scatter of the cells whose customdata is
    (block, head), for clicking (plotly heat map cells fire no selection events)."""
    nb, nh = shape
    blocks, heads = np.divmod(np.arange(nb * nh), nh)
    knocked = {(int(b), int(h)) for b, h in out}
    is_out = np.array([(b, h) in knocked for b, h in zip(blocks, heads, strict=True)]).reshape(nb, nh)
    z = values if values is not None else is_out.astype(float)
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(nh), y=np.arange(nb), zmid=0 if values is not None else None,
        colorscale=scale("RdBu_r") if values is not None else [(0, "rgb(225, 232, 240)"), (1, "rgb(120, 20, 20)")],
        showscale=values is not None, colorbar={"title": {"text": colorbar, "side": "right"}, "thickness": 12},
        xgap=2, ygap=2, hoverinfo="skip"))
    if knocked:
        kb, kh = zip(*sorted(knocked), strict=True)
        fig.add_trace(go.Scatter(x=list(kh), y=list(kb), mode="markers", name="out", hoverinfo="skip",
                                 marker={"symbol": "x-thin", "size": 22, "line": {"width": 3, "color": "black"}}))
    text = [f"block {b}, head {h}" + (" (knocked out)" if is_out[b, h] else "")
            + ("" if values is None else f": {values[b, h]:+.3f}") for b, h in zip(blocks, heads, strict=True)]
    fig.add_trace(go.Scatter(
        x=heads, y=blocks, mode="markers", name="pick", text=text, hovertemplate="%{text}<extra></extra>",
        marker={"size": max(12.0, 0.8 * (height - 80) / nb), "color": "rgba(255,255,255,0.01)", "symbol": "square"},
        selected={"marker": {"color": "rgba(255,255,255,0.01)"}}, unselected={"marker": {"opacity": 1}},
        customdata=np.stack([blocks, heads], axis=-1), hoverinfo=None if pickable else "skip"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 40}, title={"text": title, "font": FONT},
                      xaxis={"title": "head", "dtick": 1, "range": [-0.5, nh - 0.5], "automargin": True},
                      # block 0 on top; automargin: the block numbers need room the 10 px margin lacks
                      yaxis={"title": "block", "dtick": 1, "range": [nb - 0.5, -0.5], "automargin": True},
                      showlegend=False, font=FONT, **CHART)
    return fig


def pruning_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]],
                   title: str, height: int = 380) -> go.Figure:
    """Accuracy as heads are knocked out, least important first, one line and bootstrap band per model:
    {label: (fraction of heads removed (K,), accuracy, low, high (K,), colour)}."""
    fig = go.Figure()
    for label, (x, acc, lo, hi, color) in curves.items():
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                                 fillcolor=color, opacity=0.18, line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, name=f"{label} 95% interval"))
        fig.add_trace(go.Scatter(x=x, y=acc, mode="lines+markers", name=label, line={"color": color, "width": 3},
                                 hovertemplate="%{x:.0%} of the heads out: accuracy %{y:.1%}<extra>" + label
                                 + "</extra>"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 110}, title={"text": title, "font": FONT},
                      xaxis={"title": "share of the heads knocked out (least important first)", "tickformat": ".0%",
                             **GRID},
                      yaxis={"title": "accuracy", "tickformat": ".0%", "range": [0, 1.02], **GRID},
                      legend=BOTTOM_LEGEND, font=FONT, **CHART)
    return fig


SANITY_METRICS = {"spearman_abs": ("|Spearman| (of |map|)", "#d62728"), "spearman": ("Spearman", "#1f77b4"),
                  "ssim": ("SSIM", "#2ca02c")}


def sanity_figure(curve: dict[str, object], title: str, threshold: float, height: int = 460) -> go.Figure:
    """Similarity to the intact model's map as layers are re-initialised from the head down (x: what
    was re-initialised last), one line per metric, and the verdict's threshold as a dotted line."""
    layers = list(curve["layers"])  # type: ignore[call-overload]
    fig = go.Figure()
    for key, (label, color) in SANITY_METRICS.items():
        fig.add_trace(go.Scatter(x=layers, y=np.asarray(curve[key], dtype=float), mode="lines+markers", name=label,
                                 line={"color": color, "width": 2.5},
                                 hovertemplate="%{x}: %{y:.2f}<extra>" + label + "</extra>"))
    fig.add_hline(y=threshold, line={"dash": "dot", "color": "#555555"})
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 120}, title={"text": title, "font": FONT},
                      xaxis={"title": "re-initialised down to", "tickangle": -45, **GRID},
                      yaxis={"title": "similarity", "range": [-1.05, 1.05], **GRID},
                      legend=BOTTOM_LEGEND, font=FONT, **CHART)
    return fig
