"""Plotly figures of images and token grids, and what they are drawn with (no Streamlit calls).

Owns: the style (colours, fonts, `scale` for colour scales), encoding pixels for the browser
(`png_uri`, `colorize`, `upscale`, overlays, and their cached versions), `image_figure` and what is
drawn over an image (heat maps of a token grid, boxes, the chosen token's ring, grid lines, the
transparent token picker), and the geometry of grids (`cell_box`, `neighbours`, `scaled_index`).

Coordinates: an image of H x W pixels is drawn so that pixel (y, x) covers [x, x + 1] x [y, y + 1],
y pointing down; a token grid of h x w cells is stretched over the same extent, cell (r, c)
covering [c W / w, (c + 1) W / w] x [r H / h, (r + 1) H / h]. Receptive-field boxes
(top, left, bottom, right), bottom/right exclusive, are drawn as they are.

May import: app.jobs (`memo`: encoded images live in the byte cache), plotly, numpy, PIL,
matplotlib. Not app.compute or anything above (figures take arrays, not models).
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from torch import Tensor

from app.jobs import memo

Box = tuple[int, int, int, int]  # top, left, bottom, right (pixels, bottom/right exclusive)


PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4")
T2T_COLOUR = "#d62728"
VIT_COLOUR = "#1f77b4"
CHOSEN = "#ff1744"
NEIGHBOUR = "#00e5ff"
FONT = {"size": 15}
GRID = {"gridcolor": "#e6e6e6", "zerolinecolor": "#cccccc", "automargin": True}
CHART = {"plot_bgcolor": "white", "paper_bgcolor": "white"}
# the legend under the x-axis title, at the bottom of the figure (the bottom margin keeps room for two rows)
BOTTOM_LEGEND = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0}
TITLE_CHARS = 44  # a 15 px title line this long fits a half-width figure at 1280 px


@functools.cache
def scale(name: str) -> tuple[tuple[float, str], ...]:
    """A plotly colour scale by name, with every colour written as rgb(r, g, b).

    Streamlit's plotly template marks theme colours with placeholder hex codes (#000001, #000002,
    ...) and its frontend swaps every such code in a figure for a theme colour, so Inferno's first
    stop, #000004, would turn lavender; rgb() strings are left alone.
    """
    from plotly.colors import get_colorscale, hex_to_rgb

    return tuple((float(p), "rgb({}, {}, {})".format(*hex_to_rgb(c)) if c.startswith("#") else c)
                 for p, c in get_colorscale(name))


def presentation(fig: go.Figure, factor: float = 1.3) -> None:
    """Presentation mode: every text of a figure and its height `factor` times larger."""
    fig.update_layout(font_size=round((fig.layout.font.size or 12) * factor),
                      height=round((fig.layout.height or 420) * factor))
    if fig.layout.title.text:
        fig.update_layout(title_font_size=round((fig.layout.title.font.size or FONT["size"]) * factor))
    for note in fig.layout.annotations or ():
        note.font.size = round((note.font.size or FONT["size"]) * factor)
    margin = fig.layout.margin  # room kept for legends and axis titles grows with their text
    fig.update_layout(margin={side: round(getattr(margin, side) * factor) for side in "tblr"
                              if getattr(margin, side) is not None})


def png_config(filename: str) -> dict:
    """Plotly config: a toolbar with only the PNG download (always shown), no scroll or double-click zoom."""
    return {
        "displayModeBar": True, "displaylogo": False, "scrollZoom": False, "doubleClick": False,
        "modeBarButtonsToRemove": ["zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d",
                                   "autoScale2d", "resetScale2d", "toggleSpikelines", "hoverClosestCartesian",
                                   "hoverCompareCartesian", "zoom", "pan", "resetViews"],
        "toImageButtonOptions": {"format": "png", "filename": re.sub(r"[^A-Za-z0-9_-]+", "_", filename)[:80],
                                 "scale": 2},
    }


def png_uri(image: np.ndarray | Image.Image) -> str:
    """A data URI of a PNG, for go.Image: far smaller than sending the pixels as JSON numbers."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@memo  # in the per-image cache, under its budget in bytes
def cached_png_uri(key: str, _image: np.ndarray) -> str:
    """`png_uri` remembered by a caller's key (e.g. model + image), so reruns do not re-encode."""
    return png_uri(_image)


