"""Captum attributions for ViT and T2T-ViT, each returned as a token-resolution map (B, h, w).

Captum's own classes do the work (Occlusion, FeatureAblation, LayerGradCam, and IntegratedGradients
for its named rules); Integrated Gradients' default rule is this module's own quadrature of the
same path integral (`integrated_gradients_pixels`: Captum's 32-point rules miss most of T2T-ViT's
output change). Otherwise this module only adapts token models to Captum:
- the token grid (h, w) is inferred from the number of tokens the backbone sees and the image's
  aspect ratio (never hard-coded), and the class token is dropped;
- pixel-level attributions (IG, Occlusion) are pooled onto that grid so all methods compare on
  the same footing; `*_pixels` variants give the (B, S, S) pixel maps.

Shapes: B batch, S image side, h x w = N patch tokens, T = 1 + N tokens (class token first).
Images are model inputs (already normalised), so a zero baseline is the dataset-mean image.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from analysis.maps import infer_grid, pool_to_grid, tokens_to_grid
from analysis.modelio import model_targets, resolve_target

PIXEL_REDUCTIONS = ("abs", "sum", "positive")


def _prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1))


@torch.no_grad()
def predict_and_grid(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Logits (B, C) and the backbone token grid, from one forward with a hook on the first block.

    The grid comes from the number of tokens entering `model.blocks[0]` minus the class token,
    laid out with the image's aspect ratio (`infer_grid`).
    """
    seen: dict[str, int] = {}

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen["T"] = output.shape[1]  # returns None: a forward hook's return value replaces the output

    handle = model.blocks[0].register_forward_hook(count)
    try:
        logits = model(images)
    finally:
        handle.remove()
    return logits, infer_grid(seen["T"] - _prefix_tokens(model), tuple(images.shape[-2:]))


def reduce_channels(attr: Tensor, reduction: str = "abs") -> Tensor:
    """(B, 3, S, S) pixel attributions -> (B, S, S): sum over colour channels of |a|, a or a+."""
    if reduction == "abs":
        return attr.abs().sum(dim=1)
    if reduction == "sum":
        return attr.sum(dim=1)
    if reduction == "positive":
        return attr.sum(dim=1).clamp_min(0)
    raise ValueError(f"reduction must be one of {PIXEL_REDUCTIONS}, got {reduction!r}")


def token_cells(image_hw: tuple[int, int], grid: tuple[int, int], device=None) -> Tensor:
    """(H, W) long: index of the token cell each pixel falls in (row-major), for feature masks.

    Pixel (y, x) belongs to cell (y * h // H, x * w // W): a partition of the image into h x w
    near-equal rectangles, exact 16 x 16 patches when H = 16 h.
    """
    (H, W), (h, w) = image_hw, grid
    rows = torch.arange(H, device=device) * h // H
    cols = torch.arange(W, device=device) * w // W
    return rows[:, None] * w + cols[None, :]


def cells_to_tokens(pixel_map: Tensor, cells: Tensor, num_tokens: int) -> Tensor:
    """Mean of a (B, H, W) pixel map over each cell of `cells` (H, W) -> (B, N)."""
    b = pixel_map.shape[0]
    index = cells.flatten().expand(b, -1)
    out = pixel_map.new_zeros(b, num_tokens)
    return out.scatter_reduce(1, index, pixel_map.flatten(1), reduce="mean", include_self=False)


# --- Integrated Gradients --------------------------------------------------------------------

COMPLETENESS_TOLERANCE = 0.05  # |sum(attributions) - (f(x) - f(b))| / |f(x) - f(b)| deemed complete
ADAPTIVE = "adaptive_log_mean"
CAPTUM_IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
IG_METHODS = (ADAPTIVE, *CAPTUM_IG_METHODS)
# Forward-only sweep that locates where the class logit changes along the path: geometric in alpha
# from 1e-6 (T2T-ViT's logit moves at alpha ~1e-4..1e-2: each raw 7x7 patch is layer-normalised,
# and LayerNorm(alpha p) only leaves its eps-dominated regime once alpha * std(p) >> sqrt(eps)),
# plus uniform in alpha (DeiT-Tiny's moves over 0.01..1).
SWEEP_ALPHAS: tuple[float, ...] = tuple(sorted(
    {0.0, 1.0} | {float(a) for a in torch.logspace(-6, 0, 25, dtype=torch.float64)}
    | {float(a) for a in torch.linspace(0, 1, 9, dtype=torch.float64)}
))
UNIFORM_SHARE = 0.2  # share of the first cells' placement spread uniformly in alpha, the rest by |df|


