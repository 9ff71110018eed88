"""Centered kernel alignment between the blocks of two models.

Linear CKA (Kornblith et al., ICML 2019) compares two representations of the same n examples
through their n x n Gram matrices K = X X^T and L = Y Y^T:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

It is invariant to orthogonal transforms and isotropic scaling of either representation, and
does not need X and Y to have the same width, so a T2T-ViT block can be compared with a ViT block.

Minibatch CKA (Nguyen, Raghu & Kornblith, ICLR 2021) makes this affordable for many examples:
the unbiased HSIC_1 estimator (Song et al. 2012) is averaged over minibatches, numerator and
denominator separately, so the result does not depend on the batch size the way averaging the
biased per-batch CKA would.

Shapes: n examples; a representation is (n, ...) and is flattened to (n, p); L1, L2 blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

FEATURE_REDUCTIONS = ("flatten", "patches", "cls", "mean")


def gram_linear(x: Tensor) -> Tensor:
    """(n, ...) features -> (n, n) linear Gram matrix X X^T in float64 (flattening all but dim 0).

    float64 because the features of a block flatten to ~10^5 numbers per example, and the
    centred Grams of similar representations differ by small amounts of large sums.
    """
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def center_gram(gram: Tensor) -> Tensor:
    """(..., n, n) -> H K H with H = I - 11^T / n: removes the feature means."""
    gram = gram - gram.mean(dim=-1, keepdim=True)
    return gram - gram.mean(dim=-2, keepdim=True)


def cka_from_grams(grams1: Tensor, grams2: Tensor) -> Tensor:
    """Biased (full-batch) linear CKA between stacks of Grams (L1, n, n), (L2, n, n) -> (L1, L2)."""
    k, m = center_gram(grams1), center_gram(grams2)
    cross = torch.einsum("aij,bij->ab", k, m)  # tr(K_c L_c); the 1/(n-1)^2 of HSIC cancels
    return cross / torch.outer(k.flatten(1).norm(dim=-1), m.flatten(1).norm(dim=-1))


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019) of (n, ...) and (n, ...) features -> scalar in [0, 1].

    With fewer features than examples it uses the feature-space form
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) (Kornblith et al., eq. 5), which needs no
    n x n matrix; otherwise the Gram form. Both are exact and equal.
    """
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if max(x.shape[1], y.shape[1]) >= x.shape[0]:
        return cka_from_grams(gram_linear(x)[None], gram_linear(y)[None])[0, 0]
    xc, yc = x - x.mean(dim=0), y - y.mean(dim=0)
    return (yc.T @ xc).square().sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm())


def hsic1_matrix(grams1: Tensor, grams2: Tensor) -> Tensor:
    """Unbiased HSIC_1 of every pair of Grams (L1, n, n) x (L2, n, n) -> (L1, L2); needs n >= 4.

    HSIC_1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~ L~ 1] / (n (n-3)),
    with K~, L~ the Grams with zeroed diagonals. All pairs at once: the trace is a sum of an
    elementwise product (Grams are symmetric) and 1'K~ L~ 1 a dot product of row sums.
    """
    n = grams1.shape[-1]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 examples per batch, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=grams1.device)
    k = grams1.masked_fill(eye, 0)
    m = grams2.masked_fill(eye, 0)
    trace = torch.einsum("aij,bij->ab", k, m)
    row_k, row_m = k.sum(dim=-1), m.sum(dim=-1)  # K~1 and L~1, (L, n)
    sums = torch.outer(row_k.sum(dim=-1), row_m.sum(dim=-1)) / ((n - 1) * (n - 2))
    cross = row_k @ row_m.T * (2 / (n - 2))
    return (trace + sums - cross) / (n * (n - 3))


def unbiased_cka(x: Tensor, y: Tensor) -> Tensor:
    """CKA with the unbiased HSIC_1 estimator on one batch of (n, p1), (n, p2) features -> scalar."""
    return cka_from_state(accumulate(None, [x], [y]))[0, 0]


@dataclass
class CKAState:
    """Running sums of HSIC_1 over minibatches: cross (L1, L2), self1 (L1,), self2 (L2,)."""

    cross: Tensor
    self1: Tensor
    self2: Tensor
    batches: int = 0


