"""What the pages compute, per model and image, through the byte cache: the `Context` of a run,
preprocessing, traces, predictions, attention and feature statistics, CKA.

Owns: `Context` (the model pair, the image and the device the sidebar chose this run; pages get it
with `context()`), `preprocessed` / `traced` (one forward pass per model and image, kept in the
cache; on a CPU the pair's second trace starts beside the first, `trace_in_background`),
`probabilities` / `top_k` / `predict`, and the statistics of a trace the pages show
(`attention_profile`, `query_attention`, `block_channels`, `block_metrics`, `cka`). Every function
here is a cached call of `t2t` / `analysis` (`@memo`, keyed by model key + image key + parameters);
explanation maps and their scores are in `app/explanations.py`.

May import: app.jobs, app.device, app.models, app.images, t2t, analysis. Not streamlit widgets
or figures (those are app/widgets.py, app/figures.py, app/charts.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from PIL import Image
from torch import Tensor, nn

import t2t
from app.device import guarded
from app.images import ImageChoice, synthetic_batch
from app.jobs import CACHE, HEAVY, QUICK, background, memo, soon
from app.models import LoadedModel
from t2t.images import PreprocessSteps, preprocess_steps

CTX_KEY = "_t2t_lens_context"


# ----------------------------------------------------------------------------------------------
# Preprocessing, traces and the context
# ----------------------------------------------------------------------------------------------


@memo
def _preprocessed(model_key: str, image_key: str, _lm: LoadedModel, _img: Image.Image) -> PreprocessSteps:
    cfg = _lm.cfg
    return preprocess_steps(_img, cfg["mean"], cfg["std"], _lm.img_size, _lm.crop_pct)


def preprocessed(lm: LoadedModel, image: ImageChoice) -> PreprocessSteps:
    return _preprocessed(lm.key, image.key, lm, image.image)


@memo
def _traced(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> t2t.Trace:
    with torch.no_grad():
        return t2t.trace(_model, _x, attention=True)


def traced(lm: LoadedModel, image: ImageChoice) -> t2t.Trace:
    x = preprocessed(lm, image).tensor
    if is_traced(lm, image):
        return _traced(lm.key, image.key, lm.model, x)
    with st.spinner("Running the model …"):
        return guarded(lambda: _traced(lm.key, image.key, lm.model, x.to(lm.device)))


def is_traced(lm: LoadedModel, image: ImageChoice) -> bool:
    """Whether `lm`'s trace of `image` is in the cache."""
    return _traced.key_of(lm.key, image.key, lm.model, None) in CACHE  # type: ignore[attr-defined]


def trace_in_background(lm: LoadedModel, image: ImageChoice) -> None:
    """Start `lm`'s trace of `image` (on the CPU) in the quick queue, unless it is cached (`jobs.soon`;
    without a browser, as in AppTest or `app.export`, it is computed here and now).

    The pages show both models, so a new image needs two traces. On a CPU a run computes on one
    thread (app/device.py), and the machine's other core would stay idle while the script traces one
    model and then the other: the second trace now runs beside the first (two traces of the embedded
    pair: 69 ms one after the other, 41 ms side by side, 2-core machine). When the page asks for it,
    the byte cache hands over the job's value, waits for the job if it is running, or computes it
    here if the job has not started (the queue's job then finds it cached)."""
    soon(QUICK, f"Trace of {lm.name}", _traced, lm.key, image.key, lm.model, preprocessed(lm, image).tensor)


@dataclass
class Context:
    """What the sidebar chose this run: the model pair, the image, the device."""

    t2t: LoadedModel
    vit: LoadedModel
    image: ImageChoice
    device: str

    @property
    def models(self) -> tuple[LoadedModel, LoadedModel]:
        return self.t2t, self.vit

    def steps(self, lm: LoadedModel) -> PreprocessSteps:
        return preprocessed(lm, self.image)

    def inputs(self, lm: LoadedModel) -> Tensor:
        """The model input (1, 3, S, S) on the model's device."""
        return self.steps(lm).tensor.to(lm.device)

    def trace(self, lm: LoadedModel) -> t2t.Trace:
        """`lm`'s trace of this image; on a CPU, a miss starts the other model's trace on another core too."""
        if self.device == "cpu" and not is_traced(lm, self.image):
            other = self.vit if lm is self.t2t else self.t2t
            trace_in_background(other, self.image)
        return traced(lm, self.image)

    def display_image(self, lm: LoadedModel) -> np.ndarray:
        """(S, S, 3) uint8: exactly what the model sees (resized, cropped), before normalisation."""
        return np.asarray(self.steps(lm).cropped)


