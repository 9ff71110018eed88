"""Lessons to take home: a guided tour (app/tours.py) written as one self-contained HTML file.

    python -m app.export --tour paper --out lesson.html [--t2t NAME] [--t2t-weights SOURCE] [--vit NAME]
                         [--vit-weights SOURCE] [--image shape:triangle:0 | photo:cat | FILE] [--device cpu]

Every step: its title, its text with the fields computed for the export's models and image, and its
figures, interactive (plotly.js inlined once in the head, each figure a div drawn by it), images as
data: URIs. The file opens from disk with no server and no network. The tour bar's "Lesson to take
home" button writes the same file for the session's models and image (`lesson_bytes`).

Owns: `lesson_html` (a tour and a `Context` -> the page), `lesson_bytes`, the figures of a step
(`FIGURES`: a page's figure key -> a builder; each draws what the page draws, with app/figures.py and
app/charts.py on the cached values of app/compute.py, app/explanations.py and app/knockouts.py, or with
app/mechanisms.py's and app/sandbox.py's own figures (the sandbox's view of a step: `sandbox.page_view`);
`PAIRS`: the figure shown beside it; `PAGE_FIGURES`: what a step without a known `look_at` shows;
`NOT_IN_LESSONS`: the pages' figures it does not draw, and why), the Explanations page's LRP overlay and
journey strip (`lrp_overlay_uri`, `signed_scale`, `journey_figure`: drawn the same way by the page and the
lesson), `markdown_html` (the Markdown the step texts are written in) and the command line (`main`, with
`model_for` / `image_for`).

May import: app.tours, app.links, app.widgets, app.charts, app.figures, app.compute, app.explanations,
app.knockouts, app.mechanisms, app.sandbox, app.models, app.images, app.access, plotly, einops, torch, t2t, analysis.
"""

from __future__ import annotations

import argparse
import datetime
import html
import re
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import plotly.graph_objects as go
from einops import reduce
from streamlit import logger as streamlit_logger
from torch import Tensor

import t2t
from app import charts, figures, links, tours, widgets
from app.compute import Context
from app.tours import StepView, Tour
from t2t.images import ImageError

# ----------------------------------------------------------------------------------------------
# The figures of a step, as the pages draw them
# ----------------------------------------------------------------------------------------------

Builder = Callable[[StepView], go.Figure | None]


