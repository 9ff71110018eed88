"""Per-batch analysis: one batch of inputs through one model -> every number the report records."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

ANALYSES = ("rollout", "redundancy", "attention", "explain", "faithfulness", "scorecard")
DEFAULT_ANALYSES = ("rollout", "redundancy", "attention", "explain")
GRAD_METHODS = ("grad_rollout", "chefer")  # computed from the report's own forward + backward
DEFAULT_METHODS = GRAD_METHODS
LRP_METHODS = ("attnlrp", "cp_lrp")  # `analysis.lrp`: each map comes with its conservation (pixels' share of the logit)
REDUNDANCY_METRICS = ("invalid_fraction", "mean_abs_corr", "effective_rank", "high_freq_fraction")
ATTENTION_METRICS = ("attn_distance", "attn_entropy")
METRIC_LABELS = {
    "invalid_fraction": "invalid channels (fraction)",
    "mean_abs_corr": "mean |corr| between channels",
    "effective_rank": "effective rank",
    "high_freq_fraction": "high-frequency energy (fraction)",
    "attn_distance": "mean attention distance (px)",
    "attn_entropy": "attention entropy (nats)",
}


def library_discard_rule() -> str:
    """The rollout discard rule `analysis.rollout` uses when none is given (its documented default)."""
    from analysis import rollout

    return inspect.signature(rollout.cls_rollout).parameters["discard"].default


@dataclass
class Options:
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    methods: tuple[str, ...] = DEFAULT_METHODS
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    grad_discard_ratio: float = 0.9
    discard_rule: str | None = None  # None: the library's default rule
    ig_steps: int = 16
    faithfulness_steps: int = 10
    faithfulness_baseline: str = "blur"
    knockouts: bool = False  # each model's head-importance grid per image (analysis.knockout)
    road_percentages: tuple[float, ...] = (20, 50, 80)  # the scorecard's ROAD (analysis.scorecard.Settings)
    sanity_steps: int | None = 1  # the scorecard's cascade, grouped (None: one step per layer)

    def maps(self) -> list[str]:
        """Names of the token-grid maps computed, in display order."""
        return (["rollout"] if "rollout" in self.analyses else []) + (
            list(self.methods) if "explain" in self.analyses else [])

    def discard(self) -> dict[str, str]:
        """The discard keyword for the rollouts: nothing when the library default is wanted."""
        return {} if self.discard_rule is None else {"discard": self.discard_rule}

    def method_kwargs(self) -> dict[str, dict[str, Any]]:
        """Per map name, the `analysis.explain.explain` keywords that make the map the report computed (the
        scorecard runs the method again for Random Logit and the sanity check)."""
        return {"rollout": {"head_fusion": self.head_fusion, "discard_ratio": self.discard_ratio, **self.discard()},
                "grad_rollout": {"discard_ratio": self.grad_discard_ratio, **self.discard()},
                "integrated_gradients": {"n_steps": self.ig_steps}}

    def scorecard_settings(self) -> Any:
        """`analysis.scorecard.Settings` of the scorecard (deletion as --faithfulness-steps, the maps' keywords)."""
        from analysis.scorecard import Settings

        return Settings(deletion_steps=self.faithfulness_steps, deletion_baseline=self.faithfulness_baseline,
                        road_percentages=tuple(self.road_percentages), sanity_steps=self.sanity_steps,
                        method_kwargs=self.method_kwargs())


def analyse_batch(model: nn.Module, x: Tensor, opts: Options) -> dict[str, Tensor]:
    """Every number of one batch of (B, 3, S, S) inputs, as CPU tensors with the batch first.

    Keys: "probs" (B, C); "map.NAME" (B, h, w) for rollout and each method; "block.METRIC" (B, L);
    "head.attn_distance", "head.attn_entropy" (B, L, H); "faith.NAME.deletion_auc" /
    ".insertion_auc" (B,); for integrated_gradients "ig.delta", "ig.output_change", "ig.relative_gap" (B,) (its
    completeness check, `analysis.attributions.Completeness`); for attnlrp and cp_lrp "lrp.NAME.conservation"
    (the pixels' share of the explained logit, `analysis.lrp.Relevance.conservation`) and "lrp.NAME.logit"
    (the explained logit, the predicted class's) (B,); with `opts.knockouts` "knock.logit_drop" and
    "knock.prob_drop" (B, L, H), the predicted class's drops when each head alone is zero-ablated
    (`analysis.knockout.head_importance_scores`), and "knock.seconds" (B,) the time that took, shared
    equally by the batch's images; with "scorecard" "score.NAME.METRIC" (B,) for every map and the random
    baseline ("score.random.*") and every metric of `analysis.scorecard.METRICS` (deletion and insertion
    taken from "faithfulness" when it ran too). One trace serves all: with a gradient method it keeps the
    graph and takes one backward pass of the predicted class's logit.
    """
    import t2t
    from analysis import attention_stats, faithfulness, redundancy, relevance, rollout
    from analysis.maps import tokens_to_grid

    a = opts.analyses
    grad_methods = [m for m in opts.methods if m in GRAD_METHODS] if "explain" in a else []
    need_attention = bool(grad_methods) or "rollout" in a or "attention" in a
    # only what is read below: the rest of the trace is freed during the forward
    keep = (["blocks.*.attn"] if need_attention else []) + (
        [f"blocks.{i}" for i in range(len(model.blocks))] if "redundancy" in a else [])
    gradients: list[Tensor] = []
    if grad_methods:
        with torch.enable_grad():
            tr = t2t.trace(model, x, attention=True, keep_graph=True, keep=keep)
            logits = tr["logits"]
            target = logits.detach().argmax(dim=-1)
            attentions = tr.attentions()
            gradients = [g.detach() for g in torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attentions)]
        attentions = [t.detach() for t in attentions]
    else:
        with torch.inference_mode():
            tr = t2t.trace(model, x, attention=need_attention, keep=keep)
        attentions = tr.attentions() if need_attention else []
    logits = tr["logits"].detach().float()
    target = logits.argmax(dim=-1)
    grid = tuple(tr.grid("blocks.0"))
    out: dict[str, Tensor] = {"probs": logits.softmax(dim=-1)}

    with torch.inference_mode():
        if "rollout" in a:
            row = rollout.cls_rollout(attentions, head_fusion=opts.head_fusion, discard_ratio=opts.discard_ratio,
                                      **opts.discard())
            out["map.rollout"] = tokens_to_grid(row, grid)
        if "grad_rollout" in grad_methods:
            out["map.grad_rollout"] = tokens_to_grid(rollout.grad_rollout(
                attentions, gradients, discard_ratio=opts.grad_discard_ratio, **opts.discard()), grid)
        if "chefer" in grad_methods:
            out["map.chefer"] = tokens_to_grid(relevance.cls_relevance(attentions, gradients), grid)
        if "redundancy" in a:
            tokens = [t.detach() for t in tr.block_tokens()]
            for k, v in redundancy.stacked_block_metrics(tokens, grid).items():
                out[f"block.{k}"] = v
        if "attention" in a:
            stride = (x.shape[-2] / grid[0], x.shape[-1] / grid[1])
            prefix = int(getattr(model, "num_prefix_tokens", 1))
            profile = attention_stats.attention_profile(attentions, grid, stride, prefix)
            for k in ("distance", "entropy"):
                out[f"head.attn_{k}"] = profile[k]
                out[f"block.attn_{k}"] = profile[k].mean(dim=-1)
    del tr, attentions, gradients

    for method in opts.methods if "explain" in a else []:
        if method in GRAD_METHODS:
            continue
        from analysis.explain import explain  # here: it imports Captum (0.7 s), which the others do not need
        if method == "integrated_gradients":
            ig_map, completeness = explain(method, model, x, target=target, n_steps=opts.ig_steps,
                                           return_completeness=True)
            out[f"map.{method}"] = ig_map.detach()
            out["ig.delta"] = completeness.delta.detach()
            out["ig.output_change"] = completeness.output_change.detach()
            out["ig.relative_gap"] = completeness.relative_gap.detach()
        elif method in LRP_METHODS:
            lrp_map, rel = explain(method, model, x, target=target, return_relevance=True)
            out[f"map.{method}"] = lrp_map.detach()
            out[f"lrp.{method}.conservation"] = rel.conservation.detach()
            out[f"lrp.{method}.logit"] = rel.logit.detach()
        else:
            out[f"map.{method}"] = explain(method, model, x, target=target).detach()

    if opts.knockouts:
        import time

        from analysis.knockout import head_importance_scores

        t0 = time.perf_counter()
        with torch.inference_mode():
            scores = head_importance_scores(model, x, target)
        out["knock.logit_drop"], out["knock.prob_drop"] = scores.logit_drop, scores.prob_drop
        out["knock.seconds"] = torch.full((x.shape[0],), (time.perf_counter() - t0) / x.shape[0])

    if "faithfulness" in a:
        for name in opts.maps():
            curves = faithfulness.faithfulness(model, x, out[f"map.{name}"].float(), target=target,
                                               baseline=opts.faithfulness_baseline, steps=opts.faithfulness_steps)
            out[f"faith.{name}.deletion_auc"] = curves.deletion_auc
            out[f"faith.{name}.insertion_auc"] = curves.insertion_auc

    if "scorecard" in a:
        out.update(scorecard_batch(model, x, target, out, opts))
    return {k: v.detach().float().cpu() for k, v in out.items()}


