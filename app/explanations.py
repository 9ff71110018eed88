"""Explanation maps of a `Context`'s image and their faithfulness scores, through the byte cache.

Owns: the method lists (`CHEAP_METHODS`, `EXPENSIVE_METHODS`, `METHOD_NAMES`), the maps
(`explanation`, `explanation_with` for a method's options, `rollout_with` for a discard rule),
carrying a map to pixels (`explanation_pixels`, `pixels_of`: T2T-ViT's back-projection through the
T2T module, or a stretch), the deletion / insertion scores (`faithfulness_scores`, in the `QUICK`
queue) and how concentrated the T2T attention is (`t2t_concentration`). The slow methods run in the
`HEAVY` queue. AttnLRP and CP-LRP (`LRP_METHODS`, `lrp_maps` / `lrp_soon`: `analysis.lrp`) give their
relevance at the pixels themselves, through T2T-ViT's soft splits, with each T2T step's relevance and
each head's: no carrying back. Each is `analysis.*` on the cached trace or input of `app/compute.py`.

May import: app.compute, app.jobs, app.device, app.models, t2t, analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import t2t
from app.compute import Context
from app.device import guarded
from app.jobs import HEAVY, QUICK, Pending, background, memo, soon
from app.models import LoadedModel

# ----------------------------------------------------------------------------------------------
# Maps (analysis.explain, analysis.rollout) and the T2T back-projection
# ----------------------------------------------------------------------------------------------

CHEAP_METHODS = ("rollout", "chefer", "grad_rollout", "gradcam", "attnlrp", "cp_lrp")
EXPENSIVE_METHODS = ("integrated_gradients", "occlusion", "token_ablation")
# the methods whose relevance is at the pixels (analysis.lrp, one backward pass): shown at pixel resolution,
# with their conservation, never carried back or stretched
LRP_METHODS = ("attnlrp", "cp_lrp")
METHOD_NAMES = {
    "rollout": "Attention rollout",
    "chefer": "Chefer relevance (gradient x attention)",
    "grad_rollout": "Gradient-weighted rollout",
    "gradcam": "Grad-CAM (last block)",
    "attnlrp": "AttnLRP (relevance at the pixels)",
    "cp_lrp": "CP-LRP (attention weights held fixed)",
    "integrated_gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
    "token_ablation": "Token ablation",
}


@memo
def _explanation(model_key: str, image_key: str, method: str, target: int, _model: nn.Module, _x: Tensor) -> Tensor:
    from analysis.explain import explain

    kwargs: dict[str, Any] = {}
    if method == "integrated_gradients":
        kwargs["internal_batch_size"] = 8
    heat = explain(method, _model, _x, target=None if method == "rollout" else target, **kwargs)
    return heat[0].detach().float().cpu()


@memo
def _rollout(model_key: str, image_key: str, _tr: t2t.Trace) -> Tensor:
    from analysis.maps import tokens_to_grid
    from analysis.rollout import cls_rollout

    return tokens_to_grid(cls_rollout(_tr.attentions()), tuple(_tr.grid("blocks.0")))[0].float().cpu()


def explanation(ctx: Context, lm: LoadedModel, method: str, target: int) -> Tensor | None:
    """Token-grid map (h, w) of `method` for class `target` (ignored by rollout).

    Rollout reads the attention of the cached trace (no forward pass of its own); the gradient
    methods run `analysis.explain.explain`. The expensive methods run in the `HEAVY` queue: None
    while they are computed (a progress bar is drawn instead, see `background`).
    """
    if method == "rollout":
        return guarded(_rollout, lm.key, ctx.image.key, ctx.trace(lm))
    if method in EXPENSIVE_METHODS:
        return guarded(background, HEAVY, f"{METHOD_NAMES[method]} for {lm.name}", _explanation, lm.key,
                       ctx.image.key, method, target, lm.model, ctx.inputs(lm))
    return guarded(_explanation, lm.key, ctx.image.key, method, target, lm.model, ctx.inputs(lm))


@memo
def _explanation_pixels(model_key: str, image_key: str, method: str, target: int, mode: str, _heat: Tensor,
                        _tr: t2t.Trace, family: str) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
    from analysis.maps import normalize_map, upsample_map
    from analysis.t2t_backproject import backproject_stages

    size = tuple(_tr.image_size)
    if family == "t2t" and mode != "stretch":
        stages = backproject_stages(_heat, _tr, size, mode=mode)
        return normalize_map(stages[-1][1][None])[0], stages
    return normalize_map(upsample_map(_heat[None], size))[0], None


def explanation_pixels(ctx: Context, lm: LoadedModel, method: str, target: int,
                       mode: str) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
    """A method's map at pixel resolution, in [0, 1], and for T2T-ViT the stages of its way back.

    mode: "coverage" or "mass" carries a T2T-ViT map back through the T2T module (`carry_back`);
    "stretch" (and any ViT) upsamples the token map bilinearly.
    """
    heat = explanation(ctx, lm, method, target)
    t = -1 if method == "rollout" else target
    return _explanation_pixels(lm.key, ctx.image.key, method, t, mode, heat, ctx.trace(lm), lm.family)


@memo
def _end_scores(model_key: str, image_key: str, target: int, _model: nn.Module, _x: Tensor) -> tuple[Tensor, Tensor]:
    """The class score of the image (1, 3, S, S) and of the blurred baseline deletion / insertion use."""
    from analysis.faithfulness import make_baseline, model_score_fn

    fill = make_baseline(_x, "blur")
    scores = model_score_fn(_model, torch.tensor([target], device=_x.device))(torch.cat([_x, fill]),
                                                                          torch.zeros(2, dtype=torch.long))
    return fill, scores.detach().float()


@memo
def _faithfulness(model_key: str, image_key: str, map_id: str, target: int, steps: int,
                  _model: nn.Module, _x: Tensor, _saliency: Tensor) -> tuple[float, float]:
    from analysis.faithfulness import deletion_insertion, model_score_fn

    # the class is known: score directly, without faithfulness()'s extra forward pass to find it
    score = model_score_fn(_model, torch.tensor([target], device=_x.device))
    # Four of each map's 2 (steps + 1) images are the image itself or the whole baseline (the curves'
    # ends), the same for every map of this model, image and class: scored once, not once per map.
    fill, ends = _end_scores(model_key, image_key, target, _model, _x)

    def known_ends(batch: Tensor, index: Tensor) -> Tensor:
        out = torch.empty(len(batch), device=batch.device)
        whole = (batch == _x).flatten(1).all(1)
        blurred = (batch == fill).flatten(1).all(1) & ~whole
        out[whole], out[blurred] = ends[0], ends[1]
        rest = ~(whole | blurred)
        if rest.any():
            out[rest] = score(batch[rest], index[rest]).float()
        return out

    # `fill` is the blurred baseline deletion_insertion would make again (a 135-tap blur), same values
    curves = deletion_insertion(known_ends, _x, _saliency[None].to(_x.device), baseline=fill, steps=steps,
                                batch_size=2 * steps + 2)
    return float(curves.deletion_auc[0]), float(curves.insertion_auc[0])


def faithfulness_scores(ctx: Context, lm: LoadedModel, map_id: str, saliency: Tensor, target: int,
                        steps: int) -> Pending:
    """(deletion AUC, insertion AUC) of a map (h, w) or (S, S) for class `target`; `map_id` names it.

    Computed in the `QUICK` queue, so a page's maps are drawn while their curves run two at a time: a
    `Pending` for `draw_when_ready`, which shows the scores at the end of the same run.
    """
    return soon(QUICK, f"Deletion / insertion for {lm.name}", _faithfulness, lm.key, ctx.image.key,
                map_id, target, steps, lm.model, ctx.inputs(lm), saliency)


# ----------------------------------------------------------------------------------------------
# Method options (issue 11: the discard rule by name, IG's completeness), and how concentrated the
# T2T attention is (what the Explanations page says)
# ----------------------------------------------------------------------------------------------


@memo
def _explanation_opts(model_key: str, image_key: str, method: str, target: int, options: tuple,
                      _model: nn.Module, _x: Tensor) -> tuple[Tensor, dict[str, float] | None]:
    from analysis.explain import explain

    kwargs = dict(options)
    if method == "integrated_gradients":
        kwargs.setdefault("internal_batch_size", 8)
    out = explain(method, _model, _x, target=target, **kwargs)
    if kwargs.get("return_completeness"):
        heat, comp = out
        return heat[0].detach().float().cpu(), {"delta": float(comp.delta[0]),
                                                "output_change": float(comp.output_change[0]),
                                                "relative_gap": float(comp.relative_gap[0])}
    return out[0].detach().float().cpu(), None


def explanation_with(ctx: Context, lm: LoadedModel, method: str, target: int,
                     **options: Any) -> tuple[Tensor, dict[str, float] | None] | None:
    """`explain(method, ..., **options)` as a token-grid map (h, w), and with
    `return_completeness=True` IG's {"delta", "output_change", "relative_gap"} (else None).

    The expensive methods run in the `HEAVY` queue: None while they are computed (see `background`)."""
    args = (lm.key, ctx.image.key, method, target, tuple(sorted(options.items())), lm.model, ctx.inputs(lm))
    if method in EXPENSIVE_METHODS:
        return guarded(background, HEAVY, f"{METHOD_NAMES[method]} for {lm.name}", _explanation_opts, *args)
    return guarded(_explanation_opts, *args)


@memo
def _rollout_rule(model_key: str, image_key: str, discard: str, ratio: float, _tr: t2t.Trace) -> Tensor:
    from analysis.maps import tokens_to_grid
    from analysis.rollout import cls_rollout

    row = cls_rollout(_tr.attentions(), discard_ratio=ratio, discard=discard)
    return tokens_to_grid(row, tuple(_tr.grid("blocks.0")))[0].float().cpu()


def rollout_with(ctx: Context, lm: LoadedModel, discard: str, ratio: float) -> Tensor:
    """Attention rollout (h, w) of the cached trace with discard rule `discard` and `ratio`."""
    return guarded(_rollout_rule, lm.key, ctx.image.key, discard, ratio, ctx.trace(lm))


def pixels_of(ctx: Context, lm: LoadedModel, map_id: str, heat: Tensor,
              mode: str) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
    """`explanation_pixels` for a map computed elsewhere, cached under `map_id` (method + options)."""
    return _explanation_pixels(lm.key, ctx.image.key, map_id, -1, mode, heat, ctx.trace(lm), lm.family)



@memo
def _t2t_concentration(model_key: str, image_key: str, name: str, share: float, _tr: t2t.Trace) -> dict[str, float]:
    n = _tr.attention_row_sums(name).shape[1]
    k = max(1, int(n * share))
    col = _tr.attention_left_product(name, torch.ones(1, n))[0].float()
    per_row = []
    for start in range(0, n, 512):  # rows a block at a time: the 3136 x 3136 map never exists whole
        rows = _tr.attention_rows(name, torch.arange(start, min(start + 512, n)))[0, 0].float()
        per_row.append(rows.topk(k, dim=-1).values.sum(-1) / rows.sum(-1).clamp_min(1e-12))
    rows_share = torch.cat(per_row)
    return {"tokens": float(n), "top": float(k), "median_row": float(rows_share.median()),
            "min_row": float(rows_share.min()), "max_row": float(rows_share.max()),
            "columns": float(col.topk(k).values.sum() / col.sum().clamp_min(1e-12))}


def t2t_concentration(ctx: Context, lm: LoadedModel, name: str, share: float = 0.01) -> dict[str, float]:
    """How much of a T2T attention's weight the top `share` of tokens get, on the current image.

    "median_row" / "min_row" / "max_row": over queries, the weight a query puts on its own top
    `share` of tokens; "columns": the share of all the map's weight received by the `share` of
    tokens that receive most (the same few tokens for every query when it is near 1).
    """
    return _t2t_concentration(lm.key, ctx.image.key, name, share, ctx.trace(lm))


# ----------------------------------------------------------------------------------------------
# AttnLRP and CP-LRP (analysis.lrp): relevance at the pixels, at each T2T step and in each head
# ----------------------------------------------------------------------------------------------

# The T2T-ViT relevance of each step, in the order (and with the meaning) of the back-projection's stages
# (analysis.t2t_backproject.backproject_stages): after going back through split 2 the relevance sits on the
# 2-D map split 2 cut, T2T attention 2's output; back through that attention, on its input, split 1's tokens.
LRP_STAGES = (("t2t.attn2", "← split 2: {size}"), ("t2t.split1", "← T2T attention 2"),
              ("t2t.attn1", "← split 1: {size}"), ("t2t.split0", "← T2T attention 1"))


@dataclass
class LrpMaps:
    """One image's AttnLRP or CP-LRP relevance (`analysis.lrp.lrp`) of class `target`, on the CPU.

    pixels: (S, S) signed relevance at the input pixels, summed over the colour channels
    (`Relevance.pixel_map`); tokens: (h, w) the backbone's patch tokens'; heads: (L, H) what passed
    through each backbone head (`Relevance.heads`); stages: [(label, map)] from the backbone's tokens
    back to the pixels through the T2T module (T2T-ViT; empty for ViT), labelled as the back-projection's
    stages; logit: the class logit explained; total: the pixels' sum; conservation: total / logit
    (`Relevance.conservation`); gamma: the linear layers' Gamma rule used (None: the plain gradient).
    """

    method: str
    variant: str
    gamma: float | None
    target: int
    pixels: Tensor
    tokens: Tensor
    heads: Tensor
    stages: list[tuple[str, Tensor]]
    logit: float
    total: float
    conservation: float


@memo
def _lrp(model_key: str, image_key: str, method: str, target: int, _model: nn.Module, _x: Tensor) -> LrpMaps:
    from analysis.explain import explain

    # explain's "attnlrp" / "cp_lrp" are analysis.lrp.lrp with its default gamma; the Relevance holds the rest
    _, rel = explain(method, _model, _x, target=target, return_relevance=True)
    pixels = rel.pixel_map[0].detach().float().cpu()
    tokens = rel.tokens[0].detach().float().cpu()
    stages: list[tuple[str, Tensor]] = []
    if rel.stages:
        stages.append((f"backbone {tokens.shape[0]}×{tokens.shape[1]}", tokens))
        for name, label in LRP_STAGES:
            m = rel.stages[name][0].detach().float().cpu()
            stages.append((label.format(size=f"{m.shape[0]}×{m.shape[1]}"), m))
        stages.append(("← split 0: pixels", pixels))
    return LrpMaps(method=method, variant=rel.variant, gamma=rel.gamma, target=int(rel.target[0]), pixels=pixels,
                   tokens=tokens, heads=rel.heads[0].detach().float().cpu(), stages=stages,
                   logit=float(rel.logit[0]), total=float(rel.pixels[0].sum()),
                   conservation=float(rel.conservation[0]))


def lrp_maps(ctx: Context, lm: LoadedModel, method: str, target: int) -> LrpMaps:
    """`LrpMaps` of `method` ("attnlrp" or "cp_lrp") for class `target` on the current image: one forward
    and one backward pass, computed here (a quick method, like Chefer's)."""
    return guarded(_lrp, lm.key, ctx.image.key, method, int(target), lm.model, ctx.inputs(lm))


def lrp_soon(ctx: Context, lm: LoadedModel, method: str, target: int) -> Pending:
    """`lrp_maps` in the `QUICK` queue, for a page that draws other things meanwhile (`draw_when_ready`);
    the same cache entry as `lrp_maps`."""
    return soon(QUICK, f"{METHOD_NAMES[method]} for {lm.name}", _lrp, lm.key, ctx.image.key, method, int(target),
                lm.model, ctx.inputs(lm))


def conservation_text(maps: LrpMaps) -> str:
    """What the conservation of an LRP map says, with its numbers: how much of the class logit reached the pixels,
    and why the pixels' sum differs from the logit (true whether it falls short of it or exceeds it)."""
    reasons = ["LRP gives a share to the model's additive constants (biases, LayerNorm shifts, class token, "
               "position embedding)"]
    if maps.variant == "attnlrp":
        reasons.append("AttnLRP's softmax rule does not pass all of its relevance on")
    if maps.gamma:
        reasons.append(f"the Gamma rule (γ = {maps.gamma:g}) favours positive contributions and conserves nothing "
                       "exactly, so the share may also exceed 100%")
    rest = maps.logit - maps.total
    gap = (f"The other {rest:.2f} does not reach the pixels" if rest >= 0
           else f"The pixels hold {-rest:.2f} more than the logit")
    return (f"Conservation {maps.conservation:.1%}: the pixels' relevance sums to {maps.total:.2f} of the class logit "
            f"{maps.logit:.2f}. {gap}: " + "; ".join(reasons) + ".")
