"""Sanity check of explanations: cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018).

    curve = cascading_randomization("chefer", model, images, target)
    curve.spearman      # (K, B): rank correlation with the intact model's map after each step

The model's learned weights are destroyed from the top down, one more layer at a time (the head,
the final norm, the last block, ..., the first block, then the stem), each re-initialised with the
model's own initialiser; after every step the explanation is recomputed and compared with the map
of the intact model. A method whose maps stay the same once the weights are gone explains the
image (its edges, its colours), not the model. Everything happens on a deep copy: the given
model stays bit-identical.

Similarities, per image, between the intact model's map a and the randomised model's map b, computed by
the reference libraries themselves (dependencies of t2t-lens, imported when first used: `import analysis` stays fast):
- `spearman`: `scipy.stats.spearmanr` of the token values (average ranks for ties; NaN when a map is
  constant);
- `spearman_abs`: the same of |a| and |b| (the paper reports both: the sign of a map may flip);
- `ssim`: `skimage.metrics.structural_similarity` with its defaults (7 x 7 uniform window, K1 = 0.01,
  K2 = 0.03, sample covariances, the mean over the windows that fit inside the map), on each map min-max
  normalised to [0, 1] first, with data_range 1 (so a rescaled map is the same map). On a grid smaller
  than 7 tokens the window is the largest odd size that fits; below 3 x 3 SSIM is undefined (NaN).
These used to be copies in torch. The libraries cost more per map pair (measured on 2 shared cores: 16 pairs
of 14 x 14 maps, what one sanity check of the app compares, took 33 ms with spearmanr and 1.7 ms with SSIM,
against 1.2 and 0.3 ms for the copies), but that is a few percent of the 1-2 s the 11-16 explanations of one
cascade take, so the copies are not needed.

`random_logit` is Quantus's Random Logit test (Sixt et al., ICML 2020): the map of the explained class
against the map of a random other class; a method whose maps hardly change with the class explains the
image rather than the decision (high similarity is bad). It computes what `quantus.RandomLogit` computes
(tested equal), without calling it (its docstring says why).

Shapes: B images, K = 1 + number of randomised layers (step 0 is the intact model), h x w maps.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from analysis.modelio import model_targets

Method = str | Callable[..., Tensor]


# --- similarities -------------------------------------------------------------------------------------

def _reference(module: str):
    """Import a reference library on first use (SciPy and scikit-image are dependencies; importing them at
    module level would add about half a second to `import analysis`)."""
    import importlib

    return importlib.import_module(module)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """(B, ...) maps -> (B,) float64 `scipy.stats.spearmanr` of each flattened pair (NaN where a map is constant)."""
    stats = _reference("scipy.stats")
    x, y = a.detach().cpu().double().flatten(1).numpy(), b.detach().cpu().double().flatten(1).numpy()
    out = torch.empty(len(x), dtype=torch.float64)
    with warnings.catch_warnings():  # a constant map has no ranking: NaN is the answer, not a warning
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            out[i] = float(stats.spearmanr(u, v).statistic)
    return out


def ssim_window(h: int, w: int, win_size: int = 7) -> int:
    """The SSIM window used on an h x w map: win_size, or the largest odd size that fits (< 3: undefined)."""
    win = min(win_size, h, w)
    return win - (1 - win % 2)


def ssim(a: Tensor, b: Tensor, data_range: float | Tensor | None = None, win_size: int = 7) -> Tensor:
    """(B, h, w) maps -> (B,) float64 `skimage.metrics.structural_similarity(a, b, data_range=..., win_size=...)`
    with its defaults otherwise (uniform window, K1 0.01, K2 0.03, sample covariance, mean over the valid
    windows). data_range: default each pair's joint max - min (as Quantus does); win_size shrinks to the
    largest odd size that fits the map (`ssim_window`), NaN below 3."""
    x, y = a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()
    win = ssim_window(x.shape[-2], x.shape[-1], win_size)
    if win < 3:  # a 1 x 1 window has no variance: SSIM is undefined on a map this small
        return torch.full((len(x),), float("nan"), dtype=torch.float64)
    metrics = _reference("skimage.metrics")
    if data_range is None:
        both = np.concatenate([x.reshape(len(x), -1), y.reshape(len(y), -1)], axis=1)
        ranges = both.max(axis=1) - both.min(axis=1)
    else:
        ranges = np.broadcast_to(np.asarray(torch.as_tensor(data_range).cpu(), dtype=np.float64), (len(x),))
    out = torch.empty(len(x), dtype=torch.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # two equal constant maps: 0 / 0, NaN as before
        for i in range(len(x)):
            out[i] = float(metrics.structural_similarity(x[i], y[i], win_size=win, data_range=float(ranges[i])))
    return out


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
    original: Tensor | None = None,
    **method_kwargs,
) -> SanityCurve:
    """Adebayo et al.'s cascading randomisation of `model` for explanation `method` on (B, 3, S, S) images.

    method: a name of `analysis.explain.EXPLAINERS` or a function (model, images, target) -> (B, h, w).
    target: the class explained at every step (default: the intact model's prediction, kept fixed).
    layers: the cascade (default `randomization_layers`): (label, [submodule or parameter names]).
    initialize: re-initialises one submodule or parameter (default: the model's own, `reinitialize`).
    seed: step k draws its weights after `torch.manual_seed(seed + k)`, inside `torch.random.fork_rng`
        (the caller's random state is left alone).
    original: the intact model's (B, h, w) maps of `target` when already made (with these keywords).
    Cost: 1 + len(layers) runs of the method (len(layers) with `original`), plus one deep copy of the model.
    """
    target = model_targets(model, images, target)
    layers = list(randomization_layers(model) if layers is None else layers)
    if original is None:
        original = _explain(method, model, images, target, method_kwargs)
    original = original.detach()
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


# --- Random Logit (Sixt et al. 2020), through Quantus ---------------------------------------------------

def pixel_maps(maps: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) maps -> (B, 1, H, W) float32 numpy at pixel resolution (bilinear, as deletion and ROAD see
    them): Quantus wants a map of the input's spatial size."""
    from analysis.maps import upsample_map

    maps = maps.detach().float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = upsample_map(maps, size)
    return maps[:, None].cpu().numpy()


def other_classes(target: Tensor, num_classes: int, seed: int = 42) -> Tensor:
    """(B,) target -> (B,) a class drawn uniformly among the others, as `quantus.RandomLogit` draws it: numpy's
    legacy generator seeded with `seed` draws randint(0, C - 1) per image, an index into the other classes in
    increasing order (so draws at or above the target move up by one)."""
    draw = torch.from_numpy(np.random.RandomState(seed).randint(0, num_classes - 1, len(target))).to(target)
    return draw + (draw >= target).long()


def random_logit(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    saliency: Tensor | None = None,
    num_classes: int | None = None,
    seed: int = 42,
    **method_kwargs,
) -> Tensor:
    """Random Logit (Sixt et al. 2020) of `method` on (B, 3, S, S) images -> (B,) float64, as Quantus computes it.

    Per image, the similarity between the map of `target` (default: the prediction) and the map of a class
    drawn among the others (`other_classes`, Quantus's draw), with Quantus's default similarity
    (`quantus.similarity_func.ssim`: scikit-image's SSIM of the flattened maps, a 1-D window of 7 along the
    raster, their joint max - min as data range), after Quantus's default normalisation, each map divided
    by its largest |value| (a map of zeros left alone). Lower is better: a map that changes with the class
    explains the decision; a class-agnostic method scores 1. NaN where both maps are the same constant.

    Maps are compared at pixel resolution (`pixel_maps`, bilinear), since Quantus requires maps of the input's
    spatial size. This is `quantus.RandomLogit(normalise_func_kwargs={"normalise_axes": (1, 2, 3)})` (tested
    equal to 1e-6) computed here rather than by calling it, because Quantus 0.6 (a) refuses a whole batch
    when every value of its maps is negative or every map is constant (an AssertionError; seen on AttnLRP
    maps of random-weight models), (b) by default divides by the largest |value| of the whole batch, which
    makes an image's score depend on the other images, and (c) reseeds numpy's global generator.
    method: a name of `analysis.explain.EXPLAINERS` or a function (model, images, target) -> (B, h, w);
    saliency: the (B, h, w) maps of `target` when already computed (else computed here).
    Cost: one more run of the method.
    """
    metrics = _reference("skimage.metrics")
    target = model_targets(model, images, target)
    size = tuple(images.shape[-2:])
    if saliency is None:
        saliency = _explain(method, model, images, target, method_kwargs)
    off = other_classes(target, num_classes or int(model.num_classes), seed)
    a = pixel_maps(saliency, size).astype(np.float64).reshape(len(images), -1)
    b = pixel_maps(_explain(method, model, images, off, method_kwargs), size).astype(np.float64)
    b = b.reshape(len(images), -1)
    out = torch.empty(len(images), dtype=torch.float64)
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        u, v = (w / np.abs(w).max() if np.any(w != 0) else w for w in (u, v))  # quantus's normalise_by_max
        both = np.concatenate([u, v])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = float(metrics.structural_similarity(u, v, data_range=float(both.max() - both.min())))
    return out
