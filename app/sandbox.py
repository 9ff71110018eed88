"""The soft-split sandbox (issue 29): what a choice of kernel, stride and padding for T2T-ViT's three soft
splits, and of the image size, does to the tokens, the windows, the cost and the model.

Owns: the geometry of a configuration, computed (`analyse` -> `Sandbox`: each stage's grid, token count,
numbers per token, window overlap in pixels and as a share, the receptive field of a token, and why a
configuration gives no token or leaves something out: `Problem`), the cost of its T2T attention layers
(`attention_cost`), a registry model with that configuration (`build`, on any device; `model_cost`:
parameters and multiply-accumulates counted on the meta device, as `python -m t2t list` counts them), the
guard for running one (`too_large_to_run`), the page's view (`clamped`: its controls' values from a session's
state or a tour step's; `page_view` -> `View`: what its figures and numbers are computed from; `input_steps` /
`image_uri`: the image at the chosen size; `tried`: "Try it"'s run) and the sandbox's figures. No Streamlit calls;
the page (app/views/7_soft_split_sandbox.py) draws; the lessons to take home (app/export.py) and the tours' fields
(app/tours.py) compute the same view from a step's parameters.

The validity check is CNN Explainer's (Wang et al., 2020, its convolution hyper-parameter view): a
window of side k, moved by s over a side of n cells padded by p on each side, fits (n + 2p - k) / s + 1
times, and that number must be a whole number of windows, at least one. nn.Unfold (and the official
T2T-ViT) rounds a fraction down instead of refusing it, so the paper's own choice at 224 px is not a
whole number at any stage (224 + 4 - 7) / 4 + 1 = 56.25: here a fraction is explained (what the rounding
leaves out: padding only, or cells of the image), never refused; no window at all is refused.

May import: app.figures (style, image figures, boxes), app.jobs (`memo`), plotly, numpy, torch, t2t. Not app.charts
(same layer) nor anything above (the models of the page's view are duck-typed `app.models.LoadedModel`s).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import t2t
from app import figures
from app.figures import CHART, CHOSEN, FONT, GRID, NEIGHBOUR, Box, add_boxes, add_chosen, add_grid_lines, image_figure
from app.jobs import memo
from t2t.images import PreprocessSteps, preprocess_steps
from t2t.layers import TokenPerformer, TokenTransformer, init_weights, sinusoid_table
from t2t.registry import build_model
from t2t.t2t_vit import SoftSplit, T2TViT
from t2t.tokens import SOFT_SPLITS
from t2t.trace import window_box

Split = tuple[int, int, int]  # (kernel, stride, padding) of one soft split
Splits = tuple[Split, Split, Split]

PAPER: Splits = tuple(tuple(s) for s in SOFT_SPLITS)  # type: ignore[assignment]  # 7/4/2, 3/2/1, 3/2/1
IN_CHANS = 3
TOKEN_DIM = inspect.signature(T2TViT).parameters["token_dim"].default  # 64: the T2T layers' width
# what the controls offer (the page's number inputs, links.RANGES)
KERNEL, STRIDE, PADDING, IMAGE = (1, 15), (1, 8), (0, 7), (32, 512)
IMAGE_STEP = 16
# "Try it" runs a model here: refused above these (a class shares the server; numbers, not a hang)
TRY_MAX_GMACS = 20.0
TRY_MAX_MAP_MB = 256.0  # one attention map formed whole: a softmax T2T layer's, or the trace's backbone maps
# the page's session-state keys (links.PAGE_PARAMS["sandbox"]: k0 s0 p0 ... size try): kernel, stride, padding
SPLIT_KEYS = tuple(tuple(f"sb_{what}{i}" for what in "ksp") for i in range(3))
SIZE_KEY, TRY_KEY = "sb_size", "sb_try"
DEFAULT_MODEL = "t2t_vit_7"  # the architecture built when the sidebar's T2T-ViT is not a registry T2T-ViT
DEFAULT_PATCH = 16  # ViT's patch side when the sidebar's ViT has no patch embedding
# "Try it": the trace steps shown (each step's grid, shape and token lengths)
TRACE_STEPS = ("t2t.split0", "t2t.attn1", "t2t.split1", "t2t.attn2", "t2t.split2", "t2t.project")
TRACE_TITLES = tuple(f"{name}: token length" for name in TRACE_STEPS)


@dataclass(frozen=True)
class Stage:
    """One soft split of a configuration, on a square image.

    side_in: side of the square map it cuts (pixels for split 0, the previous grid's side after);
    grid: side of its token grid (0: no window fits); exact: (side_in + 2p - k) / s + 1 before rounding;
    width: numbers per token (channels in x k x k); field: side in pixels of one token's window away from
    the border (composed through the splits before it); jump: pixels between neighbouring tokens' windows.
    """

    index: int
    split: Split
    side_in: int
    grid: int
    exact: float
    width: int
    field: int
    jump: int

    @property
    def kernel(self) -> int:
        return self.split[0]

    @property
    def stride(self) -> int:
        return self.split[1]

    @property
    def padding(self) -> int:
        return self.split[2]

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def overlap(self) -> int:
        """Pixels two neighbouring windows share along a row (negative: a gap of that many pixels)."""
        return self.field - self.jump

    @property
    def overlap_share(self) -> float:
        """The share of a window that its neighbour covers too (0 when they touch or leave a gap)."""
        return max(0, self.overlap) / self.field

    @property
    def left_over(self) -> int:
        """Rows (and columns) of the padded map after the last window: what rounding down leaves out."""
        return (self.side_in + 2 * self.padding - self.kernel) % self.stride if self.grid else 0

    @property
    def unit(self) -> str:
        return "pixels" if self.index == 0 else f"tokens of soft split {self.index - 1}"


@dataclass(frozen=True)
class Problem:
    """What a configuration does wrong or leaves out; level "error" (no token: nothing to build), "warning"
    (part of the image is never seen) or "info" (a fraction rounded down over padding only)."""

    level: str
    stage: int
    text: str


@dataclass(frozen=True)
class Sandbox:
    """A configuration and what it gives: `stages` (those up to the first without a token), `problems`."""

    splits: Splits
    img_size: int
    stages: tuple[Stage, ...]
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        """Every split gives at least one token (the model can be built and run)."""
        return not any(p.level == "error" for p in self.problems)

    @property
    def is_paper(self) -> bool:
        return self.splits == PAPER

    @property
    def backbone(self) -> Stage:
        return self.stages[-1]


def analyse(splits: Sequence[Sequence[int]], img_size: int, in_chans: int = IN_CHANS,
            token_dim: int = TOKEN_DIM) -> Sandbox:
    """The stages of `splits` on an img_size x img_size image, and their problems. Never raises for
    whole numbers k >= 1, s >= 1, p >= 0, img_size >= 1.

    Receptive field arithmetic (as for a stack of convolutions): field_i = field_{i-1} + (k_i - 1) jump_{i-1},
    jump_i = jump_{i-1} s_i, from field = jump = 1 for a pixel; `t2t.trace.window_box` gives the same
    sides for tokens away from the border (tested).
    """
    splits = tuple(tuple(int(v) for v in s) for s in splits)
    if len(splits) != 3 or any(len(s) != 3 for s in splits):
        raise ValueError(f"three (kernel, stride, padding) triples expected, got {splits}")
    stages: list[Stage] = []
    problems: list[Problem] = []
    side, field, jump = img_size, 1, 1
    channels = in_chans
    for i, (k, s, p) in enumerate(splits):
        padded = side + 2 * p
        exact = (padded - k) / s + 1
        grid = (padded - k) // s + 1 if padded >= k else 0
        field, jump = field + (k - 1) * jump, jump * s
        stage = Stage(i, (k, s, p), side, grid, exact, channels * k * k, field, jump)
        stages.append(stage)
        problems += _stage_problems(stage)
        if grid == 0:
            break
        side, channels = grid, token_dim
    return Sandbox(splits, img_size, tuple(stages), tuple(problems))  # type: ignore[arg-type]


def _stage_problems(st: Stage) -> list[Problem]:
    k, s, p = st.split
    n, i = st.side_in, st.index
    what = "image" if i == 0 else f"{n}×{n} token map of soft split {i - 1}"
    name = f"Soft split {i}"
    if st.grid == 0:
        return [Problem("error", i, f"{name}: a {k}×{k} window does not fit in the {what} padded by {p}: "
                        f"{n} + 2·{p} = {n + 2 * p} < {k}, so (n + 2p − k) / s + 1 = {st.exact:.3g} is below 1 "
                        f"and there is **no token at all**{'' if i == 0 else ' (the splits before leave too few)'}."
                        " Make the window smaller, the padding larger, or the strides before it smaller.")]
    out = []
    if st.left_over:
        lost = st.left_over - p  # the padding after the last row is p rows: beyond that, rows of the map itself
        head = f"{name}: ({n} + 2·{p} − {k}) / {s} + 1 = {st.exact:.6g}, rounded down to {st.grid} windows per side"
        if lost > 0:
            pad = "there is no padding" if p == 0 else f"beyond the {p} of padding"
            out.append(Problem("warning", i, f"{head} (nn.Unfold drops the rest): {pad}, the last {_rows(lost)} "
                                             f"of the {what} are never seen by any token."))
        else:
            out.append(Problem("info", i, f"{head}; the {_rows(st.left_over)} left over "
                                          f"{'is' if st.left_over == 1 else 'are'} padding: nothing is lost."))
    if s > k:
        out.append(Problem("warning", i, f"{name}: stride {s} > window {k}: {s - k} of every {s} rows and "
                                         f"columns of the {what} fall between windows and are never seen."))
    if p >= k:
        out.append(Problem("warning", i, f"{name}: padding {p} ≥ window {k}: the windows along the border "
                                         "hold nothing but padding (tokens of zeros)."))
    return out


def _rows(n: int) -> str:
    return "row and column" if n == 1 else f"{n} rows and columns"


def attention_cost(stage: Stage, width: int = TOKEN_DIM) -> int:
    """tokens² × width: the multiply-accumulates of one T2T layer's attention scores q kᵀ over a stage's
    tokens (q and k have `width` numbers each; attention × v costs as much again). Softmax attention
    (T2T-ViT-t) pays it; the Performer (T2T-ViT) pays tokens × m × width with m = width / 2 instead."""
    return stage.tokens * stage.tokens * width


def token_box(sandbox: Sandbox, stage: int, token: tuple[int, int]) -> Box:
    """Pixels (top, left, bottom, right; clipped) a token of soft split `stage` is made of:
    `t2t.trace.window_box` through the splits up to it."""
    return window_box(list(sandbox.splits[:stage + 1]), token, (sandbox.img_size, sandbox.img_size))


# ----------------------------------------------------------------------------------------------
# A registry model with a configuration
# ----------------------------------------------------------------------------------------------


def build(name: str, splits: Sequence[Sequence[int]], img_size: int, device: str | torch.device = "meta",
          ) -> T2TViT:
    """Registry T2T-ViT `name` with `splits` as its soft splits at `img_size`: fresh (random) weights.

    T2TModule takes no soft-split arguments (t2t_vit.py: `SOFT_SPLITS`), so the registry model is built
    as it is and the parts the splits decide are built again with the same constructors and arguments
    T2TModule uses: the three SoftSplit, both T2T layers (their input width is channels x k x k), the
    projection (token_dim x k2 x k2 inputs) and the position table (one row per backbone token + 1).
    With the paper's splits at the registry size the state dict has the registry model's names and
    shapes (tested). Raises ValueError for a configuration without tokens (`analyse` says why).
    """
    cfg = t2t.get_config(name)
    if cfg.family != "t2t":
        raise ValueError(f"{name} is not a T2T-ViT")
    box = analyse(splits, img_size)
    if not box.valid:
        raise ValueError(" ".join(p.text for p in box.problems if p.level == "error"))
    (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = box.splits
    token_dim = cfg.args.get("token_dim", TOKEN_DIM)
    with torch.device(device):
        model = build_model(name)
        t2t_module = model.tokens_to_token
        t2t_module.soft_split0 = SoftSplit(k0, s0, p0)
        t2t_module.soft_split1 = SoftSplit(k1, s1, p1)
        t2t_module.soft_split2 = SoftSplit(k2, s2, p2)
        if cfg.args["tokens_type"] == "transformer":
            t2t_module.attention1 = TokenTransformer(IN_CHANS * k0 * k0, token_dim, mlp_ratio=1.0)
            t2t_module.attention2 = TokenTransformer(token_dim * k1 * k1, token_dim, mlp_ratio=1.0)
        else:
            t2t_module.attention1 = TokenPerformer(IN_CHANS * k0 * k0, token_dim, kernel_ratio=0.5)
            t2t_module.attention2 = TokenPerformer(token_dim * k1 * k1, token_dim, kernel_ratio=0.5)
        t2t_module.project = nn.Linear(token_dim * k2 * k2, model.embed_dim)
        for part in (t2t_module.attention1, t2t_module.attention2, t2t_module.project):
            part.apply(init_weights)  # as T2TViT's constructor initialises them
        t2t_module.num_patches = box.backbone.tokens
        model.pos_embed = nn.Parameter(sinusoid_table(box.backbone.tokens + 1, model.embed_dim), requires_grad=False)
    model.img_size = img_size
    model.default_cfg = {**model.default_cfg, "img_size": img_size, "soft_splits": box.splits}
    return model


@functools.lru_cache(maxsize=512)
def model_cost(name: str, splits: Splits, img_size: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates of one image's forward) of `build(name, splits, img_size)`.

    Counted as `python -m t2t list` counts the registry (t2t/__main__.py): every state-dict element, and
    torch's FLOP counter / 2, on the meta device (shapes only, no arithmetic: 0.1-0.6 s for T2T-ViT-7 to -24 on
    the shared 2-core machine, so it is cached)."""
    model = build(name, splits, img_size, "meta")
    params = sum(v.numel() for v in model.state_dict().values())
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, IN_CHANS, img_size, img_size))
    return params, counter.get_total_flops() // 2


