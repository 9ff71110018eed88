"""Per-head attention statistics: mean attention distance (ViT paper, Fig. 7) and attention entropy.

Mean attention distance is the image-space analogue of a CNN's receptive field: the distance in
pixels between a query token and the tokens it attends, weighted by the attention, averaged over
queries. ViT's early blocks mix heads that look locally with heads that look globally; T2T-ViT's
soft split already models local structure, which shows up as fewer local heads.

Shapes: B batch, H heads, T = 1 + N tokens (class token first), h x w = N token grid, L blocks.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


def token_centres(grid: tuple[int, int], token_stride: float | tuple[float, float] = 1.0) -> Tensor:
    """(N, 2) pixel coordinates (y, x) of the token centres, row-major.

    Tokens sit `token_stride` pixels apart (16 for ViT-B/16 and for T2T-ViT, whose three soft
    splits have strides 4, 2, 2); only differences matter, so the origin is irrelevant.
    """
    sy, sx = (token_stride, token_stride) if isinstance(token_stride, int | float) else token_stride
    ys, xs = torch.meshgrid(torch.arange(grid[0]) * float(sy), torch.arange(grid[1]) * float(sx), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=-1)


@functools.lru_cache(maxsize=8)
def _token_distances(grid: tuple[int, int], token_stride: float | tuple[float, float]) -> Tensor:
    """(N, N) Euclidean pixel distances between token centres; cached, as every block reuses it.

    Shared: never modified in place. Made outside any inference mode, so that a first call under
    `torch.inference_mode()` does not cache a tensor that later differentiable calls cannot use.
    """
    with torch.inference_mode(False), torch.no_grad():
        centres = token_centres(grid, token_stride)
        return torch.cdist(centres, centres)


def mean_token_distance(grid: tuple[int, int], token_stride: float | tuple[float, float] = 1.0) -> float:
    """Mean pixel distance between token centres over all (query, key) pairs, self-pairs included:
    what `mean_attention_distance` gives for a head that spreads its attention evenly over the patches."""
    stride = token_stride if isinstance(token_stride, int | float) else tuple(token_stride)  # hashable
    return float(_token_distances(tuple(grid), stride).double().mean())


def patch_attention(attention: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """(..., T, T) -> (..., N, N): patch-to-patch attention, each row re-normalised to sum to 1.

    The class token has no position, so its row and column are dropped; re-normalising makes each
    row a distribution over patch positions (the weight a query put on the class token would
    otherwise count as distance 0).
    """
    a = attention[..., num_prefix_tokens:, num_prefix_tokens:]
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def mean_attention_distance(
    attention: Tensor,
    grid: tuple[int, int],
    token_stride: float | tuple[float, float] = 1.0,
    num_prefix_tokens: int = 1,
) -> Tensor:
    """(B, H, T, T) softmax attention -> (B, H) mean attention distance in pixels.

    d_i = sum_j a_ij |c_i - c_j| (Euclidean, token centres c), averaged over the N query tokens.
    """
    a = attention[..., num_prefix_tokens:, num_prefix_tokens:]
    stride = token_stride if isinstance(token_stride, int | float) else tuple(token_stride)  # hashable
    dist = _token_distances(tuple(grid), stride).to(a)  # (N, N)
    # sum_j a_ij d_ij / sum_j a_ij: `patch_attention`'s re-normalisation without a normalised copy
    # of the maps; the weighted sum is a matrix product, one read of the maps instead of three passes
    weighted = torch.einsum("...ij,ij->...i", a, dist)
    return (weighted / a.sum(dim=-1).clamp_min(torch.finfo(a.dtype).tiny)).mean(dim=-1)


def attention_entropy(attention: Tensor, patches_only: bool = False, num_prefix_tokens: int = 1) -> Tensor:
    """(B, H, T, T) -> (B, H) mean over query rows of the entropy -sum_j a_ij log a_ij (nats).

    Uniform attention over T tokens gives log T, attention to a single token 0. With
    `patches_only`, rows and columns of the class token are dropped and rows re-normalised
    (uniform then gives log N).
    """
    a = patch_attention(attention, num_prefix_tokens) if patches_only else attention
    plogp = a * torch.log(a.clamp_min(torch.finfo(a.dtype).tiny))  # 0 log 0 = 0
    return -plogp.sum(dim=-1).mean(dim=-1)


def attention_profile(
    attentions: list[Tensor],
    grid: tuple[int, int],
    token_stride: float | tuple[float, float],
    num_prefix_tokens: int = 1,
) -> dict[str, Tensor]:
    """Both statistics for L blocks' (B, H, T, T) attention -> {"distance", "entropy"}, each (B, L, H)."""
    # block by block: stacking the maps first would copy the largest tensors of the trace
    distance = [mean_attention_distance(a, grid, token_stride, num_prefix_tokens) for a in attentions]
    entropy = [attention_entropy(a) for a in attentions]
    return {"distance": torch.stack(distance, dim=1), "entropy": torch.stack(entropy, dim=1)}


def model_attention_profile(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Trace a model on (B, 3, S, S) images -> {"distance" (pixels), "entropy"}, each (B, L, H).

    The token stride in pixels is the image size over the grid (16 at 224 px for both families).
    """
    from analysis.modelio import attention_trace

    attentions, grid = attention_trace(model, images)
    stride = (images.shape[-2] / grid[0], images.shape[-1] / grid[1])
    return attention_profile(attentions, grid, stride, int(getattr(model, "num_prefix_tokens", 1)))
