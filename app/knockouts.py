"""Knock-outs of a `Context`'s models, pruning curves and sanity checks of explanations, through the
byte cache (issue 23; the library is `analysis.knockout` and `analysis.sanity`).

Owns: what the Knock-outs page computes (`knocked_run`: top classes and maps with heads and T2T
attention knocked out; `head_grid`: the importance of each further head, given those, in the
`QUICK` queue; `pruning`: the pruning curve over labelled synthetic test images, in the `HEAVY`
queue; `reference`: the mean head outputs mean ablation puts in place), the Explanations page's
sanity checks (`sanity`: cascading randomisation in the `HEAVY` queue) and the sentences computed
from them (`sanity_verdict`, `pruning_sentence`); whether the heads AttnLRP gives relevance are those
that matter when knocked out (`spearman`, `permutation_p`, `relevance_agreement`).

Models are shared by every session (app/models.py): a knock-out is only ever applied inside a
cached function, by `analysis.knockout.knocked_out`, whose hooks act in the thread that entered
it (the one computing the value) and are removed on exit; the knocked-out heads, the T2T layers
and the mode are part of every cache key, so no other session and no other cache entry ever sees a
knocked-out model. The sanity check re-initialises a deep copy (`analysis.sanity`).

May import: app.compute, app.jobs, app.device, app.models, app.images, t2t, analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import t2t
from app.compute import Context, batch_inputs
from app.device import guarded
from app.images import synthetic_class_names, synthetic_image
from app.jobs import HEAVY, QUICK, Pending, background, memo, soon
from app.models import LoadedModel

Head = tuple[int, int]
MODES = ("zero", "mean")
MAPS = ("rollout", "last_cls")
REFERENCE_IMAGES = 16  # synthetic test images whose mean head outputs mean ablation uses
REFERENCE_FIRST = 50  # ... examples 50.. of each class, apart from the pruning batches below
PRUNE_RANK_FIRST = 20  # the ranking batch: examples 20.. of each class; the labelled batch: 0..
SANITY_THRESHOLD = 0.5  # |Spearman| with the intact model's map below this once every layer is random: passes


def t2t_layers_of(lm: LoadedModel) -> bool:
    """True when the model has a T2T module whose attention can be knocked out (T2T-ViT)."""
    return hasattr(lm.model, "tokens_to_token")


def synthetic_labels(lm: LoadedModel) -> bool:
    """True when the model answers with the synthetic shape classes (the embedded models): the
    synthetic test split is then a labelled batch for it."""
    return list(lm.class_names) == list(synthetic_class_names())


# ----------------------------------------------------------------------------------------------
# Mean ablation's reference: each block's mean `attn @ v` over synthetic test images
# ----------------------------------------------------------------------------------------------


def _synthetic(n: int, first_example: int) -> list[tuple[object, int]]:
    """`n` synthetic test images, balanced over the classes, from example `first_example` of each on."""
    k = len(synthetic_class_names())
    return [(synthetic_image(i % k, first_example + i // k), i % k) for i in range(n)]


@memo
def _reference(model_key: str, n: int, _lm: LoadedModel) -> Tensor:
    from analysis.knockout import mean_head_outputs

    x = batch_inputs(_lm, [im for im, _ in _synthetic(n, REFERENCE_FIRST)])
    with torch.no_grad():
        return mean_head_outputs(_lm.model, x).cpu()


def reference(lm: LoadedModel, mode: str) -> Tensor | None:
    """(L, T, D) mean head outputs over `REFERENCE_IMAGES` synthetic test images (mode "mean"), else None.
    Computed once per model (cached)."""
    return guarded(_reference, lm.key, REFERENCE_IMAGES, lm) if mode == "mean" else None


# ----------------------------------------------------------------------------------------------
# One image with parts knocked out: top classes and maps
# ----------------------------------------------------------------------------------------------


@dataclass
class KnockRun:
    """One forward of one image with parts knocked out.

    probs: (C,) class probabilities; rollout: (h, w) attention rollout of the class token, the
    knocked-out heads left out of their block's head mean (a block with every head out passes its
    tokens on unmixed); last_cls: (h, w) the last block's class-token attention over the patches,
    mean of its heads still in, or None when every head of the last block is out.
    """

    probs: np.ndarray
    rollout: np.ndarray
    last_cls: np.ndarray | None


def active_mean(attn: Tensor, out: Sequence[int]) -> Tensor:
    """(B, H, T, T) -> (B, 1, T, T) mean of the heads not in `out`; zeros when every head is out."""
    keep = [h for h in range(attn.shape[1]) if h not in set(out)]
    if not keep:
        return torch.zeros_like(attn[:, :1])
    return attn[:, keep].mean(dim=1, keepdim=True)


@memo
def _knocked_run(model_key: str, image_key: str, heads: tuple[Head, ...], t2t_off: tuple[int, ...], mode: str,
                 _model: nn.Module, _x: Tensor, _reference: Tensor | None) -> KnockRun:
    from analysis.knockout import knocked_out
    from analysis.maps import tokens_to_grid
    from analysis.rollout import cls_rollout

    # the hooks act in this thread only (the one computing this cache entry) and are gone afterwards
    with torch.no_grad(), knocked_out(_model, heads, t2t_off, mode, _reference):
        tr = t2t.trace(_model, _x, attention=True)
    grid = tuple(tr.grid("blocks.0"))
    by_block: dict[int, list[int]] = {}
    for b, h in heads:
        by_block.setdefault(b, []).append(h)
    fused = [active_mean(a, by_block.get(i, [])) for i, a in enumerate(tr.attentions())]
    rollout = tokens_to_grid(cls_rollout(fused), grid)[0].float().cpu().numpy()
    last = len(fused) - 1
    n_heads = tr.attentions()[last].shape[1]
    last_cls = None
    if len(by_block.get(last, [])) < n_heads:
        last_cls = tokens_to_grid(fused[last][:, 0, 0, 1:], grid)[0].float().cpu().numpy()
    probs = tr["logits"][0].float().softmax(dim=-1).cpu().numpy()
    return KnockRun(probs, rollout, last_cls)


def canonical(heads: Sequence[Sequence[int]]) -> tuple[Head, ...]:
    """Heads as a sorted tuple of (block, head) ints: one cache key per set, whatever the click order."""
    return tuple(sorted({(int(b), int(h)) for b, h in heads}))


def knocked_run(ctx: Context, lm: LoadedModel, heads: Sequence[Sequence[int]] = (), t2t_off: Sequence[int] = (),
                mode: str = "zero") -> KnockRun:
    """`KnockRun` of the current image with backbone `heads` and T2T attention layers `t2t_off` knocked
    out (`mode` "zero" or "mean"); nothing knocked out gives the intact model's run."""
    t2t_off = tuple(sorted(set(t2t_off))) if t2t_layers_of(lm) else ()
    ref = reference(lm, mode) if heads else None
    return guarded(_knocked_run, lm.key, ctx.image.key, canonical(heads), t2t_off, mode if heads else "zero",
                   lm.model, ctx.inputs(lm), None if ref is None else ref.to(lm.device))


