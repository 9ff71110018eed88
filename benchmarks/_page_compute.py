"""What each page of the app must compute, without the app: the baseline of bench_app's page / compute ratio.

For a new image: the image itself, both models' preprocessing and traces, and the page's analysis at
its default settings; for a widget's first move after it: what that move adds. Each is the function the
page reaches through the byte cache (`app/compute.py`, `app/explanations.py`: a `t2t` / `analysis` call
each), called directly under keys no one used before, so nothing is a cache hit; no Streamlit, no
figures, no queue. The models are the app's defaults (embedded weights) on the CPU, with the app's
thread count (`app.device.cpu_threads`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from inspect import signature

import torch

from analysis.redundancy import METRICS
from analysis.rollout import cls_rollout
from app import compute, explanations
from app.device import cpu_threads
from app.images import _synthetic, synthetic_class_names
from app.models import T2T_DEFAULT, VIT_DEFAULT, LoadedModel

STEPS = 5  # the Explanations page's deletion / insertion steps on a CPU, and its widget's first move: 6
DISCARD = signature(cls_rollout).parameters["discard"].default  # the page's default discard rule
RATIO, RATIO_MOVED = 0.9, 0.95  # its default discard ratio, and one slider step up
THRESHOLD = 0.1  # Feature richness: the default invalid-channel threshold


def load_pair() -> tuple[LoadedModel, LoadedModel]:
    from t2t.loading import load_model

    return tuple(LoadedModel(role, name, "embedded", "", "cpu", load_model(name, "embedded", "cpu",
                                                                            match_architecture=False))
                 for role, name in (("T2T-ViT", T2T_DEFAULT), ("ViT", VIT_DEFAULT)))  # type: ignore[return-value]


class Run:
    """One new image (synthetic test example `example` of the default class) under a fresh image key."""

    def __init__(self, models: tuple[LoadedModel, LoadedModel], example: int, tag: str) -> None:
        self.models, self.tag = models, tag
        index = example * len(synthetic_class_names()) + synthetic_class_names().index("triangle")
        self.key = f"bench:{tag}:{example}"
        self.image = _synthetic.__wrapped__(index, 224)  # rendered, as the app renders a new example
        self.steps = {lm.role: compute._preprocessed.__wrapped__(lm.key, self.key, lm, self.image) for lm in models}
        self.x = {role: s.tensor for role, s in self.steps.items()}
        self.tr = {lm.role: compute._traced(lm.key, self.key, lm.model, self.x[lm.role]) for lm in models}
        self.target = {lm.role: int(compute.probabilities(self.tr[lm.role]).argmax()) for lm in models}

    def rollout_pixels(self, lm: LoadedModel, ratio: float) -> tuple[str, torch.Tensor]:
        """(map id, (S, S) map) of rollout with the page's discard rule and `ratio`, carried back."""
        heat = explanations._rollout_rule(lm.key, self.key, DISCARD, ratio, self.tr[lm.role])
        map_id = f"rollout|{DISCARD}|{ratio:g}"
        return map_id, explanations._explanation_pixels(lm.key, self.key, map_id, -1, "coverage", heat,
                                                        self.tr[lm.role], lm.family)[0]

    def chefer_pixels(self, lm: LoadedModel) -> tuple[str, torch.Tensor]:
        t = self.target[lm.role]
        heat = explanations._explanation(lm.key, self.key, "chefer", t, lm.model, self.x[lm.role])
        map_id = f"chefer|{t}"
        return map_id, explanations._explanation_pixels(lm.key, self.key, map_id, t, "coverage", heat,
                                                        self.tr[lm.role], lm.family)[0]

    def scores(self, lm: LoadedModel, map_and_pixels: tuple[str, torch.Tensor], steps: int) -> None:
        """Deletion and insertion AUCs of a map (cached under its id, as the page does)."""
        map_id, pixels = map_and_pixels
        explanations._faithfulness(lm.key, self.key, map_id, self.target[lm.role], steps, lm.model,
                                   self.x[lm.role], pixels)