class Completeness(NamedTuple):
    """How well attributions satisfy IG's completeness axiom, per image.

    All (B,) tensors on the CPU, float64 (steps int64):
    delta: (B,) sum of attributions - (f(x) - f(baseline)), Captum's convergence delta;
    output_change: (B,) f(x) - f(baseline) of the target logit;
    steps: (B,) gradient evaluations spent on each image (n_steps for Captum's rules; the adaptive
        rule's forward-only evaluations, len(SWEEP_ALPHAS) + n_steps - 1, come on top).
    """

    delta: Tensor
    output_change: Tensor
    steps: Tensor | None = None

    @property
    def relative_gap(self) -> Tensor:
        """(B,) |delta| / |f(x) - f(baseline)| (inf where the output does not change)."""
        return self.delta.abs() / self.output_change.abs()


def integrated_gradients_pixels(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
    baseline: float | Tensor = 0.0,
    reduction: str = "abs",
    method: str = ADAPTIVE,
    max_steps: int | None = None,
    tolerance: float = COMPLETENESS_TOLERANCE / 2,
    return_convergence_delta: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017) at pixel resolution, (B, 3, S, S) -> (B, S, S).

    IG of pixel i is (x_i - b_i) * integral_0^1 df/dx_i(b + alpha (x - b)) dalpha, f the target
    logit, b the baseline (0: the dataset-mean image, as images are normalised). Every `method`
    approximates that same integral along the same straight path; they differ only in where the
    gradient is sampled and how the samples are weighted:

    - "adaptive_log_mean" (default): a composite one-node rule (the node of each cell its
      logarithmic mean, weight its length) on cells of the path placed where the logit changes,
      refined until complete (`_adaptive_ig`). Needed for T2T-ViT, whose
      logit makes its whole change within alpha < ~0.01: Captum's 32-point rules put one or two
      points there and miss most of f(x) - f(b) (see benchmarks/bench_ig.py).
    - a Captum method ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
      "riemann_trapezoid"): `captum.attr.IntegratedGradients` itself, with `n_steps` points.

    n_steps: gradient evaluations per image (the adaptive rule's initial cells; Captum's points).
    max_steps: the adaptive rule's most gradient evaluations per image (default 4 * n_steps).
    tolerance: the adaptive rule refines until the cells' completeness residuals sum to at most
        this share of |f(x) - f(b)| (or max_steps is spent); smaller is closer to the exact integral.
    internal_batch_size: interpolated images per forward (memory), without changing the result.
    reduction: "abs" |a| summed over colour channels, "sum" signed per-pixel sums, "positive".
    return_convergence_delta: also return delta (B,) = sum of attributions (before the channel
    reduction) - (f(x) - f(b)), Captum's meaning (float64, on the CPU).
    """
    attr, delta, _, _ = _integrated_gradients(model, images, target, n_steps, internal_batch_size, baseline, method,
                                              max_steps, tolerance)
    pixels = reduce_channels(attr, reduction)
    return (pixels, delta) if return_convergence_delta else pixels


def _integrated_gradients(
    model: nn.Module, images: Tensor, target: int | Tensor | None, n_steps: int, internal_batch_size: int,
    baseline: float | Tensor, method: str, max_steps: int | None, tolerance: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(B, 3, S, S) attributions, delta (B,), f(x) - f(b) (B,) and gradient evaluations (B,) by `method`."""
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be positive, got {internal_batch_size}")
    target = model_targets(model, images, target)
    baselines = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    if method != ADAPTIVE:
        from captum.attr import IntegratedGradients  # here, not at import: Captum takes 0.7 s to import
        attr, delta = IntegratedGradients(model).attribute(
            images, baselines=baselines, target=target, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size, return_convergence_delta=True,
        )
        with torch.no_grad():
            change = _cpu64(_target_logits(model, images, target) - _target_logits(model, baselines, target))
        return attr.detach(), _cpu64(delta.detach()), change, torch.full((len(target),), n_steps)
    max_steps = 4 * n_steps if max_steps is None else max_steps
    if max_steps < n_steps:
        raise ValueError(f"max_steps ({max_steps}) must be at least n_steps ({n_steps})")
    out = [_adaptive_ig(model, images[i], baselines[i], int(target[i]), n_steps, max_steps, internal_batch_size,
                        tolerance) for i in range(images.shape[0])]  # per image: each has its own cells
    attr = torch.stack([a for a, _, _ in out])
    change = torch.stack([c for _, c, _ in out])
    delta = _cpu64(attr.sum(dim=(1, 2, 3))) - change
    return attr, delta, change, torch.tensor([n for _, _, n in out])


