"""Inputs and sharding: the files to analyse, the models, and a DataLoader that decodes in worker processes.

The files are listed once (by rank 0 under torchrun) and indexed; `t2t.distributed` deals the
indices to the ranks; each rank's DataLoader decodes and preprocesses its own share.
"""

from __future__ import annotations

import argparse
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


def transform_key(model: nn.Module, crop_pct: float | None = None) -> Transform:
    """What preprocessing a model needs (its own eval transform): models with equal keys share their inputs."""
    return eval_transform(model, crop_pct)


def prepare(path: Path, label: str, index: int, keys: Sequence[Transform]) -> Prepared | Skipped:
    """Decode and preprocess one file, or say why it cannot be used."""
    try:
        size, inputs = read_inputs(path, list(keys))
        return Prepared(index, Path(path), label, size, inputs)
    except Exception as e:  # every reading failure becomes a skipped file, never the end of the run
        return Skipped(label, unusable(e), index)


class ReportImages(Dataset):
    """Item i of the file list -> `Prepared` or `Skipped`, for every distinct transform of the models."""

    def __init__(self, files: Sequence[tuple[Path, str]], keys: Sequence[Transform]) -> None:
        self.files, self.keys = list(files), list(dict.fromkeys(keys))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Prepared | Skipped:
        path, label = self.files[i]
        return prepare(path, label, i, self.keys)


def as_list(items: list[Prepared | Skipped]) -> list[Prepared | Skipped]:
    """The DataLoader's collate: keep the batch as a list (the models stack their own inputs)."""
    return items


def make_loader(files: Sequence[tuple[Path, str]], keys: Sequence[Transform], batches: list[list[int]],
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
        return [load_model(n, w, device, seed=args.seed, use_ema=not args.no_ema)
                for n, w in zip(args.models, weights, strict=True)]
    except (t2t.CheckpointError, KeyError) as e:
        raise SystemExit(f"error: {e}") from e