def scorecard_batch(model: nn.Module, x: Tensor, target: Tensor, out: dict[str, Tensor],
                    opts: Options) -> dict[str, Tensor]:
    """"score.NAME.METRIC" (B,) of every map in `out` ("map.NAME") and of the random baseline, by every metric of
    the scorecard (`analysis.scorecard.score_method`); deletion / insertion reused from "faith.*" when there."""
    from analysis.scorecard import METRICS, RANDOM, random_map, score_method

    settings = opts.scorecard_settings()
    names = opts.maps()
    grid = tuple(out[f"map.{names[0]}"].shape[-2:]) if names else None
    scores: dict[str, Tensor] = {}
    for name in [*names, *([RANDOM] if grid else [])]:
        if name == RANDOM:  # the same fixed random map for every batch position: ignores image, model and class
            maps = random_map((len(x), *grid), settings.seed).to(x.device)
            method: Any = lambda m, images, t, fixed=maps: fixed  # noqa: E731
        else:
            maps, method = out[f"map.{name}"].float(), name
        have = [k for k in ("deletion", "insertion") if f"faith.{name}.{k}_auc" in out]
        metrics = [k for k in METRICS if k not in have]
        result = score_method(model, x, target, method, maps, metrics, settings, settings.method_kwargs.get(name, {}))
        for metric in METRICS:
            value = out[f"faith.{name}.{metric}_auc"] if metric in have else result.scores[metric]
            scores[f"score.{name}.{metric}"] = torch.as_tensor(value, dtype=torch.float64)
    return scores