def accumulate(state: CKAState | None, feats1: Sequence[Tensor], feats2: Sequence[Tensor]) -> CKAState:
    """Add one minibatch: L1 features (n, ...) of model 1 and L2 features (n, ...) of model 2.

    Returns a new state (the input state is not modified).
    """
    g1 = torch.stack([gram_linear(f) for f in feats1])  # a loop over blocks, each a matmul
    g2 = torch.stack([gram_linear(f) for f in feats2])
    cross = hsic1_matrix(g1, g2)
    self1 = torch.diagonal(hsic1_matrix(g1, g1))
    self2 = torch.diagonal(hsic1_matrix(g2, g2))
    if state is None:
        return CKAState(cross, self1, self2, 1)
    return CKAState(state.cross + cross, state.self1 + self1, state.self2 + self2, state.batches + 1)


def cka_from_state(state: CKAState) -> Tensor:
    """Minibatch CKA (L1, L2) = sum HSIC_1(K, L) / sqrt(sum HSIC_1(K, K) * sum HSIC_1(L, L))."""
    denom = torch.outer(state.self1, state.self2).clamp_min(torch.finfo(state.cross.dtype).tiny).sqrt()
    return state.cross / denom


def minibatch_cka(batches: Iterable[tuple[Sequence[Tensor], Sequence[Tensor]]]) -> Tensor:
    """Minibatch CKA over an iterable of (feats1, feats2) pairs (lists of (n, ...) tensors) -> (L1, L2)."""
    state = None
    for feats1, feats2 in batches:
        state = accumulate(state, feats1, feats2)
    if state is None:
        raise ValueError("no batches")
    return cka_from_state(state)


def cka_matrix(feats1: Sequence[Tensor], feats2: Sequence[Tensor]) -> Tensor:
    """Full-batch (biased) linear CKA between all blocks: L1 and L2 (n, ...) features -> (L1, L2)."""
    return cka_from_grams(torch.stack([gram_linear(f) for f in feats1]), torch.stack([gram_linear(f) for f in feats2]))


def block_features(tokens: Tensor, reduce: str = "flatten", num_prefix_tokens: int = 1) -> Tensor:
    """(B, T, D) block output -> (B, p) features for CKA.

    "flatten": all tokens (p = T D); "patches": patch tokens only; "cls": the class token;
    "mean": mean of the patch tokens. Flattening keeps spatial layout, which is what
    Raghu et al. (2021) compare between ViT and CNN blocks.
    """
    if reduce == "flatten":
        return tokens.flatten(1)
    if reduce == "patches":
        return tokens[:, num_prefix_tokens:].flatten(1)
    if reduce == "cls":
        return tokens[:, 0]
    if reduce == "mean":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"reduce must be one of {FEATURE_REDUCTIONS}, got {reduce!r}")


def _model_block_features(model: nn.Module, images: Tensor, reduce: str, normalize: bool) -> list[Tensor]:
    from analysis.modelio import run_trace

    if normalize:
        cfg = model.default_cfg
        mean = torch.as_tensor(cfg["mean"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(cfg["std"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        images = (images - mean) / std
    trace = run_trace(model, images, attention=False)
    p = int(getattr(model, "num_prefix_tokens", 1))
    return [block_features(trace[f"blocks.{i}"], reduce, p) for i in range(len(model.blocks))]


def model_cka(
    model1: nn.Module,
    model2: nn.Module,
    batches: Iterable[Tensor],
    reduce: str = "flatten",
    normalize: bool = True,
) -> Tensor:
    """Minibatch CKA between every block of two models over batches of images -> (L1, L2).

    With `normalize`, `batches` hold raw images in [0, 1] and each model gets its own
    `default_cfg` mean / std (ViT and T2T-ViT checkpoints were trained with different ones);
    otherwise the same inputs go to both. Each batch needs at least 4 images.
    """
    return minibatch_cka(
        (_model_block_features(model1, x, reduce, normalize), _model_block_features(model2, x, reduce, normalize))
        for x in batches
    )