def too_large_to_run(name: str, box: Sandbox) -> str | None:
    """Why "Try it" will not run this configuration here (its size in numbers), or None."""
    _, macs = model_cost(name, box.splits, box.img_size)
    if macs / 1e9 > TRY_MAX_GMACS:
        return f"{macs / 1e9:.1f} GMACs for one image, more than the {TRY_MAX_GMACS:g} this server runs for a sandbox"
    cfg = t2t.get_config(name)
    maps = {"the backbone's attention maps (every block and head)":
            cfg.args["depth"] * cfg.args["num_heads"] * (box.backbone.tokens + 1) ** 2 * 4 / 2**20}
    if cfg.args["tokens_type"] == "transformer":
        for stage in box.stages[:2]:
            maps[f"T2T attention {stage.index + 1}'s softmax map"] = stage.tokens ** 2 * 4 / 2**20
    for what, mb in maps.items():
        if mb > TRY_MAX_MAP_MB:
            return f"{what} would take {mb:,.0f} MB, more than the {TRY_MAX_MAP_MB:g} MB this server gives a sandbox"
    return None


_SEED_LOCK = threading.Lock()


def random_model(name: str, splits: Splits, img_size: int, seed: int = 0) -> T2TViT:
    """`build` on the CPU with weights drawn from `seed` (the same weights for the same arguments), in
    evaluation mode."""
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):  # the global generator of this thread left as it was
        torch.manual_seed(seed)
        model = build(name, splits, img_size, "cpu")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The page's view: its controls' values, and what its figures and numbers are computed from