def _cpu64(t: Tensor) -> Tensor:
    """Float64 on the CPU (MPS has no float64), where completeness numbers are kept."""
    return t.float().cpu().double()


def _target_logits(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    return model(images).gather(1, target[:, None])[:, 0]


def _path_points(x: Tensor, b: Tensor, alphas: Tensor) -> Tensor:
    """(K, 3, S, S) points b + alpha (x - b) of the straight path; exactly b at 0 and x at 1 (lerp)."""
    return torch.lerp(b.expand(len(alphas), *b.shape), x.expand(len(alphas), *x.shape),
                      alphas.to(x).view(-1, 1, 1, 1))


@torch.no_grad()
def _path_logits(model: nn.Module, x: Tensor, b: Tensor, target: int, alphas: Tensor, batch: int) -> Tensor:
    """(K,) float64 target logit (on the CPU) at the path points `alphas` (K,), forward only."""
    out = [model(_path_points(x, b, alphas[i:i + batch]))[:, target] for i in range(0, len(alphas), batch)]
    return torch.cat(out).float().cpu().double()


def _path_gradients(model: nn.Module, x: Tensor, b: Tensor, target: int, alphas: Tensor,
                    batch: int) -> tuple[Tensor, Tensor]:
    """Gradients (K, 3, S, S) of the target logit at the path points `alphas` (K,), and the logits (K,)
    (float64 on the CPU, where the adaptive rule keeps its bookkeeping: MPS has no float64)."""
    grads, logits = [], []
    with torch.enable_grad():
        for i in range(0, len(alphas), batch):
            points = _path_points(x, b, alphas[i:i + batch]).detach().requires_grad_(True)
            out = model(points)[:, target]
            grads.append(torch.autograd.grad(out.sum(), points)[0])
            logits.append(out.detach().float().cpu().double())
    return torch.cat(grads), torch.cat(logits)


def _initial_cells(sweep: Tensor, f: Tensor, n: int) -> Tensor:
    """n + 1 cell bounds in [0, 1] (float64): equal shares of a mass spread over the sweep intervals,
    (1 - UNIFORM_SHARE) in proportion to |f| change and UNIFORM_SHARE in proportion to length, so
    cells are short where the logit moves and every part of the path has some."""
    change = (f[1:] - f[:-1]).abs()
    length = sweep[1:] - sweep[:-1]
    mass = UNIFORM_SHARE * length
    if change.sum() > 0:
        mass = mass + (1 - UNIFORM_SHARE) * change / change.sum()
    cum = torch.cat([mass.new_zeros(1), mass.cumsum(0)])
    q = torch.linspace(0, 1, n + 1, dtype=cum.dtype) * cum[-1]
    j = torch.searchsorted(cum, q, right=True).clamp(1, len(cum) - 1)  # sweep interval of each quantile
    t = ((q - cum[j - 1]) / (cum[j] - cum[j - 1])).clamp(0, 1)  # mass is > 0 on every interval
    bounds = sweep[j - 1] + t * (sweep[j] - sweep[j - 1])
    bounds[0], bounds[-1] = 0.0, 1.0
    return bounds


def _log_mean(lo: Tensor, hi: Tensor) -> Tensor:
    """Logarithmic mean (hi - lo) / ln(hi / lo) of cell bounds (float64), the arithmetic mean where lo = 0.

    The node of each cell. With weight hi - lo it integrates exactly both a constant and c / alpha:
    past the point where every LayerNorm'd patch saturates, f(alpha x) no longer changes but each
    pixel's gradient falls as 1 / alpha (f is scale-invariant there), and at the plain midpoint a
    long cell such as [0.5, 1] would be off by 4% per pixel, unseen in the sum (whose terms cancel).
    """
    ratio = torch.log1p((hi - lo) / lo.clamp_min(torch.finfo(lo.dtype).tiny))
    log_mean = (hi - lo) / ratio.clamp_min(torch.finfo(lo.dtype).tiny)
    return torch.where((lo > 0) & (ratio > 1e-12), log_mean, (lo + hi) / 2)


def _adaptive_ig(model: nn.Module, x: Tensor, b: Tensor, target: int, n_steps: int, max_steps: int,
                 batch: int, tolerance: float) -> tuple[Tensor, Tensor, int]:
    """IG of one image (3, S, S) by the adaptive composite log-mean rule -> (attributions, f(x) - f(b), steps).

    1. Sweep: the target logit at SWEEP_ALPHAS (forward only, no gradient).
    2. Cells: n_steps cells [a_k, a_k+1] of the path, short where the sweep saw the logit change
       (`_initial_cells`); f at their bounds (forward only); the gradient at one node m_k per cell,
       its logarithmic mean (`_log_mean`), weighted by the cell's length: cell k contributes
       (a_k+1 - a_k) grad f(m_k) * (x - b).
    3. Refine: cell k's part of the completeness gap is r_k = (its attribution sum) -
       (f(a_k+1) - f(a_k)), known exactly since f is known at its bounds. While sum |r_k| exceeds
       `tolerance` times |f(x) - f(b)| and the budget (max_steps gradients) allows,
       the cells with the largest |r_k| (those making up half of the sum) are split at their
       nodes, where f is already known from the gradient's forward, and each part gets a node.
    The result is a quadrature of the same straight-path integral as every other IG rule: nodes on
    the path, weights summing to 1. Each refinement only makes cells shorter.
    """
    sweep = torch.tensor(SWEEP_ALPHAS, dtype=torch.float64)
    f_sweep = _path_logits(model, x, b, target, sweep, batch)
    f_b, f_x = f_sweep[0], f_sweep[-1]
    bounds = _initial_cells(sweep, f_sweep, n_steps)
    f_bounds = torch.cat([f_b[None], _path_logits(model, x, b, target, bounds[1:-1], batch), f_x[None]])
    lo, hi, f_lo, f_hi = bounds[:-1], bounds[1:], f_bounds[:-1], f_bounds[1:]
    mid = _log_mean(lo, hi)
    grads, f_mid = _path_gradients(model, x, b, target, mid, batch)
    direction = x - b
    weighted = grads * (hi - lo).to(grads).view(-1, 1, 1, 1)  # (cells, 3, S, S)
    sums = (weighted * direction).sum(dim=(1, 2, 3)).cpu().double()  # each cell's attribution sum
    used, change = n_steps, (f_x - f_b).abs()
    while used + 2 <= max_steps:
        gap = (sums - (f_hi - f_lo)).abs()
        if gap.sum() <= tolerance * change:
            break
        order = gap.argsort(descending=True)
        count = int((gap[order].cumsum(0) < gap.sum() / 2).sum()) + 1  # cells holding half the gap
        split = order[: min(count, (max_steps - used) // 2, max(batch // 2, 1))]
        keep = torch.ones(len(lo), dtype=torch.bool)
        keep[split] = False
        on_device = keep.to(weighted.device)
        # parts [lo, mid] and [mid, hi] of each split cell, with f at its node mid known from the gradient pass
        new_lo = torch.cat([lo[split], mid[split]])
        new_hi = torch.cat([mid[split], hi[split]])
        new_f_lo = torch.cat([f_lo[split], f_mid[split]])
        new_f_hi = torch.cat([f_mid[split], f_hi[split]])
        new_mid = _log_mean(new_lo, new_hi)
        new_grads, new_f_mid = _path_gradients(model, x, b, target, new_mid, batch)
        new_weighted = new_grads * (new_hi - new_lo).to(new_grads).view(-1, 1, 1, 1)
        lo, hi = torch.cat([lo[keep], new_lo]), torch.cat([hi[keep], new_hi])
        f_lo, f_hi = torch.cat([f_lo[keep], new_f_lo]), torch.cat([f_hi[keep], new_f_hi])
        mid, f_mid = torch.cat([mid[keep], new_mid]), torch.cat([f_mid[keep], new_f_mid])
        weighted = torch.cat([weighted[on_device], new_weighted])
        sums = torch.cat([sums[keep], (new_weighted * direction).sum(dim=(1, 2, 3)).cpu().double()])
        used += 2 * len(split)
    return weighted.sum(dim=0) * direction, f_x - f_b, used


def integrated_gradients_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
    baseline: float | Tensor = 0.0,
    reduction: str = "abs",
    method: str = ADAPTIVE,
    max_steps: int | None = None,
    tolerance: float = COMPLETENESS_TOLERANCE / 2,
    return_completeness: bool = False,
) -> Tensor | tuple[Tensor, Completeness]:
    """Integrated Gradients pooled onto the token grid -> (B, h, w); arguments as `integrated_gradients_pixels`.

    return_completeness: also return a `Completeness` (delta, f(x) - f(b), relative_gap), to show
    beside the map and warn above COMPLETENESS_TOLERANCE.
    """
    logits, grid = predict_and_grid(model, images)
    target = resolve_target(logits, target)
    attr, delta, change, steps = _integrated_gradients(model, images, target, n_steps, internal_batch_size,
                                                       baseline, method, max_steps, tolerance)
    heat = pool_to_grid(reduce_channels(attr, reduction), grid)
    return (heat, Completeness(delta, change, steps)) if return_completeness else heat


def occlusion_pixels(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    window: int | None = None,
    stride: int | None = None,
    baseline: float | Tensor = 0.0,
    perturbations_per_eval: int = 16,
) -> tuple[Tensor, tuple[int, int]]:
    """Captum Occlusion with square sliding windows -> ((B, S, S) score drop per pixel, grid).

    Defaults: a window of two token cells (2 S / h) moved by one cell (S / h), so each pixel's
    value averages the windows over it, as Captum does. The window spans all colour channels.
    """
    logits, grid = predict_and_grid(model, images)
    target = resolve_target(logits, target)
    cell = images.shape[-1] // grid[1]
    window = window or 2 * cell
    stride = stride or cell
    from captum.attr import Occlusion  # here, not at import: Captum takes 0.7 s to import
    attr = Occlusion(model).attribute(
        images,
        sliding_window_shapes=(images.shape[1], window, window),
        strides=(images.shape[1], stride, stride),
        baselines=baseline,
        target=target,
        perturbations_per_eval=perturbations_per_eval,
    )
    return attr.detach().mean(dim=1), grid


def occlusion_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    window: int | None = None,
    stride: int | None = None,
    baseline: float | Tensor = 0.0,
    perturbations_per_eval: int = 16,
) -> Tensor:
    """Sliding-window occlusion pooled onto the token grid -> (B, h, w) drop of the target logit."""
    pixels, grid = occlusion_pixels(model, images, target, window, stride, baseline, perturbations_per_eval)
    return pool_to_grid(pixels, grid)


def token_ablation_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    baseline: float | Tensor = 0.0,
    perturbations_per_eval: int = 16,
) -> Tensor:
    """Captum FeatureAblation with one feature per token cell -> (B, h, w), one score per token.

    Each token's pixel cell (`token_cells`) is replaced by the baseline in turn; the value is the
    drop of the target logit. N forwards per image, batched `perturbations_per_eval` at a time.
    """
    logits, grid = predict_and_grid(model, images)
    target = resolve_target(logits, target)
    cells = token_cells(tuple(images.shape[-2:]), grid, images.device)
    from captum.attr import FeatureAblation  # here, not at import: Captum takes 0.7 s to import
    attr = FeatureAblation(model).attribute(
        images,
        baselines=baseline,
        target=target,
        feature_mask=cells[None, None],  # broadcast over batch and colour channels
        perturbations_per_eval=perturbations_per_eval,
    )
    tokens = cells_to_tokens(attr.detach()[:, 0], cells, grid[0] * grid[1])
    return tokens_to_grid(tokens, grid)


