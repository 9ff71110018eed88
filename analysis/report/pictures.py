"""Pictures: token-grid maps over the images the models saw, which images get them, and the summary plots.

Per-image pictures are capped: the first --pictures images and the --least-confident ones (chosen
after the run from the records), drawn at the end by rank 0 from the maps in the records, so the
count does not grow with the dataset. They are drawn by a pool of threads while the CSV and JSON
are written (PIL and NumPy release the interpreter lock while they work).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from analysis.report.analyse import ATTENTION_METRICS, METRIC_LABELS, REDUNDANCY_METRICS

#: Maps drawn signed, on a diverging colour map centred at 0: their sign is part of the explanation.
#: - attnlrp, cp_lrp (`analysis.lrp`): relevance = input x modified gradient, positive for the class, negative
#:   against it (and the two sum, with the constants, to the logit: min-max would paint the most negative token
#:   as "cold" and a zero-relevance token as warm);
#: - occlusion, token_ablation: the drop of the class logit when a window / token is removed, negative where
#:   removing it raises the logit.
#: Not integrated_gradients: the report computes it with `integrated_gradients_map`'s default reduction "abs"
#: (|attribution| summed over colour channels, `analysis.attributions.reduce_channels`), a map >= 0, so it keeps
#: the min-max colour map like rollout, gradient rollout, Chefer's relevance (all >= 0) and Grad-CAM (ReLU'd).
SIGNED_MAPS = frozenset({"attnlrp", "cp_lrp", "occlusion", "token_ablation"})
SIGNED_CMAP = "bwr"  # blue, white at 0, red: the app's LRP colours (zennit's and LXT's heat maps)
#: What `overlays(..., signed=True)` draws, for the page's legend: (the `signed_lut` entry shown as a swatch, or
#: None, the words). tests/analysis/test_report.py checks the words against the colours drawn.
SIGNED_LEGEND: tuple[tuple[int | None, str], ...] = (
    (255, "red: evidence for the predicted class"), (1, "blue: against it"),
    (None, "untinted (the bare image): none; each map is scaled by its largest |value|, its colour the fainter the "
           "closer to 0"))

_LUT: dict[tuple[str, bool], np.ndarray] = {}


def colour_lut(cmap: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colormap, entry i = cmap(i / 255)."""
    if (cmap, False) not in _LUT:
        import matplotlib

        _LUT[cmap, False] = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return _LUT[cmap, False]


def signed_lut(cmap: str = SIGNED_CMAP) -> np.ndarray:
    """(256, 3) uint8 colours of a diverging colormap for values s in [-1, 1] at index 128 + rint(127 s):
    entry 128 is cmap(0.5), the middle colour, exactly (s = 0); entries 1 and 255 are cmap(0) and cmap(1)
    (s = -1, +1), symmetric about 128; entry 0, never indexed, repeats entry 1."""
    if (cmap, True) not in _LUT:
        import matplotlib

        s = np.clip((np.arange(256) - 128) / 127, -1, 1)
        _LUT[cmap, True] = (matplotlib.colormaps[cmap](0.5 + 0.5 * s)[:, :3] * 255).round().astype(np.uint8)
    return _LUT[cmap, True]


