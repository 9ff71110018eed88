"""From images to a model's answer in three calls: its own transform, a batch, the top-k classes.

    model = t2t.create_model("t2t_vit_7", pretrained="embedded")
    x = t2t.load_images(["photo.jpg"], model)      # (B, 3, S, S), the model's evaluation transform
    t2t.predict(model, x, k=3)                      # per image: [(class name, probability), ...]

The model knows its own transform (as timm's `resolve_model_data_config` + `create_transform`):
`transform_for(model)` reads it from `model.default_cfg` (mean / std, size, crop fraction,
interpolation), which `create_model` fills for every release family: ImageNet T2T-ViT (crop 0.9,
bicubic), DeiT (0.875), AugReg ViT (mean = std = 0.5), the CIFAR fine-tunes (bilinear, no crop) and
the embedded models (their cards). `t2t.validate`, the report and the app use the same transform.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import torch
from PIL import Image
from torch import Tensor, nn

from t2t.images import ImageError, open_image, preprocess

#: What `load_images` reads: a path, raw bytes, a binary file object or a decoded PIL image.
ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image

_URL_SCHEMES = ("http://", "https://", "ftp://", "file://", "data:")


@dataclass(frozen=True)
class EvalTransform:
    """A model's evaluation transform, timm's `transforms_imagenet_eval` without torchvision.

    Resize the shorter side to `floor(img_size / crop_pct)` with `interpolation`, centre-crop
    `img_size`, scale to [0, 1], normalise with `mean` / `std`. Calling it on a PIL image gives the
    (3, img_size, img_size) float32 tensor. Equal transforms compare (and hash) equal, so models
    that share one can share their inputs.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    crop_pct: float
    interpolation: str

    def __call__(self, img: Image.Image) -> Tensor:
        """PIL image (any mode) -> (3, img_size, img_size) normalised tensor."""
        return preprocess(img, self.mean, self.std, self.img_size, self.crop_pct, self.interpolation)[0]

    def as_tuple(self) -> tuple:
        """(mean, std, img_size, crop_pct, interpolation): the order `t2t.images.preprocess` takes them in."""
        return (self.mean, self.std, self.img_size, self.crop_pct, self.interpolation)


def transform_for(model: nn.Module, crop_pct: float | None = None) -> EvalTransform:
    """The evaluation transform of `model` (a t2t-lens model: it has a `default_cfg`).

    `crop_pct` overrides the model's crop fraction (e.g. 1.0: no crop), as `validate --crop-pct` does.
    """
    cfg = getattr(model, "default_cfg", None)
    if not isinstance(cfg, dict) or not {"mean", "std", "img_size", "crop_pct"} <= cfg.keys():
        raise TypeError(
            f"transform_for needs a t2t-lens model (made by t2t.create_model), whose default_cfg names its "
            f"mean, std, img_size and crop_pct; got a {type(model).__name__}")
    crop = float(crop_pct if crop_pct is not None else cfg["crop_pct"])
    if not 0 < crop <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop}")
    return EvalTransform(tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                         int(cfg["img_size"]), crop, str(cfg.get("interpolation", "bicubic")))


def load_images(sources: ImageSource | Iterable[ImageSource], model: nn.Module,
                crop_pct: float | None = None) -> Tensor:
    """Decode `sources` and run each through `transform_for(model)` -> (B, 3, S, S) float32 on the CPU.

    `sources` is one source or a list of them: paths, raw bytes, binary file objects or PIL images.
    Files are opened with `t2t.images.open_image`, which checks the declared size before decoding
    and refuses what is not an image (PNG, JPEG, WebP, BMP, GIF or TIFF) with a message saying why;
    here that message also names the source. URLs are refused: nothing is downloaded, download the
    image first. Nothing is returned unless every source could be used.
    """
    transform = transform_for(model, crop_pct)
    items = [sources] if _is_single(sources) else list(sources)
    if not items:
        raise ValueError("load_images got no images")
    batch = []
    for i, source in enumerate(items):
        if isinstance(source, str) and source.lower().startswith(_URL_SCHEMES):
            raise ImageError(f"image {i} is a URL ({source[:80]}); load_images reads local files, bytes or PIL "
                             "images and never downloads: save the image to a file first")
        try:
            img = source if isinstance(source, Image.Image) else open_image(source)
        except ImageError as err:
            raise ImageError(f"image {i} ({_describe(source)}): {err}") from err
        batch.append(transform(img))
    return torch.stack(batch)


def _is_single(sources: object) -> bool:
    single = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)
    return isinstance(sources, single) or hasattr(sources, "read")


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    return getattr(source, "name", type(source).__name__)


def class_names(model: nn.Module) -> list[str]:
    """The model's class names, index i = class i: ImageNet-1k, CIFAR-10/100 or the embedded model's
    own classes; "class i" for a model whose weights name none (random weights, a custom head)."""
    names = getattr(model, "class_names", None)
    n = int(getattr(model, "num_classes", 0) or 0)
    if names and len(names) == n:
        return list(names)
    return [f"class {i}" for i in range(n)]


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """The top-`k` classes of each of the (B, 3, S, S) `images`: B lists of (class name, probability),
    most probable first. Probabilities are the softmax of the model's logits (for a token-labeling
    model, of the logits it outputs: `model.default_cfg["head"]` says which). Runs on the model's device."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, S, S), got {tuple(images.shape)}; use t2t.load_images")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    names = class_names(model)
    device = next(model.parameters()).device
    probs = model(images.to(device)).float().softmax(dim=-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(names[c], float(p)) for p, c in zip(ps.tolist(), cs.tolist())] for ps, cs in zip(*top)]