class _TokensToMap(nn.Module):
    """(B, T, D) tokens -> (B, D, h, w) map of the patch tokens, channels first.

    Captum's LayerGradCam takes dim 1 as channels and dims 2.. as space; a token layer's raw
    (B, T, D) output would have it average over channels and sum over tokens. Routing the patch
    tokens through this module (whose output Captum hooks) gives it the layout it expects.
    """

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid

    def forward(self, patches: Tensor) -> Tensor:
        return rearrange(patches, "b (h w) d -> b d h w", h=self.grid[0], w=self.grid[1])


def gradcam_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    layer: nn.Module | None = None,
) -> Tensor:
    """Captum LayerGradCam on the output of `layer` (default `model.blocks[-1].norm1`) -> (B, h, w).

    Why norm1 of the last block: the class token that the head reads is last mixed with the patch
    tokens in that block's attention, whose keys and values are computed from norm1's output; the
    patch tokens *leaving* the last block never reach the class token, so their gradient is zero.
    A temporary forward hook on `layer` passes its patch tokens through `_TokensToMap` (and back),
    so Grad-CAM sees a (B, D, h, w) feature map; the model itself is unchanged. The class token is
    left out of Grad-CAM's channel weights (mean gradient over patch tokens only).
    """
    layer = layer if layer is not None else model.blocks[-1].norm1
    logits, grid = predict_and_grid(model, images)
    target = resolve_target(logits, target)
    to_map = _TokensToMap(grid)
    p = _prefix_tokens(model)

    def route(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        patches = rearrange(to_map(output[:, p:]), "b d h w -> b (h w) d")
        return torch.cat([output[:, :p], patches], dim=1)

    handle = layer.register_forward_hook(route)
    try:
        from captum.attr import LayerGradCam  # here, not at import: Captum takes 0.7 s to import
        cam = LayerGradCam(model, to_map).attribute(images, target=target, relu_attributions=True)
    finally:
        handle.remove()
    return cam.detach()[:, 0]