# ----------------------------------------------------------------------------------------------
# The importance of each further head, given the knocked-out ones
# ----------------------------------------------------------------------------------------------


@dataclass
class HeadGrid:
    """What knocking out each further head alone costs class `target` on this image, given the
    heads and T2T layers already knocked out: logit_drop, prob_drop (L, H) (0 for a head already
    out); logit, prob: the class's logit and probability with only the given parts out."""

    target: int
    logit_drop: np.ndarray
    prob_drop: np.ndarray
    logit: float
    prob: float


@memo
def _head_grid(model_key: str, image_key: str, target: int, heads: tuple[Head, ...], t2t_off: tuple[int, ...],
               mode: str, _model: nn.Module, _x: Tensor, _reference: Tensor | None) -> HeadGrid:
    from analysis.knockout import head_importance_scores

    imp = head_importance_scores(_model, _x, target, mode=mode, reference=_reference, given=heads, t2t=t2t_off)
    return HeadGrid(target, imp.logit_drop[0].float().cpu().numpy(), imp.prob_drop[0].float().cpu().numpy(),
                    float(imp.logit[0]), float(imp.prob[0]))


def head_grid(ctx: Context, lm: LoadedModel, target: int, heads: Sequence[Sequence[int]] = (),
              t2t_off: Sequence[int] = (), mode: str = "zero") -> Pending:
    """`HeadGrid` of class `target` given `heads` / `t2t_off` knocked out, computed in the `QUICK`
    queue (one batched pass per group of blocks: about 1 + H (L + 1) / 2 forwards): a `Pending`."""
    t2t_off = tuple(sorted(set(t2t_off))) if t2t_layers_of(lm) else ()
    ref = reference(lm, mode)
    return soon(QUICK, f"Head importance for {lm.name}", _head_grid, lm.key, ctx.image.key, int(target),
                canonical(heads), t2t_off, mode, lm.model, ctx.inputs(lm), None if ref is None else ref.to(lm.device))


