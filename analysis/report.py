"""Batch analysis of many images with several models: a CSV, a JSON, figures and one HTML page.

    python -m analysis.report --models t2t_vit_7 deit_tiny_patch16_224 --images photos/ --out report/

For every image and every model: the prediction, attention rollout, the redundancy metrics of every
block (`analysis.redundancy`), mean attention distance and entropy per block and head
(`analysis.attention_stats`) and explanation maps (gradient rollout and Chefer relevance by
default; any of `analysis.explain.EXPLAINERS` with --methods), optionally scored by deletion /
insertion AUC (--faithfulness). Files that are not usable images (corrupt, not an image, empty)
are skipped and listed with the reason: one bad file never stops the run.

Written to --out:
    results.csv   one row per (image, model): prediction, rollout peak, per-block metrics, AUCs
    results.json  everything: settings, skipped files, token-grid maps, per-head statistics and
                  per-model summaries (mean and 95% confidence interval over images)
    figures/      every image and every map over it (JPEG, or PNG with --image-format png),
                  summary plots (PNG, matplotlib)
    report.html   one page to open in a browser (figures inlined as base64 unless --html link)

Images are decoded and preprocessed with each model's own timm eval transform; models run on
the GPU when present, and then the decoding and drawing run in threads beside them.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ANALYSES = ("rollout", "redundancy", "attention", "explain", "faithfulness")
DEFAULT_ANALYSES = ("rollout", "redundancy", "attention", "explain")
GRAD_METHODS = ("grad_rollout", "chefer")  # computed from the report's own forward + backward
DEFAULT_METHODS = GRAD_METHODS
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
WEIGHT_ALIASES = {"embedded": "embedded", "imagenet": True, "released": True, "official": True, "random": None,
                  "none": None}


# ----------------------------------------------------------------------------- models


def parse_weights(spec: str | None) -> bool | str | None:
    """A weights spec -> `create_model(pretrained=...)`.

    "embedded" -> the project's synthetic-data models; "imagenet" (or "released", "official") ->
    the released ImageNet-1k weights; "random" (or "none", None) -> untrained; anything else is a
    checkpoint path or URL.
    """
    if spec is None:
        return None
    return WEIGHT_ALIASES.get(str(spec).strip().lower(), str(spec))


def load_model(name: str, weights: str | None = "embedded", device: str | torch.device = "cpu",
               fallback: bool = False, seed: int = 0) -> nn.Module:
    """A registry model with `weights` (see `parse_weights`), in eval mode on `device`.

    - "embedded" when this checkout has no embedded weights yet: with `fallback`, a warning is
      printed and the model gets random weights; without, a CheckpointError says what to do.
    - random weights are seeded (`seed`) and have the synthetic dataset's 10 classes, like the
      embedded models, without touching the global RNG.
    - a checkpoint of another registry architecture (e.g. a T2T-ViT-14 file given with the
      default name t2t_vit_7) loads into that architecture, with a note.
    """
    import t2t
    from t2t.data import CLASS_NAMES

    pretrained = parse_weights(weights)
    if pretrained == "embedded" and name not in t2t.list_embedded():
        if not fallback:
            have = ", ".join(t2t.list_embedded()) or "none"
            raise t2t.CheckpointError(
                f"no embedded weights for {name} in this checkout (embedded: {have}); "
                "pass --weights random for an untrained model, or a checkpoint path or URL")
        print(f"WARNING: no embedded weights for {name} yet; using RANDOM weights (seed {seed}). "
              "Numbers from an untrained model say nothing about T2T-ViT or ViT.", file=sys.stderr)
        pretrained = None
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = t2t.create_model(name, num_classes=len(CLASS_NAMES))
        model.class_names = list(CLASS_NAMES)
        model.default_cfg["weights"] = f"random (seed {seed})"
    else:
        try:
            model = t2t.create_model(name, pretrained=pretrained)
        except t2t.CheckpointError:
            if pretrained in (True, "embedded"):
                raise
            from t2t.weights import matching_model

            match = matching_model(t2t.read_checkpoint(pretrained))
            if match is None or match == name:
                raise
            print(f"note: {pretrained} holds a {match}, not a {name}; using {match}", file=sys.stderr)
            model = t2t.create_model(match, pretrained=pretrained)
        if model.class_names is None and isinstance(pretrained, str):
            model.class_names = checkpoint_class_names(pretrained, model.num_classes)
    return model.eval().to(device)


def checkpoint_class_names(source: str, num_classes: int) -> list[str] | None:
    """Class names stored with a local checkpoint: `t2t.train` puts them in the safetensors metadata
    and in `card.json` beside the weights."""
    path = Path(source)
    names = None
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get("class_names", "null"))
    for card in (path.with_suffix(".json"), path.parent / "card.json"):
        if names is None and card.is_file():
            names = json.loads(card.read_text()).get("class_names")
    return list(names) if names and len(names) == num_classes else None


def describe_model(model: nn.Module) -> dict[str, Any]:
    cfg = model.default_cfg
    card = cfg.get("card", {})
    return {"name": cfg["name"], "family": cfg["family"], "weights": cfg.get("weights", "random"),
            "img_size": cfg["img_size"], "num_classes": cfg["num_classes"], "num_blocks": len(model.blocks),
            "params": sum(p.numel() for p in model.parameters()), "mean": list(cfg["mean"]),
            "std": list(cfg["std"]), "crop_pct": cfg["crop_pct"], "test_acc": card.get("test_acc")}


# ----------------------------------------------------------------------------- images


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Prepared:
    """One readable image, preprocessed for every distinct model transform (`key`)."""

    index: int
    path: Path
    label: str
    size: tuple[int, int]
    inputs: dict[tuple, Tensor] = field(default_factory=dict)  # key -> (3, S, S) normalised
    crops: dict[tuple, np.ndarray] = field(default_factory=dict)  # key -> (S, S, 3) uint8, what the model sees
    figure: str = ""  # stem of its pictures, relative to --out


def find_images(inputs: Sequence[str | Path]) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """Files to analyse as (path, label), and inputs that do not exist.

    A folder contributes every regular file below it (sorted, hidden ones left out), whatever its
    extension: a file that turns out not to be an image is reported as skipped, never dropped
    silently. Labels are paths relative to the folder given.
    """
    files: list[tuple[Path, str]] = []
    missing: list[Skipped] = []
    seen: set[Path] = set()
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            found = sorted(p for p in root.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
            pairs = [(p, str(p.relative_to(root))) for p in found]
        elif root.exists():
            pairs = [(root, root.name)]
        else:
            missing.append(Skipped(str(root), "not found"))
            continue
        for p, label in pairs:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append((p, label))
    return files, missing


def transform_key(model: nn.Module, crop_pct: float | None = None) -> tuple:
    """What preprocessing a model needs: models with equal keys share their input tensors."""
    cfg = model.default_cfg
    return (tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["img_size"]), float(crop_pct or cfg["crop_pct"]))


def prepare(path: Path, label: str, index: int, keys: Sequence[tuple]) -> Prepared | Skipped:
    """Decode and preprocess one file, or say why it cannot be used."""
    from t2t.images import ImageError, open_image, preprocess_steps

    try:
        img = open_image(path)
        item = Prepared(index, path, label, img.size)
        for key in keys:
            mean, std, size, crop_pct = key
            steps = preprocess_steps(img, mean, std, size, crop_pct)
            item.inputs[key] = steps.tensor[0]
            item.crops[key] = np.asarray(steps.cropped)
        return item
    except ImageError as e:
        return Skipped(label, str(e))
    except OSError as e:  # e.g. a JPEG cut off inside its header: PIL fails before decoding starts
        return Skipped(label, f"The image file is corrupt or truncated and cannot be decoded ({e}).")
    except Exception as e:  # a decoder bug on a hostile file must not end the run either
        return Skipped(label, f"unexpected error while reading: {type(e).__name__}: {e}")


def prepared_batches(files: Sequence[tuple[Path, str]], keys: Sequence[tuple], batch_size: int,
                     background: bool = False) -> Iterator[list[Prepared | Skipped]]:
    """Batches of prepared files; with `background`, the next batch is decoded in a thread while
    this one is used (see `run` for when that pays)."""
    chunks = [list(enumerate(files))[i:i + batch_size] for i in range(0, len(files), batch_size)]
    load = lambda chunk: [prepare(p, label, i, keys) for i, (p, label) in chunk]
    if not background:
        yield from map(load, chunks)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(load, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield batch


# ----------------------------------------------------------------------------- analysis


@dataclass
class Options:
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    methods: tuple[str, ...] = DEFAULT_METHODS
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    grad_discard_ratio: float = 0.9
    ig_steps: int = 16
    faithfulness_steps: int = 10
    faithfulness_baseline: str = "blur"

    def maps(self) -> list[str]:
        """Names of the token-grid maps computed, in display order."""
        return (["rollout"] if "rollout" in self.analyses else []) + (
            list(self.methods) if "explain" in self.analyses else [])


def analyse_batch(model: nn.Module, x: Tensor, opts: Options) -> dict[str, Tensor]:
    """Every number of one batch of (B, 3, S, S) inputs, as CPU tensors with the batch first.

    Keys: "probs" (B, C); "map.NAME" (B, h, w) for rollout and each method; "block.METRIC" (B, L);
    "head.attn_distance", "head.attn_entropy" (B, L, H); "faith.NAME.deletion_auc" /
    ".insertion_auc" (B,). One trace serves all: with a gradient method it keeps the graph and
    takes one backward pass of the predicted class's logit.
    """
    import t2t
    from analysis import attention_stats, faithfulness, redundancy, relevance, rollout
    from analysis.explain import explain
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
            row = rollout.cls_rollout(attentions, head_fusion=opts.head_fusion, discard_ratio=opts.discard_ratio)
            out["map.rollout"] = tokens_to_grid(row, grid)
        if "grad_rollout" in grad_methods:
            out["map.grad_rollout"] = tokens_to_grid(
                rollout.grad_rollout(attentions, gradients, discard_ratio=opts.grad_discard_ratio), grid)
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
        kwargs = {"n_steps": opts.ig_steps} if method == "integrated_gradients" else {}
        out[f"map.{method}"] = explain(method, model, x, target=target, **kwargs).detach()

    if "faithfulness" in a:
        for name in opts.maps():
            curves = faithfulness.faithfulness(model, x, out[f"map.{name}"].float(), target=target,
                                               baseline=opts.faithfulness_baseline, steps=opts.faithfulness_steps)
            out[f"faith.{name}.deletion_auc"] = curves.deletion_auc
            out[f"faith.{name}.insertion_auc"] = curves.insertion_auc
    return {k: v.detach().float().cpu() for k, v in out.items()}


def map_entropy(m: Tensor) -> Tensor:
    """(B, h, w) non-negative maps -> (B,) entropy (nats) of each map as a distribution."""
    p = m.flatten(1).clamp_min(0)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)


def image_records(model: nn.Module, items: Sequence[Prepared], numbers: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Per-image result dicts (JSON-ready) from `analyse_batch`'s tensors."""
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
            "maps": {}, "blocks": {}, "heads": {}, "faithfulness": {}, "figures": {},
        }
        for key, value in numbers.items():
            kind, _, rest = key.partition(".")
            if kind == "map":
                rec["maps"][rest] = value[b].tolist()
            elif kind == "block":
                rec["blocks"][rest] = value[b].tolist()
            elif kind == "head":
                rec["heads"][rest] = value[b].tolist()
            elif kind == "faith":
                method, _, score = rest.partition(".")
                rec["faithfulness"].setdefault(method, {})[score] = float(value[b])
        if "map.rollout" in numbers:
            r = numbers["map.rollout"][b]
            peak = int(r.flatten().argmax())
            rec["rollout_peak_row"], rec["rollout_peak_col"] = divmod(peak, r.shape[1])
            rec["rollout_entropy"] = float(map_entropy(r[None])[0])
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- figures


