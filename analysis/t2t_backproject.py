"""Carry a token-level map of the T2T-ViT backbone back to pixels through the T2T module.

T2T-ViT does not cut the image into hard patches: its tokens come from three overlapping soft
splits (unfolds) with two single-head attention layers in between (at 224 px):

    image 224x224 --split0 (k7 s4 p2)--> 56x56 --attn1--> 56x56 --split1 (k3 s2 p1)--> 28x28
                  --attn2--> 28x28 --split2 (k3 s2 p1)--> 14x14 backbone tokens

so a backbone token sees a 31 x 31 pixel box plus whatever the two T2T attentions mixed in.
Upsampling a 14x14 map bilinearly ignores both. Here the map is walked back stage by stage:

- through a split (`split_backproject`): a token's value is spread over the window it was
  unfolded from, with `F.fold` summing the overlaps. Two normalisations:
    "mass"     value / (number of in-image positions of its window) per position: every
               token's mass lands inside the image, so the total is conserved exactly;
               right for relevance / attribution maps, which are budgets to distribute.
    "coverage" fold of the values divided by the fold of ones: each position gets the average
               of the tokens whose windows cover it, so a constant map stays constant (total
               not conserved); right for maps read as intensities (e.g. attention probability).
- through a T2T attention (`attention_backproject`): the output token i was built from the
  tokens j it attended, with row-stochastic weights A[i, j], so its value is spread as
  r'_j = sum_i r_i A[i, j] (total conserved). With `residual=True`, A is replaced by (A + I) / 2
  because the T2T attention layer adds its value projection back (`v + proj(attn @ v)`), the
  same convention attention rollout uses for the backbone's residuals.

Shapes: B batch; a map on an (h, w) grid is (B, h, w); attention maps are (B, N, N) or (B, 1, N, N).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from t2t.tokens import SOFT_SPLITS as T2T_SOFT_SPLITS  # (kernel, stride, padding) of soft_split0, 1, 2
from t2t.tokens import grid_after as unfold_out_size  # windows along one side: an unfold's output size
from t2t.trace import window_box

BACKPROJECT_MODES = ("mass", "coverage")


def stage_grids(image_hw: tuple[int, int], splits=T2T_SOFT_SPLITS) -> list[tuple[int, int]]:
    """Grids [image, after split0, after split1, after split2], e.g. 224 -> 56 -> 28 -> 14."""
    grids = [tuple(image_hw)]
    for k, s, p in splits:
        h, w = grids[-1]
        grids.append((unfold_out_size(h, k, s, p), unfold_out_size(w, k, s, p)))
    return grids


def split_backproject(
    token_map: Tensor, in_hw: tuple[int, int], kernel: int, stride: int, padding: int, mode: str = "mass"
) -> Tensor:
    """Spread a map over the unfold's windows: (B, h_out, w_out) -> (B, H_in, W_in).

    Token (i, j) of the output grid was unfolded from the input window starting at
    (i * stride - padding, j * stride - padding) of side `kernel`; positions in the padding
    are dropped. See the module docstring for `mode`.
    """
    b, h_out, w_out = token_map.shape
    expected = (unfold_out_size(in_hw[0], kernel, stride, padding), unfold_out_size(in_hw[1], kernel, stride, padding))
    if (h_out, w_out) != expected:
        raise ValueError(f"a {in_hw} input gives a {expected} grid under k{kernel} s{stride} p{padding}, "
                         f"got a {(h_out, w_out)} map")
    geometry = {"kernel_size": kernel, "stride": stride, "padding": padding}
    values = rearrange(token_map, "b h w -> b 1 (h w)")
    ones_in = token_map.new_ones(1, 1, *in_hw)
    if mode == "mass":
        # in-image positions of each window: corner windows hang over the padding
        inside = F.unfold(ones_in, **geometry).sum(dim=1, keepdim=True)  # (1, 1, L)
        cols = (values / inside).expand(b, kernel * kernel, -1)
        return F.fold(cols, in_hw, **geometry)[:, 0]
    if mode == "coverage":
        cols = values.expand(b, kernel * kernel, -1)
        summed = F.fold(cols, in_hw, **geometry)[:, 0]
        coverage = F.fold(F.unfold(ones_in, **geometry), in_hw, **geometry)[:, 0]  # windows per position
        return summed / coverage.clamp_min(1)
    raise ValueError(f"mode must be one of {BACKPROJECT_MODES}, got {mode!r}")


def attention_backproject(token_map: Tensor, attention: Tensor, residual: bool = False) -> Tensor:
    """Spread each token's value over the tokens it attended: (B, h, w), (B, [1,] N, N) -> (B, h, w).

    r'_j = sum_i r_i A[i, j] with A row-stochastic, so the total is conserved. `residual=True`
    uses (A + I) / 2 for the layer's `v + ...` skip connection.
    """
    if attention.ndim == 4:
        if attention.shape[1] != 1:
            raise ValueError(f"single-head T2T attention expected, got {tuple(attention.shape)}")
        attention = attention[:, 0]
    b, h, w = token_map.shape
    if attention.shape != (b, h * w, h * w):
        raise ValueError(f"attention {tuple(attention.shape)} does not match a {(h, w)} map of batch {b}")
    r = rearrange(token_map, "b h w -> b (h w)").to(attention.dtype)
    spread = torch.einsum("bi,bij->bj", r, attention)
    if residual:
        spread = (spread + r) / 2
    return rearrange(spread, "b (h w) -> b h w", h=h)


def backproject(
    token_map: Tensor,
    image_size: int | tuple[int, int],
    attn1: Tensor | None = None,
    attn2: Tensor | None = None,
    mode: str = "mass",
    residual: bool = False,
    splits=T2T_SOFT_SPLITS,
) -> Tensor:
    """Backbone-grid map (B, h, w) -> pixel map (B, S, S) through split2, attn2, split1, attn1, split0.

    attn1 (B, [1,] N0, N0) and attn2 (B, [1,] N1, N1) are the T2T attention maps (`t2t.attn1_map`,
    `t2t.attn2_map`); pass None to skip an attention step, both None for pure geometry.
    """
    image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    grids = stage_grids(image_hw, splits)
    if tuple(token_map.shape[-2:]) != grids[-1]:
        got = tuple(token_map.shape[-2:])
        raise ValueError(f"a {image_hw} image has a {grids[-1]} backbone grid, got a map of {got}")
    attentions = (None, attn1, attn2)  # the attention applied right after split s
    x = token_map
    for s in reversed(range(len(splits))):  # split2, attn2, split1, attn1, split0: three stages
        k, st, p = splits[s]
        x = split_backproject(x, grids[s], k, st, p, mode)
        if s > 0 and attentions[s] is not None:
            x = attention_backproject(x, attentions[s], residual)
    return x


def backproject_trace(
    token_map: Tensor,
    trace: Any,
    image_size: int,
    use_attention: bool = True,
    mode: str = "mass",
    residual: bool = False,
) -> Tensor:
    """`backproject` with the T2T attention maps read from a `t2t.trace` of a T2T-ViT."""
    if not use_attention:
        return backproject(token_map, image_size, mode=mode, residual=residual)
    attn1 = trace["t2t.attn1_map"].detach()
    attn2 = trace["t2t.attn2_map"].detach()
    return backproject(token_map, image_size, attn1, attn2, mode=mode, residual=residual)


def backproject_map(
    model: torch.nn.Module,
    images: Tensor,
    token_map: Tensor,
    use_attention: bool = True,
    mode: str = "mass",
    residual: bool = False,
) -> Tensor:
    """Trace a T2T-ViT on (B, 3, S, S) images and carry a (B, h, w) token map to (B, S, S) pixels."""
    from analysis.modelio import image_size, run_trace

    if getattr(model, "default_cfg", {}).get("family", getattr(model, "family", "t2t")) != "t2t":
        raise ValueError("backprojection through the T2T module needs a T2T-ViT model")
    if not use_attention:
        return backproject(token_map, image_size(images), mode=mode, residual=residual)
    trace = run_trace(model, images, attention=True)
    return backproject_trace(token_map, trace, image_size(images), True, mode, residual)


def receptive_field_box(
    row: int, col: int, image_size: int | tuple[int, int], splits=T2T_SOFT_SPLITS
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Inclusive pixel box ((y0, y1), (x0, x1)) seen by backbone token (row, col) through the splits.

    The library's `t2t.trace.window_box` (exclusive bounds), in this module's inclusive convention.
    """
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    top, left, bottom, right = window_box(list(splits), (row, col), hw)
    return (top, bottom - 1), (left, right - 1)