def signed_scale(heat: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, ...) signed maps -> (B, ...) each divided by its largest |value|: in [-1, 1], 0 stays 0 (an all-zero
    map stays all 0: the divisor is at least `eps`)."""
    top = heat.flatten(1).abs().amax(dim=1).clamp_min(eps)
    return heat / top.view(-1, *([1] * (heat.dim() - 1)))


def overlays(crops: Sequence[np.ndarray], maps: Tensor, alpha: float = 0.6, cmap: str = "inferno",
             signed: bool | Sequence[bool] = False, signed_cmap: str = SIGNED_CMAP) -> list[np.ndarray]:
    """Token-grid maps (B, h, w) blended over the (S, S, 3) images the model saw -> (S, S, 3) uint8 each.

    Maps are upsampled bilinearly to pixels. An unsigned map (`signed` False, per map or for all) is min-max
    normalised per image to v in [0, 1]; a pixel gets colour cmap(v) with weight alpha * (0.25 + 0.75 v), so
    weak values let the image show through. A signed map is divided by its largest |value| to s in [-1, 1]
    (`signed_scale`); a pixel gets colour `signed_cmap` at (1 + s) / 2 (0 -> the middle colour, `signed_lut`)
    with weight alpha * sqrt(|s|): where the relevance is 0 the image shows unchanged; the square root (as the
    app's LRP overlay) keeps the many small values of a heavy-tailed relevance map visible (on the embedded
    models' AttnLRP / CP-LRP maps of two sample photos the 90th percentile of |value| was 3-27% of the largest).
    The colouring and blending are PIL's 8-bit palette and `composite` (each pixel within 1 of the float
    formula), 3x cheaper than float arrays: the report draws every image and map.
    """
    from PIL import Image

    from analysis.maps import normalize_map, upsample_map

    size = crops[0].shape[:2]
    flags = np.full(len(maps), signed) if isinstance(signed, bool) else np.asarray(signed, dtype=bool)
    heat = upsample_map(maps.float(), size)  # (B, S, S)
    index = np.empty(heat.shape, np.uint8)
    weight = np.empty(heat.shape, np.uint8)
    if (~flags).any():
        v = normalize_map(heat[torch.from_numpy(~flags)]).numpy()  # [0, 1]
        index[~flags] = np.rint(v * 255)
        weight[~flags] = np.rint((v * (0.75 * alpha) + 0.25 * alpha) * 255)
    if flags.any():
        s = signed_scale(heat[torch.from_numpy(flags)]).numpy()  # [-1, 1]
        index[flags] = 128 + np.rint(s * 127)
        weight[flags] = np.rint(np.sqrt(np.abs(s)) * (alpha * 255))
    palettes = {False: colour_lut(cmap).tobytes(), True: signed_lut(signed_cmap).tobytes()}
    pictures = []
    for crop, idx, w, sign in zip(crops, index, weight, flags, strict=True):
        colour = Image.fromarray(idx, "L")
        colour.putpalette(palettes[bool(sign)])  # an "L" image with a palette becomes a "P" image
        colour = colour.convert("RGB")
        pictures.append(np.asarray(Image.composite(colour, Image.fromarray(crop), Image.fromarray(w, "L"))))
    return pictures


def save_picture(array: np.ndarray, path: Path) -> None:
    """An (S, S, 3) uint8 picture as JPEG (quality 90) or PNG, by the file's suffix.

    JPEG is the default for the per-image pictures: photos and noisy images cost ~6 ms each to
    encode as PNG (zlib) but 0.4 ms as JPEG, at a tenth of the size; the plots stay PNG.
    """
    from PIL import Image

    if path.suffix == ".png":
        Image.fromarray(array).save(path, compress_level=3)
    else:
        Image.fromarray(array).save(path, quality=90)


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:limit].strip("_") or "image"


def summary_figures(summary: dict[str, Any], folder: Path) -> dict[str, str]:
    """Summary PNGs (matplotlib, no pyplot state) -> {title: file name in `folder`}."""
    from matplotlib.figure import Figure

    out: dict[str, str] = {}
    models = list(summary)
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    metrics = [m for m in (*REDUNDANCY_METRICS, *ATTENTION_METRICS) if any(m in summary[k]["blocks"] for k in models)]
    if metrics:
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig = Figure(figsize=(4.2 * cols, 3.1 * rows), layout="constrained")
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(rows, cols, i + 1)
            for m in models:
                st = summary[m]["blocks"].get(metric)
                if st is None:
                    continue
                depth = np.linspace(0, 1, len(st["mean"])) if len(st["mean"]) > 1 else np.zeros(1)
                ax.plot(depth, st["mean"], "o-", ms=3, color=colours[m], label=m)
                ax.fill_between(depth, st["ci_low"], st["ci_high"], color=colours[m], alpha=0.2)
            ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
            ax.set_xlabel("relative depth (first block 0, last 1)", fontsize=8)
            ax.grid(alpha=0.3)
        fig.axes[0].legend(fontsize=8)
        fig.suptitle("Per block: mean over images, band = 95% CI", fontsize=11)
        fig.savefig(folder / "summary_blocks.png", dpi=90)
        out["Block metrics across depth"] = "summary_blocks.png"
    with_rollout = [m for m in models if "mean_rollout" in summary[m]]
    if with_rollout:
        fig = Figure(figsize=(3.2 * len(with_rollout), 3.0), layout="constrained")
        for i, m in enumerate(with_rollout):
            ax = fig.add_subplot(1, len(with_rollout), i + 1)
            im = ax.imshow(np.array(summary[m]["mean_rollout"]), cmap="inferno")
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(m, fontsize=9)
            ax.set_axis_off()
        fig.suptitle("Mean attention rollout over images (token grid)", fontsize=10)
        fig.savefig(folder / "summary_rollout.png", dpi=90)
        out["Mean rollout map"] = "summary_rollout.png"
    with_faith = [m for m in models if summary[m]["faithfulness"]]
    if with_faith:
        fig = Figure(figsize=(9, 3.2), layout="constrained")
        for j, score in enumerate(("deletion_auc", "insertion_auc")):
            ax = fig.add_subplot(1, 2, j + 1)
            methods = list(summary[with_faith[0]]["faithfulness"])
            width = 0.8 / len(with_faith)
            for i, m in enumerate(with_faith):
                st = [summary[m]["faithfulness"][k][score] for k in methods]
                mean = np.array([s["mean"] for s in st])
                err = mean - np.array([s["ci_low"] for s in st])
                ax.bar(np.arange(len(methods)) + i * width, mean, width, yerr=err, color=colours[m], label=m)
            ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2, methods, rotation=20, fontsize=8)
            ax.set_title(score.replace("_", " ") + (" (lower is better)" if j == 0 else " (higher is better)"),
                         fontsize=10)
        fig.axes[0].legend(fontsize=8)
        fig.savefig(folder / "summary_faithfulness.png", dpi=90)
        out["Deletion / insertion AUC (mean, 95% CI)"] = "summary_faithfulness.png"
    return out


def picture_stem(index: int, label: str) -> str:
    """figures/NNNNN_name: the stem of an image's pictures, relative to --out."""
    return f"figures/{index:05d}_{slug(Path(label).stem)}"


