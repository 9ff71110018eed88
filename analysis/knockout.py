"""Knock-outs: switch parts of a model off for one call and watch what the prediction loses.

    with knocked_out(model, heads=[(3, 1), (5, 0)]):          # zero ablation of two backbone heads
        logits = model(images)
    with knocked_out(model, t2t=(1, 2)):                       # T2T-ViT: the soft splits alone build tokens
        logits = model(images)
    grid = head_importance(model, image, target)               # (B, blocks, heads) logit drops
    curve = pruning_curve(model, images, labels, rank_images)  # accuracy as heads go, least important first

Shapes: B batch, L blocks, H heads per block, T = 1 + N tokens (class token first), D width, d = D / H.

What is knocked out, exactly:
- A backbone head h of block l: its slice [h d, (h + 1) d) of `attn @ v` (the input of the block's
  output projection `attn.proj`, heads concatenated) is set to 0 ("zero") or replaced by its mean
  over a reference batch, token by token ("mean"). The projection's bias belongs to no head and
  stays: knocking out every head of a block leaves x + proj.bias, then the MLP.
- T2T attention 1 or 2 (T2T-ViT only): the token layer's `v + proj(attention @ v)` becomes `v`
  (the projection's output is replaced by 0), its MLP kept, for the Performer and the transformer
  T2T layers alike. ViT's patch embedding is one linear map per patch: it has no such step.

How: forward (pre-)hooks on the projections, registered on entry and removed on exit, even when
the body raises; no parameter or buffer is written, so the state dict stays bit-identical. The
hooks act only in the thread that entered the context: a cached model that another thread (another
app session) runs at the same time computes as if nothing were knocked out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from analysis.modelio import resolve_target

MODES = ("zero", "mean")
Head = tuple[int, int]


# --- what a model has --------------------------------------------------------------------------------

def num_heads(model: nn.Module) -> int:
    """Heads per backbone block."""
    return int(model.blocks[0].attn.num_heads)


def all_heads(model: nn.Module) -> list[Head]:
    """Every (block, head) of the backbone, block-major."""
    return [(b, h) for b in range(len(model.blocks)) for h in range(num_heads(model))]


def check_heads(model: nn.Module, heads: Iterable[Sequence[int]]) -> list[Head]:
    """(block, head) pairs as ints, checked against the model; duplicates removed, order kept."""
    blocks, per_block = len(model.blocks), num_heads(model)
    out: list[Head] = []
    for pair in heads:
        if len(pair) != 2:
            raise ValueError(f"heads are (block, head) pairs, got {pair!r}")
        b, h = int(pair[0]), int(pair[1])
        if not (0 <= b < blocks and 0 <= h < per_block):
            raise ValueError(f"head {(b, h)} does not exist: this model has blocks 0..{blocks - 1} "
                             f"with heads 0..{per_block - 1}")
        if (b, h) not in out:
            out.append((b, h))
    return out


def t2t_projections(model: nn.Module, layers: Iterable[int]) -> list[nn.Module]:
    """The output projections of T2T attention `layers` (1 and/or 2) whose output a knock-out replaces by 0."""
    layers = sorted({int(i) for i in layers})
    if not layers:
        return []
    t2t = getattr(model, "tokens_to_token", None)
    if t2t is None:
        raise ValueError("t2t knock-outs apply to T2T-ViT only: ViT's patch embedding is one linear map per "
                         "16 x 16 patch (a strided convolution), with no token attention to knock out")
    if any(i not in (1, 2) for i in layers):
        raise ValueError(f"the T2T module has attention layers 1 and 2, got {layers}")
    out = []
    for i in layers:
        layer = getattr(t2t, f"attention{i}")
        # TokenTransformer keeps its attention in .attn (v + attn.proj(...)); TokenPerformer in itself (v + proj(...))
        out.append(layer.attn.proj if hasattr(layer, "attn") else layer.proj)
    return out


# --- hooks that act in one thread only ----------------------------------------------------------------

class _Hooks:
    """Hook handles that are all removed on `remove()`; each hook runs only in the creating thread."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _mine(self) -> bool:
        return threading.get_ident() == self.thread

    def pre(self, module: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace the module's first input x by fn(x)."""
        def hook(_m: nn.Module, args: tuple) -> tuple | None:
            return (fn(args[0]), *args[1:]) if self._mine() else None
        self.handles.append(module.register_forward_pre_hook(hook))

    def post(self, module: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace the module's output y by fn(y)."""
        def hook(_m: nn.Module, _args: tuple, output: Tensor) -> Tensor | None:
            return fn(output) if self._mine() else None
        self.handles.append(module.register_forward_hook(hook))

    def watch(self, module: nn.Module, fn: Callable[[Tensor], None]) -> None:
        """Call fn(x) with the module's first input, changing nothing."""
        def hook(_m: nn.Module, args: tuple) -> None:
            if self._mine():
                fn(args[0])
        self.handles.append(module.register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _head_mask(width: int, heads: Iterable[int], per_block: int, device: torch.device) -> Tensor:
    """(D,) bool: the channels of `heads` in the concatenated (h d) layout of `attn @ v`."""
    d = width // per_block
    mask = torch.zeros(width, dtype=torch.bool, device=device)
    for h in heads:
        mask[h * d:(h + 1) * d] = True
    return mask


def _replace(z: Tensor, mask: Tensor, mean: Tensor | None) -> Tensor:
    """z (B, T, D) with the masked channels set to 0, or to mean (T, D) token by token."""
    if mean is None:
        return z.masked_fill(mask, 0.0)
    if mean.shape[0] != z.shape[1]:
        raise ValueError(f"the reference batch has {mean.shape[0]} tokens per image, these images {z.shape[1]}: "
                         "mean ablation needs reference images of the same size")
    return torch.where(mask, mean.to(z), z)


@torch.no_grad()
def mean_head_outputs(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Per block, the mean over `images` (R, 3, S, S) of each token's `attn @ v`: (L, T, D) float32.

    This is what mean ablation puts in place of a knocked-out head; pass it as `reference` to
    reuse it across calls (what `knocked_out` computes itself from reference images otherwise).
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"reference images must be (R, 3, S, S) with R >= 1, got shape {tuple(images.shape)}")
    sums: list[Tensor | None] = [None] * len(model.blocks)
    hooks = _Hooks()

    def add(i: int) -> Callable[[Tensor], None]:
        def fn(z: Tensor) -> None:
            s = z.float().sum(dim=0)
            sums[i] = s if sums[i] is None else sums[i] + s
        return fn

    try:
        for i, block in enumerate(model.blocks):
            hooks.watch(block.attn.proj, add(i))
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        hooks.remove()
    return torch.stack([s / len(images) for s in sums])  # type: ignore[operator]


def _as_means(model: nn.Module, mode: str, reference: Tensor | None) -> Tensor | None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "zero":
        return None
    if reference is None:
        raise ValueError("mean ablation needs `reference`: images (R, 3, S, S) or mean_head_outputs(model, images)")
    if reference.ndim == 4:
        return mean_head_outputs(model, reference)
    if reference.ndim != 3 or reference.shape[0] != len(model.blocks):
        raise ValueError(f"reference must be images (R, 3, S, S) or per-block means ({len(model.blocks)}, T, D), "
                         f"got shape {tuple(reference.shape)}")
    return reference


@contextmanager
def knocked_out(
    model: nn.Module,
    heads: Iterable[Sequence[int]] = (),
    t2t: Iterable[int] = (),
    mode: str = "zero",
    reference: Tensor | None = None,
) -> Iterator[nn.Module]:
    """Inside the block, `model(x)` runs with backbone `heads` [(block, head), ...] and T2T attention
    layers `t2t` (1 and/or 2) knocked out; afterwards the model is exactly as before.

    mode: "zero" sets a head's slice of `attn @ v` to 0; "mean" replaces it by its per-token mean
    over `reference`: images (R, 3, S, S) of the same size as the inputs, or the (L, T, D) tensor of
    `mean_head_outputs`. T2T layers are always reduced to their value path (module docstring).
    Everything is checked before any hook is registered; the hooks are removed on exit, exception
    or not, and act only in the calling thread. Yields the model.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    heads = check_heads(model, heads)
    projections = t2t_projections(model, t2t)
    means = _as_means(model, mode, reference) if heads else None
    by_block: dict[int, list[int]] = {}
    for b, h in heads:
        by_block.setdefault(b, []).append(h)
    hooks = _Hooks()
    try:
        per_block = num_heads(model)
        for b, hs in by_block.items():
            proj = model.blocks[b].attn.proj
            mask = _head_mask(proj.in_features, hs, per_block, proj.weight.device)
            mean = None if means is None else means[b]
            hooks.pre(proj, lambda z, mask=mask, mean=mean: _replace(z, mask, mean))
        for proj in projections:
            hooks.post(proj, torch.zeros_like)
        yield model
    finally:
        hooks.remove()


# --- per-head importance ------------------------------------------------------------------------------

@dataclass
class HeadImportance:
    """What knocking out each head alone costs, per image.

    logit_drop, prob_drop: (B, L, H) target logit / softmax probability of the intact model minus
        that with only head (l, h) knocked out (positive: the head helped the class);
    logit, prob: (B,) the intact model's target logit and probability; target: (B,) long.
    """

    logit_drop: Tensor
    prob_drop: Tensor
    logit: Tensor
    prob: Tensor
    target: Tensor


def _block_inputs(model: nn.Module, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """One forward: the input of every block, L x (B, T, D), and the logits (B, C)."""
    inputs: list[Tensor] = []
    hooks = _Hooks()
    try:
        for block in model.blocks:
            hooks.watch(block, inputs.append)
        logits = model(images)
    finally:
        hooks.remove()
    return inputs, logits


def _run_from(model: nn.Module, x: Tensor, start: int) -> Tensor:
    """Logits (B, C) from the input x (B, T, D) of block `start`: the remaining blocks, the final
    norm, then the heads (what `ClassTokenBackbone.forward` does after its stem: `forward_logits`
    where the model has it, which adds a TokenLabeling auxiliary head, else the class-token head)."""
    for block in model.blocks[start:]:
        x = block(x)
    x = model.norm(x)
    logits = getattr(model, "forward_logits", None)
    return logits(x) if logits is not None else model.forward_head(x[:, 0])


@torch.no_grad()
def head_importance_scores(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    mode: str = "zero",
    reference: Tensor | None = None,
    given: Iterable[Sequence[int]] = (),
    t2t: Iterable[int] = (),
    max_batch: int = 256,
    min_rows: int = 32,
) -> HeadImportance:
    """Logit and probability drops of class `target` (default: predicted) when each head alone is
    knocked out, for (B, 3, S, S) images -> `HeadImportance` with (B, L, H) grids.

    given / t2t: heads and T2T layers knocked out in every run, the intact one included (the
    importance of each further head, given those). A head already in `given` scores 0.

    Batched: one forward records each block's input; then the variants of a group of blocks
    l0..l1 (one per head of each, that head's slice replaced in its own block) go through blocks
    l0..L-1 as one batch. The stem and the blocks before l0 are never run again. Groups hold enough
    blocks for `min_rows` rows (variants x images) and at most `max_batch`: one block per group
    would cost the forward of 1 + H (L + 1) / 2 images' blocks, where one model call per head costs
    1 + H L, but small batches run slowly on a CPU (DeiT-Tiny's block: 32 ms per image at batch 3,
    5 ms at batch 37, on 2 busy cores).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, S, S), got shape {tuple(images.shape)}")
    given = check_heads(model, given)
    means = _as_means(model, mode, reference)
    per_block, blocks, b = num_heads(model), len(model.blocks), images.shape[0]
    with knocked_out(model, given, t2t, mode, means):
        inputs, logits = _block_inputs(model, images)
        target = resolve_target(logits, target)
        base_logit = logits.gather(1, target[:, None])[:, 0]
        base_prob = logits.softmax(dim=-1).gather(1, target[:, None])[:, 0]
        drop_logit = logits.new_zeros(b, blocks, per_block)
        drop_prob = logits.new_zeros(b, blocks, per_block)
        d = model.blocks[0].attn.proj.in_features // per_block
        step = max(1, max_batch // per_block)  # images per chunk
        for i in range(0, b, step):
            n = min(step, b - i)
            # blocks per group: enough variants for an efficient batch (min_rows), at most max_batch rows
            group = min(max(1, -(-min_rows // (per_block * n))), max(1, max_batch // (per_block * n)))
            for first in range(0, blocks, group):
                layers = range(first, min(first + group, blocks))
                v = len(layers) * per_block  # variants, block-major: row j * H + h knocks out head h of layers[j]
                hooks = _Hooks()
                try:
                    for j, layer in enumerate(layers):
                        select = torch.zeros(v, per_block * d, dtype=torch.bool, device=images.device)
                        for h in range(per_block):
                            select[j * per_block + h, h * d:(h + 1) * d] = True
                        mean = None if means is None else means[layer].to(images.device)

                        def variants(z: Tensor, select: Tensor = select[:, None, None], mean: Tensor | None = mean,
                                     n: int = n) -> Tensor:
                            z = z.view(len(select), n, *z.shape[1:])  # (V, n, T, D)
                            fill = 0.0 if mean is None else mean.to(z)
                            return torch.where(select, fill, z).flatten(0, 1)

                        hooks.pre(model.blocks[layer].attn.proj, variants)
                    out = _run_from(model, inputs[first][i:i + n].repeat(v, 1, 1), first).view(v, n, -1)
                finally:
                    hooks.remove()
                t = target[i:i + n][None, :, None].expand(v, n, 1)
                logit = out.gather(2, t)[..., 0].view(len(layers), per_block, n)  # (layers, H, n)
                prob = out.softmax(dim=-1).gather(2, t)[..., 0].view(len(layers), per_block, n)
                cols = slice(first, first + len(layers))
                drop_logit[i:i + n, cols] = base_logit[i:i + n, None, None] - logit.permute(2, 0, 1)
                drop_prob[i:i + n, cols] = base_prob[i:i + n, None, None] - prob.permute(2, 0, 1)
    for blk, h in given:  # already knocked out: knocking it again changes nothing
        drop_logit[:, blk, h] = 0.0
        drop_prob[:, blk, h] = 0.0
    return HeadImportance(drop_logit, drop_prob, base_logit, base_prob, target)


def head_importance(
    model: nn.Module, images: Tensor, target: int | Tensor | None = None, **kwargs
) -> Tensor:
    """(B, L, H) drop of the target logit (default: the predicted class) when each head alone is
    zero-ablated; keyword arguments as `head_importance_scores`, which also gives the probability drop."""
    return head_importance_scores(model, images, target, **kwargs).logit_drop


# --- pruning curves -----------------------------------------------------------------------------------

@dataclass
class PruningCurve:
    """Accuracy as heads are knocked out cumulatively, least important first.

    order: the L * H heads in removal order; importance: (L, H) mean logit drop on the ranking batch;
    removed: (K,) heads knocked out at each point (default 0 .. L * H); correct: (K, N) bool per image;
    accuracy, ci_low, ci_high: (K,) accuracy and its percentile-bootstrap interval over images;
    removable: how many heads go before accuracy first falls more than `tolerance` below the
    intact model's; removable_ci: (lo, hi) that count's bootstrap interval.
    """

    order: list[Head]
    importance: Tensor
    removed: Tensor
    correct: Tensor
    accuracy: Tensor
    ci_low: Tensor
    ci_high: Tensor
    removable: int
    removable_ci: tuple[int, int]
    tolerance: float

    @property
    def num_heads(self) -> int:
        return len(self.order)

    @property
    def fraction_removable(self) -> float:
        """Share of the heads that can go for at most `tolerance` of accuracy."""
        return self.removable / self.num_heads


def removable_heads(accuracy: np.ndarray, removed: np.ndarray, tolerance: float) -> np.ndarray:
    """(..., K) accuracy curves -> (...) heads removed at the last point before the curve first falls
    more than `tolerance` below its first point (removed (K,) heads at each point)."""
    ok = accuracy >= accuracy[..., :1] - tolerance - 1e-12
    first_bad = np.where(ok.all(axis=-1), ok.shape[-1], np.argmin(ok, axis=-1))  # index of the first failure
    return removed[first_bad - 1]


@torch.no_grad()
def pruning_curve(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    rank_images: Tensor,
    rank_labels: Tensor | None = None,
    mode: str = "zero",
    reference: Tensor | None = None,
    tolerance: float = 0.01,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    counts: Sequence[int] | None = None,
) -> PruningCurve:
    """Accuracy on labelled (N, 3, S, S) `images` as the backbone's heads are knocked out one more at
    a time, least important first, with 95% bootstrap intervals over images.

    Importance is measured on a separate batch, `rank_images` (and their `rank_labels`; default the
    predicted classes): the mean over it of each head's `head_importance` logit drop. Each point of
    the curve runs only the blocks from the first knocked-out block on (the earlier blocks' output
    is kept from the intact run), `batch_size` images at a time. counts: the numbers of heads knocked
    out at which accuracy is measured (default every one, 0 .. L * H); `removable` is then the largest
    measured count before the first measured failure.
    """
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"images (N, 3, S, S) and labels (N,) expected, got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    means = _as_means(model, mode, reference)
    importance = torch.zeros(len(model.blocks), num_heads(model))
    for start in range(0, len(rank_images), batch_size):
        x = rank_images[start:start + batch_size]
        t = None if rank_labels is None else rank_labels[start:start + batch_size]
        importance += head_importance_scores(model, x, t, mode, means).logit_drop.sum(dim=0).cpu()
    importance /= len(rank_images)
    flat = importance.flatten()
    order_idx = sorted(range(len(flat)), key=lambda i: (float(flat[i]), i))  # least important first, ties by index
    order = [divmod(i, num_heads(model)) for i in order_idx]

    removed = np.array(sorted({0, *(range(len(order) + 1) if counts is None else counts)}))
    if removed[-1] > len(order) or removed[0] < 0:
        raise ValueError(f"counts must lie in 0..{len(order)}, got {list(counts or [])}")
    k = len(removed)
    correct = torch.zeros(k, len(images), dtype=torch.bool)
    first_block = [min(b for b, _ in order[:j]) if j else len(model.blocks) for j in removed]
    labels = labels.to(images.device)
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        inputs, logits = _block_inputs(model, x)
        correct[0, start:start + len(x)] = (logits.argmax(dim=-1) == y).cpu()
        for j in range(1, k):
            with knocked_out(model, order[:removed[j]], mode=mode, reference=means):
                out = _run_from(model, inputs[first_block[j]], first_block[j])
            correct[j, start:start + len(x)] = (out.argmax(dim=-1) == y).cpu()

    from analysis.stats import bootstrap_mean

    rng = np.random.default_rng(seed)
    per_image = correct.T.numpy().astype(np.float64)  # (N, K)
    acc, lo, hi = bootstrap_mean(per_image, n_boot=n_boot, rng=rng)
    idx = rng.integers(0, len(images), (n_boot, len(images)))
    boot_removable = removable_heads(per_image[idx].mean(axis=1), removed, tolerance)
    return PruningCurve(
        order=order, importance=importance, removed=torch.from_numpy(removed), correct=correct,
        accuracy=torch.from_numpy(acc), ci_low=torch.from_numpy(lo), ci_high=torch.from_numpy(hi),
        removable=int(removable_heads(acc, removed, tolerance)),
        removable_ci=(int(np.percentile(boot_removable, 2.5)), int(np.percentile(boot_removable, 97.5))),
        tolerance=tolerance,
    )