def backproject_stages(token_map: Tensor, trace: Any, image_hw: tuple[int, int], mode: str = "mass",
                       use_attention: bool = True, residual: bool = True,
                       index: int | None = None) -> list[tuple[str, Tensor]]:
    """Walk backbone maps back to pixels through the T2T module, keeping every stage.

    Returns [(label, map)] for the backbone grid, then after split 2, attention 2, split 1,
    attention 1 and split 0 (pixels), as `backproject` does but with the stages in between. The
    T2T attentions are applied as r^T A through `trace.attention_left_product`, so the Performer's
    3136 x 3136 map is never formed.

    Which image's T2T attentions carry which map (never silently image 0's):
      token_map (h, w), index i   image i of the trace; each stage map is (h', w');
      token_map (h, w), no index  only for a trace of one image;
      token_map (B, h, w)         image b's attentions for map b, B = the trace's batch (no
                                  index); each stage map is (B, h', w').
    Anything else is a ValueError naming the mismatch.

    `residual`: each T2T attention layer adds its input back (`v + proj(attn @ v)`), so, as attention
    rollout does, A is replaced by A + I with rows re-normalised: (A + I) / 2 where a row of A sums
    to 1, and the identity where it sums to ~0 (a Performer row whose normaliser underflowed: that
    token takes nothing from the others). The total is then conserved in "mass" mode.
    """
    traced = tuple(getattr(trace, "image_size", image_hw))
    if traced != tuple(image_hw):
        raise ValueError(f"image_hw {tuple(image_hw)} is not the traced image size {traced}")
    grids = stage_grids(image_hw)
    logits = trace["logits"]
    batch, device = logits.shape[0], logits.device
    x, rows = _maps_for_trace(token_map, batch, index)
    single = token_map.ndim == 2
    if tuple(x.shape[-2:]) != grids[-1]:
        got = tuple(x.shape[-2:])
        raise ValueError(f"a {tuple(image_hw)} image has a {grids[-1]} backbone grid, got a map of {got}")

    def keep(m: Tensor) -> Tensor:
        return m[0] if single else m

    out = [(f"backbone {x.shape[-2]}×{x.shape[-1]}", keep(x))]
    for s in reversed(range(len(T2T_SOFT_SPLITS))):
        k, stride, p = T2T_SOFT_SPLITS[s]
        x = split_backproject(x, grids[s], k, stride, p, mode)
        where = "pixels" if s == 0 else f"{x.shape[-2]}×{x.shape[-1]}"
        out.append((f"← split {s}: {where}", keep(x)))
        if s > 0 and use_attention:
            name = f"t2t.attn{s}_map"
            r = rearrange(x, "b h w -> b (h w)")
            if residual:
                r = r / (1 + trace.attention_row_sums(name).float().cpu()[rows])  # rows of A + I, re-normalised
            # r^T A for every image of the trace; maps sit in their images' rows, other rows are 0
            r_all = r.new_zeros(batch, r.shape[1])
            r_all[rows] = r
            flat = trace.attention_left_product(name, r_all.to(device)).float().cpu()[rows]
            if residual:
                flat = flat + r
            x = rearrange(flat, "b (h w) -> b h w", h=x.shape[-2])
            out.append((f"← T2T attention {s}", keep(x)))
    return out