def context() -> Context:
    """The context main.py built this run; a page run on its own gets a message instead."""
    ctx = st.session_state.get(CTX_KEY)
    if ctx is None:
        st.error("Start the app with `streamlit run app/main.py`: the pages need its sidebar.")
        st.stop()
    return ctx


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------


def probabilities(tr: t2t.Trace) -> np.ndarray:
    """(C,) softmax probabilities of the first image of a trace."""
    return tr["logits"][0].float().softmax(dim=-1).cpu().numpy()


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


@memo
def _predict(model_key: str, image_key: str, _lm: LoadedModel, _img: Image.Image) -> np.ndarray:
    x = _preprocessed(model_key, image_key, _lm, _img).tensor.to(_lm.device)
    with torch.no_grad():
        return _lm.model(x)[0].float().softmax(dim=-1).cpu().numpy()


def predict(lm: LoadedModel, image: ImageChoice) -> np.ndarray:
    """(C,) class probabilities of one image (no trace kept: for batches)."""
    return guarded(_predict, lm.key, image.key, lm, image.image)



# ----------------------------------------------------------------------------------------------
# Statistics of one trace, and CKA over a batch of synthetic images
# ----------------------------------------------------------------------------------------------


@memo
def _attention_profile(model_key: str, image_key: str, _tr: t2t.Trace) -> dict[str, np.ndarray]:
    from analysis.attention_stats import attention_profile

    grid = tuple(_tr.grid("blocks.0"))
    stride = (_tr.image_size[0] / grid[0], _tr.image_size[1] / grid[1])
    prof = attention_profile(_tr.attentions(), grid, stride)
    return {k: v[0].float().cpu().numpy() for k, v in prof.items()}  # each (L, H)


def attention_profile(ctx: Context, lm: LoadedModel) -> dict[str, np.ndarray]:
    """{"distance" (pixels), "entropy" (nats)}, each (blocks, heads), of the current image."""
    return _attention_profile(lm.key, ctx.image.key, ctx.trace(lm))


@memo
def _redundancy(model_key: str, image_key: str, threshold: float, _tr: t2t.Trace) -> dict[str, np.ndarray]:
    from analysis.redundancy import trace_metrics

    return {k: v[0].float().cpu().numpy() for k, v in trace_metrics(_tr, _tr.num_blocks,
                                                                   rel_threshold=threshold).items()}


def redundancy(ctx: Context, lm: LoadedModel, threshold: float = 0.1) -> dict[str, np.ndarray]:
    """Redundancy metrics of every block on the current image, each (L,)."""
    return _redundancy(lm.key, ctx.image.key, threshold, ctx.trace(lm))


def batch_inputs(lm: LoadedModel, images: Sequence[ImageChoice]) -> Tensor:
    return torch.cat([preprocessed(lm, im).tensor for im in images]).to(lm.device)


@memo
def _cka(key1: str, key2: str, n: int, reduce: str, _lm1: LoadedModel, _lm2: LoadedModel) -> np.ndarray:
    from analysis.cka import block_features, cka_matrix

    images = [im for im, _ in synthetic_batch(n)]
    feats = []
    for lm in (_lm1, _lm2):
        chunks: list[list[Tensor]] = []
        for start in range(0, n, 16):
            with torch.no_grad():
                tr = t2t.trace(lm.model, batch_inputs(lm, images[start:start + 16]), attention=False)
            chunks.append([block_features(b, reduce).cpu() for b in tr.block_tokens()])
        feats.append([torch.cat(per_block) for per_block in zip(*chunks, strict=True)])
    return cka_matrix(feats[0], feats[1]).float().numpy()