def tokens(run: Run) -> None:
    import t2t

    lm, vm = run.models
    tr = run.tr[lm.role]
    g0, g2 = tr.grid("t2t.split0"), tr.grid("t2t.split2")
    for r, c in [(g0[0] // 2 + dr, g0[1] // 2 + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]:
        t2t.receptive_field(lm.model, "t2t.split0", (r, c), tuple(tr.image_size))
    compute._neighbour_correlation(lm.key, run.key, "t2t.project", tuple(g2), tr)
    compute._neighbour_correlation(vm.key, run.key, "patch_embed", tuple(run.tr[vm.role].grid("patch_embed")),
                                   run.tr[vm.role])


def attention(run: Run) -> None:
    lm = run.models[0]  # the page shows T2T-ViT first
    grid = run.tr[lm.role].grid("blocks.0")
    compute._query_attention(lm.key, run.key, 1 + (grid[0] // 2) * grid[1] + grid[1] // 2, run.tr[lm.role])
    for m in run.models:
        compute._attention_profile(m.key, run.key, run.tr[m.role])


def explanations_page(run: Run) -> None:
    for lm in run.models:
        run.scores(lm, run.rollout_pixels(lm, RATIO), STEPS)
        run.scores(lm, run.chefer_pixels(lm), STEPS)
    t2t_model = run.models[0]
    for name in ("attn1", "attn2"):
        explanations._t2t_concentration(t2t_model.key, run.key, f"t2t.{name}_map", 0.01, run.tr[t2t_model.role])


def features(run: Run) -> None:
    for lm in run.models:
        compute._block_channels(lm.key, run.key, 0, THRESHOLD, run.tr[lm.role])
        compute._block_metrics(lm.key, run.key, THRESHOLD, METRICS, run.tr[lm.role])  # exact rank: on by default


def classify(run: Run) -> None:
    for lm in run.models:
        compute.probabilities(run.tr[lm.role])


def steps_moved(run: Run) -> None:
    """One more deletion / insertion step: new curves for the four maps (the curves' ends are known)."""
    for lm in run.models:
        run.scores(lm, run.rollout_pixels(lm, RATIO), STEPS + 1)
        run.scores(lm, run.chefer_pixels(lm), STEPS + 1)


def discard_moved(run: Run) -> None:
    """A new discard ratio: two new rollouts, carried back, and their curves."""
    for lm in run.models:
        run.scores(lm, run.rollout_pixels(lm, RATIO_MOVED), STEPS)


def vit_block_moved(run: Run) -> None:
    vm = run.models[1]
    compute._block_channels(vm.key, run.key, 1, THRESHOLD, run.tr[vm.role])


def nothing(run: Run) -> None:
    """A widget whose move needs no new computation (its values are cached or cost nothing)."""


# bench_app page name -> (what a new image needs beyond the traces, what the widget's first move adds)
PAGES: dict[str, tuple[Callable[[Run], None], Callable[[Run], None]]] = {
    "tokens": (tokens, tokens),  # the chosen token's windows again, one row down
    "attention": (attention, nothing),  # a block's maps are in the cached query attention
    "explanations": (explanations_page, steps_moved),
    "explanations_discard": (explanations_page, discard_moved),
    "features": (features, vit_block_moved),
    "classify": (classify, nothing),  # the batch source radio computes nothing until a batch is run
}


def compute_seconds(name: str, examples: list[int], models: tuple[LoadedModel, LoadedModel] | None = None,
                    ) -> tuple[list[float], list[float]]:
    """(seconds for each new image, seconds for the widget's first move after it) of page `name`."""
    torch.set_num_threads(cpu_threads())
    models = models or load_pair()
    new_image, widget = PAGES[name]
    image_s, widget_s = [], []
    for warm, example in [(True, examples[0]), *((False, e) for e in examples)]:  # the first: a warm-up
        start = time.perf_counter()
        with torch.no_grad():
            run = Run(models, example, f"{name}:warm-up" if warm else name)
        new_image(run)
        middle = time.perf_counter()
        widget(run)
        if not warm:
            image_s.append(middle - start)
            widget_s.append(time.perf_counter() - middle)
    return image_s, widget_s
