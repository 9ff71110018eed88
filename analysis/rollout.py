"""Attention rollout (Abnar & Zuidema, ACL 2020) and gradient-weighted rollout (jacobgil/vit-explain).

Shapes: B batch, H heads, T = 1 + N tokens (class token first), L blocks.

Rollout models each block as a mixing of token identities: the residual connection keeps a
token's own identity, so a block is approximated by A' = (A + I) / 2, re-normalised to be
row-stochastic, and the joint attention of blocks l0..L-1 is the product
A'_{L-1} ... A'_{l0} (later blocks on the left). The class-token row of that product, over
the patch tokens, is the explanation map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from analysis.maps import tokens_to_grid
from analysis.modelio import attention_and_grads, attention_trace

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: Tensor, head_fusion: str = "mean") -> Tensor:
    """(B, H, T, T) per-head attention -> (B, T, T) by mean / max / min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def num_discarded(num_tokens: int, discard_ratio: float) -> int:
    """How many of the T - 1 patch-token columns of a row `discard_lowest` zeroes.

    floor(discard_ratio * (T - 1)), with a small tolerance so that e.g. 0.3 * 10 gives 3 although
    it is 3.0000000000000004 in floating point, and 0.29 * 100 gives 29, not 28.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    return int(discard_ratio * (num_tokens - 1) + 1e-9)


def discard_lowest(attention: Tensor, discard_ratio: float) -> Tensor:
    """Zero the lowest `discard_ratio` fraction of each row's weights, (B, T, T) -> (B, T, T).

    Choice (differs from vit-explain on purpose, documented here):
    - per row: each query token loses the same fraction of its weights. vit-explain ranks the
      whole flattened T x T matrix at once, so rows with small weights (e.g. very peaked or very
      flat ones) can lose everything while others lose nothing.
    - the class-token column (index 0) is never dropped, as vit-explain intends (it protects
      index 0, although in its flattened indexing that is only the (0, 0) entry): the class
      token is where information is gathered, and dropping it would sever the paths the
      rollout follows. So floor(discard_ratio * (T - 1)) of the T - 1 patch columns are zeroed.
    Rows are not re-normalised here; `rollout` does that after adding the identity.
    """
    k = num_discarded(attention.shape[-1], discard_ratio)
    if k == 0:
        return attention
    patches = attention[..., 1:]
    lowest = patches.topk(k, dim=-1, largest=False).indices  # (B, T, k), ties broken by topk
    patches = patches.scatter(-1, lowest, 0.0)
    return torch.cat([attention[..., :1], patches], dim=-1)


def _mix_with_identity(fused: Tensor, add_identity: bool) -> Tensor:
    """(B, T, T) -> row-stochastic (B, T, T): (A + I) / 2 for the residual, then rows sum to 1.

    Rows are re-normalised whatever the input, since max/min head fusion and discarding leave
    rows that no longer sum to 1. (vit-explain divides by `a.sum(dim=-1)` without keepdim, which
    broadcasts over columns instead of rows; here each row is divided by its own sum.)
    """
    if add_identity:
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = (fused + eye) / 2
    return fused / fused.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(fused.dtype).tiny)


def _chain(layers: Sequence[Tensor]) -> Tensor:
    """Product A_{L-1} ... A_0 of (B, T, T) matrices: later blocks multiply from the left."""
    result = layers[0]
    for a in layers[1:]:  # a loop over blocks (few), each step a batched matmul
        result = a @ result
    return result


def _chain_row(layers: Sequence[Tensor], row: int = 0) -> Tensor:
    """Row `row` of A_{L-1} ... A_0, (B, T): e_row^T A_{L-1} ... A_0 evaluated left to right.

    Vector-matrix products cost T^2 per block instead of the T^3 of forming the whole product,
    which is what makes the class-token explanation cheap next to a forward pass.
    """
    b, t, _ = layers[-1].shape
    v = torch.zeros(b, 1, t, dtype=layers[-1].dtype, device=layers[-1].device)
    v[:, 0, row] = 1.0
    for a in reversed(layers):  # over blocks, last first
        v = v @ a
    return v[:, 0]


def rollout(
    attentions: Sequence[Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    add_identity: bool = True,
) -> Tensor:
    """Joint attention of blocks start_layer..L-1, list of L (B, H, T, T) -> (B, T, T).

    Each block: fuse heads, drop the lowest weights per row (`discard_lowest`), mix with the
    identity for the residual ((A + I) / 2) and re-normalise rows; then multiply, later blocks
    on the left. Row t of the result says how much of each input token ends up in token t.
    """
    return _chain(_mixed_blocks(attentions, head_fusion, discard_ratio, start_layer, add_identity))


def _mixed_blocks(
    attentions: Sequence[Tensor], head_fusion: str, discard_ratio: float, start_layer: int, add_identity: bool
) -> list[Tensor]:
    """Each block's (B, T, T) row-stochastic mixing matrix, as `rollout` describes."""
    if not 0 <= start_layer < len(attentions):
        raise ValueError(f"start_layer {start_layer} out of range for {len(attentions)} blocks")
    return [
        _mix_with_identity(discard_lowest(fuse_heads(a, head_fusion), discard_ratio), add_identity)
        for a in attentions[start_layer:]
    ]


