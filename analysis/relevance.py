"""Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability", gradient rule.

Shapes: B batch, H heads, T = 1 + N tokens (class token first), L blocks.

For a self-attention-only model the relevance map starts as R = I (each token is relevant to
itself) and every block adds what attention mixes in:

    A_bar_l = mean_heads( (dScore/dA_l * A_l).clamp(min=0) )       (B, T, T)
    R <- R + A_bar_l @ R                                            (blocks in forward order)

Unlike rollout, heads are weighted by their gradients and only positive contributions are kept
before averaging, so heads that speak against the class do not cancel heads that speak for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from analysis.maps import tokens_to_grid
from analysis.modelio import attention_and_grads


def relevance(attentions: Sequence[Tensor], gradients: Sequence[Tensor], start_layer: int = 0) -> Tensor:
    """Relevance matrix R (B, T, T) from L (B, H, T, T) attention maps and their gradients.

    Block l's attention is paired with block l's own gradient. Blocks before `start_layer`
    are skipped (R stays the identity through them).
    """
    if len(attentions) != len(gradients):
        raise ValueError(f"{len(attentions)} attention maps but {len(gradients)} gradients")
    b, _, t, _ = attentions[0].shape
    r = torch.eye(t, dtype=attentions[0].dtype, device=attentions[0].device).expand(b, t, t)
    for a, g in zip(attentions[start_layer:], gradients[start_layer:], strict=True):  # over blocks
        if a.shape != g.shape:
            raise ValueError(f"attention {tuple(a.shape)} and gradient {tuple(g.shape)} differ")
        a_bar = (g * a).clamp_min(0).mean(dim=1)
        r = r + a_bar @ r
    return r


def cls_relevance(attentions: Sequence[Tensor], gradients: Sequence[Tensor], start_layer: int = 0) -> Tensor:
    """Class-token row of `relevance` over the patch tokens, (B, N)."""
    return relevance(attentions, gradients, start_layer)[:, 0, 1:]


def relevance_map(
    model: nn.Module, images: Tensor, target: int | Tensor | None = None, start_layer: int = 0
) -> Tensor:
    """Chefer relevance of class `target` (default: predicted) for (B, 3, S, S) images -> (B, h, w)."""
    attentions, gradients, grid = attention_and_grads(model, images, target)
    return tokens_to_grid(cls_relevance(attentions, gradients, start_layer), grid)
