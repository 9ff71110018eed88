"""Inputs and sharding: the files to analyse, the models, and a DataLoader that decodes in worker processes.

The files are listed once (by rank 0 under torchrun) and indexed; `t2t.distributed` deals the
indices to the ranks; each rank's DataLoader decodes and preprocesses its own share.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from t2t.data.folder import Transform, eval_transform, read_inputs, unusable


@dataclass
class Skipped:
    path: str
    reason: str
    index: int = -1


@dataclass
class Prepared:
    """One readable image, preprocessed for every distinct model transform (`key`)."""

    index: int
    path: Path
    label: str
    size: tuple[int, int]
    inputs: dict[tuple, Tensor] = field(default_factory=dict)  # key -> (3, S, S) normalised


def find_images(inputs: Sequence[str | Path]) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """Files to analyse as (path, label), and inputs that do not exist.

    A folder contributes every regular file below it (sorted by path components, hidden ones left
    out), whatever its extension: a file that turns out not to be an image is reported as skipped,
    never dropped silently. Labels are paths relative to the folder given. Paths are kept as
    strings and listed with os.walk: a million Path objects would cost the run about half a GB.
    """
    files: list[tuple[str, str]] = []
    missing: list[Skipped] = []
    seen: set[str] = set()
    for item in inputs:
        root = str(Path(item))
        if os.path.isdir(root):
            found: list[tuple[str, ...]] = []
            for folder, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(folder, root)
                parts = () if rel == "." else tuple(rel.split(os.sep))
                found += [(*parts, n) for n in names
                          if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))]
            pairs = [(os.path.join(root, *parts), "/".join(parts)) for parts in sorted(found)]
        elif os.path.exists(root):
            pairs = [(root, os.path.basename(root))]
        else:
            missing.append(Skipped(root, "not found"))
            continue
        for p, label in pairs:
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                files.append((p, label))
    return files, missing


def transform_key(model: nn.Module, crop_pct: float | None = None) -> Transform:
    """What preprocessing a model needs (its own eval transform): models with equal keys share their inputs."""
    return eval_transform(model, crop_pct)


def prepare(path: str | Path, label: str, index: int, keys: Sequence[Transform]) -> Prepared | Skipped:
    """Decode and preprocess one file, or say why it cannot be used."""
    try:
        size, inputs = read_inputs(path, list(keys))
        return Prepared(index, Path(path), label, size, inputs)
    except Exception as e:  # every reading failure becomes a skipped file, never the end of the run
        return Skipped(label, unusable(e), index)


class ReportImages(Dataset):
    """Item i of the file list -> `Prepared` or `Skipped`, for every distinct transform of the models."""

    def __init__(self, files: Sequence[tuple[str, str]], keys: Sequence[Transform]) -> None:
        self.files, self.keys = list(files), list(dict.fromkeys(keys))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Prepared | Skipped:
        path, label = self.files[i]
        return prepare(path, label, i, self.keys)


def as_list(items: list[Prepared | Skipped]) -> list[Prepared | Skipped]:
    """The DataLoader's collate: keep the batch as a list (the models stack their own inputs)."""
    return items


def make_loader(files: Sequence[tuple[str, str]], keys: Sequence[Transform], batches: list[list[int]],
                workers: int) -> DataLoader:
    """Batches of exactly the given file indices, decoded by `workers` processes (0: in this process)."""
    return DataLoader(ReportImages(files, keys), batch_sampler=batches, collate_fn=as_list, num_workers=workers)


def load_models(args: argparse.Namespace, device: torch.device) -> list[nn.Module]:
    """--models with --weights (one for all, or one per model), through the one loader `t2t.loading.load_model`."""
    import t2t
    from t2t.loading import load_model

    weights = args.weights if len(args.weights) > 1 else args.weights * len(args.models)
    if len(weights) != len(args.models):
        raise SystemExit(f"error: --weights takes one value for all models or one per model "
                         f"({len(args.models)}), got {len(weights)}")
    try:
        return [load_model(n, w, device, seed=args.seed, use_ema=not args.no_ema, img_size=args.img_size)
                for n, w in zip(args.models, weights, strict=True)]
    except (t2t.CheckpointError, KeyError, ValueError) as e:  # ValueError: an img_size not a multiple of 16
        raise SystemExit(f"error: {e}") from e