def cls_rollout(
    attentions: Sequence[Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    add_identity: bool = True,
) -> Tensor:
    """Class-token row of `rollout` over the patch tokens, (B, T - 1) = (B, N).

    Same arguments as `rollout`; only the class row is propagated (`_chain_row`), so this
    costs L T^2 rather than L T^3.
    """
    mixed = _mixed_blocks(attentions, head_fusion, discard_ratio, start_layer, add_identity)
    return _chain_row(mixed)[:, 1:]


def grad_rollout(
    attentions: Sequence[Tensor],
    gradients: Sequence[Tensor],
    discard_ratio: float = 0.9,
    add_identity: bool = True,
) -> Tensor:
    """Gradient-weighted rollout (vit-explain), lists of L (B, H, T, T) -> class row (B, N).

    Block l uses mean_heads(A_l * dScore/dA_l) clamped at 0 (the heads' attention weighted by
    how much the class score increases with it), then the same discard / identity / product
    as `rollout`. Block l's attention is paired with block l's OWN gradient: vit-explain
    collects gradients with backward hooks, which fire in reverse block order, and zips them
    with the forward-ordered attentions, so block l is weighted by block L-1-l's gradient.
    """
    if len(attentions) != len(gradients):
        raise ValueError(f"{len(attentions)} attention maps but {len(gradients)} gradients")
    mixed = []
    for a, g in zip(attentions, gradients, strict=True):  # over blocks only
        if a.shape != g.shape:
            raise ValueError(f"attention {tuple(a.shape)} and gradient {tuple(g.shape)} differ")
        fused = (a * g).mean(dim=1).clamp_min(0)
        mixed.append(_mix_with_identity(discard_lowest(fused, discard_ratio), add_identity))
    return _chain_row(mixed)[:, 1:]


# --- model-level wrappers -------------------------------------------------------------------


@torch.no_grad()
def rollout_map(
    model: nn.Module,
    images: Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> Tensor:
    """Attention rollout of a model on (B, 3, S, S) images -> (B, h, w) map on the token grid."""
    attentions, grid = attention_trace(model, images)
    row = cls_rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio,
                      start_layer=start_layer)
    return tokens_to_grid(row, grid)


def grad_rollout_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    discard_ratio: float = 0.9,
) -> Tensor:
    """Gradient-weighted rollout for class `target` (default: the predicted class) -> (B, h, w)."""
    attentions, gradients, grid = attention_and_grads(model, images, target)
    return tokens_to_grid(grad_rollout(attentions, gradients, discard_ratio), grid)
