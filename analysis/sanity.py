"""Sanity check of explanations: cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018).

    curve = cascading_randomization("chefer", model, images, target)
    curve.spearman      # (K, B): rank correlation with the intact model's map after each step

The model's learned weights are destroyed from the top down, one more layer at a time (the head,
the final norm, the last block, ..., the first block, then the stem), each re-initialised with the
model's own initialiser; after every step the explanation is recomputed and compared with the map
of the intact model. A method whose maps stay the same once the weights are gone explains the
image (its edges, its colours), not the model. Everything happens on a deep copy: the given
model stays bit-identical.

Similarities, per image, between the intact model's map a and the randomised model's map b:
- `spearman`: Spearman rank correlation of the token values (average ranks for ties, as
  `scipy.stats.spearmanr`; NaN when a map is constant);
- `spearman_abs`: the same of |a| and |b| (the paper reports both: the sign of a map may flip);
- `ssim`: structural similarity with scikit-image's defaults (`skimage.metrics.structural_similarity`:
  7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariances, the mean over the windows that
  fit inside the map), on each map min-max normalised to [0, 1] first, with data_range 1 (so a
  rescaled map is the same map). On a grid smaller than 7 tokens the window is the largest odd size
  that fits; below 3 x 3 SSIM is undefined (NaN).

Shapes: B images, K = 1 + number of randomised layers (step 0 is the intact model), h x w maps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.modelio import model_targets

Method = str | Callable[..., Tensor]


# --- similarities -------------------------------------------------------------------------------------

def rankdata(values: Tensor) -> Tensor:
    """(B, P) -> (B, P) float64 ranks 1..P per row, ties given their average rank (scipy's default)."""
    out = torch.empty(values.shape, dtype=torch.float64)
    for i, row in enumerate(values.detach().cpu().double()):
        uniq, inverse, counts = torch.unique(row, sorted=True, return_inverse=True, return_counts=True)
        last = counts.cumsum(0).double()  # rank of the last member of each tie group
        out[i] = (last - (counts.double() - 1) / 2)[inverse]
    return out


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """(B, ...) maps -> (B,) Spearman rank correlation per pair (NaN where a map is constant)."""
    ra, rb = rankdata(a.flatten(1)), rankdata(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(dim=1) / (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()


def ssim(a: Tensor, b: Tensor, data_range: float | Tensor | None = None, win_size: int = 7) -> Tensor:
    """(B, h, w) maps -> (B,) mean SSIM, exactly `skimage.metrics.structural_similarity(a, b, data_range=...)`
    with its defaults (uniform win_size x win_size window, K1 0.01, K2 0.03, sample covariance,
    mean over the valid windows). data_range: default the pair's joint max - min (as Quantus does)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
        data_range = both.amax(dim=1) - both.amin(dim=1)
    r = torch.as_tensor(data_range, dtype=torch.float64).reshape(-1, 1, 1)
    win = min(win_size, a.shape[-2], a.shape[-1])
    win -= 1 - win % 2  # odd, as skimage requires
    if win < 3:  # a 1 x 1 window has no variance: SSIM is undefined on a map this small
        return torch.full((a.shape[0],), float("nan"), dtype=torch.float64)
    n = win * win
    mean = lambda t: F.avg_pool2d(t[:, None], win, stride=1)[:, 0]  # noqa: E731  (valid windows only)
    ux, uy = mean(a), mean(b)
    cov = n / (n - 1)  # sample covariance
    vx = cov * (mean(a * a) - ux * ux)
    vy = cov * (mean(b * b) - uy * uy)
    vxy = cov * (mean(a * b) - ux * uy)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def _unit_range(m: Tensor) -> Tensor:
    flat = m.flatten(1).double()
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-30)).view(m.shape)


# --- randomising a model ------------------------------------------------------------------------------

def randomization_layers(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The cascade's steps, top first: (label, names of the submodules and parameters it re-initialises).

    head, norm, blocks.{L-1} ... blocks.0, then the stem (T2T module or patch embedding) with the class
    token and a learned position embedding.
    """
    stem = ["tokens_to_token"] if hasattr(model, "tokens_to_token") else ["patch_embed", "pos_embed"]
    return ([("head", ["head"]), ("norm", ["norm"])]
            + [(f"blocks.{i}", [f"blocks.{i}"]) for i in reversed(range(len(model.blocks)))]
            + [("stem", [*stem, "cls_token"])])


def reinitialize(part: nn.Module | nn.Parameter) -> None:
    """Re-initialise with what the model's constructor uses (`t2t.layers.init_weights`, timm's ViT
    scheme): truncated-normal (std 0.02) linear weights and zero biases, unit LayerNorms, PyTorch's
    default for a convolution (the patch embedding), std-0.02 truncated normal for a class token or a
    learned position embedding. Frozen tables (T2T-ViT's sinusoid positions, the Performer's random
    features) are not learned and stay as they are."""
    from t2t.layers import init_weights

    if isinstance(part, nn.Parameter):
        if part.requires_grad:
            nn.init.trunc_normal_(part.data, std=0.02)
        return
    for m in part.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            init_weights(m)
        elif isinstance(m, nn.Conv2d):
            m.reset_parameters()


def _resolve(model: nn.Module, name: str) -> nn.Module | nn.Parameter:
    try:
        return model.get_submodule(name)
    except AttributeError:
        try:
            return model.get_parameter(name)
        except AttributeError:
            raise ValueError(f"{name!r} is neither a submodule nor a parameter of this model") from None


# --- the check ----------------------------------------------------------------------------------------

@dataclass
class SanityCurve:
    """Similarity to the intact model's map after each cascading step.

    layers: K labels, "original" first, then what step k re-initialised (cumulatively);
    spearman, spearman_abs, ssim: (K, B) float64; maps: (K, B, h, w) the maps themselves.
    """

    method: str
    layers: list[str]
    spearman: Tensor
    spearman_abs: Tensor
    ssim: Tensor
    maps: Tensor

    def mean(self, metric: str = "spearman") -> Tensor:
        """(K,) mean over images (NaN-aware) of one similarity."""
        return getattr(self, metric).nanmean(dim=1)

    def passes(self, threshold: float = 0.5, metric: str = "spearman_abs") -> bool:
        """True when, once every layer is randomised, the mean similarity is below `threshold`."""
        return bool(self.mean(metric)[-1] < threshold)


def _explain(method: Method, model: nn.Module, images: Tensor, target: Tensor, kwargs: dict) -> Tensor:
    if callable(method):
        return method(model, images, target, **kwargs)
    from analysis.explain import explain

    out = explain(method, model, images, target=target, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def cascading_randomization(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    layers: Sequence[tuple[str, Sequence[str]]] | None = None,
    initialize: Callable[[nn.Module | nn.Parameter], None] = reinitialize,
    seed: int = 0,
    **method_kwargs,
) -> SanityCurve:
    """Adebayo et al.'s cascading randomisation of `model` for explanation `method` on (B, 3, S, S) images.

    method: a name of `analysis.explain.EXPLAINERS` or a function (model, images, target) -> (B, h, w).
    target: the class explained at every step (default: the intact model's prediction, kept fixed).
    layers: the cascade (default `randomization_layers`): (label, [submodule or parameter names]).
    initialize: re-initialises one submodule or parameter (default: the model's own, `reinitialize`).
    seed: step k draws its weights after `torch.manual_seed(seed + k)`, inside `torch.random.fork_rng`
        (the caller's random state is left alone).
    Cost: 1 + len(layers) runs of the method, plus one deep copy of the model.
    """
    target = model_targets(model, images, target)
    layers = list(randomization_layers(model) if layers is None else layers)
    original = _explain(method, model, images, target, method_kwargs).detach()
    work = copy.deepcopy(model)
    maps = [original]
    with torch.random.fork_rng(devices=[]):
        for k, (_, names) in enumerate(layers, start=1):
            parts = [_resolve(work, n) for n in names]
            torch.default_generator.manual_seed(seed + k)  # the CPU generator only: CUDA state untouched
            with torch.no_grad():
                for part in parts:
                    initialize(part)
            maps.append(_explain(method, work, images, target, method_kwargs).detach())
    stack = torch.stack(maps)  # (K, B, h, w)
    a = original.expand_as(stack).reshape(-1, *original.shape[1:])
    b = stack.reshape(-1, *original.shape[1:])
    k, bsz = stack.shape[:2]
    return SanityCurve(
        method=method if isinstance(method, str) else getattr(method, "__name__", "custom"),
        layers=["original", *(label for label, _ in layers)],
        spearman=spearman(a, b).view(k, bsz),
        spearman_abs=spearman(a.abs(), b.abs()).view(k, bsz),
        ssim=ssim(_unit_range(a), _unit_range(b), data_range=1.0).view(k, bsz),
        maps=stack.cpu(),
    )
