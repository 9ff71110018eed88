"""Synthetic data for training and probing: classes defined by local structure."""

from t2t.data.synthetic import (
    CLASS_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    SPLIT_SEEDS,
    LocalStructureDataset,
    normalize,
    render,
    render_chw,
)

__all__ = [
    "CLASS_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "SPLIT_SEEDS",
    "LocalStructureDataset",
    "normalize",
    "render",
    "render_chw",
]
