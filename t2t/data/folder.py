"""Labelled images on disk: an ImageNet-style folder (one sub-folder per class) or a file list with labels.

    val/n01440764/ILSVRC2012_val_00000293.JPEG ...   sub-folders named by WordNet id
    val/0/a.png  val/1/b.png ...                      ... by class index
    val/stripes/a.png ...                             ... by the model's own class names
    labels.txt: "ILSVRC2012_val_00000001.JPEG 65"    a list: path (relative to the list) and label

A WordNet id maps to its ImageNet-1k index (the standard order: the 1000 synsets sorted, as
torchvision's ImageFolder gives them on the full validation set), so a folder holding only some
classes still gets the right labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from t2t.weights import ASSETS

WNID = re.compile(r"^n\d{8}$")


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids of ImageNet-1k, line i = class index i."""
    wnids = tuple((ASSETS / "imagenet_synsets.txt").read_text().split())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError("imagenet_synsets.txt must hold the 1000 ImageNet-1k synsets in sorted order")
    return wnids


@dataclass
class LabelledImages:
    """Every file to evaluate with its class index, and what could not be used (path, reason)."""

    samples: list[tuple[str, int]]
    missing: list[tuple[str, str]]
    labels: str  # how the labels were read: "wordnet id", "class index", "class name"


def class_index(labels: list[str], num_classes: int,
                class_names: list[str] | None = None) -> tuple[dict[str, int], str]:
    """Folder names or list labels -> class indices, and which kind of label they are.

    All WordNet ids (a 1000-class model), all integers in [0, num_classes), or all among the
    model's class names; anything else is a ValueError saying what would work.
    """
    distinct = sorted(set(labels))
    if distinct and all(WNID.match(s) for s in distinct):
        if num_classes != 1000:
            raise ValueError(f"labels are WordNet ids (e.g. {distinct[0]}) but the model has {num_classes} "
                             "classes, not ImageNet-1k's 1000")
        order = {w: i for i, w in enumerate(imagenet_synsets())}
        unknown = [s for s in distinct if s not in order]
        if unknown:
            raise ValueError(f"not ImageNet-1k synsets: {', '.join(unknown[:5])}")
        return {s: order[s] for s in distinct}, "wordnet id"
    if distinct and all(s.isdigit() for s in distinct):
        bad = [s for s in distinct if int(s) >= num_classes]
        if bad:
            raise ValueError(f"class indices {', '.join(bad[:5])} are not below the model's {num_classes} classes")
        return {s: int(s) for s in distinct}, "class index"
    names = {n: i for i, n in enumerate(class_names or [])}
    if distinct and all(s in names for s in distinct):
        return {s: names[s] for s in distinct}, "class name"
    raise ValueError(
        f"cannot tell the classes of {', '.join(distinct[:5]) or 'no labels'}"
        f"{' ...' if len(distinct) > 5 else ''}: name them all by WordNet id (n01440764), all by class index "
        f"(0 to {num_classes - 1}) or all by the model's class names")


def labelled_images(source: str | Path, num_classes: int, class_names: list[str] | None = None) -> LabelledImages:
    """The labelled files of a class folder or a file list (sorted by class folder, then path).

    A folder: each sub-folder is a class and contributes every regular file below it whatever its
    extension (a file that is not an image is skipped later, with its reason); hidden files and
    files directly in the top folder are left out (the latter reported). A file: one
    "path label" per line (whitespace or a comma between; # comments and blank lines ignored),
    paths relative to the list's folder.
    """
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"no such folder or file list: {root}")
    missing: list[tuple[str, str]] = []
    pairs: list[tuple[Path, str]] = []
    if root.is_dir():
        hidden = lambda p: any(part.startswith(".") for part in p.relative_to(root).parts)  # noqa: E731
        for entry in sorted(root.iterdir()):
            if hidden(entry):
                continue
            if entry.is_dir():
                pairs += [(p, entry.name) for p in sorted(entry.rglob("*")) if p.is_file() and not hidden(p)]
            elif entry.is_file():
                missing.append((entry.name, "not in a class sub-folder, so it has no label"))
    else:
        for n, line in enumerate(root.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = re.split(r"[,\s]+", line)
            if len(parts) < 2:
                raise ValueError(f"{root}:{n}: expected 'path label', got {line!r}")
            path = Path(" ".join(parts[:-1])).expanduser()
            pairs.append((path if path.is_absolute() else root.parent / path, parts[-1]))
    if not pairs:
        raise ValueError(f"{root} holds no labelled files (expected class sub-folders or 'path label' lines)")
    index, kind = class_index([label for _, label in pairs], num_classes, class_names)
    samples = []
    for path, label in pairs:
        if path.is_file():
            samples.append((str(path), index[label]))
        else:
            missing.append((str(path), "not found"))
    return LabelledImages(samples, missing, kind)


Transform = tuple  # (mean, std, img_size, crop_pct, interpolation): models with equal ones share inputs


def eval_transform(model, crop_pct: float | None = None) -> Transform:
    """A model's own evaluation transform (timm's eval transform, as the official `main.py --eval_checkpoint`):
    resize the shorter side to floor(img_size / crop_pct) with its interpolation, centre crop, mean / std.
    The tuple form of `t2t.inference.transform_for` (one definition of it)."""
    from t2t.inference import transform_for

    return transform_for(model, crop_pct).as_tuple()


def read_inputs(path: str | Path, transforms: list[Transform]):
    """Decode one file and preprocess it for each transform -> ((w, h), {transform: (3, S, S) tensor}).

    Raises what `t2t.images.open_image` raises for a file that is not a usable image; see `unusable`.
    """
    from t2t.images import open_image, preprocess

    img = open_image(path)
    return img.size, {t: preprocess(img, t[0], t[1], t[2], t[3], t[4])[0] for t in transforms}


def unusable(err: Exception) -> str:
    """Why a file could not be used, for the list of skipped files."""
    from t2t.images import ImageError

    if isinstance(err, ImageError):
        return str(err)
    if isinstance(err, OSError):  # e.g. a JPEG cut off inside its header: PIL fails before decoding starts
        return f"The image file is corrupt or truncated and cannot be decoded ({err})."
    return f"unexpected error while reading: {type(err).__name__}: {err}"  # a decoder bug must not end the run
