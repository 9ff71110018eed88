"""Feature richness and redundancy of token features, block by block (T2T-ViT paper, Fig. 2).

Yuan et al. show ViT feature maps (each channel of the patch tokens laid out on the token grid)
where many channels are blank or near-constant ("invalid") and many look alike, while T2T-ViT's
channels carry more varied local structure. The metrics here put numbers on that picture:

    invalid_fraction    share of channels whose map is (nearly) flat: no spatial information
    mean_abs_corr       mean |Pearson correlation| between the valid channels' maps: redundancy
    effective_rank      exp(entropy of normalised singular values) of the token x channel matrix
                        (Roy & Vetterli 2007): how many directions the features really use
    high_freq_fraction  share of a channel map's (non-constant) spectral energy at high spatial
                        frequency: local detail such as edges and texture

Shapes: B batch, T = 1 + N tokens (class token first), D channels, h x w = N token grid,
L blocks. Every metric is computed for all channels / images at once (no loops over channels).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

METRICS = ("invalid_fraction", "mean_abs_corr", "effective_rank", "high_freq_fraction")
FAST_CORR_CHANNELS = 96  # channels whose pairs estimate mean |corr| in `block_metrics(fast=True)`


def feature_maps(tokens: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """(B, T, D) tokens -> (B, D, h, w) channel maps of the patch tokens (class token dropped)."""
    return rearrange(tokens[:, num_prefix_tokens:], "b (h w) d -> b d h w", h=grid[0], w=grid[1])


def neighbour_correlation(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N, D) patch tokens -> (B,): mean over channels and over right and lower neighbour pairs of
    the Pearson correlation between a channel at a token and at its neighbour (how smoothly each
    channel changes across the grid). Channels constant over a direction's pairs are left out.
    """
    x = rearrange(tokens.double(), "b (h w) d -> b h w d", h=grid[0], w=grid[1])
    values = []
    for a, b in ((x[:, :, :-1], x[:, :, 1:]), (x[:, :-1], x[:, 1:])):  # right, then lower neighbours
        a = a.flatten(1, 2) - a.flatten(1, 2).mean(1, keepdim=True)  # (B, pairs, D)
        b = b.flatten(1, 2) - b.flatten(1, 2).mean(1, keepdim=True)
        denom = ((a ** 2).sum(1) * (b ** 2).sum(1)).sqrt()  # (B, D)
        values.append(((a * b).sum(1) / denom, denom > 1e-12))
    corr = torch.cat([v for v, _ in values], dim=1)
    ok = torch.cat([k for _, k in values], dim=1)
    return (corr.where(ok, 0).sum(1) / ok.sum(1)).float()  # NaN when every channel is constant


def _as_tokens(maps: Tensor) -> Tensor:
    """(B, D, h, w) -> (B, N, D); a free view when the maps are a view of token features.

    All metrics reduce over tokens in this layout, where each token's channels are contiguous.
    """
    return rearrange(maps, "b d h w -> b (h w) d")


def _centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N, D) -> channel-centred (B, N, D) and the channels' spatial std (B, D)."""
    xc = x - x.mean(dim=1, keepdim=True)
    return xc, xc.square().mean(dim=1).sqrt()


def channel_spread(maps: Tensor) -> Tensor:
    """(B, D, h, w) -> (B, D) spatial standard deviation of each channel map."""
    return _centre(_as_tokens(maps))[1]


def _invalid(spread: Tensor, rel_threshold: float) -> Tensor:
    scale = spread.square().mean(dim=-1, keepdim=True).sqrt()
    return spread <= rel_threshold * scale


def invalid_channels(maps: Tensor, rel_threshold: float = 0.1) -> Tensor:
    """(B, D, h, w) -> (B, D) bool: channel maps that are (nearly) constant over the grid.

    A channel is invalid when its spatial std is below `rel_threshold` times the layer's scale,
    the RMS of all channels' spatial stds (sqrt of the mean per-channel variance), per image.
    - Spatial std, not magnitude: a map carries spatial information only through its variation;
      an all-zero map and a map stuck at a large constant are both invalid (the constant is a bias
      the next LayerNorm or linear layer can supply without that channel).
    - Relative, not absolute: the residual stream's scale grows with depth and differs between
      models and checkpoints, so a fixed threshold would flag everything in one block and nothing
      in another. Relative to the layer's own typical variation, the fraction is comparable
      across blocks and models, and invariant to rescaling the features.
    - RMS rather than median as the scale: if most channels are dead (the case the paper
      describes for ViT), the median is itself ~0 and would flag nothing. The price is that a few
      channels with huge variation raise the scale; 0.1 (1 % of the mean variance) leaves room.
    """
    return _invalid(channel_spread(maps), rel_threshold)


def invalid_fraction(maps: Tensor, rel_threshold: float = 0.1) -> Tensor:
    """(B, D, h, w) -> (B,) fraction of invalid channels (`invalid_channels`)."""
    return invalid_channels(maps, rel_threshold).float().mean(dim=-1)


