"""The few places where `analysis/` talks to a model, through the `t2t` package's trace API.

Everything else in `analysis/` works on plain tensors. `t2t` is imported inside the functions
so that the tensor-level code (and its tests) never depends on the model library.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def as_targets(target: int | Tensor, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Class index per image, (B,) long, from an int or a (B,) tensor."""
    target = torch.as_tensor(target, device=device, dtype=torch.long)
    if target.ndim == 0:
        return target.expand(batch).clone()
    if target.shape != (batch,):
        raise ValueError(f"target must be an int or shape ({batch},), got {tuple(target.shape)}")
    return target


def resolve_target(logits: Tensor, target: int | Tensor | None) -> Tensor:
    """Class index per image, (B,) long: `target` broadcast, or the argmax of (B, C) logits."""
    if target is None:
        return logits.detach().argmax(dim=-1)
    return as_targets(target, logits.shape[0], logits.device)


def model_targets(model: nn.Module, images: Tensor, target: int | Tensor | None) -> Tensor:
    """Class index per image, (B,) long: `target` broadcast, or the model's prediction on the
    (B, 3, S, S) images (one forward without gradients)."""
    if target is None:
        with torch.no_grad():
            return resolve_target(model(images), None)
    return as_targets(target, images.shape[0], images.device)


def run_trace(model: nn.Module, images: Tensor, attention: bool = True, keep_graph: bool = False) -> Any:
    """`t2t.trace(model, images, ...)`, without gradient bookkeeping unless a graph is wanted."""
    import t2t

    if keep_graph:
        return t2t.trace(model, images, attention=attention, keep_graph=True)
    with torch.no_grad():
        return t2t.trace(model, images, attention=attention, keep_graph=False)


def num_blocks(model: nn.Module) -> int:
    return len(model.blocks)


def backbone_grid(trace: Any) -> tuple[int, int]:
    """Token grid (h, w) of the backbone (class token excluded)."""
    return tuple(trace.grid("blocks.0"))


def attention_trace(model: nn.Module, images: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
    """Per-block softmax attention, L x (B, H, T, T), and the backbone grid."""
    tr = run_trace(model, images, attention=True)
    return [tr[f"blocks.{i}.attn"] for i in range(num_blocks(model))], backbone_grid(tr)


def attention_and_grads(
    model: nn.Module, images: Tensor, target: int | Tensor | None = None
) -> tuple[list[Tensor], list[Tensor], tuple[int, int]]:
    """Per-block attention and d(score of `target`)/d(attention), both L x (B, H, T, T), and the grid.

    The score is the sum over the batch of each image's target logit; images do not interact,
    so each image's gradient is that of its own logit. `torch.autograd.grad` is used rather than
    `.backward()` so that the model's parameters do not accumulate `.grad` as a side effect.
    (`t2t.trace` makes the input a leaf that requires grad, so a graph exists even for a frozen model.)
    """
    with torch.enable_grad():
        tr = run_trace(model, images, attention=True, keep_graph=True)
        logits = tr["logits"]
        cls = resolve_target(logits, target)
        score = logits.gather(1, cls[:, None]).sum()
        attentions = [tr[f"blocks.{i}.attn"] for i in range(num_blocks(model))]
        gradients = torch.autograd.grad(score, attentions)
    return [a.detach() for a in attentions], [g.detach() for g in gradients], backbone_grid(tr)


def image_size(images: Tensor) -> int:
    """Side S of square (B, 3, S, S) images."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"square images expected, got {tuple(images.shape[-2:])}")
    return images.shape[-1]