# ----------------------------------------------------------------------------------------------
# Pruning curves over labelled synthetic test images
# ----------------------------------------------------------------------------------------------


def prune_counts(total: int, points: int) -> list[int]:
    """`points` + 1 removal counts from 0 to `total` heads, evenly spaced (rounded), each once."""
    return sorted({round(total * i / points) for i in range(points + 1)})


@memo
def _pruning(model_key: str, n: int, rank_n: int, points: int, mode: str, n_boot: int, _lm: LoadedModel):
    from analysis.knockout import all_heads, pruning_curve

    batch, ranking = _synthetic(n, 0), _synthetic(rank_n, PRUNE_RANK_FIRST)
    x, rx = batch_inputs(_lm, [im for im, _ in batch]), batch_inputs(_lm, [im for im, _ in ranking])
    y = torch.tensor([label for _, label in batch], device=x.device)
    ry = torch.tensor([label for _, label in ranking], device=x.device)
    ref = _reference(model_key, REFERENCE_IMAGES, _lm).to(x.device) if mode == "mean" else None
    counts = prune_counts(len(all_heads(_lm.model)), points)
    return pruning_curve(_lm.model, x, y, rx, ry, mode=mode, reference=ref, counts=counts, n_boot=n_boot)


def pruning(lm: LoadedModel, n: int, mode: str = "zero", points: int = 8, n_boot: int = 1000):
    """`analysis.knockout.PruningCurve` of `lm` on `n` labelled synthetic test images (examples 0..
    of each class), heads ranked on `n` // 2 others (examples 20.. of each class), accuracy measured
    at `points` + 1 removal counts. In the `HEAVY` queue: None while it runs (a progress bar instead).
    Only for models that answer with the synthetic classes (`synthetic_labels`)."""
    return guarded(background, HEAVY, f"Pruning curve over {n} images for {lm.name}", _pruning, lm.key, int(n),
                   max(1, int(n) // 2), int(points), mode, int(n_boot), lm)


def pruning_sentence(role: str, curve) -> str:
    """What one pruning curve shows: how many heads can go for at most `tolerance` of accuracy."""
    removed = curve.removed.tolist()
    step = removed[1] - removed[0] if len(removed) > 1 else 0
    lo, hi = curve.removable_ci
    return (f"{role}: {curve.removable} of {curve.num_heads} heads ({curve.fraction_removable:.0%}) can go for at "
            f"most {curve.tolerance * 100:g} point{'s' * (curve.tolerance != 0.01)} of accuracy "
            f"(bootstrap 95% interval {lo} to {hi} heads; accuracy measured every {step} heads or so, intact "
            f"{float(curve.accuracy[0]):.0%}, all heads out {float(curve.accuracy[-1]):.0%})")


# ----------------------------------------------------------------------------------------------
# Sanity checks of explanations (cascading randomisation), for the Explanations page
# ----------------------------------------------------------------------------------------------


PIXEL_METHODS = ("attnlrp", "cp_lrp")  # relevance at the pixels: checked on the pixel map the page shows


def _pixel_map(method: str):
    """(model, images, target) -> (B, S, S) pixel relevance of an `analysis.lrp` method, summed over channels."""
    from analysis.explain import explain

    def pixel_map(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return explain(method, model, images, target=target, return_relevance=True)[1].pixel_map

    pixel_map.__name__ = method
    return pixel_map


@memo
def _sanity(model_key: str, image_key: str, method: str, target: int, options: tuple, _model: nn.Module,
            _x: Tensor) -> dict[str, object]:
    from analysis.sanity import cascading_randomization

    # AttnLRP / CP-LRP are shown at the pixels, so their maps are compared there (the others on their token grid)
    explainer = _pixel_map(method) if method in PIXEL_METHODS else method
    curve = cascading_randomization(explainer, _model, _x, target=target, **dict(options))
    return {"layers": list(curve.layers), "spearman_abs": curve.mean("spearman_abs").numpy(),
            "spearman": curve.mean("spearman").numpy(), "ssim": curve.mean("ssim").numpy()}


def sanity(ctx: Context, lm: LoadedModel, method: str, target: int, **options: object) -> dict[str, object] | None:
    """Cascading randomisation of `method` (with `options`, e.g. the rollout discard rule) on the current
    image: {"layers": K labels ("original", "head", "norm", "blocks.L-1", ..., "stem"), "spearman_abs",
    "spearman", "ssim": (K,) similarity to the intact model's map}. In the `HEAVY` queue (1 + L + 3
    runs of the method on a deep copy of the model): None while it runs (a progress bar instead).
    The maps compared are the token maps, and for `PIXEL_METHODS` (AttnLRP, CP-LRP) the pixel maps."""
    return guarded(background, HEAVY, f"Sanity check of {method} for {lm.name}", _sanity, lm.key, ctx.image.key,
                   method, int(target), tuple(sorted(options.items())), lm.model, ctx.inputs(lm))


def sanity_verdict(curve: dict[str, object], threshold: float = SANITY_THRESHOLD) -> str:
    """One line from a sanity curve: passes when the mean |Spearman| with the intact model's map is
    below `threshold` once every layer is random, else fails; with the numbers it reads."""
    s = np.asarray(curve["spearman_abs"], dtype=float)
    ssim = np.asarray(curve["ssim"], dtype=float)
    last, label = float(s[-1]), str(curve["layers"][-1])
    below = np.flatnonzero(s < threshold)
    if np.isnan(last):
        return "no verdict: the map is constant once the model is random, so its rank correlation is undefined"
    if last < threshold:
        first = str(curve["layers"][int(below[0])])
        return (f"passes: |Spearman| with the intact model's map falls to {last:.2f} once every layer is random "
                f"(first below {threshold:g} once '{first}' is re-initialised; SSIM {float(ssim[-1]):.2f}): the map "
                "depends on the weights")
    return (f"fails: |Spearman| with the intact model's map is still {last:.2f} once every layer is random, "
            f"up to '{label}' (threshold {threshold:g}; SSIM {float(ssim[-1]):.2f}): the map follows the image more "
            "than the model")


# ----------------------------------------------------------------------------------------------
# Do the heads that carry relevance matter when knocked out? (AttnLRP's heads against the head grid)
# ----------------------------------------------------------------------------------------------

# Spearman's rho -> words, from the top: Cohen's conventional sizes of a correlation (0.1 small, 0.3 medium,
# 0.5 large); a negative rho beyond -0.1 means the heads with relevance are those the class does better without
AGREEMENT = ((0.5, "strong agreement"), (0.3, "moderate agreement"), (0.1, "weak agreement"),
             (-0.1, "no agreement"), (-np.inf, "disagreement"))
SHUFFLES = 10_000  # random rankings of the heads the permutation p-value compares rho with


def average_ranks(x: np.ndarray) -> np.ndarray:
    """(n,) values -> (n,) float ranks 1..n, tied values sharing their mean rank (`scipy.stats.rankdata`'s
    "average"; SciPy is not a dependency of the app)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    for start, n in zip(first, counts, strict=True):
        if n > 1:  # a tie: every member gets the mean of the ranks it spans
            ranks[order[start:start + n]] = start + (n + 1) / 2
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of `a` (n,) with each row of `b` (..., n); NaN where either is constant."""
    a, b = a - a.mean(), b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum() * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (b * a).sum(axis=-1) / den, np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two (n,) samples (`scipy.stats.spearmanr`: Pearson's r of the average
    ranks); NaN when either is constant."""
    return float(_pearson(average_ranks(a), average_ranks(b)))


def permutation_p(a: np.ndarray, b: np.ndarray, shuffles: int = SHUFFLES, seed: int = 0) -> float:
    """Two-sided permutation p-value of `spearman(a, b)`: the share of `shuffles` random orderings of b's ranks
    whose |rho| reaches the observed one, counted as (1 + hits) / (1 + shuffles) (Phipson & Smyth 2010: never
    0). NaN when rho is."""
    ra, rb = average_ranks(a), average_ranks(b)
    rho = float(_pearson(ra, rb))
    if np.isnan(rho):
        return float("nan")
    shuffled = np.random.default_rng(seed).permuted(np.tile(rb, (shuffles, 1)), axis=1)
    hits = int((np.abs(_pearson(ra, shuffled)) >= abs(rho) - 1e-12).sum())
    return (1 + hits) / (1 + shuffles)


def agreement_words(rho: float) -> str:
    """The `AGREEMENT` words of a rank correlation."""
    return next(words for floor, words in AGREEMENT if rho >= floor)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


@dataclass
class Agreement:
    """The heads' relevance against their knock-out importance, over the `n` heads still in.

    rho: Spearman's rank correlation of relevance (L, H) and logit drop (L, H) on those heads; p: its
    permutation p-value; top: the head with the most relevance, and `top_rank` its place (1 = most
    important) by logit drop among the n.
    """

    rho: float
    p: float
    n: int
    top: Head
    top_relevance: float
    top_rank: int


def relevance_agreement(relevance: np.ndarray, drop: np.ndarray, out: Sequence[Sequence[int]] = ()) -> Agreement:
    """`Agreement` of the heads' relevance (L, H) with the logit drop of knocking each out (L, H), leaving out the
    heads in `out` (already knocked out: their drop is 0 by construction, not a measurement)."""
    relevance, drop = np.asarray(relevance, dtype=np.float64), np.asarray(drop, dtype=np.float64)
    keep = np.ones(relevance.shape, dtype=bool)
    for b, h in out:
        keep[int(b), int(h)] = False
    r, d = relevance[keep], drop[keep]
    cells = np.argwhere(keep)
    best = int(np.argmax(r))
    rank = 1 + int((d > d[best]).sum())  # ties share the better place
    return Agreement(spearman(r, d), permutation_p(r, d), int(keep.sum()), (int(cells[best][0]), int(cells[best][1])),
                     float(r[best]), rank)


SIGNIFICANCE = 0.05  # below this permutation p-value a correlation is read as more than chance


def agreement_sentence(role: str, method: str, agreement: Agreement, knocked: int = 0,
                       t2t_off: Sequence[int] = ()) -> str:
    """One sentence from `relevance_agreement`: do the heads with relevance matter when knocked out? The words
    follow rho (`AGREEMENT`), the conclusion also its permutation p-value (`SIGNIFICANCE`). `knocked`: how many
    heads are out (left out of the comparison), `t2t_off`: the T2T attention layers knocked out."""
    a = agreement
    b, h = a.top
    given = [f"{knocked} head{'s' * (knocked != 1)}"] if knocked else []
    given += [f"T2T attention {i}" for i in t2t_off]
    context = (f" Relevance of the intact model; importance given {' and '.join(given)} knocked out above"
               + (", which are left out." if knocked else ".")) if given else ""
    top = (f" The head with most relevance, block {b}, head {h} ({a.top_relevance:+.3g}), is "
           f"{_ordinal(a.top_rank)} of {a.n} by knock-out importance.")
    if np.isnan(a.rho):
        return (f"{role}: no rank correlation between the heads' {method} relevance and their knock-out importance: "
                f"one of the two is the same for all {a.n} heads.{context}{top}")
    words = agreement_words(a.rho)
    chance = f"a random ranking of the heads reaches |ρ| ≥ {abs(a.rho):.2f} in {a.p:.1%} of {SHUFFLES:,} shuffles"
    if words == "no agreement":
        conclusion = f": which heads carry relevance says nothing about which ones matter when knocked out ({chance})"
    elif a.p >= SIGNIFICANCE:
        conclusion = f", and no clear link: {chance}"
    elif a.rho > 0:
        conclusion = (": the heads that carry relevance are " + {"strong agreement": "largely",
                      "moderate agreement": "mostly"}.get(words, "somewhat more often")
                      + f" those whose knock-out costs the class ({chance})")
    else:
        conclusion = f": the heads that carry relevance tend to be those the class does better without ({chance})"
    return (f"{role}: {words} (Spearman ρ = {a.rho:+.2f} over {a.n} heads) between the heads' {method} relevance "
            f"and their knock-out importance{conclusion}.{context}{top}")