def channel_subset(num_channels: int, max_channels: int | None) -> Tensor | None:
    """Indices of `max_channels` channels evenly spread over [0, D), or None to keep all.

    Deterministic (same channels for every block and model), and spread rather than the first k,
    since neighbouring channel indices carry no meaning in a transformer.
    """
    if max_channels is None or max_channels >= num_channels:
        return None
    return torch.linspace(0, num_channels - 1, max_channels).round().long()


def _mean_abs_corr(xc: Tensor, spread: Tensor, valid: Tensor, max_channels: int | None) -> Tensor:
    """Centred (B, N, D), std (B, D), valid (B, D) -> (B,) mean |corr| over distinct valid pairs."""
    subset = channel_subset(xc.shape[-1], max_channels)
    if subset is not None:
        subset = subset.to(xc.device)
        xc, spread, valid = xc[..., subset], spread[..., subset], valid[..., subset]
    z = xc / spread.clamp_min(1e-12)[:, None, :]
    corr = z.transpose(1, 2) @ z / xc.shape[1]  # (B, D, D)
    v = valid.to(corr.dtype)
    pairs = v[:, :, None] * v[:, None, :] * (1 - torch.eye(corr.shape[-1], dtype=corr.dtype, device=corr.device))
    return (corr.abs() * pairs).sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp_min(1)


def mean_abs_correlation(maps: Tensor, valid: Tensor | None = None, max_channels: int | None = None) -> Tensor:
    """(B, D, h, w) -> (B,) mean |Pearson correlation| over pairs of distinct valid channels.

    Flat channels have no defined correlation and are left out (`valid`, default: the channels
    `invalid_channels` keeps). 1 means every channel map is a copy (up to sign and scale) of the
    others; about sqrt(2 / (pi N)) is what N independent noise tokens give.
    The D x D correlation matrix is the cost (D^2 N per image and block); `max_channels` estimates
    the mean from the pairs among an evenly spread subset of channels instead (`channel_subset`),
    e.g. 96 of 384 channels: 1/16 of the work, 4560 pairs.
    """
    xc, spread = _centre(_as_tokens(maps))
    if valid is None:
        valid = _invalid(spread, 0.1).logical_not()
    return _mean_abs_corr(xc, spread, valid, max_channels)


def singular_values(x: Tensor, fast: bool = False) -> Tensor:
    """(B, n, m) -> (B, min(n, m)) singular values, via the eigenvalues of the smaller Gram matrix.

    eigvalsh of a min(n, m)^2 Gram matrix is several times cheaper than an SVD here (196 x 384
    per block). Eigenvalues below the Gram's rounding floor are set to 0, since their square
    roots would otherwise add spurious rank: in float64 (default) the floor is
    max(n, m) * eps * largest, as in matrix_rank, i.e. singular values below ~1e-7 of the largest.
    `fast=True` works in float32 (about 3x cheaper Gram, 1.3x cheaper eigvalsh) with the floor at
    16 eps * largest: singular values below ~1.4e-3 of the largest count as 0. On block features
    this changes the effective rank by ~1e-6 relative; only matrices with many singular values
    between 1e-7 and 1e-3 of the largest (numerically rank-deficient ones) differ more.
    """
    x = x.float() if fast else x.double()
    gram = x @ x.transpose(1, 2) if x.shape[1] <= x.shape[2] else x.transpose(1, 2) @ x
    eig = torch.linalg.eigvalsh(gram)
    scale = 16 if fast else max(x.shape[1:])
    floor = eig[..., -1:] * scale * torch.finfo(eig.dtype).eps
    return torch.where(eig > floor, eig, 0.0).double().sqrt()


def effective_rank(x: Tensor, center: bool = False, fast: bool = False) -> Tensor:
    """(B, n, m) matrices (tokens x channels) -> (B,) effective rank (Roy & Vetterli 2007).

    erank = exp(-sum_k p_k log p_k) with p_k = sigma_k / sum sigma. It equals k for a rank-k
    matrix with equal singular values and is below k when they are unequal. `center=True`
    subtracts each channel's mean over tokens first, so a shared offset (a common component of
    every token) does not count as a direction; the default follows the original definition.
    `fast`: float32 spectrum (see `singular_values`).
    """
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    s = singular_values(x, fast)
    p = s / s.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=-1)
    return entropy.exp().to(x.dtype if x.dtype.is_floating_point else torch.float32)