_LUT: dict[str, np.ndarray] = {}


def colour_lut(cmap: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colormap."""
    if cmap not in _LUT:
        import matplotlib

        _LUT[cmap] = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return _LUT[cmap]


def overlays(crops: Sequence[np.ndarray], maps: Tensor, alpha: float = 0.6, cmap: str = "inferno") -> list[np.ndarray]:
    """Token-grid maps (B, h, w) blended over the (S, S, 3) images the model saw -> (S, S, 3) uint8 each.

    Maps are upsampled bilinearly to pixels and min-max normalised per image; a pixel of value v
    gets colour cmap(v) with weight alpha * (0.25 + 0.75 v), so weak values let the image show
    through. The colouring and blending are PIL's 8-bit palette and `composite` (each pixel within
    1 of the float formula), 3x cheaper than float arrays: the report draws every image and map.
    """
    from PIL import Image

    from analysis.maps import normalize_map, upsample_map

    size = crops[0].shape[:2]
    heat = normalize_map(upsample_map(maps.float(), size)).numpy()  # (B, S, S) in [0, 1]
    index = np.rint(heat * 255).astype(np.uint8)
    weight = np.rint((heat * (0.75 * alpha) + 0.25 * alpha) * 255).astype(np.uint8)
    palette = colour_lut(cmap).tobytes()
    pictures = []
    for crop, idx, w in zip(crops, index, weight, strict=True):
        colour = Image.fromarray(idx, "L")
        colour.putpalette(palette)  # an "L" image with a palette becomes a "P" image
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


def mean_ci(values: np.ndarray) -> dict[str, list[float] | int]:
    """Mean over axis 0 and its 95% confidence interval (normal approximation: 1.96 standard errors)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    mean = v.mean(axis=0)
    half = 1.96 * v.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    return {"n": n, "mean": mean.tolist(), "std": (v.std(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)).tolist(),
            "ci_low": (mean - half).tolist(), "ci_high": (mean + half).tolist()}