def cka(lm1: LoadedModel, lm2: LoadedModel, n: int, reduce: str) -> np.ndarray | None:
    """(L1, L2) linear CKA between every block of two models over `n` synthetic test images.

    Runs in the `HEAVY` queue: None while it is computed (a progress bar is drawn instead)."""
    return guarded(background, HEAVY, f"CKA over {n} images", _cka, lm1.key, lm2.key, n, reduce, lm1, lm2)



@memo
def _block_metrics(model_key: str, image_key: str, threshold: float, metrics: tuple[str, ...],
                   _tr: t2t.Trace) -> dict[str, np.ndarray]:
    from analysis.redundancy import trace_metrics

    out = trace_metrics(_tr, _tr.num_blocks, rel_threshold=threshold, metrics=metrics)
    return {k: v[0].float().cpu().numpy() for k, v in out.items()}


def block_metrics(ctx: Context, lm: LoadedModel, threshold: float, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named redundancy metrics of every block on the current image, each (L,).

    Asking for "effective_rank" computes the exact Roy-Vetterli rank (an eigendecomposition per
    block): the Feature richness page asks for it only when its toggle is on.
    """
    return _block_metrics(lm.key, ctx.image.key, threshold, tuple(metrics), ctx.trace(lm))



@memo
def _query_attention(model_key: str, image_key: str, query: int, _tr: t2t.Trace) -> tuple[np.ndarray, np.ndarray]:
    grid = tuple(_tr.grid("blocks.0"))
    rows = torch.stack([a[0, :, query] for a in _tr.attentions()]).float().cpu().numpy()  # (L, H, T)
    return rows[:, :, 1:].reshape(*rows.shape[:2], *grid), rows[:, :, 0]


def query_attention(ctx: Context, lm: LoadedModel, query: int) -> tuple[np.ndarray, np.ndarray]:
    """Token `query`'s attention (0: the class token) in every block and head of the current image:
    ((L, H, h, w) over the patch tokens, (L, H) on the class token)."""
    return _query_attention(lm.key, ctx.image.key, query, ctx.trace(lm))


def even_spread_distance(ctx: Context, lm: LoadedModel) -> float:
    """Mean distance (px) between `lm`'s token centres: what a head spreading its attention evenly averages."""
    from analysis.attention_stats import mean_token_distance

    tr = ctx.trace(lm)
    grid, side = tuple(tr.grid("blocks.0")), tr.image_size
    return mean_token_distance(grid, (side[0] / grid[0], side[1] / grid[1]))


@memo
def _block_channels(model_key: str, image_key: str, block: int, threshold: float,
                    _tr: t2t.Trace) -> tuple[np.ndarray, np.ndarray]:
    from analysis.redundancy import feature_maps, invalid_channels

    maps = feature_maps(_tr[f"blocks.{block}"], tuple(_tr.grid("blocks.0")))  # (1, D, h, w)
    return maps[0].float().cpu().numpy(), invalid_channels(maps, threshold)[0].cpu().numpy().astype(bool)


def block_channels(ctx: Context, lm: LoadedModel, block: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The channels of block `block` laid out on the token grid, (D, h, w), and which are invalid, (D,)
    bool (spatial spread under `threshold` x the block's typical spread; analysis.redundancy)."""
    return _block_channels(lm.key, ctx.image.key, block, threshold, ctx.trace(lm))


@memo
def _neighbour_correlation(model_key: str, image_key: str, name: str, grid: tuple[int, int],
                           _tr: t2t.Trace) -> float:
    from analysis.redundancy import neighbour_correlation

    return float(neighbour_correlation(_tr[name][:1], grid)[0])


def neighbour_correlation(ctx: Context, lm: LoadedModel, name: str, grid: tuple[int, int]) -> float:
    """Mean correlation of each channel of trace tensor `name` ((1, h w, D) patch tokens on `grid`)
    between neighbouring tokens (right and down): how smoothly the channels change."""
    return _neighbour_correlation(lm.key, ctx.image.key, name, tuple(grid), ctx.trace(lm))