def image_figure(uri: str | None, size: tuple[int, int], height: int = 420, title: str | None = None,
                 pixel: float = 1.0) -> go.Figure:
    """A figure showing an image (data URI) over an extent of `size` (H, W) units, hidden axes, y down.

    `pixel` is the size of one PNG pixel in those units (1 / factor for an enlarged image).
    """
    h, w = size
    data = [go.Image(source=uri, x0=pixel / 2, y0=pixel / 2, dx=pixel, dy=pixel, hoverinfo="skip")] if uri else []
    fig = go.Figure(data=data)
    fig.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 36 if title else 4, "b": 0},
        title={"text": title, "font": FONT, "x": 0.01, "y": 0.99} if title else None,
        xaxis={"range": [0, w], "visible": False, "constrain": "domain"},
        yaxis={"range": [h, 0], "visible": False, "scaleanchor": "x", "constrain": "domain"},
        showlegend=False,
        plot_bgcolor="rgba(0,0,0,0)",
        font=FONT,
    )
    return fig


def add_grid_heatmap(fig: go.Figure, values: np.ndarray, extent: tuple[int, int], *, colorscale: str = "Inferno",
                     opacity: float = 0.6, zmin: float | None = None, zmax: float | None = None,
                     showscale: bool = True, colorbar_title: str = "", hover: str = "%{z:.3g}") -> go.Figure:
    """Overlay an (h, w) grid of values stretched over an image extent (H, W)."""
    gh, gw = values.shape
    dy, dx = extent[0] / gh, extent[1] / gw
    fig.add_trace(go.Heatmap(
        z=values, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, opacity=opacity, colorscale=scale(colorscale), zmin=zmin,
        zmax=zmax,
        showscale=showscale, hovertemplate=hover + "<extra></extra>",
        colorbar={"title": {"text": colorbar_title, "side": "right"}, "thickness": 12, "len": 0.8}
        if showscale else None,
    ))
    return fig


def add_log_heatmap(fig: go.Figure, ratio: np.ndarray, extent: tuple[int, int], unit: str,
                    floor: float = 1e-2, opacity: float = 0.75) -> go.Figure:
    """Overlay positive values (e.g. attention relative to uniform) on a log10 colour scale.

    Attention is often very peaked: on a linear scale a few tokens take the whole range and the rest
    look alike. Values below `floor` share the lowest colour; ticks read 0.01×, 0.1×, 1×, 10×, ...
    """
    z = np.log10(np.maximum(ratio, floor))
    top = max(1.0, float(np.ceil(z.max())))
    ticks = np.arange(np.log10(floor), top + 1e-9)
    gh, gw = ratio.shape
    dy, dx = extent[0] / gh, extent[1] / gw
    fig.add_trace(go.Heatmap(
        z=z, customdata=ratio, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, opacity=opacity, colorscale=scale("Inferno"),
        zmin=float(np.log10(floor)), zmax=top, hovertemplate="%{customdata:.3g}" + unit + "<extra></extra>",
        colorbar={"title": {"text": unit, "side": "right"}, "thickness": 12, "len": 0.8, "tickvals": ticks,
                  "ticktext": [f"{10 ** t:g}×" for t in ticks]},
    ))
    return fig


def add_token_picker(fig: go.Figure, grid: tuple[int, int], extent: tuple[int, int], label: str = "token",
                     height: int = 420) -> go.Figure:
    """A transparent scatter of the token centres of a (h, w) grid: clicking one selects it.

    Each point's customdata is (row, col) on that grid; hover shows it with the flat index.
    `maxdisplayed: 1` draws one marker instead of all (3136 SVG paths on the 56 x 56 grid took
    ~0.3 s of the browser's main thread on each redraw): plotly finds the clicked point among all
    of its data (hover, then click-to-select), drawn or not, so every cell stays clickable.
    """
    gh, gw = grid
    rows, cols = np.mgrid[0:gh, 0:gw]
    dy, dx = extent[0] / gh, extent[1] / gw
    size = max(5.0, 0.9 * height / max(gh, gw))
    fig.add_trace(go.Scatter(
        x=((cols + 0.5) * dx).ravel(), y=((rows + 0.5) * dy).ravel(), mode="markers",
        marker={"size": size, "color": "rgba(255,255,255,0.01)", "symbol": "square", "maxdisplayed": 1},
        selected={"marker": {"color": "rgba(255,255,255,0.01)"}},
        unselected={"marker": {"opacity": 1}},
        customdata=np.stack([rows.ravel(), cols.ravel(), (rows * gw + cols).ravel()], axis=-1),
        hovertemplate=f"{label} (row %{{customdata[0]}}, col %{{customdata[1]}}) = #%{{customdata[2]}}<extra></extra>",
        name="pick",
    ))
    return fig


def add_boxes(fig: go.Figure, boxes: Sequence[Box], color: str, width: float = 2.0, dash: str | None = None,
              name: str = "boxes") -> go.Figure:
    """Rectangles (top, left, bottom, right) in image coordinates, as one line trace named `name`.

    One trace with None between rectangles, not layout shapes: plotly validates every shape on each
    update, which made a figure with a dozen boxes cost a tenth of a second to build.
    """
    xs: list[float | None] = []
    ys: list[float | None] = []
    for top, left, bottom, right in boxes:
        xs += [left, right, right, left, left, None]
        ys += [top, top, bottom, bottom, top, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip", showlegend=False,
                             line={"color": color, "width": width, "dash": dash or "solid"}))
    return fig