def summarise(records: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Per model: per-block mean and 95% CI of every block metric, mean rollout map, mean AUCs."""
    summary: dict[str, Any] = {}
    for name in models:
        rows = [r for r in records if r["model"] == name]
        if not rows:
            continue
        s: dict[str, Any] = {"images": len(rows), "blocks": {}, "faithfulness": {}}
        for metric in rows[0]["blocks"]:
            s["blocks"][metric] = mean_ci(np.array([r["blocks"][metric] for r in rows]))
        if "rollout" in rows[0]["maps"]:
            s["mean_rollout"] = np.mean([r["maps"]["rollout"] for r in rows], axis=0).tolist()
        for method, scores in rows[0]["faithfulness"].items():
            s["faithfulness"][method] = {k: mean_ci(np.array([r["faithfulness"][method][k] for r in rows]))
                                         for k in scores}
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["pred_class"]] = counts.get(r["pred_class"], 0) + 1
        s["predictions"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        summary[name] = s
    return summary


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


# ----------------------------------------------------------------------------- writing


SCALAR_FIELDS = ("image", "path", "model", "pred_index", "pred_class", "pred_prob")
ROLLOUT_FIELDS = ("rollout_peak_row", "rollout_peak_col", "rollout_entropy")


def flat_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: scalars, each block metric as METRIC_mean and METRIC_bI, AUCs as METHOD_SCORE."""
    row = {k: rec[k] for k in (*SCALAR_FIELDS, *ROLLOUT_FIELDS) if k in rec}
    for metric, values in rec["blocks"].items():
        row[f"{metric}_mean"] = float(np.mean(values))
        row.update({f"{metric}_b{i}": v for i, v in enumerate(values)})
    for method, scores in rec["faithfulness"].items():
        row.update({f"{method}_{k}": v for k, v in scores.items()})
    return row


def csv_fields(records: list[dict[str, Any]]) -> list[str]:
    """Columns: scalars, then per metric its mean and blocks 0 .. L-1 of the deepest model, then AUCs."""
    fields = [*SCALAR_FIELDS] + [k for k in ROLLOUT_FIELDS if any(k in r for r in records)]
    metrics = list(dict.fromkeys(m for r in records for m in r["blocks"]))
    depth = max((len(v) for r in records for v in r["blocks"].values()), default=0)
    fields += [f"{m}_{s}" for m in metrics for s in ("mean", *(f"b{i}" for i in range(depth)))]
    return fields + list(dict.fromkeys(f"{method}_{k}" for r in records
                                       for method, scores in r["faithfulness"].items() for k in scores))


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """results.csv: one row per (image, model); a model with fewer blocks leaves the deeper columns empty."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_fields(records))
        writer.writeheader()
        writer.writerows(flat_row(r) for r in records)


def image_src(out: Path, rel: str, embed: bool) -> str:
    if not embed:
        return html.escape(rel)
    mime = "image/png" if rel.endswith(".png") else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode((out / rel).read_bytes()).decode("ascii")


def write_html(report: dict[str, Any], out: Path, embed: bool) -> Path:
    """report.html: settings, summary numbers and figures, skipped files, one row per image."""
    esc = html.escape
    models = [m["name"] for m in report["models"]]
    maps = report["settings"]["maps"]
    img = lambda rel, alt, w: (f'<img src="{image_src(out, rel, embed)}" alt="{esc(alt)}"'
                               + (f' width="{w}">' if w else ">"))
    parts = [f"<h1>t2t-lens report</h1><p>{esc(report['created'])} &middot; device {esc(report['device'])} &middot; "
             f"{report['counts']['analysed']} images analysed, {report['counts']['skipped']} skipped &middot; "
             f"{report['timing']['total_s']:.1f} s ({report['timing']['images_per_s']:.2f} images/s)</p>",
             f"<p class=cmd><code>{esc(report['command'])}</code></p>", "<h2>Models</h2><table><tr><th>model</th>"
             "<th>weights</th><th>blocks</th><th>params</th><th>input</th><th>test acc (card)</th></tr>"]
    for m in report["models"]:
        acc = f"{m['test_acc']:.2%}" if m.get("test_acc") is not None else ""
        parts.append(f"<tr><td>{esc(m['name'])}</td><td>{esc(str(m['weights']))}</td><td>{m['num_blocks']}</td>"
                     f"<td>{m['params']:,}</td><td>{m['img_size']} px, crop {m['crop_pct']}</td><td>{acc}</td></tr>")
    parts.append("</table>")

    summary = report["summary"]
    if summary:
        parts.append("<h2>Summary</h2><p>Mean over images of each block metric averaged over the blocks "
                     "(95% CI over images, normal approximation).</p><table><tr><th>metric</th>"
                     + "".join(f"<th>{esc(m)}</th>" for m in summary) + "</tr>")
        metrics = [k for k in (*REDUNDANCY_METRICS, *ATTENTION_METRICS)
                   if any(k in s["blocks"] for s in summary.values())]
        for metric in metrics:
            cells = []
            for m in summary:
                per_image = [np.mean(r["blocks"][metric]) for r in report["results"] if r["model"] == m]
                st = mean_ci(np.array(per_image)) if per_image else None
                cells.append(f"<td>{st['mean']:.4g} [{st['ci_low']:.4g}, {st['ci_high']:.4g}]</td>"
                             if st and st["n"] > 1 else f"<td>{st['mean']:.4g}</td>" if st else "<td></td>")
            parts.append(f"<tr><td>{esc(METRIC_LABELS.get(metric, metric))}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
        if len(models) == 2 and report["counts"]["analysed"]:
            parts.append(f"<p>The two models predict the same class for {report['agreement']:.1%} of the images.</p>")
        for title, rel in report["figures"].items():
            parts.append(f"<figure>{img('figures/' + rel, title, None)}<figcaption>{esc(title)}</figcaption></figure>")

    parts.append(f"<h2 id=skipped>Skipped files ({len(report['skipped'])})</h2>")
    if report["skipped"]:
        parts.append("<table class=skipped><tr><th>file</th><th>reason</th></tr>" + "".join(
            f"<tr><td>{esc(s['path'])}</td><td>{esc(s['reason'])}</td></tr>" for s in report["skipped"]) + "</table>")
    else:
        parts.append("<p>None: every file was a readable image.</p>")

    parts.append("<h2>Images</h2><table class=images><tr><th>image</th>" + "".join(
        f"<th>{esc(m)}<br><small>{' &middot; '.join(esc(k) for k in maps)}</small></th>" for m in models) + "</tr>")
    by_image: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        by_image.setdefault(r["path"], {})[r["model"]] = r
    for per_model in by_image.values():
        first = next(iter(per_model.values()))
        thumb = img(first["figures"]["input"], first["image"], 128)
        cells = [f"<td>{thumb}<br><small>{esc(first['image'])}</small></td>"]
        for m in models:
            r = per_model.get(m)
            if r is None:
                cells.append("<td></td>")
                continue
            width = 128 if len(maps) <= 3 else 100
            figs = "".join(img(r["figures"][k], f"{m} {k}", width) for k in maps if k in r["figures"])
            cells.append(f"<td><b>{esc(r['pred_class'])}</b> {r['pred_prob']:.1%}<br>{figs}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}"
             "th{background:#f4f4f4}img{margin:1px}.cmd code{font-size:12px;word-break:break-all}"
             "figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:13px;color:#555}")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>t2t-lens report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the run


def load_models(args: argparse.Namespace, device: torch.device) -> list[nn.Module]:
    import t2t

    weights = args.weights if len(args.weights) > 1 else args.weights * len(args.models)
    if len(weights) != len(args.models):
        raise SystemExit(f"error: --weights takes one value for all models or one per model "
                         f"({len(args.models)}), got {len(weights)}")
    try:
        return [load_model(n, w, device, seed=args.seed) for n, w in zip(args.models, weights, strict=True)]
    except (t2t.CheckpointError, KeyError) as e:
        raise SystemExit(f"error: {e}") from e


def write_pictures(crops: Sequence[np.ndarray], maps: Tensor | None, paths: Sequence[Path]) -> None:
    """Save the images (maps None) or each map over its image, one file per path."""
    for picture, path in zip(crops if maps is None else overlays(crops, maps), paths, strict=True):
        save_picture(picture, path)


def analyse_items(models: Sequence[nn.Module], keys: Sequence[tuple], items: Sequence[Prepared], opts: Options,
                  out: Path, device: torch.device, fmt: str, draw: Callable[..., Any]) -> list[dict[str, Any]]:
    """Records of a batch of images for every model.

    The pictures (the inputs, each map over each input) go to `draw(write_pictures, ...)`: in `run`,
    drawn at once on the CPU, or by a thread while the next batch runs through a GPU's models.
    """
    records = []
    for item in items:
        item.figure = f"figures/{item.index:05d}_{slug(Path(item.label).stem)}"
    draw(write_pictures, [it.crops[keys[0]] for it in items], None, [out / f"{it.figure}.{fmt}" for it in items])
    for model, key in zip(models, keys, strict=True):
        x = torch.stack([it.inputs[key] for it in items]).to(device)
        numbers = analyse_batch(model, x, opts)
        recs = image_records(model, items, numbers)
        name = model.default_cfg["name"]
        for it, rec in zip(items, recs, strict=True):
            rec["figures"]["input"] = f"{it.figure}.{fmt}"
            rec["figures"].update({m: f"{it.figure}__{name}__{m}.{fmt}" for m in opts.maps()})
            rec["image_size"] = list(it.size)
        for m in opts.maps():
            draw(write_pictures, [it.crops[key] for it in items], numbers[f"map.{m}"],
                 [out / rec["figures"][m] for rec in recs])
        records += recs
    return records


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Analyse every image with every model and write all outputs; returns the JSON content."""
    from tqdm import tqdm

    import t2t

    t_start = time.perf_counter()
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    device = t2t.default_device(None if args.device == "auto" else args.device)
    models = load_models(args, device)
    names = [m.default_cfg["name"] for m in models]
    opts = Options(analyses=tuple(dict.fromkeys([*args.only, *(["faithfulness"] if args.faithfulness else [])])),
                   methods=tuple(args.methods), head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
                   ig_steps=args.ig_steps, faithfulness_steps=args.faithfulness_steps)
    keys = [transform_key(m, args.crop_pct) for m in models]
    files, skipped = find_images(args.images)

    t_loop = time.perf_counter()
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(files), unit="img", desc="report", file=sys.stderr, dynamic_ncols=True)
    # Decoding and drawing overlap the models only on an accelerator. On the CPU the forward
    # already keeps every core busy, and a Python thread beside it costs the forward about as much
    # as the thread's own work, which itself runs 2x slower (GIL hand-offs between the forward's
    # ops while the OpenMP workers wait). Measured on 2 cores with 192 images: the traces took
    # 7.8-8.6 s beside the threads where the bare forwards took 6.5-6.8 s.
    background = device.type != "cpu"
    with ThreadPoolExecutor(max_workers=1) as writer:
        jobs: list[Future] = []
        draw = (lambda *job: jobs.append(writer.submit(*job))) if background else (lambda fn, *a: fn(*a))
        for batch in prepared_batches(files, list(dict.fromkeys(keys)), args.batch_size, background):
            items = [b for b in batch if isinstance(b, Prepared)]
            skipped += [b for b in batch if isinstance(b, Skipped)]
            if items:
                records += analyse_items(models, keys, items, opts, out, device, args.image_format, draw)
            bar.update(len(batch))
            if skipped:
                bar.set_postfix(skipped=len(skipped))
        for job in jobs:
            job.result()  # re-raises what went wrong in the thread
    bar.close()
    t_write = time.perf_counter()

    records.sort(key=lambda r: (r["path"], names.index(r["model"])))
    summary = summarise(records, names)
    analysed = len({r["path"] for r in records})
    report: dict[str, Any] = {
        "command": args.command or " ".join(["python -m analysis.report", *sys.argv[1:]]),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "settings": {"analyses": list(opts.analyses), "methods": list(opts.methods), "maps": opts.maps(),
                     "head_fusion": opts.head_fusion, "discard_ratio": opts.discard_ratio,
                     "grad_discard_ratio": opts.grad_discard_ratio, "ig_steps": opts.ig_steps,
                     "faithfulness_steps": opts.faithfulness_steps, "faithfulness_baseline": opts.faithfulness_baseline,
                     "batch_size": args.batch_size, "crop_pct": args.crop_pct},
        "models": [describe_model(m) for m in models],
        "counts": {"files": len(files), "analysed": analysed, "skipped": len(skipped)},
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "agreement": agreement(records, names),
        "summary": summary,
        "figures": summary_figures(summary, out / "figures") if summary else {},
        "results": records,
    }
    write_csv(records, out / "results.csv")
    now = time.perf_counter()
    report["timing"] = {"setup_s": t_loop - t_start, "images_s": t_write - t_loop, "write_s": now - t_write,
                        "total_s": now - t_start, "images_per_s": analysed / max(now - t_start, 1e-9),
                        "loop_images_per_s": analysed / max(t_write - t_loop, 1e-9)}
    write_html(report, out, embed=args.html == "embed" or (args.html == "auto" and folder_size(out / "figures") < 40e6))
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{analysed} images analysed with {len(models)} models, {len(skipped)} skipped, in "
          f"{report['timing']['total_s']:.1f} s -> {out / 'report.html'}", file=sys.stderr)
    for s in skipped:
        print(f"  skipped {s.path}: {s.reason}", file=sys.stderr)
    return report


