"""The image being looked at: where it comes from and its decoded pixels.

Owns: `ImageChoice` (a stable key for the caches, a label, the RGB image), the image sources the
sidebar offers (`IMAGE_SOURCES`, `IMAGE_TYPES`), decoding uploads safely (`image_from_bytes`, with
`upload_error_message` for the user), the sample photos, and the synthetic shapes of the test split
(`synthetic_image`, `synthetic_batch`, `default_image`). Decoded images live in the byte cache.

May import: app.jobs (`memo`), t2t.images, t2t.data.synthetic, PIL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from PIL import Image

from app.jobs import memo
from t2t.images import ImageError, open_image, sample_images

IMAGE_SOURCES = ("Synthetic shape", "Sample photo", "Upload", "Camera")
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]


@dataclass(frozen=True)
class ImageChoice:
    """The image being looked at: a stable key (for caches), a label, and the decoded RGB image."""

    key: str
    label: str
    image: Image.Image = field(compare=False, repr=False)


@memo
def _decode(digest: str, _data: bytes) -> Image.Image:
    return open_image(_data)


def image_from_bytes(name: str, data: bytes) -> ImageChoice:
    """Decode uploaded bytes (any supported format, safely), or raise ImageError with a user message."""
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    digest = hashlib.sha1(data).hexdigest()
    return ImageChoice(f"bytes:{digest}", name, _decode(digest, data))


def upload_error_message(name: str, err: Exception) -> str:
    return f"Cannot use '{name}': {err}"


@memo
def _sample(name: str) -> Image.Image:
    return open_image(sample_images()[name])


def sample_image(name: str) -> ImageChoice:
    return ImageChoice(f"sample:{name}", f"sample photo '{name}'", _sample(name))


def synthetic_class_names() -> tuple[str, ...]:
    from t2t.data.synthetic import CLASS_NAMES

    return CLASS_NAMES


@memo
def _synthetic(index: int, img_size: int) -> Image.Image:
    from t2t.data.synthetic import LocalStructureDataset

    return LocalStructureDataset("test", size=index + 1, img_size=img_size).image(index)


def synthetic_image(class_index: int, example: int = 0) -> ImageChoice:
    """Example `example` of a synthetic class, from the test split (never seen in training)."""
    names = synthetic_class_names()
    index = example * len(names) + class_index
    return ImageChoice(f"synthetic:{index}", f"synthetic '{names[class_index]}' #{example}", _synthetic(index, 224))


def synthetic_batch(n: int) -> list[tuple[ImageChoice, int]]:
    """The first `n` test images of the synthetic dataset with their labels (balanced over classes)."""
    k = len(synthetic_class_names())
    return [(synthetic_image(i % k, i // k), i % k) for i in range(n)]


def default_image() -> ImageChoice:
    return synthetic_image(synthetic_class_names().index("triangle"), 0)

