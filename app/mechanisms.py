"""Inside the decision (issue 28): the logit lens, direct logit attribution, activation patching between two
images and attention sinks of a `Context`'s models, through the byte cache; the page's figures and the
sentences computed from their numbers (the library is `analysis.mechanisms`).

Owns: what the Inside-the-decision page computes (`lens`: the class token and every patch token read after
each block; `attribution`: the target logit split over heads, MLPs, embedding and biases, the final
LayerNorm's sigma held at this image's value; `second_image` / `second_inputs`: the second image of a
patching pair, a ready-made corruption, another synthetic shape, a sample photo or an upload; `pair_classes`:
the class and the baseline of the logit difference; `heads_patching` in the `QUICK` queue and
`resid_patching`, exact in the `HEAVY` queue or its first-order estimate at once; `sinks`), its figures
(`lens_figure`, `patch_lens_figure`, `dla_figure`, `head_attention_figure`, `patch_heads_figure`,
`resid_figure`, `sinks_figure`, `second_figure`; no Streamlit calls) and sentences (`*_sentence`), and the
checks of its view (`clean_view`: a link's or a tour's values clamped to the models and image in use).

Models are shared by every session (app/models.py): a patched run happens only inside
`analysis.mechanisms.activation_patching`, whose hooks act in the thread computing the value and are removed
on exit; nothing writes a parameter or a buffer. Every cache key holds both images' keys, the class, the
baseline, the site and the method, so no other session and no other entry sees a patched model.

May import: app.charts, app.figures, app.compute, app.jobs, app.device, app.models, app.images, plotly, numpy,
torch, t2t, analysis. Not app.widgets or app.links (the same layer) nor anything above.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots
from torch import Tensor, nn

from app import charts, figures
from app.compute import Context, preprocessed, query_attention
from app.device import guarded
from app.figures import BOTTOM_LEGEND, CHART, FONT, GRID, scale
from app.images import ImageChoice, sample_image, synthetic_class_names, synthetic_image
from app.jobs import HEAVY, QUICK, Pending, background, memo, soon
from app.models import LoadedModel

# ----------------------------------------------------------------------------------------------
# Depths, names
# ----------------------------------------------------------------------------------------------


def depth_name(d: int) -> str:
    """Depth d of the residual stream (0: after the embedding, d: after block d - 1), as sentences name it."""
    return "the embedding" if d == 0 else f"block {d - 1}"


def depth_labels(blocks: int) -> list[str]:
    """The L + 1 depths' labels: "embedding", "block 0", ..., "block L-1"."""
    return ["embedding"] + [f"block {b}" for b in range(blocks)]


