"""One entry point for every explanation method: `explain(name, model, images) -> (B, h, w)`.

All methods return a map on the backbone's token grid (class token excluded), so they can be
shown, back-projected (`t2t_backproject`) and scored (`faithfulness`) the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from analysis import attributions, lrp, relevance, rollout

Explainer = Callable[..., Tensor]

# name -> (function(model, images, **kwargs) -> (B, h, w), whether it takes a `target` class)
EXPLAINERS: dict[str, tuple[Explainer, bool]] = {
    "rollout": (rollout.rollout_map, False),
    "grad_rollout": (rollout.grad_rollout_map, True),
    "chefer": (relevance.relevance_map, True),
    "integrated_gradients": (attributions.integrated_gradients_map, True),
    "occlusion": (attributions.occlusion_map, True),
    "token_ablation": (attributions.token_ablation_map, True),
    "gradcam": (attributions.gradcam_map, True),
    "attnlrp": (lrp.attnlrp_map, True),
    "cp_lrp": (lrp.cp_lrp_map, True),
}


def explain(
    name: str, model: nn.Module, images: Tensor, target: int | Tensor | None = None, **kwargs
) -> Tensor | tuple[Tensor, attributions.Completeness]:
    """Run explanation `name` (a key of `EXPLAINERS`) on (B, 3, S, S) images -> (B, h, w).

    `target` (default: the predicted class) is ignored by class-agnostic methods (rollout).
    Keyword arguments go to the method's function, e.g. `discard=` / `discard_ratio=` for
    "rollout" and "grad_rollout" (`analysis.rollout.DISCARD_RULES`), and for
    "integrated_gradients" `method=`, `n_steps=`, and `return_completeness=True`, which makes the
    result `(map, attributions.Completeness)`. "attnlrp" (AttnLRP) and "cp_lrp" (CP-LRP) map the signed
    relevance of the backbone's patch tokens (`analysis.lrp`); `gamma=` sets the linear layers' Gamma
    rule (default `lrp.DEFAULT_GAMMA`, the measured best), and `return_relevance=True` makes
    the result `(map, lrp.Relevance)`, whose `conservation` is the pixels' share of the logit and
    `pixel_map` the map at pixel resolution.
    """
    if name not in EXPLAINERS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(EXPLAINERS)}")
    fn, takes_target = EXPLAINERS[name]
    return fn(model, images, target, **kwargs) if takes_target else fn(model, images, **kwargs)
