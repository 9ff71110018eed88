"""Every explanation method x every faithfulness metric, per model, with bootstrap intervals and verdicts.

    card = scorecard({"T2T-ViT": t2t_model, "ViT": vit_model}, images, targets)
    print(card.markdown())          # one table per model: method rows, metric columns, mean [95% CI]
    card.kendall("T2T-ViT")         # do the metrics rank the methods the same way? tau and its interval
    for line in card.verdicts(): print(line)

The metrics, each a number per image (the target class is each model's prediction unless given):

- deletion (lower is better), insertion (higher): AUC of the target probability as the pixels the map ranks
  first are blurred away / put back (Petsiuk et al. 2018; `analysis.faithfulness.faithfulness`);
- road_morf (lower), road_lerf (higher): ROAD, the mean target probability over the percentages of pixels
  removed by noisy linear imputation, most / least relevant first (Rong et al. 2022; `faithfulness.road`);
- random_logit (lower): Random Logit as Quantus computes it, SSIM between the maps of the target and of a
  random other class (Sixt et al. 2020; `analysis.sanity.random_logit`);
- sanity (lower): |rho|, the absolute Spearman correlation between the absolute maps of the intact model and
  of the model once every weight is re-initialised (cascading randomisation, Adebayo et al. 2018, who rank
  |maps| too since a map's sign may flip; `analysis.sanity.cascading_randomization`'s `spearman_abs` at its
  last step). The absolute value because a map that turns into its own negative still follows the image.

The methods are the names of `analysis.explain.EXPLAINERS` (whatever is registered there when the card is
made: AttnLRP and CP-LRP included once they are) plus "random", a fixed uniform random token map per image
that ignores the model and the class: the floor every method has to beat (on random logit and sanity it is
the worst possible map, similarity 1, since it never changes).

Intervals: percentile bootstrap over images (`analysis.stats.bootstrap_mean`), paired across methods and
metrics (the same resampled images for all), so differences and rankings are bootstrapped as a whole.
Rankings: per model and metric, the methods (the random map apart) ordered by mean, best first; Kendall's
tau-b between the rankings of two metrics (`kendall_tau`, equal to `scipy.stats.kendalltau`).

Cost (per model, N images, M methods): every map once, then per method 2 (steps + 1) forwards for deletion
and insertion, one sparse solve and forward per imputed ROAD image (2 x percentages per image), one more run
of the method for random logit and `sanity_steps` runs for the sanity check. The slow methods (Integrated
Gradients, occlusion, token ablation) dominate the method runs, ROAD's solves the rest.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

RANDOM = "random"
# key -> (label, True when lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "deletion": ("deletion AUC", True),
    "insertion": ("insertion AUC", False),
    "road_morf": ("ROAD MoRF", True),
    "road_lerf": ("ROAD LeRF", False),
    "random_logit": ("random logit SSIM", True),
    "sanity": ("sanity check |rho|", True),
}
# the metrics that remove pixels (faithfulness proper); random logit and the sanity check are randomisation tests
PERTURBATION_METRICS = ("deletion", "insertion", "road_morf", "road_lerf")
SANITY_THRESHOLD = 0.5  # |rho| below this once every weight is random: the map depends on the weights


def available_methods() -> list[str]:
    """The explanation methods registered in `analysis.explain.EXPLAINERS`, in their order."""
    from analysis.explain import EXPLAINERS

    return list(EXPLAINERS)


@dataclass
class Settings:
    """How much work each metric does; the defaults are the notebook's (a few minutes on 2 CPU cores).

    method_kwargs: per method, keyword arguments of its explainer (e.g. fewer Integrated Gradients steps);
    road_percentages: ROAD's percentages of pixels removed (the reference uses 10, 20, 30, 40, 50, 70, 90;
    each one costs a sparse solve per image and order);
    sanity_steps: the cascade (`analysis.sanity.randomization_layers`, top down) grouped into this many
    cumulative steps (None: every layer its own step, 3 + depth runs of the method). The score only reads
    the last step, where every weight is re-initialised whatever the grouping, so by default the cascade
    is one step: one more run of the method.
    """

    deletion_steps: int = 10
    deletion_baseline: str = "blur"
    road_percentages: tuple[float, ...] = (20, 50, 80)
    road_noise: float = 0.01
    random_logit_seed: int = 42
    sanity_steps: int | None = 1
    method_kwargs: dict[str, dict] = field(default_factory=dict)
    seed: int = 0


def kendall_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of (..., M) x against (..., M) y along the last axis (`scipy.stats.kendalltau`'s default):
    (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y)); NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = np.sign(x[..., :, None] - x[..., None, :])  # (..., M, M) each pair twice: the ratio is unchanged
    dy = np.sign(y[..., :, None] - y[..., None, :])
    s = (dx * dy).sum(axis=(-2, -1))
    nx, ny = (dx != 0).sum(axis=(-2, -1)), (dy != 0).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((nx > 0) & (ny > 0), s / np.sqrt(nx * ny.astype(np.float64)), np.nan)


@dataclass
class Scorecard:
    """Per-image scores of every (model, method, metric) and what is read from them.

    scores[(model, method, metric)]: (N,) float64, NaN where undefined for an image (e.g. the rank
    correlation of a constant map); seconds[(model, method)]: time spent on that method (its maps, unless
    given, and every metric); images: N per model; skipped[(model, method)]: why a method is missing;
    curves / road: the deletion-insertion and ROAD curves behind the numbers; n_boot, level, seed: the
    bootstrap (the same resampled images for every method and metric).
    """

    models: list[str]
    methods: list[str]
    metrics: list[str]
    scores: dict[tuple[str, str, str], np.ndarray]
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    curves: dict[tuple[str, str], object] = field(default_factory=dict)  # faithfulness.Curves per (model, method)
    road: dict[tuple[str, str], object] = field(default_factory=dict)  # faithfulness.RoadCurves
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0

    # --- numbers ---------------------------------------------------------------------------------------

    def ranked_methods(self, model: str) -> list[str]:
        """The methods compared on `model` (the random map and skipped ones apart), in card order."""
        return [m for m in self.methods if m != RANDOM and (model, m, self.metrics[0]) in self.scores]

    def _matrix(self, model: str, methods: Sequence[str], metric: str) -> np.ndarray:
        return np.stack([self.scores[model, m, metric] for m in methods], axis=1)  # (N, M)

    def _boot_index(self, n: int) -> np.ndarray:
        """(n_boot, n) resampled image indices: the same for every method and metric of a card."""
        return np.random.default_rng(self.seed).integers(0, n, (self.n_boot, n))

    def interval(self, model: str, method: str, metric: str) -> tuple[float, float, float, int]:
        """(mean, low, high, n): the mean over images and its percentile-bootstrap interval (NaNs left out)."""
        from analysis.stats import bootstrap_mean

        v = self.scores[model, method, metric]
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float("nan"), float("nan"), float("nan"), 0
        mean, lo, hi = bootstrap_mean(v, n_boot=self.n_boot, level=self.level, rng=self.seed)
        return float(mean), float(lo), float(hi), int(v.size)

    def difference(self, model: str, a: str, b: str, metric: str) -> tuple[float, float, float]:
        """Paired difference a - b of the means over the images where both are defined, with its interval."""
        from analysis.stats import bootstrap_mean

        d = self.scores[model, a, metric] - self.scores[model, b, metric]
        d = d[np.isfinite(d)]
        if d.size == 0:
            return float("nan"), float("nan"), float("nan")
        mean, lo, hi = bootstrap_mean(d, n_boot=self.n_boot, level=self.level, rng=self.seed)
        return float(mean), float(lo), float(hi)

    def oriented_means(self, model: str, metric: str, methods: Sequence[str] | None = None) -> np.ndarray:
        """(M,) nan-mean over images of each method, negated where lower is better: higher = better."""
        methods = self.ranked_methods(model) if methods is None else methods
        means = _nanmean(self._matrix(model, methods, metric), axis=0)
        return -means if METRICS[metric][1] else means

    def ranking(self, model: str, metric: str) -> list[str]:
        """The methods of `model`, best first by `metric` (ties keep card order; undefined means last)."""
        methods = self.ranked_methods(model)
        good = np.nan_to_num(self.oriented_means(model, metric, methods), nan=-np.inf)
        return [methods[i] for i in np.argsort(-good, kind="stable")]

    def kendall(self, model: str) -> dict[tuple[str, str], tuple[float, float, float]]:
        """Per pair of metrics, Kendall's tau-b between their rankings of `model`'s methods and its bootstrap
        interval (images resampled, means and rankings recomputed): (tau, low, high)."""
        methods = self.ranked_methods(model)
        n = self.images[model]
        idx = self._boot_index(n)
        point, boot = {}, {}
        for metric in self.metrics:
            sign = -1.0 if METRICS[metric][1] else 1.0
            values = self._matrix(model, methods, metric)  # (N, M)
            point[metric] = sign * _nanmean(values, axis=0)
            boot[metric] = sign * _nanmean(values[idx], axis=1)  # (n_boot, M)
        out = {}
        tail = 100 * (1 - self.level) / 2
        for i, a in enumerate(self.metrics):
            for b in self.metrics[i + 1:]:
                taus = kendall_tau(boot[a], boot[b])
                taus = taus[np.isfinite(taus)]
                lo, hi = (np.percentile(taus, [tail, 100 - tail]) if taus.size else (np.nan, np.nan))
                out[a, b] = (float(kendall_tau(point[a], point[b])), float(lo), float(hi))
        return out

    def table(self) -> list[dict[str, object]]:
        """One row per (model, method, metric): mean, low, high, n and the method's rank (1 = best; None for
        the random map)."""
        rows = []
        for model in self.models:
            ranks = {metric: {m: r for r, m in enumerate(self.ranking(model, metric), start=1)}
                     for metric in self.metrics}
            for method in self.methods:
                if (model, method, self.metrics[0]) not in self.scores:
                    continue
                for metric in self.metrics:
                    mean, lo, hi, n = self.interval(model, method, metric)
                    rows.append({"model": model, "method": method, "metric": metric, "mean": mean, "low": lo,
                                 "high": hi, "n": n, "rank": ranks[metric].get(method)})
        return rows

    # --- words -----------------------------------------------------------------------------------------

    def markdown(self, digits: int = 3) -> str:
        """One Markdown table per model: a row per method, a column per metric, "mean [low, high] (rank)"."""
        cells = {(r["model"], r["method"], r["metric"]): r for r in self.table()}
        out = []
        for model in self.models:
            head = " | ".join(f"{METRICS[m][0]} ({'lower' if METRICS[m][1] else 'higher'} is better)"
                              .replace("|", "\\|") for m in self.metrics)  # "|rho|" must not split a cell
            lines = [f"**{model}** ({self.images.get(model, 0)} images; mean [{self.level:.0%} bootstrap interval] "
                     "(rank among the methods))", "", f"| method | {head} |",
                     "|---|" + "---|" * len(self.metrics)]
            for method in self.methods:
                if (model, method, self.metrics[0]) not in cells:
                    continue
                row = []
                for metric in self.metrics:
                    c = cells[model, method, metric]
                    rank = f" ({c['rank']})" if c["rank"] is not None else ""
                    row.append("n/a" if c["n"] == 0 else
                               f"{c['mean']:.{digits}f} [{c['low']:.{digits}f}, {c['high']:.{digits}f}]{rank}")
                lines.append(f"| {method} | " + " | ".join(row) + " |")
            out.append("\n".join(lines))
        return "\n\n".join(out)

    def verdicts(self) -> list[str]:
        """Sentences read off the numbers (see `verdicts`)."""
        return verdicts(self)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmean without its warning for an all-NaN slice (NaN is the answer there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


# --- verdicts -------------------------------------------------------------------------------------------

def _fmt(t: tuple[float, ...], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"


def leader_verdict(card: Scorecard, model: str, metric: str) -> str:
    """Which method ranks first on `metric`, and whether its lead over the second is beyond the noise
    (the paired bootstrap interval of the difference excludes 0)."""
    label, lower = METRICS[metric]
    ranking = card.ranking(model, metric)
    first = ranking[0]
    text = f"{model}, {label}: {first} ranks first ({_fmt(card.interval(model, first, metric)[:3])})"
    if len(ranking) < 2:
        return text + "."
    second = ranking[1]
    d = card.difference(model, first, second, metric)
    ahead = (d[2] < 0) if lower else (d[1] > 0)
    return (text + f"; minus {second}: {_fmt(d, signed=True)}, "
            + ("a lead beyond the noise" if ahead else f"within the noise of {card.images[model]} images") + ".")


def random_floor_verdict(card: Scorecard, model: str) -> str | None:
    """Which methods beat the random map on every perturbation metric (each paired difference's interval on
    the good side of 0), and which fail where."""
    metrics = [m for m in PERTURBATION_METRICS if m in card.metrics]
    if not metrics or (model, RANDOM, metrics[0]) not in card.scores:
        return None
    beats, fails = [], []
    for method in card.ranked_methods(model):
        lost = []
        for metric in metrics:
            _, lo, hi = card.difference(model, method, RANDOM, metric)
            if not ((hi < 0) if METRICS[metric][1] else (lo > 0)):
                lost.append(METRICS[metric][0])
        (fails if lost else beats).append(method if not lost else f"{method} (not on {', '.join(lost)})")
    return (f"{model}: better than a random map on every pixel-removal metric "
            f"({', '.join(METRICS[m][0] for m in metrics)}): {', '.join(beats) if beats else 'no method'}"
            + (f"; not shown for {'; '.join(fails)}" if fails else "") + ".")


def agreement_verdict(card: Scorecard, model: str) -> str | None:
    """Whether the metrics rank the methods the same way: each pair of metrics agrees (tau's interval above
    0), disagrees (below 0) or is undecided; the most and least concordant pairs named."""
    taus = card.kendall(model)
    if not taus or len(card.ranked_methods(model)) < 3:
        return None
    name = lambda pair: f"{METRICS[pair[0]][0]} vs {METRICS[pair[1]][0]}"  # noqa: E731
    agree = [p for p, t in taus.items() if t[1] > 0]
    disagree = [p for p, t in taus.items() if t[2] < 0]
    finite = {p: t for p, t in taus.items() if np.isfinite(t[0])}
    text = (f"{model}: of {len(taus)} pairs of metrics, {len(agree)} rank the methods alike (Kendall's tau "
            f"interval above 0), {len(disagree)} in opposite ways (below 0), {len(taus) - len(agree) - len(disagree)} "
            f"undecided with {card.images[model]} images")
    if finite:
        hi = max(finite, key=lambda p: finite[p][0])
        lo = min(finite, key=lambda p: finite[p][0])
        text += f"; most alike {name(hi)} (tau {_fmt(finite[hi], signed=True)})"
        if lo != hi:
            text += f", least alike {name(lo)} (tau {_fmt(finite[lo], signed=True)})"
    verdict = ("the metrics do not agree on which method is most faithful" if disagree or len(agree) < len(taus)
               else "the metrics rank the methods the same way")
    return text + f": {verdict}."


def sanity_verdict(card: Scorecard, model: str, threshold: float = SANITY_THRESHOLD) -> str | None:
    """Methods whose maps depend on the weights (the interval of the mean |rho| with the intact map, once every
    weight is random, entirely below `threshold`), those whose maps do not (entirely at or above it), and
    the undecided."""
    if "sanity" not in card.metrics:
        return None
    passes, fails, unsure = [], [], []
    for method in card.ranked_methods(model):
        mean, lo, hi, n = card.interval(model, method, "sanity")
        if n == 0:
            unsure.append(f"{method} (undefined)")
        elif hi < threshold:
            passes.append(method)
        elif lo >= threshold:
            fails.append(f"{method} ({mean:.2f})")
        else:
            unsure.append(f"{method} ({mean:.2f})")
    return (f"{model}: sanity check (|rho| with the intact model's map once every weight is random, "
            f"threshold {threshold:g}): passed by {', '.join(passes) or 'no method'}; failed by "
            f"{', '.join(fails) or 'no method'}" + (f"; undecided: {', '.join(unsure)}" if unsure else "") + ".")


def models_verdict(card: Scorecard) -> str | None:
    """Whether the models rank the methods alike, per metric (tau between the two models' rankings)."""
    if len(card.models) < 2:
        return None
    a, b = card.models[:2]
    common = [m for m in card.ranked_methods(a) if m in card.ranked_methods(b)]
    if len(common) < 3:
        return None
    parts = []
    for metric in card.metrics:
        tau = float(kendall_tau(card.oriented_means(a, metric, common), card.oriented_means(b, metric, common)))
        parts.append(f"{METRICS[metric][0]} {tau:+.2f}" if np.isfinite(tau) else f"{METRICS[metric][0]} undefined")
    return (f"{a} vs {b}: Kendall's tau between the two models' rankings of the same {len(common)} methods: "
            + ", ".join(parts) + " (1: the same order, -1: reversed).")


def verdicts(card: Scorecard) -> list[str]:
    """Every verdict of a card, computed from its numbers: per model the leader of each metric, the methods
    that beat the random map, whether the metrics agree, the sanity check; then the models compared."""
    lines: list[str] = []
    for model in card.models:
        if not card.ranked_methods(model):
            continue
        lines += [leader_verdict(card, model, metric) for metric in card.metrics]
        lines += [v for v in (random_floor_verdict(card, model), agreement_verdict(card, model),
                              sanity_verdict(card, model)) if v]
    v = models_verdict(card)
    return lines + ([v] if v else [])


def merge_scorecards(cards: Sequence[Scorecard]) -> Scorecard:
    """One card of several cards' models (e.g. one model per call, or per machine): their scores side by side.

    The cards must score different models with the same metrics and bootstrap (n_boot, level, seed); the
    methods are the union, in first-seen order. Raises ValueError otherwise."""
    if not cards:
        raise ValueError("no scorecards to merge")
    first = cards[0]
    models: list[str] = []
    for card in cards:
        if card.metrics != first.metrics:
            raise ValueError(f"cannot merge scorecards of different metrics: {first.metrics} and {card.metrics}")
        if (card.n_boot, card.level, card.seed) != (first.n_boot, first.level, first.seed):
            raise ValueError("cannot merge scorecards with different bootstraps (n_boot, level, seed)")
        twice = [m for m in card.models if m in models]
        if twice:
            raise ValueError(f"model {twice[0]!r} is in more than one scorecard")
        models += card.models
    merged = Scorecard(models, list(dict.fromkeys(m for c in cards for m in c.methods)), list(first.metrics), {},
                       n_boot=first.n_boot, level=first.level, seed=first.seed)
    for card in cards:
        for name in ("scores", "seconds", "images", "skipped", "curves", "road"):
            getattr(merged, name).update(getattr(card, name))
    return merged


# --- computing a card ----------------------------------------------------------------------------------

def random_map(shape: Sequence[int], seed: int = 0) -> Tensor:
    """A fixed uniform random (B, h, w) map: the same for every model, class and call with this seed."""
    return torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed))