def map_entropy(m: Tensor) -> Tensor:
    """(B, h, w) non-negative maps -> (B,) entropy (nats) of each map as a distribution."""
    p = m.flatten(1).clamp_min(0)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)


def image_records(model: nn.Module, items: Sequence[Any], numbers: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Per-image result dicts (JSON-ready) from `analyse_batch`'s tensors; `items` have .label, .path, .size."""
    name = model.default_cfg["name"]
    names = model.class_names
    probs = numbers["probs"]
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    records = []
    for b, item in enumerate(items):
        cls = lambda i: names[i] if names and i < len(names) else str(i)  # noqa: B023
        rec: dict[str, Any] = {
            "image": item.label, "path": str(item.path), "model": name,
            "pred_index": int(top.indices[b, 0]), "pred_class": cls(int(top.indices[b, 0])),
            "pred_prob": float(top.values[b, 0]),
            "top5": [{"index": int(i), "class": cls(int(i)), "prob": float(p)}
                     for i, p in zip(top.indices[b], top.values[b], strict=True)],
            "maps": {}, "blocks": {}, "heads": {}, "faithfulness": {}, "figures": {}, "image_size": list(item.size),
        }
        for key, value in numbers.items():
            kind, _, rest = key.partition(".")
            if kind == "map":
                rec["maps"][rest] = value[b].tolist()
            elif kind == "block":
                rec["blocks"][rest] = value[b].tolist()
            elif kind == "head":
                rec["heads"][rest] = value[b].tolist()
            elif kind == "knock":
                rec.setdefault("knockouts", {})[rest] = value[b].item() if rest == "seconds" else value[b].tolist()
            elif kind == "faith":
                method, _, score = rest.partition(".")
                rec["faithfulness"].setdefault(method, {})[score] = float(value[b])
            elif kind == "score":
                method, _, metric = rest.partition(".")
                v = float(value[b])
                rec.setdefault("scorecard", {}).setdefault(method, {})[metric] = v if math.isfinite(v) else None
            elif kind == "lrp":
                # the pixels' share of the explained logit: undefined (inf / NaN, and JSON has neither) at logit 0
                method, _, field = rest.partition(".")
                v = float(value[b])
                key = "share" if field == "conservation" else field
                rec.setdefault("conservation", {}).setdefault(method, {})[key] = v if math.isfinite(v) else None
        if "ig.delta" in numbers:
            delta, change = float(numbers["ig.delta"][b]), float(numbers["ig.output_change"][b])
            gap = float(numbers["ig.relative_gap"][b])  # |delta| / |f(x) - f(baseline)|
            gap = gap if math.isfinite(gap) else None  # f(x) == f(baseline): no relative gap (and JSON has no inf)
            rec["completeness"] = {"integrated_gradients": {"delta": delta, "output_change": change,
                                                            "relative_gap": gap}}
        if "map.rollout" in numbers:
            r = numbers["map.rollout"][b]
            peak = int(r.flatten().argmax())
            rec["rollout_peak_row"], rec["rollout_peak_col"] = divmod(peak, r.shape[1])
            rec["rollout_entropy"] = float(map_entropy(r[None])[0])
        records.append(rec)
    return records