class _Tokens:
    """What the Tokens-to-Token page computes before its figures: the trace, grids, the chosen token."""

    def __init__(self, v: StepView):
        ctx = v.ctx
        self.v, self.lm, self.vm = v, ctx.t2t, ctx.vit
        self.tr, self.vtr, self.model = v.tr, v.vtr, ctx.t2t.model
        self.size = tuple(self.tr.image_size)
        self.g0, self.g1, self.g2 = (self.tr.grid(f"t2t.split{i}") for i in range(3))
        self.vgrid = self.vtr.grid("patch_embed")
        self.img = ctx.display_image(self.lm)
        self.uri = figures.cached_png_uri(f"{self.lm.key}|{ctx.image.key}", self.img)
        self.r0, self.c0 = v.token

    def at(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The chosen token on another grid (page 1's scaled index)."""
        return (figures.scaled_index(self.r0, self.g0[0], grid[0]), figures.scaled_index(self.c0, self.g0[1], grid[1]))

    def fields(self, stage: str, grid: tuple[int, int], rc: tuple[int, int]):
        chosen = t2t.receptive_field(self.model, stage, rc, self.size)
        return chosen, [t2t.receptive_field(self.model, stage, n, self.size) for n in figures.neighbours(*rc, grid)]

    def overlap(self, stage: str, grid: tuple[int, int]) -> int:
        r, c = grid[0] // 2, grid[1] // 2
        a = t2t.receptive_field(self.model, stage, (r, c), self.size)
        b = t2t.receptive_field(self.model, stage, (r, c + 1), self.size)
        return max(0, a[3] - b[1])

    def window(self, stage: str, grid: tuple[int, int], title: str) -> go.Figure:
        rc = self.at(grid)
        chosen, near = self.fields(stage, grid, rc)
        fig = figures.image_figure(self.uri, self.size, title=title)
        figures.add_boxes(fig, near, figures.NEIGHBOUR, width=1.5, dash="dot", name="neighbours")
        figures.add_chosen(fig, chosen, self.size, 420)
        return figures.add_token_picker(fig, grid, self.size)

    def zoom(self) -> go.Figure:
        rc = self.at(self.g0)
        chosen, near = self.fields("t2t.split0", self.g0, rc)
        boxes = [chosen, *near]
        top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
        bottom, right = max(b[2] for b in boxes), max(b[3] for b in boxes)
        cover = np.zeros((bottom - top, right - left), dtype=np.float32)
        for t, lf, b, rt in boxes:
            cover[t - top:b - top, lf - left:rt - left] += 1
        crop = figures.upscale(np.ascontiguousarray(self.img[top:bottom, left:right]))
        fig = figures.image_figure(figures.png_uri(crop), cover.shape, title="Zoomed in: green = pixels shared by "
                                   "windows", pixel=cover.shape[0] / crop.shape[0])
        figures.add_grid_heatmap(fig, cover, cover.shape, colorscale="Greens", opacity=0.35, zmin=0, zmax=4,
                                 colorbar_title="windows", hover="this pixel is in %{z} of the 9 windows")
        shift = [(t - top, lf - left, b - top, rt - left) for t, lf, b, rt in boxes]
        figures.add_boxes(fig, shift[1:], figures.NEIGHBOUR, width=1.5, dash="dot")
        figures.add_chosen(fig, shift[0], cover.shape, 420)
        return fig

    def attention(self, level: int) -> go.Figure:
        grid = self.g0 if level == 1 else self.g1
        rc = self.at(grid)
        index = rc[0] * grid[1] + rc[1]
        row = figures.to_numpy(self.tr.attention_rows(f"t2t.attn{level}_map", [index])[0, 0, 0]).reshape(grid)
        fig = figures.image_figure(self.uri, self.size, title="Attention of the chosen token (green box)")
        figures.add_log_heatmap(fig, row * row.size, self.size, "× uniform", floor=1e-3)
        figures.add_chosen(fig, figures.cell_box(*rc, grid, self.size), self.size, 420, color="#00e676")
        return figures.add_token_picker(fig, grid, self.size)

    def map_window(self, level: int) -> go.Figure:
        name, grid_in, grid_out = ("t2t.attn1", self.g0, self.g1) if level == 1 else ("t2t.attn2", self.g1, self.g2)
        rc = self.at(grid_out)
        norm = np.linalg.norm(figures.to_numpy(self.tr[name][0]), axis=1).reshape(grid_in)
        fig = figures.image_figure(None, self.size, title=f"{grid_in[0]}×{grid_in[1]} map → "
                                   f"{grid_out[0]}×{grid_out[1]} tokens")
        figures.add_grid_heatmap(fig, norm, self.size, colorscale="Viridis", opacity=1.0, showscale=False,
                                 hover="token norm %{z:.3g}")
        cell = (self.size[0] / grid_in[0], self.size[1] / grid_in[1])
        split = getattr(self.model.tokens_to_token, f"soft_split{level}")
        k, s, p = split.kernel, split.stride, split.padding

        def window(r: int, c: int) -> figures.Box:  # k x k cells, stride s, padding p, in image units
            top, lf = max(0, s * r - p), max(0, s * c - p)
            bottom, rt = min(grid_in[0], s * r - p + k), min(grid_in[1], s * c - p + k)
            return int(top * cell[0]), int(lf * cell[1]), int(bottom * cell[0]), int(rt * cell[1])

        figures.add_boxes(fig, [window(*n) for n in figures.neighbours(*rc, grid_out)], figures.NEIGHBOUR,
                          width=1.5, dash="dot")
        figures.add_chosen(fig, window(*rc), self.size, 420)
        return figures.add_token_picker(fig, grid_out, self.size)

    def vit_grid(self) -> go.Figure:
        p = self.vm.model.patch_embed.patch_size
        vr, vc = self.at(self.vgrid)
        fig = figures.image_figure(self.uri if self.vm.img_size == self.lm.img_size else None, self.size,
                                   title=f"ViT: {self.vgrid[0] * self.vgrid[1]} hard {p}×{p} patches")
        figures.add_grid_lines(fig, self.vgrid, self.size, color="rgba(255,255,255,0.7)")
        near = [figures.cell_box(*n, self.vgrid, self.size) for n in figures.neighbours(vr, vc, self.vgrid)]
        figures.add_boxes(fig, near, figures.NEIGHBOUR, width=1.5, dash="dot")
        figures.add_chosen(fig, figures.cell_box(vr, vc, self.vgrid, self.size), self.size, 420)
        return figures.add_token_picker(fig, self.vgrid, self.size)

    def mosaic(self, name: str, vit: bool, title: str) -> go.Figure:
        trace, grid = (self.vtr, self.vgrid) if vit else (self.tr, self.tr.grid(name))
        maps = figures.to_numpy(trace[name][0])[:, :64].T.reshape(-1, *grid)
        ncols = int(np.ceil(np.sqrt(len(maps))))
        return charts.mosaic_figure(maps, ncols, title=title)


def _tokens_builders() -> dict[str, Builder]:
    def t(fn: Callable[[_Tokens], go.Figure]) -> Builder:
        return lambda v: fn(_Tokens(v))

    n = _cells
    return {
        "pick_split0": t(lambda p: p.window("t2t.split0", p.g0, "Red: window of the chosen token; blue: its 8 "
                                            "neighbours")),
        "zoom_split0": t(lambda p: p.zoom()),
        "pick_attn1": t(lambda p: p.attention(1)),
        "pick_attn2": t(lambda p: p.attention(2)),
        "mosaic_attn1": t(lambda p: p.mosaic("t2t.attn1", False, f"t2t.attn1 as a 2-D map: 64 channels, "
                                             f"{p.g0[0]}×{p.g0[1]}")),
        "mosaic_attn2": t(lambda p: p.mosaic("t2t.attn2", False, f"t2t.attn2 as a 2-D map: 64 channels, "
                                             f"{p.g1[0]}×{p.g1[1]}")),
        "pick_map1": t(lambda p: p.map_window(1)),
        "pick_map2": t(lambda p: p.map_window(2)),
        "pick_split1": t(lambda p: p.window("t2t.split1", p.g1, "The same windows in pixels")),
        "pick_split2": t(lambda p: p.window("t2t.split2", p.g2, "The same windows in pixels")),
        "pick_proj": t(lambda p: p.window("t2t.project", p.g2, f"T2T-ViT: {n(p.g2)} overlapping tokens")),
        "pick_vit": t(lambda p: p.vit_grid()),
        "mosaic_proj": t(lambda p: p.mosaic("t2t.project", False, "T2T-ViT tokens entering the backbone: "
                                            "64 channels")),
        "mosaic_vit": t(lambda p: p.mosaic("patch_embed", True, "ViT tokens entering the backbone: 64 channels")),
    }


def _cells(grid: tuple[int, int]) -> int:
    return int(grid[0]) * int(grid[1])


def _attention_map(v: StepView) -> go.Figure:
    """The Attention explorer's map: the step's query, block and head on the image (log scale)."""
    from analysis.maps import keep_mass
    from app.compute import query_attention

    lm, block, head, query = v.att_model, v.att_block, v.att_head, v.att_query
    tr = v.ctx.trace(lm)
    grid, size = tr.grid("blocks.0"), tuple(tr.image_size)
    maps, _ = query_attention(v.ctx, lm, query)
    shown = maps[block].mean(axis=0) if head == "mean" else maps[block, head]
    top60 = bool(v.state.get("att_top60"))
    if top60:
        shown = keep_mass(shown[None])[0]
    uri = figures.cached_png_uri(f"{lm.key}|{v.ctx.image.key}", v.ctx.display_image(lm))
    who = "the class token" if query == 0 else "token ({}, {})".format(*divmod(query - 1, grid[1]))
    what = "mean of heads" if head == "mean" else f"head {head}"
    fig = figures.image_figure(uri, size, title=f"{lm.name}: block {block}, {what}, query {who}")
    figures.add_log_heatmap(fig, shown * shown.size, size, "× uniform", floor=1e-2 if not top60 else 1e-1)
    if query:
        figures.add_chosen(fig, figures.cell_box(*divmod(query - 1, grid[1]), grid, size), size, 420, color="#00e676")
    return fig


def _attention_tiles(v: StepView) -> go.Figure:
    from app.compute import query_attention

    lm, block, head = v.att_model, v.att_block, v.att_head
    maps, _ = query_attention(v.ctx, lm, v.att_query)
    nb, nh = lm.num_blocks, lm.num_heads
    grid = maps.shape[-2:]
    return charts.mosaic_figure(maps.reshape(nb * nh, *grid), nh, cmap="inferno", title="Block (rows) × head (columns)",
                                row_labels=[f"block {b}" for b in range(nb)], col_labels=[f"h{h}" for h in range(nh)],
                                highlight=None if head == "mean" else block * nh + int(head), height=520)


def _head_chart(metric: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        from app.compute import attention_profile

        colours = {v.ctx.t2t.role: figures.T2T_COLOUR, v.ctx.vit.role: figures.VIT_COLOUR}
        profiles = {m.role: attention_profile(v.ctx, m) for m in v.ctx.models}
        mark = None if v.att_head == "mean" else (v.att_model.role, v.att_block, int(v.att_head))
        title, unit = {"distance": ("Mean attention distance per head", "pixels"),
                       "entropy": ("Attention entropy per head", "nats")}[metric]
        return charts.head_scatter({r: (p[metric], colours[r]) for r, p in profiles.items()}, title, unit,
                                   highlight=mark)
    return build


def lrp_overlay_uri(key: str, img: np.ndarray, relevance: Tensor) -> tuple[str, float]:
    """PNG data URI of the image (S, S, 3), in light grey, under a signed pixel relevance map (S, S): red for
    the class, blue against, transparent at 0 (matplotlib's "bwr", zennit's and LXT's heat map colours), and
    the |relevance| drawn at full colour: its 99.5th percentile, so a few hot pixels do not wash out the rest.
    Returns (uri, that percentile). The Explanations page's AttnLRP / CP-LRP overlay (moved here from
    app/views/3_explanations.py so that the lesson draws the same picture; cached under `key`)."""
    values = figures.to_numpy(relevance)
    top = max(float(np.quantile(np.abs(values), 0.995)), 1e-12)
    rgb = figures.colorize(values, "bwr", vmin=-top, vmax=top).astype(np.float32)
    grey = 0.6 * img.astype(np.float32).mean(axis=-1, keepdims=True) + 0.4 * 255
    alpha = 0.9 * np.clip(np.abs(values) / top, 0, 1)[..., None] ** 0.5  # faint near 0, so the image shows
    blend = np.clip(grey * (1 - alpha) + rgb * alpha, 0, 255).astype(np.uint8)
    return figures.cached_png_uri(key, blend), top


def signed_scale(m: Tensor) -> np.ndarray:
    """A signed map (h, w) scaled for a diverging colour scale on [0, 1]: 0.5 at 0, 0 / 1 at -+ its 99.5th
    percentile of |values| (clipped beyond). (Moved here from app/views/3_explanations.py.)"""
    values = figures.to_numpy(m)
    top = max(float(np.quantile(np.abs(values), 0.995)), 1e-12)
    return np.clip(values / top, -1, 1) / 2 + 0.5


def journey_figure(stages: list[tuple[str, Tensor]], signed: bool) -> go.Figure:
    """The Explanations page's "journey back through the T2T module": each stage's map (label, (h, w)) side by
    side, from the backbone's tokens to the pixels. `signed` (AttnLRP / CP-LRP relevance): each panel on a
    diverging scale with 0 white and its sum in its title; else each panel clipped at its 99.5th percentile.
    (Moved here from app/views/3_explanations.py.)"""
    from analysis.maps import display_scale

    if signed:
        maps = [signed_scale(m) for _, m in stages]
        titles = [f"{t} (Σ={float(m.sum()):.3g})" for t, m in stages]  # one word: wrapped whole
    else:
        maps = [figures.to_numpy(display_scale(m)) for _, m in stages]
        titles = [t for t, _ in stages]
    # the pixel panel at half resolution (2x2 means): a lighter figure, the same picture at this size
    maps[-1] = reduce(maps[-1], "(h a) (w b) -> h w", "mean", a=2, b=2)
    strip = charts.strip_figure(maps, titles, colorscale="RdBu_r" if signed else "Inferno")
    if signed:
        strip.update_traces(zmin=0, zmax=1)  # the same diverging range in every panel: white is 0
    return strip


def _predicted(v: StepView, lm) -> int:
    """The class the Explanations page explains by default: the model's prediction on the image."""
    from app.compute import probabilities

    return int(np.argmax(probabilities(v.ctx.trace(lm))))


def _carry(v: StepView) -> str:
    return v.state.get("exp_carry") if v.state.get("exp_carry") in links.CARRY_MODES else "coverage"


def _method_pixels(v: StepView, lm, method: str, target: int) -> tuple[str, Tensor, list | None] | None:
    """(map id, pixel map (S, S) in [0, 1], its T2T stages or None) of a token-map method with the step's
    discard rule and carry-back, as the page's `method_map` + `explanations.pixels_of`; None for the slow
    methods (not written into a lesson file)."""
    from app import explanations

    rule, ratio = v.rollout_rule
    if method == "rollout":
        map_id, heat = f"rollout|{rule}|{ratio:g}", explanations.rollout_with(v.ctx, lm, rule, ratio)
    elif method == "grad_rollout":
        heat, _ = explanations.explanation_with(v.ctx, lm, method, target, discard=rule, discard_ratio=ratio)
        map_id = f"grad_rollout|{rule}|{ratio:g}|{target}"
    elif method in explanations.CHEAP_METHODS:
        map_id, heat = f"{method}|{target}", explanations.explanation(v.ctx, lm, method, target)
    else:
        return None
    pix, stages = explanations.pixels_of(v.ctx, lm, map_id, heat, _carry(v))
    return map_id, pix, stages


def _explanation(method: str, which: str) -> Builder:
    """An Explanations map of one model for its predicted class, as the page draws it: AttnLRP and CP-LRP as the
    signed relevance at the pixels (`lrp_overlay_uri`, nothing carried back); the other methods with the step's
    discard rule and carry-back, on the image."""
    def build(v: StepView) -> go.Figure | None:
        from analysis.maps import display_scale
        from app import explanations

        lm = v.role(which)
        target = _predicted(v, lm)
        img = v.ctx.display_image(lm)
        title = f"{lm.role}: {lm.name} ({lm.class_names[target]})"
        if method in explanations.LRP_METHODS:
            rel = explanations.lrp_maps(v.ctx, lm, method, target)
            uri, top = lrp_overlay_uri(f"{lm.key}|{v.ctx.image.key}|{method}|{target}|pixels", img, rel.pixels)
            title += f": red for, blue against, full colour at ±{top:.2g}"
        else:
            done = _method_pixels(v, lm, method, target)
            if done is None:
                return None  # the slow methods are not written into a lesson file
            map_id, pix, _ = done
            key = f"{lm.key}|{v.ctx.image.key}|{map_id}|{_carry(v)}"
            uri = figures.cached_overlay_uri(key, img, lambda: figures.to_numpy(display_scale(pix)))
        return figures.image_figure(uri, img.shape[:2], title=title, height=380)
    return build


def _journey(v: StepView) -> go.Figure | None:
    """The journey strip of the Explanations page: T2T-ViT's map of the first of the step's methods that has
    stages (the page's choice by default; AttnLRP / CP-LRP: the relevance of each T2T step; the others: the map
    carried back, unless the step stretches it)."""
    from app import explanations

    lm = v.ctx.t2t
    options = list(explanations.CHEAP_METHODS) + (list(explanations.EXPENSIVE_METHODS)
                                                  if v.state.get("exp_expensive") else [])
    methods = [m for m in v.state.get("exp_methods", ["rollout", "chefer"]) if m in options]
    target = _predicted(v, lm)
    for method in methods:
        if method in explanations.LRP_METHODS:
            stages = explanations.lrp_maps(v.ctx, lm, method, target).stages
        else:
            done = _method_pixels(v, lm, method, target)
            stages = done[2] if done is not None else None
        if stages:
            return journey_figure(stages, method in explanations.LRP_METHODS)
    return None


def _channel_grid(which: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        from app.compute import block_channels

        lm = v.role(which)
        count = v.state.get("fr_channels", 36) if v.state.get("fr_channels") in (16, 36, 64, 100) else 36
        block = v.feature_block(which)
        maps, invalid = block_channels(v.ctx, lm, block, v.threshold)
        shown = maps[:count]
        return charts.mosaic_figure(shown, int(np.ceil(np.sqrt(count))), cmap="gray", height=460,
                                    marked=[i for i in range(len(shown)) if invalid[i]],
                                    title=f"{lm.role} {lm.name}, block {block}: first {len(shown)} of "
                                    f"{maps.shape[0]} channels")
    return build


DEPTH_TITLES = {
    "invalid_fraction": ("Invalid channels (lower = richer)", "fraction"),
    "mean_abs_corr": ("Mean |correlation| between channels (lower = less redundant)", "|r|"),
    "effective_rank": ("Effective rank of the tokens (higher = more directions)", "rank"),
    "high_freq_fraction": ("Share of fine detail (high spatial frequency)", "fraction"),
}


def _depth(metric: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        from app.compute import block_metrics

        colours = {v.ctx.t2t.role: figures.T2T_COLOUR, v.ctx.vit.role: figures.VIT_COLOUR}
        series = {f"{lm.role} ({lm.name})": (block_metrics(v.ctx, lm, v.threshold, (metric,))[metric], colours[lm.role])
                  for lm in v.ctx.models}
        title, ytitle = DEPTH_TITLES[metric]
        fixed = (0.0, 1.0) if metric in ("invalid_fraction", "mean_abs_corr") else None
        return charts.depth_figure(series, title, ytitle, yrange=fixed)
    return build


def _colour(v: StepView, which: str) -> str:
    return figures.T2T_COLOUR if which == "t2t" else figures.VIT_COLOUR


def _top5(which: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        from app.compute import probabilities, top_k

        lm = v.role(which)
        pairs = top_k(probabilities(v.ctx.trace(lm)), lm.class_names)
        return charts.topk_figure(pairs, f"{lm.role}: {lm.label}", _colour(v, which))
    return build


def _knocked(v: StepView, which: str):
    from app.knockouts import knocked_run

    return knocked_run(v.ctx, v.role(which), v.knocked_heads(which), v.t2t_off if which == "t2t" else (),
                       v.knock_mode)


def _ko_grid(which: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        lm = v.role(which)
        return charts.head_grid_figure(None, (lm.num_blocks, lm.num_heads), v.knocked_heads(which),
                                       title=f"{lm.role} {lm.name}: the heads knocked out (crossed)")
    return build


def _ko_top5(which: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        from app.compute import top_k

        lm = v.role(which)
        heads, off = v.knocked_heads(which), (v.t2t_off if which == "t2t" else ())
        what = [f"{len(heads)} of {lm.num_blocks * lm.num_heads} heads out"] if heads else []
        what += [f"T2T attention {i} out" for i in off]
        return charts.topk_figure(top_k(_knocked(v, which).probs, lm.class_names),
                                  f"{lm.role}: " + (", ".join(what) if what else "nothing knocked out"),
                                  _colour(v, which))
    return build


def _ko_map(which: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        lm = v.role(which)
        run = _knocked(v, which)
        last = v.state.get("ko_map") == "last_cls"
        values = run.last_cls if last else run.rollout
        img = v.ctx.display_image(lm)
        fig = figures.image_figure(figures.cached_png_uri(f"{lm.key}|{v.ctx.image.key}", img), img.shape[:2],
                                   title=f"{lm.role}: " + ("class-token attention of the last block" if last else
                                                           "attention rollout"), height=380)
        if values is not None:
            figures.add_grid_heatmap(fig, values, img.shape[:2], colorbar_title="share")
        return fig
    return build


def _intact_target(v: StepView, which: str) -> int:
    """The class the Knock-outs page's grids are about: the intact model's prediction (whatever is knocked out)."""
    from app.knockouts import knocked_run

    return int(np.argmax(knocked_run(v.ctx, v.role(which)).probs))


def _ko_importance(which: str) -> Builder:
    def build(v: StepView) -> go.Figure:
        from app.knockouts import head_grid

        lm = v.role(which)
        heads = v.knocked_heads(which)
        pending = head_grid(v.ctx, lm, _intact_target(v, which), heads, v.t2t_off if which == "t2t" else (),
                            v.knock_mode)
        grid = pending.value if pending.ready else pending.job.future.result()  # a worker's job in a server
        return charts.head_grid_figure(grid.logit_drop, (lm.num_blocks, lm.num_heads), heads, colorbar="logit drop",
                                       title=f"{lm.role}: importance for {lm.class_names[grid.target]}")
    return build


def _ko_relevance(which: str) -> Builder:
    """The Knock-outs page's AttnLRP grid: how much of the intact model's class-logit relevance passed through each
    head (`explanations.lrp_maps(...).heads`, the page's `lrp_soon` cache entry), the knocked-out heads crossed."""
    def build(v: StepView) -> go.Figure:
        from app.explanations import lrp_maps

        lm = v.role(which)
        heads, off = v.knocked_heads(which), (v.t2t_off if which == "t2t" else ())
        maps = lrp_maps(v.ctx, lm, "attnlrp", _intact_target(v, which))
        intact = " (intact model)" if heads or off else ""  # LRP explains the model as it is, nothing knocked out
        return charts.head_grid_figure(maps.heads.numpy(), (lm.num_blocks, lm.num_heads), heads, colorbar="relevance",
                                       title=f"{lm.role}: AttnLRP relevance for {lm.class_names[maps.target]}{intact}")
    return build


def _dec_lens(v: StepView) -> go.Figure:
    from app import mechanisms

    return mechanisms.lens_figure({lm.role: (mechanisms.lens(v.ctx, lm), _colour(v, which), lm.class_names)
                                   for which, lm in (("t2t", v.ctx.t2t), ("vit", v.ctx.vit))})


def _decision(kind: str, which: str) -> Builder:
    """A figure of the Inside-the-decision page for model `which`, as the page draws it (app/mechanisms.py)."""
    def build(v: StepView) -> go.Figure | None:
        from app import mechanisms as m

        ctx, lm = v.ctx, v.role(which)
        cell = (v.decision[f"dec_block_{lm.role}"], v.decision[f"dec_head_{lm.role}"])
        img = ctx.display_image(lm)
        if kind == "strip":
            return m.patch_lens_figure(m.lens(ctx, lm), lm.role, lm.class_names)
        if kind == "dla":
            return m.dla_figure(m.attribution(ctx, lm), cell, lm.role, lm.class_names)
        if kind == "head":
            if cell[1] == lm.num_heads:  # an MLP: no attention to draw
                return None
            attn, _ = m.cls_attention(ctx, lm, *cell)
            return m.head_attention_figure(figures.cached_png_uri(f"{lm.key}|{ctx.image.key}", img), img.shape[:2],
                                           attn, lm.role, *cell)
        if kind == "pair":
            return m.second_figure(img, m.second_display(ctx, lm, v.second), lm.role)
        if kind == "patch_heads":
            pending = m.heads_patching(ctx, lm, v.second)
            result = pending.value if pending.ready else pending.job.future.result()  # a worker's job in a server
            return m.patch_heads_figure(result, (lm.num_blocks, lm.num_heads), lm.role, lm.class_names)
        if kind == "resid":
            result = m.resid_patching(ctx, lm, v.second, v.decision["dec_resid"])
            grid = m.lens(ctx, lm).patch.shape[1:]
            return None if result is None else m.resid_figure(result, grid, lm.role)
        return m.sinks_figure(img, m.sinks(ctx, lm), lm.role, f"{lm.key}|{ctx.image.key}")
    return build


def _sandbox(kind: str) -> Builder:
    """A figure of the soft-split sandbox for the step's configuration, as the page draws it: the view the page
    computes from the same parameters (`sandbox.page_view`: its defaults, the values clamped to its controls),
    the image at the chosen size. `kind`: "0" / "1" / "2" (a soft split's windows), "vit" (the backbone token's
    ViT patch), "cost" (the T2T attention costs) or "trace" ("Try it", only when the step turns it on and the
    page would run it). None where the page draws nothing: a configuration without tokens."""
    def build(v: StepView) -> go.Figure | None:
        from app import sandbox

        lm, image = v.ctx.t2t, v.ctx.image
        view = sandbox.page_view(v.state, lm, v.ctx.vit)
        box = view.box
        if not box.valid:
            return None
        if kind == "cost":
            return sandbox.cost_figure(box, view.paper)
        steps = sandbox.input_steps(lm.key, image.key, box.img_size, lm, image.image)
        if kind == "trace":
            if not v.state.get(sandbox.TRY_KEY) or sandbox.too_large_to_run(view.name, box) is not None:
                return None
            out = sandbox.tried(view.name, box.splits, box.img_size, lm.key, image.key, steps.tensor)
            return charts.strip_figure(out["norms"], list(sandbox.TRACE_TITLES), colorscale="Viridis")
        uri = sandbox.image_uri(lm.key, image.key, box.img_size, steps)
        if kind == "vit":
            return sandbox.vit_figure(uri, box.img_size, view.patch, sandbox.backbone_centre(box))
        return sandbox.window_figure(uri, box, int(kind))
    return build


def _figures() -> dict[str, Builder]:
    out = _tokens_builders()
    out.update({"att_pick": _attention_map, "att_tiles": _attention_tiles, "att_distance": _head_chart("distance"),
                "att_entropy": _head_chart("entropy")})
    from app.explanations import CHEAP_METHODS

    for metric in DEPTH_TITLES:
        out[f"fr_{metric}"] = _depth(metric)
    for which, role in (("t2t", "T2T-ViT"), ("vit", "ViT")):
        for method in CHEAP_METHODS:
            out[f"exp_{method}_{role}"] = _explanation(method, which)
        out[f"fr_mosaic_{role}"] = _channel_grid(which)
        out[f"cls_{role}"] = _top5(which)
        out[f"ko_grid_{role}"] = _ko_grid(which)
        out[f"ko_top5_{role}"] = _ko_top5(which)
        out[f"ko_map_{role}"] = _ko_map(which)
        out[f"ko_importance_{role}"] = _ko_importance(which)
        out[f"ko_relevance_{role}"] = _ko_relevance(which)
        for kind in ("strip", "dla", "head", "pair", "patch_heads", "resid", "sinks"):
            out[f"dec_{kind}_{role}"] = _decision(kind, which)
    out["dec_lens"] = _dec_lens
    out["exp_strip"] = _journey
    out.update({f"sb_window{i}": _sandbox(str(i)) for i in range(3)})
    out.update({"sb_vit": _sandbox("vit"), "sb_cost": _sandbox("cost"), "sb_trace": _sandbox("trace")})
    return out


FIGURES: dict[str, Builder] = _figures()
# The figures of the pages a lesson file does not draw (a pattern of their keys -> why): a step that looks at one
# shows its page's first figure instead (`PAGE_FIGURES`). Every key a page can frame is in FIGURES or matches one
# of these (tests/app/test_export.py reads the keys out of app/views/).
NOT_IN_LESSONS: dict[str, str] = {
    r"exp_(integrated_gradients|occlusion|token_ablation)_.+": "a slow method: many forward passes per map",
    r"exp_sanity_.+": "the sanity check: a background job of 1 + blocks + 3 runs of the method per model",
    r"fr_nb_mosaic_.+": "Fig. 2 as the notebook draws it: its maps are computed inside the page "
                        "(`fig2_notebook_maps` of app/views/4_feature_richness.py)",
    r"cka_matrix": "CKA: a background job over a batch of synthetic images",
    r"ko_pruning": "the pruning curves: a background job of tens of seconds to minutes on a CPU",
    r"mosaic_(attn1|attn2|proj|vit)_one": "a channel enlarged: shown after a click on a tile, which a step cannot set",
}


def not_in_lessons(key: str) -> str | None:
    """Why the lesson file does not draw the page figure `key` (None: it does, or no page has it)."""
    return next((why for pattern, why in NOT_IN_LESSONS.items() if re.fullmatch(pattern, key)), None)


def _pairs() -> dict[str, str]:
    """Each figure's neighbour on its page, shown beside it in the lesson (the other model's, mostly)."""
    pairs = {"pick_split0": "zoom_split0", "pick_attn1": "mosaic_attn1", "pick_attn2": "mosaic_attn2",
             "pick_map1": "pick_split1", "pick_map2": "pick_split2", "pick_proj": "pick_vit",
             "mosaic_proj": "mosaic_vit", "att_pick": "att_tiles", "att_distance": "att_entropy",
             "dec_lens": "dec_strip_T2T-ViT", "sb_window0": "sb_window1", "sb_window2": "sb_vit"}
    pairs.update({b: a for a, b in pairs.items()})
    pairs["sb_cost"] = "sb_window0"  # the cost of soft split 0's tokens beside its windows (one way: 0 pairs with 1)
    for key in FIGURES:
        for one, other in (("T2T-ViT", "ViT"), ("ViT", "T2T-ViT")):
            if key.endswith("_" + one):
                pairs[key] = key[: -len(one)] + other
    return pairs


PAIRS = _pairs()
PAGE_FIGURES = {  # what a step shows when its look_at is not a figure the lesson file can draw
    "tokens": "pick_split0", "attention": "att_pick", "explanations": "exp_rollout_T2T-ViT",
    "features": "fr_mosaic_T2T-ViT", "classify": "cls_T2T-ViT", "knockouts": "ko_top5_T2T-ViT",
    "decision": "dec_lens", "sandbox": "sb_window0",
}


def step_figures(step: tours.Step) -> list[str]:
    """The keys of the figures a step's lesson shows: the one it looks at (or its page's first) and its pair."""
    first = step.look_at if step.look_at in FIGURES else PAGE_FIGURES.get(step.page)
    if first is None:
        return []
    return [first] + ([PAIRS[first]] if PAIRS.get(first) in FIGURES else [])


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
           # links to web pages and anchors only (never javascript: or data:); the text alone otherwise
           (re.compile(r"\[([^\]]+)\]\(((?:https?://|#)[^)\s]+)\)"), r'<a href="\2">\1</a>'),
           (re.compile(r"\[([^\]]+)\]\([^)\s]*\)"), r"\1"),
           (re.compile(r":material/[a-z_]+:\s?"), "")]


def _inline(text: str) -> str:
    out = html.escape(text, quote=True)  # quotes too: a link's address goes inside an attribute
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def markdown_html(text: str) -> str:
    """The Markdown of a step's text as HTML: paragraphs (blank lines), `- ` and `1. ` lists, **bold**,
    *italic*, `code` and [links](url); everything else is escaped (a step's text is never raw HTML)."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    out = []
    for block in blocks:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        bullets = [re.match(r"^(?:[-*+]|\d+[.)])\s+(.*)$", line) for line in lines]
        if all(bullets):
            tag = "ol" if re.match(r"^\d", lines[0]) else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(m.group(1))}</li>" for m in bullets) + f"</{tag}>")
        else:
            out.append("<p>" + " ".join(_inline(line) for line in lines) + "</p>")
    return "\n".join(out)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328;
       background: #fafafa; line-height: 1.5; }
header, main, footer { max-width: 1400px; margin: 0 auto; padding: 1rem 2rem; }
header h1 { margin-bottom: 0.2rem; }
.meta { color: #555; font-size: 0.95rem; }
.input { float: right; width: 160px; margin: 0 0 1rem 1rem; border: 1px solid #ccc; }
nav ol { columns: 2; padding-left: 1.4rem; }
.step { background: #fff; border: 1px solid #e3e3e3; border-left: 5px solid #ff9100; border-radius: 0.5rem;
        padding: 0.8rem 1.4rem 1rem; margin: 1.5rem 0; }
.step h2 { font-size: 1.35rem; margin: 0.3rem 0 0.6rem; }
.step h2 .num { color: #b35c00; font-weight: 600; margin-right: 0.5rem; }
.step-text { font-size: 1.05rem; max-width: 70rem; }
/* fixed columns: each figure is drawn as soon as its div is parsed, at its cell's width then */
.figures { display: grid; grid-template-columns: repeat(var(--n, 1), minmax(0, 1fr)); gap: 1rem; }
@media (max-width: 900px) { .figures { grid-template-columns: minmax(0, 1fr); } }
.figure { min-width: 0; }
.where, .problem { color: #666; font-size: 0.9rem; }
code { background: #f0f0f0; padding: 0 0.25rem; border-radius: 3px; }
"""


def _figure_div(fig: go.Figure, div_id: str, filename: str) -> str:
    widgets.styled(fig)
    config = figures.png_config(filename)
    # no "Share chart..." (an upload to Plotly's cloud): a lesson file never sends anything anywhere
    config.update(responsive=True, showSendToCloud=False,
                  modeBarButtonsToRemove=[*config["modeBarButtonsToRemove"], "sendChartToCloud", "sendDataToCloud"])
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_width="100%", config=config)


def _step_view(step: tours.Step, ctx: Context, contexts: dict[str, Context]) -> StepView:
    """The step's view on the export's context; a step that sets the image or the models (its own
    parameters, as in the app) gets them."""
    state = tours.step_state(step)
    image_keys = {"image_source", "synthetic_class", "synthetic_example", "sample_name"}
    model_keys = {"T2T-ViT_name", "T2T-ViT_source", "ViT_name", "ViT_source"}
    if not (image_keys | model_keys) & set(state):
        return StepView(ctx, state)
    key = repr(sorted((k, state[k]) for k in (image_keys | model_keys) & set(state)))
    if key not in contexts:
        contexts[key] = _context_for(ctx, state)
    return StepView(contexts[key], state)


def _context_for(ctx: Context, state: dict) -> Context:
    """The context of a step that sets the image or the models: theirs, a new session's defaults for what it
    leaves out of them (the triangle, example 0; the first sample photo; the models' default weights)."""
    from app.access import session_mode
    from app.images import sample_image, synthetic_class_names, synthetic_image
    from app.models import default_source, resolve_model
    from t2t.images import sample_images

    image = ctx.image
    source = state.get("image_source")
    if source == "Sample photo" or (source is None and "sample_name" in state):
        image = sample_image(state.get("sample_name", next(iter(sample_images()))))
    elif source == "Synthetic shape" or {"synthetic_class", "synthetic_example"} & set(state):
        image = synthetic_image(int(state.get("synthetic_class", synthetic_class_names().index("triangle"))),
                                int(state.get("synthetic_example", 0)))
    pair = []
    for lm in ctx.models:
        name = state.get(f"{lm.role}_name", lm.name)
        source = state.get(f"{lm.role}_source", lm.source if name == lm.name else default_source(name))
        if (name, source) == (lm.name, lm.source):
            pair.append(lm)
            continue
        loaded, _ = resolve_model(lm.role, name, source, "", ctx.device, mode=session_mode(local=False))
        pair.append(loaded)  # refused or failed: the default weights, as the app shows them
    return Context(pair[0], pair[1], image, ctx.device)


def common_params(ctx: Context) -> dict[str, str]:
    """The lesson-link parameters of a context's models and image (an upload has none: a link cannot carry it)."""
    params = {"t2t": ctx.t2t.name, "t2t_w": ctx.t2t.source, "vit": ctx.vit.name, "vit_w": ctx.vit.source}
    kind, _, rest = ctx.image.key.partition(":")
    if kind == "synthetic":
        from app.images import synthetic_class_names

        example, index = divmod(int(rest), len(synthetic_class_names()))
        params.update({"img": links.SHAPE, "shape": synthetic_class_names()[index], "ex": str(example)})
    elif kind == "sample":
        params.update({"img": "photo", "photo": rest})
    return params


def lesson_html(tour: Tour, ctx: Context, app_url: str = "") -> str:
    """The tour as one HTML page for the models and image of `ctx`: each step's text (fields computed) and
    figures (plotly, inlined once), the input image embedded. `app_url`: the app's address, for the links
    back to each step (none when empty)."""
    from plotly.offline import get_plotlyjs

    contexts: dict[str, Context] = {}
    sections, nav = [], []
    n = len(tour.steps)
    for step in tour.steps:
        view = _step_view(step, ctx, contexts)
        text, problems = tours.fill(step.text, view)
        if step.look_at and step.look_at not in FIGURES:
            why = not_in_lessons(step.look_at) or "no page draws a figure with that key"
            problems.append(f"The figure this step is about (`{step.look_at}`) is not drawn in the lesson file: "
                            f"{why}.")
        title = step.title or f"Step {step.number}"
        nav.append(f'<li><a href="#step-{step.number}">{_inline(title)}</a></li>')
        divs = []
        for j, key in enumerate(step_figures(step)):
            try:
                fig = FIGURES[key](view)
            except Exception as err:  # a figure the models in use cannot draw: said in its place
                problems.append(f"The figure `{key}` cannot be drawn with these models: {type(err).__name__}: {err}")
                continue
            if fig is not None:
                divs.append(f'<div class="figure" data-key="{key}">'
                            + _figure_div(fig, f"step{step.number}-{j}", f"{tour.name}_{step.number}_{key}")
                            + "</div>")
        query = urlencode(links.tour_query(tour.name, step.number, common_params(ctx)))
        where = f"/{step.page}?{query}" if step.page != "tokens" else f"/?{query}"
        back = (f'<a href="{html.escape(app_url.rstrip("/") + where)}">{html.escape(where)}</a>' if app_url
                else f"<code>{html.escape(where)}</code>")
        sections.append(
            f'<section class="step" id="step-{step.number}" data-step="{step.number}">'
            f'<h2><span class="num">Step {step.number} of {n}</span>{_inline(step.title)}</h2>'
            f'<div class="step-text">{markdown_html(text)}</div>'
            + "".join(f'<p class="problem">{html.escape(p)}</p>' for p in problems)
            + f'<div class="figures" style="--n: {max(1, len(divs))}">{"".join(divs)}</div>'
            f'<p class="where">In the app: {back}</p></section>')
    lm, vm = ctx.models
    image_uri = figures.png_uri(ctx.display_image(lm))
    when = datetime.date.today().isoformat()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(tour.title)} · t2t-lens</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header>
<img class="input" src="{image_uri}" alt="the image, as T2T-ViT sees it">
<h1>{html.escape(tour.title)}</h1>
{markdown_html(tour.description) if tour.description else ""}
<p class="meta">T2T-ViT: <b>{html.escape(lm.label)}</b> · ViT: <b>{html.escape(vm.label)}</b> ·
image: <b>{html.escape(ctx.image.label)}</b> · {n} steps · written {when} by t2t-lens
(<code>python -m app.export --tour {html.escape(tour.name)}</code>). Every number in the texts was computed for these
models and this image.</p>
<nav><ol>{"".join(nav)}</ol></nav>
</header>
<main>
{"".join(sections)}
</main>
<footer class="meta">The figures are interactive: hover for values; the camera icon of each saves it as a PNG.
</footer>
</body></html>
"""


def lesson_bytes(tour_name: str, ctx: Context) -> bytes:
    """`lesson_html` of a tour by name, as UTF-8 bytes (the tour bar's download button)."""
    tour = tours.load_tours().tours[tour_name]
    return lesson_html(tour, ctx).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from app.models import T2T_DEFAULT, VIT_DEFAULT

    p = argparse.ArgumentParser(prog="python -m app.export", description="Write a guided tour as one "
                                "self-contained HTML file (no server, no network needed to open it).")
    p.add_argument("--tour", required=True, help="a tour's name (a file of lessons/) or the path of a .toml file")
    p.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    p.add_argument("--t2t", default=T2T_DEFAULT, help=f"T2T-ViT model (default {T2T_DEFAULT})")
    p.add_argument("--vit", default=VIT_DEFAULT, help=f"ViT model (default {VIT_DEFAULT})")
    p.add_argument("--t2t-weights", default="", help="embedded, released, random, or a checkpoint path / URL "
                   "(default: the model's default weights)")
    p.add_argument("--vit-weights", default="", help="as --t2t-weights")
    p.add_argument("--image", default="shape:triangle:0",
                   help="shape:CLASS[:EXAMPLE], photo:NAME (a sample photo) or an image file "
                   "(default shape:triangle:0)")
    p.add_argument("--device", default="", help="cpu, cuda, ... (default: the GPU when there is one)")
    p.add_argument("--app-url", default="", help="the app's address, for a link back to each step")
    return p


def image_for(spec: str):
    """The image of a command line's `--image`: shape:CLASS[:EXAMPLE], photo:NAME or an image file."""
    from app.images import image_from_bytes, sample_image, synthetic_class_names, synthetic_image
    from t2t.images import sample_images

    kind, _, rest = spec.partition(":")
    if kind == "shape" and rest:
        name, _, example = rest.partition(":")
        if name not in synthetic_class_names():
            raise ValueError(f"{name!r} is not a shape class ({', '.join(synthetic_class_names())})")
        return synthetic_image(synthetic_class_names().index(name), int(example or 0))
    if kind == "photo" and rest:
        if rest not in sample_images():
            raise ValueError(f"{rest!r} is not a sample photo ({', '.join(sample_images())})")
        return sample_image(rest)
    path = Path(spec)
    return image_from_bytes(path.name, path.read_bytes())


def model_for(role: str, name: str, weights: str, device: str):
    """A `LoadedModel` for the command line (the person at this machine: every weight source): `weights` is
    embedded, released, random, a checkpoint path or URL, or "" for the model's default weights."""
    from app.access import session_mode
    from app.models import default_source, resolve_model

    if weights in ("", "embedded", "released", "random"):
        source, location = weights or default_source(name), ""
    else:
        source, location = ("url" if re.match(r"^https?://", weights) else "path"), weights
    lm, error = resolve_model(role, name, source, location, device, mode=session_mode(local=True))
    if error:
        raise ValueError(error)
    return lm


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    streamlit_logger.set_log_level("error")  # bare mode: Streamlit's warnings about no session mean nothing here
    loaded = tours.load_tours()
    try:
        if args.tour.endswith(".toml"):
            tour = tours.read_tour(Path(args.tour))
        elif args.tour in loaded.tours:
            tour = loaded.tours[args.tour]
        else:
            why = loaded.refused.get(args.tour) or f"no tour named {args.tour!r} (tours: {', '.join(loaded.tours)})"
            print(f"export: {why}", file=sys.stderr)
            return 2
        device = args.device or str(t2t.default_device())
        ctx = Context(model_for("T2T-ViT", args.t2t, args.t2t_weights, device),
                      model_for("ViT", args.vit, args.vit_weights, device), image_for(args.image), device)
    except (tours.TourError, ValueError, OSError, ImageError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    page = lesson_html(tour, ctx, args.app_url)
    args.out.write_text(page, encoding="utf-8")
    size = args.out.stat().st_size
    count = page.count('<div class="figure"')
    print(f"{args.out}: {tour.title}, {len(tour.steps)} steps, {count} figures, {size / 1e6:.1f} MB "
          f"({ctx.t2t.label}, {ctx.vit.label}, {ctx.image.label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