# ----------------------------------------------------------------------------------------------


def model_name(name: str) -> str:
    """The architecture the sandbox builds: the sidebar's T2T-ViT `name` when it is a registry T2T-ViT, else
    `DEFAULT_MODEL`."""
    return name if name in t2t.list_models("t2t") else DEFAULT_MODEL


def default_size(img_size: int) -> int:
    """The image side the controls start from: the T2T-ViT's own `img_size`, rounded down to the side control's
    step and kept within its range."""
    lo, hi = IMAGE
    return min(hi, max(lo, img_size // IMAGE_STEP * IMAGE_STEP))


def vit_patch(model: nn.Module) -> int:
    """Side in pixels of the ViT's patches (`DEFAULT_PATCH` for a model without a patch embedding)."""
    return int(getattr(getattr(model, "patch_embed", None), "patch_size", DEFAULT_PATCH))


def clamped(state: Mapping[str, Any], size: int) -> dict[str, int]:
    """The controls' session-state values for `state` (a session's, or a tour step's): the paper's splits and
    the side `size` for the keys not set, the values set (by a link or an older run) kept within the controls'
    ranges, the side on the control's step. The page writes them into its session state before drawing the
    controls; `state` is not changed."""
    ranges = (KERNEL, STRIDE, PADDING)
    out: dict[str, int] = {}
    for keys, split in zip(SPLIT_KEYS, PAPER, strict=True):
        for key, default, (lo, hi) in zip(keys, split, ranges, strict=True):
            out[key] = min(hi, max(lo, int(state.get(key, default))))
    lo, hi = IMAGE
    side = int(state.get(SIZE_KEY, size))
    out[SIZE_KEY] = min(hi, max(lo, lo + (side - lo) // IMAGE_STEP * IMAGE_STEP))
    return out


def paper_values(size: int) -> dict[str, int]:
    """Session-state values of the paper's choice at `size` px (the page's button sets them)."""
    values = {key: v for keys, split in zip(SPLIT_KEYS, PAPER, strict=True) for key, v in zip(keys, split, strict=True)}
    return {**values, SIZE_KEY: size}


@dataclass(frozen=True)
class View:
    """What the page shows for one configuration: the architecture built (`name`), ViT's patch side (`patch`),
    the configuration (`box`) and the paper's splits at the same image size (`paper`)."""

    name: str
    patch: int
    box: Sandbox
    paper: Sandbox

    @property
    def cost(self) -> tuple[int, int]:
        """(parameters, MACs) of `name` built with this configuration (`model_cost`; raises without a token)."""
        return model_cost(self.name, self.box.splits, self.box.img_size)

    @property
    def paper_cost(self) -> tuple[int, int]:
        """(parameters, MACs) of `name` with the paper's splits at the same image size."""
        return model_cost(self.name, self.paper.splits, self.paper.img_size)

    @property
    def vit_grid(self) -> int:
        """Side of ViT's grid of hard patches on this image side (nn.Conv2d's stride = kernel = patch)."""
        return (self.box.img_size - self.patch) // self.patch + 1


def make_view(name: str, patch: int, splits: Sequence[Sequence[int]], img_size: int) -> View:
    """The `View` of `splits` at `img_size` for architecture `name` and ViT patch side `patch`."""
    return View(name, patch, analyse(splits, img_size), analyse(PAPER, img_size))


def page_view(state: Mapping[str, Any], lm: Any, vm: Any) -> View:
    """The page's view for session state `state` (a tour step's parameters; missing ones take the page's
    defaults) with the sidebar's T2T-ViT `lm` and ViT `vm` (app.models.LoadedModel): the architecture of `lm`
    (`model_name`), the controls' values `clamped` from `default_size(lm.img_size)`, ViT's patch of `vm`."""
    values = clamped(state, default_size(lm.img_size))
    splits = tuple(tuple(values[key] for key in keys) for keys in SPLIT_KEYS)
    return make_view(model_name(lm.name), vit_patch(vm.model), splits, values[SIZE_KEY])


def backbone_centre(box: Sandbox) -> tuple[float, float]:
    """(y, x) in pixels: the centre of the window of the backbone token in the middle of its grid (where the
    ViT figure marks the patch to compare with)."""
    top, left, bottom, right = token_box(box, 2, (box.backbone.grid // 2, box.backbone.grid // 2))
    return (top + bottom) / 2, (left + right) / 2


@memo
def input_steps(model_key: str, image_key: str, size: int, _lm: Any, _img: Any) -> PreprocessSteps:
    """The image `_img` (PIL) at `size` px with the T2T-ViT `_lm`'s own transform (its mean, std and crop);
    cached under the model's and image's keys."""
    return preprocess_steps(_img, _lm.cfg["mean"], _lm.cfg["std"], size, _lm.crop_pct)


def image_uri(model_key: str, image_key: str, size: int, steps: PreprocessSteps) -> str:
    """PNG data URI of the cropped image of `input_steps` (cached under the same keys): the figures' picture."""
    return figures.cached_png_uri(f"{model_key}|{image_key}|{size}", np.asarray(steps.cropped))


@memo
def tried(name: str, splits: Splits, size: int, model_key: str, image_key: str, _x: torch.Tensor) -> dict:
    """"Try it": one forward of `random_model(name, splits, size)` on the image `_x` (1, 3, size, size): each of
    `TRACE_STEPS`' grid, shape and token lengths (h, w) from the trace, the backbone's grid and the logits' size."""
    model = random_model(name, splits, size)
    with torch.no_grad():
        tr = t2t.trace(model, _x, attention=False)
    return {"grids": [tuple(tr.grid(n)) for n in TRACE_STEPS], "shapes": [tuple(tr.shape(n)) for n in TRACE_STEPS],
            "norms": [np.linalg.norm(figures.to_numpy(tr[n][0]), axis=1).reshape(tr.grid(n)) for n in TRACE_STEPS],
            "blocks": tuple(tr.grid("blocks.0")), "classes": int(tr["logits"].shape[-1])}


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def window_figure(uri: str | None, box: Sandbox, stage: int, height: int = 360) -> go.Figure:
    """The image with the window of the token at the centre of soft split `stage`'s grid (red) and its left
    and right neighbours' (dotted): how much neighbouring windows share."""
    size = (box.img_size, box.img_size)
    st_ = box.stages[stage]
    row = col = st_.grid // 2
    chosen = token_box(box, stage, (row, col))
    shared = (f"{st_.overlap} px ({st_.overlap_share:.0%}) shared" if st_.overlap > 0 else
              "touching" if st_.overlap == 0 else f"{-st_.overlap} px apart")
    side = (chosen[2] - chosen[0], chosen[3] - chosen[1])
    shown = "" if side == (st_.field, st_.field) else f" ({side[0]}×{side[1]} at the border)"
    title = (f"Soft split {stage}: {st_.grid}×{st_.grid} tokens<br>{st_.field}×{st_.field} px windows{shown}, "
             f"{shared}")
    fig = image_figure(uri, size, height=height, title=title)
    near = [token_box(box, stage, (row, c)) for c in (col - 1, col + 1) if 0 <= c < st_.grid]
    add_boxes(fig, near, NEIGHBOUR, width=2, dash="dot", name="neighbours")
    return add_chosen(fig, chosen, size, height)


def vit_figure(uri: str | None, img_size: int, patch: int, centre: tuple[float, float], height: int = 360,
               ) -> go.Figure:
    """The image cut into ViT's hard patch x patch grid, the patch under pixel `centre` (y, x) in red."""
    size = (img_size, img_size)
    grid = (img_size // patch, img_size // patch)
    fig = image_figure(uri, size, height=height, title=f"ViT: {grid[0]}×{grid[1]} hard patches<br>"
                                                      f"{patch}×{patch} px, 0 px shared")
    add_grid_lines(fig, grid, (grid[0] * patch, grid[1] * patch), color="rgba(255,255,255,0.6)")
    r = min(grid[0] - 1, int(centre[0] // patch))
    c = min(grid[1] - 1, int(centre[1] // patch))
    near = [(r * patch, cc * patch, (r + 1) * patch, (cc + 1) * patch) for cc in (c - 1, c + 1) if 0 <= cc < grid[1]]
    add_boxes(fig, near, NEIGHBOUR, width=2, dash="dot", name="neighbours")
    return add_chosen(fig, (r * patch, c * patch, (r + 1) * patch, (c + 1) * patch), size, height)


def cost_figure(box: Sandbox, paper: Sandbox, height: int = 320) -> go.Figure:
    """Attention cost (tokens² × width) of T2T layers 1 and 2 for this configuration and the paper's, log scale."""
    layers = ["T2T attention 1", "T2T attention 2"]
    fig = go.Figure()
    for which, colour, label in ((paper, "#9e9e9e", "paper (7/4/2, 3/2/1, 3/2/1)"), (box, CHOSEN, "this choice")):
        costs = [attention_cost(s) for s in which.stages[:2]]
        fig.add_trace(go.Bar(x=layers[:len(costs)], y=costs, name=label, marker_color=colour,
                             text=[short(c) for c in costs], textposition="outside",
                             hovertemplate="%{x}: %{y:,} multiply-adds<extra>" + label + "</extra>"))
    fig.update_layout(height=height, barmode="group", font=FONT, margin={"l": 10, "r": 10, "t": 40, "b": 80},
                      title={"text": f"Attention cost: tokens² × {TOKEN_DIM}", "font": FONT, "x": 0.01},
                      yaxis={"type": "log", "dtick": 1, "tickformat": "~s", "title": "multiply-adds", **GRID},
                      xaxis=GRID,
                      legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
                      **CHART)
    fig.update_yaxes(range=[np.log10(max(1, min(attention_cost(s) for b in (box, paper) for s in b.stages[:2]))) - 0.5,
                            np.log10(max(attention_cost(s) for b in (box, paper) for s in b.stages[:2])) + 0.8])
    return fig


def short(n: float) -> str:
    """1.2 G, 34 M, 5.6 k: a count in three figures at most."""
    for div, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"