def name_pictures(index: int, records: list[dict[str, Any]], fmt: str) -> None:
    """Fill in each record's "figures": the paths (relative to --out) `draw_pictures` will write."""
    stem = picture_stem(index, records[0]["image"])
    for rec in records:
        rec["figures"]["input"] = f"{stem}.{fmt}"
        for name in rec["maps"]:
            rec["figures"][name] = f"{stem}__{rec['model']}__{name}.{fmt}"


def draw_pictures(out: Path, records: list[dict[str, Any]], keys: Sequence[tuple]) -> None:
    """Decode the image again and save it (as the first model saw it) and each model's maps over it,
    under the names `name_pictures` gave (the maps of `SIGNED_MAPS` signed, the others min-max). `keys[m]` is
    model m's transform. Reads the records only
    (so it may run in a thread while they are written out)."""
    from t2t.images import open_image, preprocess_steps

    img = open_image(records[0]["path"])
    crops: dict[tuple, np.ndarray] = {}
    for key in dict.fromkeys(keys):
        mean, std, size, crop_pct, interpolation = key
        crops[key] = np.asarray(preprocess_steps(img, mean, std, size, crop_pct, interpolation).cropped)
    save_picture(crops[keys[0]], out / records[0]["figures"]["input"])
    for rec, key in zip(records, keys, strict=True):
        names = list(rec["maps"])
        if not names:
            continue
        maps = torch.tensor([rec["maps"][m] for m in names])
        signed = [m in SIGNED_MAPS for m in names]
        for name, picture in zip(names, overlays([crops[key]] * len(names), maps, signed=signed), strict=True):
            save_picture(picture, out / rec["figures"][name])