def _float(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# The logit lens: the class token and every patch token read after each block
# ----------------------------------------------------------------------------------------------


@dataclass
class Lens:
    """The residual stream read through the final norm and head after the embedding (depth 0) and after each
    block (depth d: block d - 1), for the class the model predicts, `target`.

    logits (L + 1, C): the class token's logits at each depth (`analysis.mechanisms.logit_lens`; the last row
    is the model's output); probs, ranks (L + 1,): the target's probability and rank (1: the top class) there;
    top (L + 1,): the top class at each depth; first / stay: the first depth whose top class is the final one,
    and the first from which it stays so (`readable_depth`); patch (L + 1, h, w): every patch token's logit of
    the target read the same way (`patch_lens`)."""

    target: int
    logits: np.ndarray
    probs: np.ndarray
    ranks: np.ndarray
    top: np.ndarray
    first: int
    stay: int
    patch: np.ndarray

    @property
    def blocks(self) -> int:
        return len(self.probs) - 1


@memo
def _lens(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> Lens:
    from analysis.mechanisms import logit_lens, patch_lens, readable_depth, run_with_cache

    cache = run_with_cache(_model, _x)
    logits = logit_lens(_model, cache)                                      # (1, L + 1, C)
    target = int(logits[0, -1].argmax())
    row = logits[0]
    ranks = 1 + (row > row[:, target:target + 1]).sum(dim=-1)               # classes strictly above the target
    return Lens(target=target, logits=_float(row), probs=_float(row.float().softmax(dim=-1)[:, target]),
                ranks=ranks.cpu().numpy(), top=row.argmax(dim=-1).cpu().numpy(),
                first=int(readable_depth(logits)[0]), stay=int(readable_depth(logits, stay=True)[0]),
                patch=_float(patch_lens(_model, cache, target)[0]))


def lens(ctx: Context, lm: LoadedModel) -> Lens:
    """`Lens` of the current image (one forward with read-only hooks; cached per model and image)."""
    return guarded(_lens, lm.key, ctx.image.key, lm.model, ctx.inputs(lm))


# ----------------------------------------------------------------------------------------------
# Direct logit attribution
# ----------------------------------------------------------------------------------------------


@dataclass
class Attribution:
    """`analysis.mechanisms.DLA` of the predicted class `target`, as numbers: heads (L, H), mlps (L,), embed,
    bias, aux, sigma (the final LayerNorm's actual sigma for this image's class token, held fixed), logit (the
    class-token head's logit of the target) and total (the sum of every part)."""

    target: int
    heads: np.ndarray
    mlps: np.ndarray
    embed: float
    bias: float
    aux: float
    sigma: float
    logit: float
    total: float

    @property
    def grid(self) -> np.ndarray:
        """(L, H + 1): each block's heads, then its MLP (the figure's columns)."""
        return np.concatenate([self.heads, self.mlps[:, None]], axis=1)


@memo
def _attribution(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> Attribution:
    from analysis.mechanisms import direct_logit_attribution

    d = direct_logit_attribution(_model, _x)
    return Attribution(target=int(d.target[0]), heads=_float(d.heads[0]), mlps=_float(d.mlps[0]),
                       embed=float(d.embed[0]), bias=float(d.bias[0]), aux=float(d.aux[0]),
                       sigma=float(d.sigma[0]), logit=float(d.logit[0]), total=float(d.total[0]))


def attribution(ctx: Context, lm: LoadedModel) -> Attribution:
    """`Attribution` of the current image's predicted class (cached per model and image)."""
    return guarded(_attribution, lm.key, ctx.image.key, lm.model, ctx.inputs(lm))


def top_share(att: Attribution, fraction: float = 0.1) -> tuple[float, int]:
    """The share of the heads' total |DLA| held by the top `fraction` of heads, and how many heads that is
    (`analysis.mechanisms.top_share`)."""
    from analysis.mechanisms import top_share as share

    k = max(1, math.ceil(fraction * att.heads.size - 1e-9))
    return float(share(torch.from_numpy(att.heads)[None], fraction)[0]), k


def cls_attention(ctx: Context, lm: LoadedModel, block: int, head: int) -> tuple[np.ndarray, float]:
    """Head `head` of block `block`: the class token's attention over the patch tokens (h, w) and on itself."""
    maps, on_cls = query_attention(ctx, lm, 0)  # (L, H, h, w), (L, H) from the cached trace
    return maps[block, head], float(on_cls[block, head])


# ----------------------------------------------------------------------------------------------
# The second image of a patching pair
# ----------------------------------------------------------------------------------------------

SECONDS = ("blur", "background", "other_class", "shape", "photo", "upload")
SECOND_NAMES = {"blur": "blurred", "background": "shape removed", "other_class": "another shape there",
                "shape": "another synthetic image", "photo": "sample photo", "upload": "upload"}
SYNTHETIC_ONLY = ("background", "other_class")  # made from the synthetic generator's own random numbers
RESID_METHODS = ("attribution", "exact")


def blur_sigma() -> float:
    """The blur of the ready-made corruption: `analysis.mechanisms.blurred`'s own default, in pixels."""
    from analysis.mechanisms import blurred

    return float(inspect.signature(blurred).parameters["sigma"].default)


def synthetic_index(image: ImageChoice) -> int | None:
    """The test-split index of a synthetic image (`app.images.synthetic_image`), None for any other image."""
    kind, _, index = image.key.partition(":")
    return int(index) if kind == "synthetic" and index.isdigit() else None


@dataclass(frozen=True)
class Second:
    """The second image of a pair: its kind (`SECONDS`), a key for the caches, how sentences name it, and the
    image (None for the blur, made from each model's own input)."""

    kind: str
    key: str
    label: str
    image: ImageChoice | None = None


@memo
def _variant(index: int, draw: int | None) -> Image.Image:
    from analysis.mechanisms import render_variant

    chw = render_variant("test", 0, index, 224, draw)  # app.images.synthetic_image: test split, seed 0, 224 px
    return Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))


def variant(index: int, draw: int | None) -> ImageChoice:
    """Synthetic test image `index` with its shape removed (draw None) or replaced by class `draw`'s shape at the
    same place, size, rotation and colour, everything else the same (`analysis.mechanisms.render_variant`)."""
    names = synthetic_class_names()
    what = "background alone" if draw is None else f"with a {names[draw]} instead"
    key = f"variant:{index}:{'bg' if draw is None else int(draw)}"
    return ImageChoice(key, f"synthetic #{index // len(names)}, {what}", _variant(int(index), draw))


def second_image(kind: str, image: ImageChoice, other: int = 0, example: int = 0, photo: str = "",
                 upload: ImageChoice | None = None) -> Second:
    """The second image of kind `kind` for `image` (the view must be `clean_view`'s: a synthetic-only kind with a
    synthetic image, a photo that exists, an upload that decoded)."""
    names = synthetic_class_names()
    if kind == "blur":
        return Second(kind, f"blur:{blur_sigma():g}", f"the image blurred (Gaussian, sigma {blur_sigma():g} px)")
    if kind in SYNTHETIC_ONLY:
        index = synthetic_index(image)
        if index is None:
            raise ValueError(f"{kind!r} needs a synthetic image")
        choice = variant(index, None if kind == "background" else int(other))
        label = ("the same image with its shape removed (its background alone)" if kind == "background"
                 else f"the same image with a **{names[int(other)]}** in its shape's place")
        return Second(kind, choice.key, label, choice)
    if kind == "shape":
        choice = synthetic_image(int(other), int(example))
        return Second(kind, choice.key, f"the {choice.label}", choice)
    if kind == "photo":
        choice = sample_image(photo)
        return Second(kind, choice.key, f"the {choice.label}", choice)
    if kind == "upload" and upload is not None:
        return Second(kind, upload.key, f"the upload '{upload.label}'", upload)
    raise ValueError(f"no second image of kind {kind!r}")


@memo
def _blurred(model_key: str, image_key: str, sigma: float, _x: Tensor, _display: np.ndarray) -> tuple[Tensor,
                                                                                                     np.ndarray]:
    from analysis.mechanisms import blurred

    # blurring commutes with the per-channel normalisation: the model input and the picture get the same blur
    pixels = torch.from_numpy(np.array(_display)).permute(2, 0, 1)[None].float()  # a copy: _display is shared
    shown = blurred(pixels, sigma)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return blurred(_x, sigma), shown


def second_inputs(ctx: Context, lm: LoadedModel, second: Second) -> Tensor:
    """The second image as `lm`'s input (1, 3, S, S), through the model's own preprocessing (the blur: of the
    model's input itself, `analysis.mechanisms.blurred`)."""
    if second.image is None:
        return _blurred(lm.key, ctx.image.key, blur_sigma(), ctx.inputs(lm), ctx.display_image(lm))[0]
    return preprocessed(lm, second.image).tensor.to(lm.device)


def second_display(ctx: Context, lm: LoadedModel, second: Second) -> np.ndarray:
    """(S, S, 3) uint8: the second image as `lm` sees it."""
    if second.image is None:
        return _blurred(lm.key, ctx.image.key, blur_sigma(), ctx.inputs(lm), ctx.display_image(lm))[1]
    return np.asarray(preprocessed(lm, second.image).cropped)


@dataclass
class PairClasses:
    """The classes of a pair: target (the clean image's prediction), baseline (the second image's prediction
    when it differs, else the clean image's runner-up): the metric is logit[target] - logit[baseline];
    probs (C,) of the clean image and second_probs (C,) of the second."""

    target: int
    baseline: int
    probs: np.ndarray
    second_probs: np.ndarray


@memo
def _probs(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> np.ndarray:
    with torch.no_grad():
        return _float(_model(_x)[0].float().softmax(dim=-1))


def pair_classes(ctx: Context, lm: LoadedModel, second: Second) -> PairClasses:
    """The target and baseline classes of the pair (see `PairClasses`)."""
    probs = guarded(_probs, lm.key, ctx.image.key, lm.model, ctx.inputs(lm))
    other = guarded(_probs, lm.key, f"{ctx.image.key}|{second.key}", lm.model, second_inputs(ctx, lm, second))
    order = np.argsort(-probs, kind="stable")
    target = int(order[0])
    other_top = int(np.argmax(other))
    return PairClasses(target, other_top if other_top != target else int(order[1]), probs, other)


# ----------------------------------------------------------------------------------------------
# Activation patching
# ----------------------------------------------------------------------------------------------


@dataclass
class PatchResult:
    """`analysis.mechanisms.Patching` of one pair as numbers: recovered (L, H) for site "heads", (L + 1, T) for
    "resid" ((patched - second) / (clean - second) of the logit difference; NaN where not measured or where
    nothing is to recover); clean, corrupted: the metric on the two images; target, baseline; site, method."""

    recovered: np.ndarray
    clean: float
    corrupted: float
    target: int
    baseline: int
    site: str
    method: str

    @property
    def nothing_to_recover(self) -> bool:
        """The two images give the same metric (within the library's 1e-6): every fraction is undefined."""
        return bool(np.isnan(self.recovered).all())


@memo
def _patching(model_key: str, image_key: str, second_key: str, target: int, baseline: int, site: str, method: str,
              _model: nn.Module, _clean: Tensor, _second: Tensor) -> PatchResult:
    from analysis.mechanisms import activation_patching

    p = activation_patching(_model, _clean, _second, target, site=site, baseline=baseline, method=method)
    return PatchResult(_float(p.recovered[0]), float(p.clean[0]), float(p.corrupted[0]), target, baseline, site,
                       method)


def _patch_args(ctx: Context, lm: LoadedModel, second: Second, site: str, method: str) -> tuple:
    classes = pair_classes(ctx, lm, second)
    return (lm.key, ctx.image.key, second.key, classes.target, classes.baseline, site, method, lm.model,
            ctx.inputs(lm), second_inputs(ctx, lm, second))


def heads_patching(ctx: Context, lm: LoadedModel, second: Second) -> Pending:
    """Each head's `attn @ v` slice (every token) taken from the clean run into the second image's run: the
    recovered share of the logit difference, (L, H). In the `QUICK` queue (L H partial runs): a `Pending`."""
    return soon(QUICK, f"Patching heads for {lm.name}", _patching, *_patch_args(ctx, lm, second, "heads", "exact"))


def resid_patching(ctx: Context, lm: LoadedModel, second: Second, method: str) -> PatchResult | None:
    """Each token of the residual stream after the embedding and after each block taken from the clean run: the
    recovered share, (L + 1, T). method "exact": every token patched, one run each ((L + 1) T runs of the
    blocks after it), in the `HEAVY` queue (None while it runs, a progress bar instead); "attribution": the
    first-order estimate from one forward and backward, at once."""
    args = _patch_args(ctx, lm, second, "resid", method)
    if method == "exact":
        return guarded(background, HEAVY, f"Residual patching for {lm.name}", _patching, *args)
    return guarded(_patching, *args)


# ----------------------------------------------------------------------------------------------
# Attention sinks and high-norm tokens
# ----------------------------------------------------------------------------------------------


@dataclass
class SinkView:
    """`analysis.mechanisms.attention_sinks` of the backbone, as numbers: received (L, T) each token's share of
    block l's attention (class token first), norms (L, T) of the tokens entering block l, sink / high (L, T)
    bool (received > attention_factor / T; norm > norm_factor x the median), grid (h, w)."""

    received: np.ndarray
    norms: np.ndarray
    sink: np.ndarray
    high: np.ndarray
    grid: tuple[int, int]
    norm_factor: float
    attention_factor: float


@memo
def _sinks(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> SinkView:
    from analysis.mechanisms import attention_sinks

    s = attention_sinks(_model, _x)
    b = s.blocks
    return SinkView(_float(b.received[0]), _float(b.norms[0]), b.sink[0].cpu().numpy(), b.high_norm[0].cpu().numpy(),
                    tuple(b.grid), s.norm_factor, s.attention_factor)


def sinks(ctx: Context, lm: LoadedModel) -> SinkView:
    """`SinkView` of the current image (one traced forward; cached per model and image)."""
    return guarded(_sinks, lm.key, ctx.image.key, lm.model, ctx.inputs(lm))


# ----------------------------------------------------------------------------------------------
# The view: a link's or a tour's values checked against the models and image in use
# ----------------------------------------------------------------------------------------------


def clean_view(image: ImageChoice, shapes: Mapping[str, tuple[int, int]], state: Mapping[str, Any],
               top: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """The page's session-state values, each kept when the models and image in use can show it, else its default.

    shapes: role -> (blocks, heads); top: role -> the (block, column) a missing head choice starts on (default:
    (0, 0)); column `heads` is the block's MLP. The second image, by default and for a synthetic-only kind with
    another image: a synthetic image's shape removed, any other image blurred. "other" (a class) defaults to the
    image's own class + 1, the residual method to "attribution"."""
    names = synthetic_class_names()
    out: dict[str, Any] = {}
    for role, (blocks, heads) in shapes.items():
        start = (top or {}).get(role, (0, 0))
        for key, limit, default in ((f"dec_block_{role}", blocks, start[0]), (f"dec_head_{role}", heads + 1,
                                                                              start[1])):
            value = state.get(key, default)
            out[key] = min(max(0, value), limit - 1) if isinstance(value, int) and not isinstance(value, bool) \
                else default
    index = synthetic_index(image)
    default = "background" if index is not None else "blur"  # a synthetic image: its shape removed, else blurred
    kind = state.get("dec_second", default)
    if kind not in SECONDS or (kind in SYNTHETIC_ONLY and index is None):
        kind = default
    out["dec_second"] = kind
    own = index % len(names) if index is not None else 0
    other = state.get("dec_other", (own + 1) % len(names))
    out["dec_other"] = other if isinstance(other, int) and 0 <= other < len(names) else (own + 1) % len(names)
    example = state.get("dec_other_ex", 0)
    out["dec_other_ex"] = min(max(0, example), 999) if isinstance(example, int) else 0
    from t2t.images import sample_images

    photos = list(sample_images())
    out["dec_photo"] = state.get("dec_photo") if state.get("dec_photo") in photos else photos[0]
    out["dec_resid"] = state.get("dec_resid") if state.get("dec_resid") in RESID_METHODS else RESID_METHODS[0]
    return out


def second_of_view(image: ImageChoice, view: Mapping[str, Any], upload: ImageChoice | None = None) -> Second:
    """The `Second` a clean view names (an upload that is missing: the blur)."""
    kind = view["dec_second"]
    if kind == "upload" and upload is None:
        kind = "blur"
    return second_image(kind, image, view["dec_other"], view["dec_other_ex"], view["dec_photo"], upload)


def strongest_head(att: Attribution) -> tuple[int, int]:
    """(block, head) of the head with the largest |DLA|: where the page's head view starts."""
    b, h = np.unravel_index(int(np.argmax(np.abs(att.heads))), att.heads.shape)
    return int(b), int(h)


# ----------------------------------------------------------------------------------------------
# Figures (no Streamlit calls)
# ----------------------------------------------------------------------------------------------

SINK_COLOUR, HIGH_COLOUR, BOTH_COLOUR = "#00e5ff", "#ff1744", "#ffd600"


def lens_figure(series: Mapping[str, tuple[Lens, str, Sequence[str]]], height: int = 480) -> go.Figure:
    """The logit lens of both models on one chart: {label: (Lens, colour, class names)}; top: the probability
    of the final answer after the embedding and each block, bottom: its rank (1 = the top class). x is the
    depth over the model's blocks, so a 7-block and a 12-block model line up."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.55, 0.45])
    worst = 1
    for label, (ln, colour, names) in series.items():
        x = np.arange(ln.blocks + 1) / max(ln.blocks, 1)
        hover = [f"{label}, after {depth_name(d)}: {names[ln.target]} {ln.probs[d]:.1%}, rank {int(ln.ranks[d])}; "
                 f"top class {names[int(ln.top[d])]}" for d in range(ln.blocks + 1)]
        for row, y in ((1, ln.probs), (2, ln.ranks)):
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{label}: {names[ln.target]}",
                                     legendgroup=label, showlegend=row == 1, line={"color": colour, "width": 3},
                                     marker={"size": 8}, text=hover, hovertemplate="%{text}<extra></extra>"),
                          row=row, col=1)
        worst = max(worst, int(ln.ranks.max()))
    fig.update_yaxes(title_text="probability", range=[0, 1.02], tickformat=".0%", row=1, col=1, **GRID)
    fig.update_yaxes(title_text="rank", type="log", range=[math.log10(worst * 1.3), -0.05], row=2, col=1,
                     tickvals=[v for v in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000) if v <= worst * 1.3],
                     **GRID)
    fig.update_xaxes(title_text="share of the blocks passed (0%: after the embedding)", tickformat=".0%", row=2,
                     col=1, **GRID)
    fig.update_xaxes(row=1, col=1, **GRID)
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 110}, font=FONT, legend=BOTTOM_LEGEND,
                      title={"text": "The class token read after every block: the answer's probability (top) and "
                             "rank (bottom)", "font": FONT}, **CHART)
    return fig


def depth_maps_figure(maps: np.ndarray, labels: Sequence[str], title: str, colorbar: str, ncols: int = 4,
                      tickformat: str = "", cell_px: int = 85) -> go.Figure:
    """(L + 1, h, w) token maps, one small map per depth with its label above it, one colour scale for all of
    them, centred on white at 0 (NaN, not measured: blank). Each map is at most `cell_px` pixels high (a half-width
    column at 1280 px gives it ~75 px across)."""
    n = len(maps)
    nrows = -(-n // ncols)
    # the labels sit above their maps, in the space between rows (and the top margin, for the first row): sized in
    # pixels for the labels' lines, so that a label never covers the map above it at any width
    lines = max(str(label).count("<br>") + 1 for label in labels)
    label_px = 20 * lines + 6
    plot_px = nrows * cell_px + (nrows - 1) * label_px
    top = 96 + label_px  # a two-line title (hung 48 px down, under the toolbar), then the first row's labels
    fig = make_subplots(rows=nrows, cols=ncols, horizontal_spacing=0.015,
                        vertical_spacing=label_px / plot_px if nrows > 1 else 0.0, subplot_titles=list(labels))
    finite = maps[np.isfinite(maps)]
    lim = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    value = f"%{{z:{tickformat or '.2f'}}}"
    for d in range(n):
        r, c = divmod(d, ncols)
        fig.add_trace(go.Heatmap(z=maps[d], coloraxis="coloraxis",
                                 hovertemplate=f"{labels[d]}, token (%{{y}}, %{{x}}): {value}<extra></extra>"),
                      row=r + 1, col=c + 1)
    for i in range(1, nrows * ncols + 1):
        suffix = "" if i == 1 else str(i)
        fig.update_layout({f"xaxis{suffix}": {"visible": False, "constrain": "domain"},
                           # a square map narrower than its cell's height sits at the cell's top, under its label
                           f"yaxis{suffix}": {"visible": False, "autorange": "reversed", "scaleanchor": f"x{suffix}",
                                              "constrain": "domain", "constraintoward": "top"}})
    for note in fig.layout.annotations:
        note.font.size = 14
    fig.update_layout(height=top + plot_px + 4, margin={"l": 0, "r": 0, "t": top, "b": 4},
                      title={"text": title, "font": FONT}, font=FONT, showlegend=False,
                      coloraxis={"colorscale": scale("RdBu_r"), "cmin": -lim, "cmax": lim,
                                 "colorbar": {"title": {"text": colorbar, "side": "right"}, "thickness": 12,
                                              "tickformat": tickformat}},
                      **CHART)
    return fig


def patch_lens_figure(ln: Lens, role: str, names: Sequence[str], ncols: int = 4) -> go.Figure:
    """Every patch token's logit of model `role`'s answer after the embedding and after each block
    (`depth_maps_figure`, white: 0)."""
    return depth_maps_figure(ln.patch, depth_labels(ln.blocks),
                             f"{role}: every patch token's logit of {names[ln.target]}, read the same way", "logit",
                             ncols)


def dla_figure(att: Attribution, chosen: tuple[int, int] | None, role: str, names: Sequence[str],
               height: int = 380) -> go.Figure:
    """Direct logit attribution, blocks (rows) x heads then the MLP (columns), red: pushes the answer up, blue:
    down. The colour scale is the heads' (an MLP beyond it takes the scale's end colour; hover gives its value), so
    that the heads stay apart when one MLP writes far more. A transparent scatter of the cells (customdata: [i, i],
    i = block (H + 1) + column) makes each one clickable (`widgets.tile_callback(..., heads=H + 1)`); the `chosen`
    cell is framed."""
    title = f"{role}: what each head and MLP writes into the logit of {names[att.target]}; click a head"
    z = att.grid
    nb, nc = z.shape
    lim = float(np.abs(att.heads).max()) or 1.0
    ticks = [f"h{h}" for h in range(nc - 1)] + ["MLP"]
    fig = go.Figure(go.Heatmap(z=z, x=np.arange(nc), y=np.arange(nb), zmid=0, zmin=-lim, zmax=lim, xgap=2, ygap=2,
                               colorscale=scale("RdBu_r"), hoverinfo="skip",
                               colorbar={"title": {"text": "logit", "side": "right"}, "thickness": 12}))
    fig.add_vline(x=nc - 1.5, line={"color": "#555555", "width": 2, "dash": "dot"})
    blocks, cols = np.divmod(np.arange(nb * nc), nc)
    text = [f"block {b}, {'MLP' if c == nc - 1 else f'head {c}'}: {z[b, c]:+.3f} logit"
            for b, c in zip(blocks, cols, strict=True)]
    idx = np.arange(nb * nc)
    fig.add_trace(go.Scatter(
        x=cols, y=blocks, mode="markers", name="pick", text=text, hovertemplate="%{text}<extra></extra>",
        marker={"size": max(12.0, 0.8 * (height - 80) / nb), "color": "rgba(255,255,255,0.01)", "symbol": "square"},
        selected={"marker": {"color": "rgba(255,255,255,0.01)"}}, unselected={"marker": {"opacity": 1}},
        customdata=np.stack([idx, idx], axis=-1)))
    if chosen is not None:
        b, c = chosen
        fig.add_trace(go.Scatter(x=[c - 0.5, c + 0.5, c + 0.5, c - 0.5, c - 0.5],
                                 y=[b - 0.5, b - 0.5, b + 0.5, b + 0.5, b - 0.5], mode="lines", name="chosen",
                                 hoverinfo="skip", line={"color": "#ffd600", "width": 4}))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 40}, title={"text": title, "font": FONT},
                      xaxis={"title": "head (then the block's MLP)", "tickvals": list(range(nc)), "ticktext": ticks,
                             "range": [-0.5, nc - 0.5], "automargin": True},
                      yaxis={"title": "block", "dtick": 1, "range": [nb - 0.5, -0.5], "automargin": True},
                      showlegend=False, font=FONT, **CHART)
    return _no_grid(fig)


def _no_grid(fig: go.Figure) -> go.Figure:
    """No grid or zero lines behind a heat map with gaps between its cells (they showed through as ticks)."""
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    return fig


def head_attention_figure(uri: str, size: tuple[int, int], attn: np.ndarray, role: str, block: int, head: int,
                          height: int = 380) -> go.Figure:
    """The image with head `head` of block `block`'s class-token attention over the patch tokens, relative to an
    even spread, on a log scale (as the Attention explorer draws it)."""
    fig = figures.image_figure(uri, size, height=height,
                               title=f"{role}: block {block}, head {head}, attention of the class token")
    figures.add_log_heatmap(fig, attn * attn.size, size, "× uniform")
    return fig


def patch_heads_figure(result: PatchResult, shape: tuple[int, int], role: str, names: Sequence[str]) -> go.Figure:
    """The share of the logit difference each head brings back when patched alone, blocks x heads."""
    title = (f"{role}: the share each head brings back, logit({names[result.target]}) − "
             f"logit({names[result.baseline]})")
    return _no_grid(charts.head_grid_figure(result.recovered, shape, [], title, colorbar="recovered"))


def resid_figure(result: PatchResult, grid: tuple[int, int], role: str, ncols: int = 4) -> go.Figure:
    """The share each token of the residual stream brings back: one map of the patch tokens per depth (after the
    embedding, after each block), the class token's share in each map's label (`depth_maps_figure`)."""
    rec = result.recovered
    labels = [f"{name}<br>cls {rec[d, 0]:.0%}" if np.isfinite(rec[d, 0]) else f"{name}<br>not measured"
              for d, name in enumerate(depth_labels(len(rec) - 1))]
    title = (f"{role}: the share each token of the residual stream brings back"
             + (" (estimated)" if result.method == "attribution" else ""))
    return depth_maps_figure(rec[:, 1:].reshape(len(rec), *grid), labels, title, "recovered", ncols, ".0%")


def sinks_figure(image: np.ndarray, view: SinkView, role: str, key: str, ncols: int = 3) -> go.Figure:
    """The image once per block with that block's attention sinks (cyan), high-norm tokens (red) and tokens that
    are both (yellow) framed; above each copy, the share of the block's attention the class token receives.
    `key` names the image (model + image) for the encoded mosaic's cache."""
    blocks = view.received.shape[0]
    nrows = -(-blocks // ncols)
    s = image.shape[0]
    gap = max(4, s // 28)
    top = max(18, s // 8)  # room above each copy for its label
    cell_h, cell_w = s + top + gap, s + gap
    size = (nrows * cell_h, ncols * cell_w - gap)

    def canvas() -> np.ndarray:
        out = np.full((*size, 3), 255, dtype=np.uint8)
        for b in range(blocks):
            r, c = divmod(b, ncols)
            out[r * cell_h + top:r * cell_h + top + s, c * cell_w:c * cell_w + s] = image
        return out

    uri = figures.cached_png_uri(f"sinks|{key}|{blocks}|{ncols}", canvas())
    title = f"{role}: each block's sinks (cyan), high-norm tokens (red), both (yellow)"
    # sized for a half-width column (~400 px at 1280 px): no blank band above or below the copies
    fig = figures.image_figure(uri, size, height=int(70 + 420 * size[0] / size[1]), title=title)
    gh, gw = view.grid
    boxes: dict[str, list[figures.Box]] = {"sink": [], "high": [], "both": []}
    xs, ys, texts = [], [], []
    notes = []
    for b in range(blocks):
        r, c = divmod(b, ncols)
        y0, x0 = r * cell_h + top, c * cell_w
        notes.append({"x": x0 + s / 2, "y": y0 - 2, "text": f"block {b}: cls {view.received[b, 0]:.0%}",
                      "showarrow": False, "xanchor": "center", "yanchor": "bottom", "font": {"size": 14}})
        for t in np.flatnonzero(view.sink[b, 1:] | view.high[b, 1:]):
            sink, high = bool(view.sink[b, t + 1]), bool(view.high[b, t + 1])
            top_, left, bottom, right = figures.cell_box(*divmod(int(t), gw), (gh, gw), (s, s))
            boxes["both" if sink and high else "sink" if sink else "high"].append(
                (y0 + top_, x0 + left, y0 + bottom, x0 + right))
            xs.append(x0 + (left + right) / 2)
            ys.append(y0 + (top_ + bottom) / 2)
            texts.append(f"block {b}, token ({t // gw}, {t % gw}): receives {view.received[b, t + 1]:.1%} of the "
                         f"attention ({view.received[b, t + 1] * view.received.shape[1]:.0f}× even), norm "
                         f"{view.norms[b, t + 1]:.1f} ({view.norms[b, t + 1] / np.median(view.norms[b]):.1f}× "
                         "the median)")
    for kind, colour in (("sink", SINK_COLOUR), ("high", HIGH_COLOUR), ("both", BOTH_COLOUR)):
        if boxes[kind]:
            figures.add_boxes(fig, boxes[kind], colour, width=2.5, name=kind)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="flagged", text=texts,
                                 hovertemplate="%{text}<extra></extra>",
                                 marker={"size": 10, "color": "rgba(255,255,255,0.01)", "symbol": "square"}))
    fig.update_layout(annotations=notes)
    return fig


def second_figure(image: np.ndarray, second: np.ndarray, role: str, height: int = 260) -> go.Figure:
    """The two images of the pair side by side, as model `role` sees them."""
    title = f"{role}: the pair as the model sees it"
    s = image.shape[0]
    gap = max(4, s // 28)
    both = np.full((s, 2 * s + gap, 3), 255, dtype=np.uint8)
    both[:, :s], both[:, s + gap:] = image, second
    fig = figures.image_figure(figures.png_uri(both), both.shape[:2], height=height, title=title)
    fig.update_layout(annotations=[
        {"x": s / 2, "y": s, "text": "this image", "showarrow": False, "yanchor": "top", "font": {"size": 14},
         "bgcolor": "rgba(255,255,255,0.8)"},
        {"x": s + gap + s / 2, "y": s, "text": "second image", "showarrow": False, "yanchor": "top",
         "font": {"size": 14}, "bgcolor": "rgba(255,255,255,0.8)"}])
    return fig


# ----------------------------------------------------------------------------------------------
# Sentences, computed from the numbers the figures draw
# ----------------------------------------------------------------------------------------------

TOP_FRACTION = 0.1  # the heads whose share of |DLA| says how concentrated the answer is
ATTENDED_FRACTION = 0.05  # the most attended tokens of a head's class-token attention
HEAD_RECOVERS = 0.1  # a head "brings back" the difference from this share on
TOKEN_SHARE = 0.8  # the share of the patch tokens' recovery whose token count is reported
SMALL_CHANGE = 0.25  # a pair whose metric changes by less than this share of its value is called a small change


def lens_sentence(role: str, ln: Lens, names: Sequence[str]) -> str:
    """When the final answer becomes, and stays, the lens's top class; its probability on the way."""
    answer = names[ln.target]
    last = ln.blocks
    mid = (last + 1) // 2
    if ln.stay == 0:
        when = "is the lens's top class already after the embedding and stays so"
    elif ln.stay == last:
        when = f"becomes the lens's top class only after the last block ({depth_name(last)})"
    else:
        when = f"is the lens's top class from {depth_name(ln.stay)} on"
    if ln.first < ln.stay:
        when += f" (it is first on top after {depth_name(ln.first)}, then loses the top place again)"
    return (f"**{role}**: the answer **{answer}** ({ln.probs[-1]:.1%} at the end) {when}; it ranks "
            f"{int(ln.ranks[0])} of {ln.logits.shape[1]} classes after the embedding ({ln.probs[0]:.1%}) and "
            f"{int(ln.ranks[mid])} after {depth_name(mid)}, half-way ({ln.probs[mid]:.1%}).")


def patch_lens_sentence(role: str, ln: Lens, names: Sequence[str]) -> str:
    """How the patch tokens' reading of the answer grows, and where it is highest at the end."""
    patch = ln.patch
    means = patch.reshape(len(patch), -1).mean(axis=1)
    r, c = np.unravel_index(int(np.argmax(patch[-1])), patch.shape[1:])
    return (f"**{role}**: read from the patch tokens, the logit of **{names[ln.target]}** averages "
            f"{means[0]:.2f} after the embedding and {means[-1]:.2f} after {depth_name(ln.blocks)}, highest at token "
            f"({r}, {c}) ({patch[-1, r, c]:.2f}); the class token reads {ln.logits[-1, ln.target]:.2f} at that depth.")


def dla_sentence(role: str, att: Attribution, names: Sequence[str]) -> str:
    """The parts of the logit, their sum, the largest part, the strongest head and how concentrated the heads are."""
    b, h = strongest_head(att)
    share, k = top_share(att, TOP_FRACTION)
    grid = att.grid
    pb, pc = np.unravel_index(int(np.argmax(np.abs(grid))), grid.shape)
    aux = (f" (the auxiliary token head adds {att.aux:+.2f} to the model's output on top)"
           if abs(att.aux) > 0 else "")
    largest = (f"The largest single part is block {pb}'s MLP ({grid[pb, pc]:+.2f}); the strongest head, block {b}, "
               f"head {h}, writes {att.heads[b, h]:+.2f}" if pc == att.heads.shape[1] else
               f"The largest single part is a head, block {b}, head {h} ({att.heads[b, h]:+.2f})")
    return (f"**{role}**: the logit of **{names[att.target]}**, {att.logit:.2f}{aux}, is heads "
            f"{att.heads.sum():+.2f} + MLPs {att.mlps.sum():+.2f} + embedding {att.embed:+.2f} + biases "
            f"{att.bias:+.2f} = {att.total:.2f}. {largest}; the top {k} of {att.heads.size} heads "
            f"({TOP_FRACTION:.0%}) hold {share:.0%} of the heads' total |DLA| (equal heads: {k / att.heads.size:.0%}).")


def head_sentence(role: str, att: Attribution, block: int, column: int, attn: np.ndarray | None,
                  on_cls: float, names: Sequence[str]) -> str:
    """What the chosen cell of the DLA grid writes, and for a head, where its class-token attention goes."""
    heads = att.heads.shape[1]
    if column == heads:
        return (f"{role}, block {block}'s MLP writes {att.mlps[block]:+.2f} into the logit of "
                f"**{names[att.target]}**. An MLP has no attention: click a head to see where it looks.")
    flat = np.sort(attn.ravel())[::-1]
    k = max(1, math.ceil(ATTENDED_FRACTION * flat.size))
    return (f"{role}, block {block}, head {column} writes {att.heads[block, column]:+.2f} into the logit of "
            f"**{names[att.target]}**. Its class-token attention puts {flat[:k].sum():.0%} of its weight on the "
            f"{k} most attended of {flat.size} patch tokens ({ATTENDED_FRACTION:.0%}) and {on_cls:.1%} on the class "
            "token itself.")


def metric_sentence(role: str, classes: PairClasses, result: PatchResult, names: Sequence[str]) -> str:
    """The metric of the pair and its value on the two images."""
    t, b = names[result.target], names[result.baseline]
    why = ("the second image's top class" if int(np.argmax(classes.second_probs)) == result.baseline
           else "this image's runner-up: the second image's top class is the same")
    change = result.corrupted - result.clean
    small = (", small beside the metric itself: every share here is a share of that small change"
             if abs(change) < SMALL_CHANGE * abs(result.clean) else "")
    return (f"**{role}**: metric logit(**{t}**) − logit(**{b}**) ({why}): {result.clean:.2f} on this image, "
            f"{result.corrupted:.2f} on the second (a change of {change:+.2f}{small}); {t} "
            f"{classes.probs[result.target]:.1%} → {classes.second_probs[result.target]:.1%}.")


def patch_heads_sentence(role: str, result: PatchResult) -> str:
    """The head that brings back most of the difference, and how many bring back a tenth or more."""
    if result.nothing_to_recover:
        return (f"{role}: the two images give the same metric (within 1e-6): there is no difference for any head "
                "to bring back.")
    rec = result.recovered
    b, h = np.unravel_index(int(np.nanargmax(rec)), rec.shape)
    many = int((rec >= HEAD_RECOVERS).sum())
    return (f"{role}: one head alone brings back at most {rec[b, h]:.0%} of the difference (block {b}, head {h}); "
            f"{many} of {rec.size} heads bring back {HEAD_RECOVERS:.0%} or more.")


def resid_sentence(role: str, result: PatchResult, grid: tuple[int, int]) -> str:
    """Where the difference lives at the backbone's input, and from which depth the class token holds it."""
    from analysis.mechanisms import spatial_spread, tokens_for_share

    if result.nothing_to_recover:
        return f"{role}: the two images give the same metric (within 1e-6): no token has anything to bring back."
    rec = result.recovered
    est = " (estimated)" if result.method == "attribution" else ""
    parts = []
    if np.isfinite(rec[0]).all():
        patches = rec[0, 1:]
        t = int(np.argmax(patches))
        need = int(tokens_for_share(torch.from_numpy(patches)[None], TOKEN_SHARE)[0])
        spread = float(spatial_spread(torch.from_numpy(patches)[None], grid)[0])
        parts.append(f"after the embedding the best single token is patch ({t // grid[1]}, {t % grid[1]}), "
                     f"bringing back {patches[t]:.0%}{est}; {need} of {patches.size} patch tokens "
                     f"{'hold' if need != 1 else 'holds'} {TOKEN_SHARE:.0%} of what the patch tokens bring back "
                     "(counting the tokens that help)"
                     + (f", within {spread:.1f} cells of their centre on average" if need > 1 and math.isfinite(spread)
                        else ""))
    cls = rec[:, 0]
    measured = np.flatnonzero(np.isfinite(cls))
    half = [int(d) for d in measured if cls[d] >= 0.5]
    if half:
        est = ", estimated" if est else ""
        parts.append(f"the class token alone brings back half or more from {depth_name(half[0])} on "
                     f"({cls[half[0]]:.0%} there{est})" if all(cls[d] >= 0.5 for d in measured if d >= half[0])
                     else f"the class token alone brings back half or more first after {depth_name(half[0])} "
                     f"({cls[half[0]]:.0%}{est})")
    elif measured.size:
        parts.append(f"the class token alone never brings back half (at most {np.nanmax(cls):.0%}"
                     f"{', estimated' if est else ''})")
    return f"{role}: " + "; ".join(parts) + "."


def sinks_sentence(role: str, view: SinkView) -> str:
    """How many blocks have sinks and high-norm tokens among the patches, the largest, the class token."""
    sink, high = view.sink[:, 1:], view.high[:, 1:]
    blocks = view.received.shape[0]
    with_sinks = int(sink.any(axis=1).sum())
    parts = [f"**{role}**: {with_sinks} of {blocks} blocks have patch tokens receiving more than "
             f"{view.attention_factor:g}× an even share of the attention"]
    if with_sinks:
        b = int(np.argmax(sink.sum(axis=1)))
        got = float(view.received[b, 1:][sink[b]].sum())
        n = int(sink[b].sum())
        parts[-1] += (f" (most in block {b}: {n} token{'s' * (n != 1)} receiving {got:.0%} of its attention"
                      + (" together)" if n != 1 else ")"))
    tokens = int(high.any(axis=0).sum())
    both = int((sink & high).any(axis=0).sum())
    if tokens:
        parts.append(f"{tokens} patch token{'s have' if tokens != 1 else ' has'} a norm over {view.norm_factor:g}× "
                     f"the median in some block, {both} of {'them' if tokens != 1 else 'it'} also a sink there")
    else:
        parts.append(f"no patch token has a norm over {view.norm_factor:g}× the median in any block")
    cls_sink = int(view.sink[:, 0].sum())
    parts.append(f"the class token receives more than {view.attention_factor:g}× an even share in {cls_sink} of "
                 f"{blocks} blocks (at most {view.received[:, 0].max():.0%})")
    return "; ".join(parts) + "."