def grouped_cascade(model: nn.Module, steps: int | None) -> list[tuple[str, list[str]]] | None:
    """`analysis.sanity.randomization_layers` (top down) merged into `steps` cumulative steps (None: unmerged)."""
    from analysis.sanity import randomization_layers

    layers = randomization_layers(model)
    if steps is None or steps >= len(layers):
        return None
    groups = np.array_split(np.arange(len(layers)), steps)
    return [(f"{layers[g[0]][0]}..{layers[g[-1]][0]}", [n for i in g for n in layers[i][1]]) for g in groups]


@dataclass
class MethodScores:
    """One method's per-image scores {metric: (B,) float64} and the curves they summarise (None when not run)."""

    scores: dict[str, np.ndarray]
    curves: object | None = None  # analysis.faithfulness.Curves: deletion / insertion
    road: object | None = None  # analysis.faithfulness.RoadCurves


def score_method(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    method: str | Callable[..., Tensor],
    maps: Tensor,
    metrics: Sequence[str],
    settings: Settings,
    kwargs: Mapping[str, object] | None = None,
) -> MethodScores:
    """Every metric of one method's (B, h, w) maps of `target` on (B, 3, S, S) images.

    method: what made the maps, a name of `EXPLAINERS` or a function (model, images, target) -> (B, h, w),
    run again for random logit (another class) and the sanity check (randomised weights), with `kwargs`.
    """
    from analysis import faithfulness, sanity

    kwargs = dict(kwargs or {})
    out = MethodScores({})
    if "deletion" in metrics or "insertion" in metrics:
        out.curves = c = faithfulness.faithfulness(model, images, maps, target=target,
                                                   baseline=settings.deletion_baseline, steps=settings.deletion_steps)
        out.scores["deletion"] = c.deletion_auc.double().numpy()
        out.scores["insertion"] = c.insertion_auc.double().numpy()
    if "road_morf" in metrics or "road_lerf" in metrics:
        orders = [o for o in faithfulness.ROAD_ORDERS if f"road_{o}" in metrics]
        out.road = r = faithfulness.road(model, images, maps, target=target, percentages=settings.road_percentages,
                                         noise=settings.road_noise, orders=orders, seed=settings.seed)
        out.scores["road_morf"], out.scores["road_lerf"] = r.morf_mean.double().numpy(), r.lerf_mean.double().numpy()
    if "random_logit" in metrics:
        out.scores["random_logit"] = sanity.random_logit(method, model, images, target, saliency=maps,
                                                         seed=settings.random_logit_seed, **kwargs).numpy()
    if "sanity" in metrics:
        curve = sanity.cascading_randomization(method, model, images, target,
                                               layers=grouped_cascade(model, settings.sanity_steps),
                                               seed=settings.seed, original=maps, **kwargs)
        out.scores["sanity"] = curve.spearman_abs[-1].abs().numpy()
    out.scores = {k: v for k, v in out.scores.items() if k in metrics}
    return out


