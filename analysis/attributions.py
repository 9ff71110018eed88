"""Captum attributions for ViT and T2T-ViT, each returned as a token-resolution map (B, h, w).

Captum's own classes do the work (IntegratedGradients, Occlusion, FeatureAblation, LayerGradCam);
this module only adapts token models to them:
- the token grid (h, w) is inferred from the number of tokens the backbone sees and the image's
  aspect ratio (never hard-coded), and the class token is dropped;
- pixel-level attributions (IG, Occlusion) are pooled onto that grid so all methods compare on
  the same footing; `*_pixels` variants give the (B, S, S) pixel maps.

Shapes: B batch, S image side, h x w = N patch tokens, T = 1 + N tokens (class token first).
Images are model inputs (already normalised), so a zero baseline is the dataset-mean image.
"""

from __future__ import annotations

import torch
from captum.attr import FeatureAblation, IntegratedGradients, LayerGradCam, Occlusion
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


def integrated_gradients_pixels(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
    baseline: float | Tensor = 0.0,
    reduction: str = "abs",
) -> Tensor:
    """Integrated Gradients (Sundararajan et al. 2017) at pixel resolution, (B, 3, S, S) -> (B, S, S).

    `internal_batch_size` bounds how many of the B * n_steps interpolated images go through the
    model at once (memory), without changing the result.
    """
    target = model_targets(model, images, target)
    attr = IntegratedGradients(model).attribute(
        images, baselines=baseline, target=target, n_steps=n_steps, internal_batch_size=internal_batch_size
    )
    return reduce_channels(attr.detach(), reduction)


def integrated_gradients_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
    baseline: float | Tensor = 0.0,
    reduction: str = "abs",
) -> Tensor:
    """Integrated Gradients pooled onto the token grid -> (B, h, w)."""
    logits, grid = predict_and_grid(model, images)
    target = resolve_target(logits, target)
    pixels = integrated_gradients_pixels(model, images, target, n_steps, internal_batch_size, baseline, reduction)
    return pool_to_grid(pixels, grid)


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
        cam = LayerGradCam(model, to_map).attribute(images, target=target, relu_attributions=True)
    finally:
        handle.remove()
    return cam.detach()[:, 0]