def low_frequency_basis(grid: tuple[int, int], cutoff: float) -> tuple[Tensor, Tensor]:
    """Real Fourier basis of the non-DC frequencies with radius <= cutoff on an (h, w) grid.

    Returns (N, 2K) columns [cos, sin] of the K selected bins of the half spectrum (fx >= 0) and
    (2K,) weights: 2 for bins whose mirror image -f is not in the half spectrum (it has the same
    power), else 1. With the unnormalised DFT F(f) = sum_t x_t exp(-2 pi i f.t), the low-pass
    power of a map x is sum_k weight_k (basis_k . x)^2.
    """
    h, w = grid
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)
    twice = torch.ones_like(fx)
    twice[1 : (w + 1) // 2] = 2.0
    low = (fy[:, None].square() + fx[None, :].square()).sqrt() <= cutoff
    low[0, 0] = False  # DC: the maps are centred
    ky, kx = low.nonzero(as_tuple=True)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    phase = 2 * torch.pi * (fy[ky][None, :] * rows.reshape(-1, 1) + fx[kx][None, :] * cols.reshape(-1, 1))
    basis = torch.cat([phase.cos(), phase.sin()], dim=1)  # (N, 2K)
    return basis, twice[kx].repeat(2)


def _high_frequency(xc: Tensor, grid: tuple[int, int], cutoff: float) -> Tensor:
    """Channel-centred tokens (B, N, D) on an (h, w) grid -> (B, D) high-frequency energy share.

    No FFT: by Parseval the total power of the unnormalised DFT is N sum_t x_t^2, so the high part
    is the total minus the power in the few low-frequency bins, one small matmul
    (`low_frequency_basis`: about 20 bins of a 14 x 14 grid at the default cutoff).
    """
    basis, weight = low_frequency_basis(grid, cutoff)
    coeffs = torch.einsum("nk,bnd->bkd", basis.to(xc), xc)  # (B, 2K, D)
    low = torch.einsum("bkd,k->bd", coeffs.square(), weight.to(xc))
    total = xc.shape[1] * xc.square().sum(dim=1)
    return (total - low).clamp_min(0) / total.clamp_min(1e-30) * (total > 0)


def high_frequency_fraction(maps: Tensor, cutoff: float = 0.25) -> Tensor:
    """(B, D, h, w) -> (B, D) share of each map's non-DC spectral energy above `cutoff`.

    Frequencies are in cycles per token (the Nyquist limit is 0.5 along an axis); a component
    (fy, fx) is high when sqrt(fy^2 + fx^2) > cutoff, by default half the Nyquist limit. The map's
    mean is removed first so the constant part counts in neither term; flat maps give 0.
    """
    xc, _ = _centre(_as_tokens(maps))
    return _high_frequency(xc, tuple(maps.shape[-2:]), cutoff)


def block_metrics(
    tokens: Tensor,
    grid: tuple[int, int],
    rel_threshold: float = 0.1,
    cutoff: float = 0.25,
    center_rank: bool = False,
    num_prefix_tokens: int = 1,
    fast: bool = False,
    metrics: tuple[str, ...] = METRICS,
) -> dict[str, Tensor]:
    """`metrics` (default: all of `METRICS`) of one block's output tokens (B, T, D), each (B,).

    Correlation and high frequency are averaged over valid channels only (flat channels are
    reported by `invalid_fraction` and would otherwise drag both towards 0).
    `fast=True` is for live display: mean |corr| is estimated from the pairs of 96 evenly spread
    channels (`mean_abs_correlation(max_channels=96)`, 1/16 of its cost at D = 384) and the
    effective rank's spectrum is computed in float32 (`singular_values(fast=True)`); the invalid
    fraction and high-frequency share are exact either way. Centred features are computed once.
    Only the requested `metrics` are computed: the effective rank's eigendecomposition is most of
    the cost (about 1.2 ms per 196 x 196 Gram on one CPU core), so a live view that does not show
    it can leave it out.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    x = tokens[:, num_prefix_tokens:]  # (B, N, D)
    if x.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{x.shape[1]} patch tokens do not fill a {grid} grid")
    xc, spread = _centre(x)
    valid = _invalid(spread, rel_threshold).logical_not()
    v = valid.float()
    compute = {
        "invalid_fraction": lambda: 1 - v.mean(dim=-1),
        "mean_abs_corr": lambda: _mean_abs_corr(xc, spread, valid, FAST_CORR_CHANNELS if fast else None),
        "effective_rank": lambda: effective_rank(xc if center_rank else x, fast=fast),
        "high_freq_fraction": lambda: (_high_frequency(xc, grid, cutoff) * v).sum(dim=-1) / v.sum(dim=-1).clamp_min(1),
    }
    return {name: compute[name]() for name in metrics}


def stacked_block_metrics(blocks: list[Tensor], grid: tuple[int, int], **kwargs) -> dict[str, Tensor]:
    """`block_metrics` for L blocks' (B, T, D) tokens in one batched call -> dict of (B, L)."""
    b = blocks[0].shape[0]
    metrics = block_metrics(torch.cat(blocks, dim=0), grid, **kwargs)  # batch is (L B)
    return {k: rearrange(v, "(l b) -> b l", b=b) for k, v in metrics.items()}


def trace_metrics(trace: Any, num_blocks: int, **kwargs) -> dict[str, Tensor]:
    """`block_metrics` for every block of a `t2t.trace` -> dict of (B, L)."""
    blocks = [trace[f"blocks.{i}"] for i in range(num_blocks)]
    return stacked_block_metrics(blocks, tuple(trace.grid("blocks.0")), **kwargs)


def redundancy_profile(model: nn.Module, images: Tensor, **kwargs) -> dict[str, Tensor]:
    """Trace a model on (B, 3, S, S) images and compute every metric for every block -> (B, L) each."""
    from analysis.modelio import run_trace

    trace = run_trace(model, images, attention=False)
    return trace_metrics(trace, len(model.blocks), **kwargs)