def scorecard(
    models: Mapping[str, nn.Module],
    images: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] = tuple(METRICS),
    settings: Settings | None = None,
    maps: Mapping[str, Mapping[str, Tensor]] | None = None,
    baseline: bool = True,
    n_boot: int = 2000,
    progress: Callable[[str], None] | None = None,
) -> Scorecard:
    """Score every method on every model's (N, 3, S, S) images (each normalised for its model) by every metric.

    targets: per model, the (N,) classes explained and scored (default: the model's predictions).
    methods: names of `analysis.explain.EXPLAINERS` (default: all of them, `available_methods`).
    maps: per model and method, (N, h, w) maps already made (with `settings.method_kwargs`); the others are
    made here. baseline: add the "random" row (`random_map`, or `maps[model]["random"]` when given).
    A method that raises NotImplementedError for a model (e.g. a rule its architecture lacks) is left out
    of that model's table and listed in `skipped`. progress: called with a line after each (model, method).
    The card keeps each method's deletion / insertion and ROAD curves (`curves`, `road`) for plotting.
    Models are only read: every metric runs on the given models (the sanity check on a deep copy).
    """
    from analysis.explain import explain

    settings = settings or Settings()
    methods = available_methods() if methods is None else list(methods)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    rows = [*methods, *([RANDOM] if baseline else [])]
    card = Scorecard(list(models), rows, list(metrics), {}, n_boot=n_boot, seed=settings.seed)
    for label, model in models.items():
        x = images[label]
        given = dict((maps or {}).get(label, {}))
        with torch.no_grad():
            target = model(x).argmax(dim=-1) if targets is None or label not in targets else targets[label]
        card.images[label] = len(x)
        for method in rows:
            t0 = time.perf_counter()
            kwargs = dict(settings.method_kwargs.get(method, {}))
            if method == RANDOM:
                if RANDOM not in given:
                    some = next(iter(given.values()), None)
                    grid = tuple(some.shape[-2:]) if some is not None else tuple(
                        explain("rollout", model, x[:1]).shape[-2:])
                    given[RANDOM] = random_map((len(x), *grid), settings.seed)
                fixed = given[RANDOM].float()
                fn: str | Callable[..., Tensor] = lambda m, imgs, t, fixed=fixed: fixed  # noqa: E731  (ignores all)
            else:
                fn = method
                if method not in given:
                    try:
                        out = explain(method, model, x, target=target, **kwargs)
                    except NotImplementedError as e:
                        card.skipped[label, method] = str(e)
                        continue
                    given[method] = (out[0] if isinstance(out, tuple) else out).detach().float()
            result = score_method(model, x, target, fn, given[method].float(), metrics, settings, kwargs)
            for metric, values in result.scores.items():
                card.scores[label, method, metric] = values
            card.curves[label, method], card.road[label, method] = result.curves, result.road
            card.seconds[label, method] = time.perf_counter() - t0
            if progress is not None:
                progress(f"{label}: {method} scored in {card.seconds[label, method]:.1f} s")
    return card