def agreement(records: list[dict[str, Any]], names: list[str]) -> float | None:
    """Fraction of images on which the first two models predict the same class index."""
    if len(names) < 2:
        return None
    preds: dict[str, dict[str, int]] = {}
    for r in records:
        preds.setdefault(r["path"], {})[r["model"]] = r["pred_index"]
    both = [p for p in preds.values() if names[0] in p and names[1] in p]
    return sum(p[names[0]] == p[names[1]] for p in both) / len(both) if both else None


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from analysis.explain import EXPLAINERS

    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["t2t_vit_7", "deit_tiny_patch16_224"], help="registry names")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", nargs="+", default=["embedded"],
                   help="one for all models or one per model: embedded, imagenet, random, or a checkpoint path/URL")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--only", nargs="+", choices=ANALYSES, default=list(DEFAULT_ANALYSES), metavar="ANALYSIS",
                   help=f"analyses to run, of {', '.join(ANALYSES)} (the prediction is always made)")
    p.add_argument("--methods", nargs="+", choices=sorted(EXPLAINERS), default=list(DEFAULT_METHODS),
                   metavar="METHOD", help=f"explanations for 'explain', of {', '.join(sorted(EXPLAINERS))}")
    p.add_argument("--faithfulness", action="store_true", help="also score every map by deletion / insertion AUC")
    p.add_argument("--faithfulness-steps", type=int, default=10)
    p.add_argument("--ig-steps", type=int, default=16, help="integration steps of integrated_gradients")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="rollout head fusion")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: lowest weights dropped per row")
    p.add_argument("--crop-pct", type=float, default=None, help="override every model's centre-crop fraction")
    p.add_argument("--html", choices=["auto", "embed", "link"], default="auto",
                   help="figures inlined in report.html (embed), linked from figures/ (link), or embed unless > 40 MB")
    p.add_argument("--image-format", choices=["jpg", "png"], default="jpg",
                   help="per-image pictures (inputs, overlays); summary plots are always PNG")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")
    args = p.parse_args(argv)
    args.command = None if argv is None else " ".join(["python -m analysis.report", *argv])
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