def _maps_for_trace(token_map: Tensor, batch: int, index: int | None) -> tuple[Tensor, Tensor]:
    """(b, h, w) float maps on the CPU and the (b,) trace rows (images) whose attentions they take."""
    if token_map.ndim == 2:
        if index is None:
            if batch != 1:
                raise ValueError(f"the trace holds {batch} images: pass index= (0..{batch - 1}) to say whose T2T "
                                 f"attentions carry this (h, w) map back, or a ({batch}, h, w) batch of maps")
            index = 0
        if not -batch <= index < batch:
            raise ValueError(f"index {index} is out of range for a trace of {batch} image(s)")
        return token_map[None].float().cpu(), torch.tensor([index % batch])
    if token_map.ndim == 3:
        if index is not None:
            raise ValueError(f"index={index} picks one image, but a batch of {token_map.shape[0]} maps was given: "
                             "pass one (h, w) map with index, or the batch without")
        if token_map.shape[0] != batch:
            raise ValueError(f"{token_map.shape[0]} maps for a trace of {batch} images: map b is carried back "
                             "through image b's attentions, so the batch sizes must agree")
        return token_map.float().cpu(), torch.arange(batch)
    raise ValueError(f"token_map must be (h, w) or (B, h, w), got shape {tuple(token_map.shape)}")