def add_chosen(fig: go.Figure, box: Box, extent: tuple[int, int], height: int, color: str = CHOSEN,
               name: str = "chosen") -> go.Figure:
    """The chosen window or token: a thick box on a white halo, and a ring when the box is small on screen.

    A 7 px window of a 224 px image is ~13 px on a 420 px figure, too small to find at a glance from
    the back of a room; the ring (trace `name` + "_ring", at least 46 px across) marks its place.
    `extent` (H, W) and `height` (figure pixels) give the box's size on screen.
    """
    add_boxes(fig, [box], "white", width=7, name=name + "_halo")
    add_boxes(fig, [box], color, width=4, name=name)
    top, left, bottom, right = box
    on_screen = max(bottom - top, right - left) * height / max(extent)
    if on_screen < 48:
        fig.add_trace(go.Scatter(x=[(left + right) / 2], y=[(top + bottom) / 2], mode="markers", name=name + "_ring",
                                 hoverinfo="skip", showlegend=False,
                                 marker={"symbol": "circle-open", "size": max(46.0, 2.2 * on_screen),
                                         "color": color, "line": {"width": 4, "color": color}}))
    return fig


def add_grid_lines(fig: go.Figure, grid: tuple[int, int], extent: tuple[int, int], color: str = "white",
                   width: float = 1.0) -> go.Figure:
    """The lines of a (h, w) grid over an image extent, as one line trace (fast for many lines)."""
    gh, gw = grid
    xs: list[float | None] = []
    ys: list[float | None] = []
    for r in range(gh + 1):
        y = r * extent[0] / gh
        xs += [0, extent[1], None]
        ys += [y, y, None]
    for c in range(gw + 1):
        x = c * extent[1] / gw
        xs += [x, x, None]
        ys += [0, extent[0], None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": width}, hoverinfo="skip"))
    return fig


def cell_box(row: int, col: int, grid: tuple[int, int], extent: tuple[int, int]) -> Box:
    """The box a grid cell covers when the grid is stretched over the extent."""
    dy, dx = extent[0] / grid[0], extent[1] / grid[1]
    return int(row * dy), int(col * dx), int((row + 1) * dy), int((col + 1) * dx)


def neighbours(row: int, col: int, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The up to 8 cells around (row, col), clipped to the grid."""
    return [(r, c) for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)
            if (r, c) != (row, col) and 0 <= r < grid[0] and 0 <= c < grid[1]]


def scaled_index(index: int, size_from: int, size_to: int) -> int:
    """The cell of a `size_to` grid under cell `index` of a `size_from` grid covering the same image."""
    return min(size_to - 1, index * size_to // size_from)


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def colorize(values: np.ndarray, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0,
             nan_color: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8 through a matplotlib colormap; NaN gets `nan_color`."""
    from matplotlib import colormaps

    scaled = (values - vmin) / max(vmax - vmin, 1e-12)
    rgb = colormaps[cmap](np.nan_to_num(np.clip(scaled, 0, 1)), bytes=True)[..., :3]
    rgb[np.isnan(values)] = nan_color
    return rgb


def upscale_factor(size: tuple[int, ...], target: int = 480) -> int:
    """The integer enlargement that brings the longer side of `size` near `target` pixels."""
    return max(1, target // max(size[:2]))


def upscale(rgb: np.ndarray, target: int = 480) -> np.ndarray:
    """Nearest-neighbour enlargement by `upscale_factor`.

    Browsers smooth small images when they scale them up; enlarging first keeps cells crisp.
    """
    factor = upscale_factor(rgb.shape, target)
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


@memo
def cached_overlay_uri(key: str, _image: np.ndarray, _heat: Callable[[], np.ndarray]) -> str:
    """`overlay_uri` remembered by a caller's key (model + image + map), so reruns do not redo it;
    `_heat()` gives the (S, S) map in [0, 1] and is only called on a miss."""
    return overlay_uri(_image, _heat())


def overlay_uri(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55, cmap: str = "jet") -> str:
    """PNG data URI of an (S, S, 3) image blended with an (S, S) map in [0, 1] through a colormap."""
    rgb = colorize(heat, cmap).astype(np.float32)
    a = alpha * np.clip(heat, 0, 1)[..., None] ** 0.5  # faint where the map is low, so the image shows
    out = image.astype(np.float32) * (1 - a) + rgb * a
    return png_uri(np.clip(out, 0, 255).astype(np.uint8))


def wrap(text: str, width: int) -> str:
    """Words joined into lines of at most ~`width` characters, with plotly's <br> between lines."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)
