"""Open untrusted images safely and preprocess them like timm's eval transform (no torchvision).

``open_image`` turns anything a user may upload into a plain RGB ``PIL.Image`` or raises
:class:`ImageError` with a message that can be shown to that user as is. ``preprocess`` and
``preprocess_steps`` reproduce timm's ``transforms_imagenet_eval`` (resize the shorter side to
``floor(img_size / crop_pct)``, centre crop, scale to [0, 1], normalise), the latter keeping the
intermediate images so an app can show each step.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: Per-channel (R, G, B) values such as a model's normalisation mean or std.
Triple = tuple[float, float, float] | list[float]

ASSETS = Path(__file__).resolve().parent / "assets"

#: Pixel limit on the size an image *declares*, checked before any pixel is decoded. 64 MP admits
#: every camera photo in common use and stays under PIL's own bomb warning (about 89 MP).
DEFAULT_MAX_PIXELS = 64_000_000
#: Images are shrunk so their longer side is at most this; models look at 224 px anyway.
DEFAULT_MAX_SIDE = 2048
#: Any decodable image is accepted, down to 1x1 pixel: `preprocess_steps` upsamples it to the
#: model's size and says by how much (`PreprocessSteps.resize_factor`). Callers may ask for more.
MIN_SIDE = 1
#: Longest accepted side : shorter side. The eval transform resizes the *shorter* side to ~248 px
#: before its centre crop, so a 1 x 2048 strip becomes 248 x 507904 px (measured: 1.6 s, 0.8 GB
#: peak) of which the crop keeps 1/2048; 256:1 bounds that at 248 x 63488 px.
MAX_ASPECT = 256
#: What transparent pixels are composited onto (white, like a browser page behind a PNG).
BACKGROUND = (255, 255, 255)

# Only these decoders are ever run: each extra Pillow plugin is extra attack surface for untrusted
# uploads. (Phone-camera MPO files open through the JPEG decoder; DIB is a BMP variant.)
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF", "TIFF")
_SUPPORTED_TEXT = "PNG, JPEG, WebP, BMP, GIF or TIFF"

# catch_warnings() swaps the process-wide warning filters; the lock keeps our own concurrent calls
# (e.g. Streamlit sessions in threads) from restoring each other's filters in the wrong order.
_DECODE_LOCK = threading.Lock()

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# Magic numbers of the supported formats: a file that starts like one but cannot be opened is corrupt.
_SUPPORTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF8", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WebP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)

# Magic numbers of things people upload by mistake, for a helpful "Not an image file (…)" message.
_KNOWN_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "it looks like a PDF document"),
    (b"PK\x03\x04", 0, "it looks like a ZIP archive or Office document"),
    (b"\x1f\x8b", 0, "it looks like a gzip archive"),
    (b"ftypheic", 4, "it is a HEIC photo, which is not supported; export it as JPEG"),
    (b"ftypheix", 4, "it is a HEIC photo, which is not supported; export it as JPEG"),
    (b"ftypmif1", 4, "it is a HEIF image, which is not supported; export it as JPEG"),
    (b"ftypavif", 4, "it is an AVIF image, which is not supported; export it as JPEG or PNG"),
    (b"ftyp", 4, "it looks like a video or other ISO media file"),
    (b"\x00\x00\x01\x00", 0, "it is an ICO icon, which is not supported"),
    (b"8BPS", 0, "it is a Photoshop document, which is not supported"),
    (b"\x00\x00\x00\x0cjP  ", 0, "it is a JPEG 2000 image, which is not supported"),
    (b"\xef\xbb\xbf", 0, "it looks like a text file"),
)


class ImageError(ValueError):
    """An image that cannot be used; ``str(err)`` is a complete message meant for the end user."""


# ----------------------------------------------------------------------------------------------
# Opening
# ----------------------------------------------------------------------------------------------


def open_image(
    source: bytes | str | os.PathLike | BinaryIO,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """Decode ``source`` into an RGB image, or raise :class:`ImageError` saying what is wrong.

    ``source`` is raw bytes, a path, or a binary file object (read from its current position).
    Accepted formats are PNG, JPEG, WebP, BMP, GIF and TIFF. The returned image is a fully loaded
    ``RGB`` image that no longer refers to ``source``:

    * the size the file declares is checked against ``max_pixels`` *before* decoding, so a tiny
      file claiming 100 000 x 100 000 pixels costs nothing (PIL's global limits are never changed;
      PIL's own ``Image.MAX_IMAGE_PIXELS`` still applies on top of ``max_pixels``);
    * sides below ``min_side`` (default 1: any image) and aspect ratios beyond ``MAX_ASPECT`` are
      rejected; large images are shrunk so the longer side is at most ``max_side`` (JPEGs are
      decoded at reduced scale via ``draft`` to bound memory);
    * EXIF orientation is applied, animations give their first frame;
    * transparency (RGBA, LA, palette with a transparent colour) is composited onto **white**;
    * CMYK is converted to RGB; 16-bit and 32-bit greyscale is rescaled to 8 bits (not clipped,
      see :func:`_rescale_to_uint8`).
    """
    data = _read_source(source)
    with _DECODE_LOCK, warnings.catch_warnings():
        # Turn PIL's bomb *warning* into an exception so it cannot slip through as a log line.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(data, formats=_available_formats()) as opened:
                _check_size(opened.size, max_pixels, min_side)
                img = _decode_first_frame(opened, max_side)
        except ImageError:
            raise  # our own size checks: already the real cause (ImageError is a ValueError)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # PIL refused before we could see the size; its message carries the pixel count.
            raise ImageError(_too_many_pixels_message(str(err), max_pixels)) from err
        except UnidentifiedImageError as err:
            raise ImageError(_not_an_image_message(data)) from err
        except (OSError, SyntaxError, ValueError, struct.error) as err:
            # a header cut short or garbled: PIL recognised the format, then failed to parse it
            raise ImageError(
                f"The image file is truncated or corrupt: its header cannot be read ({err})."
            ) from err
    if img.mode in ("RGB", "RGBA", "L", "LA") and max(img.size) > max_side:
        # Shrink before any mode conversion so that works on the small image.
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    img = to_rgb(img)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


@functools.lru_cache(maxsize=1)
def _available_formats() -> tuple[str, ...]:
    """SUPPORTED_FORMATS that this Pillow build can decode (e.g. WebP is an optional feature)."""
    Image.init()
    return tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)


def _read_source(source: bytes | str | os.PathLike | BinaryIO) -> io.BytesIO | Path:
    """Return something ``Image.open`` can read, after the checks that need no decoding."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image file.")
        try:
            size = path.stat().st_size
        except FileNotFoundError as err:
            raise ImageError(f"File not found: {path}") from err
        except OSError as err:
            raise ImageError(f"Cannot read {path}: {err.strerror or err}") from err
        if size == 0:
            raise ImageError("The file is empty (0 bytes).")
        return path  # PIL opens paths lazily and memory-maps where it can: no need to slurp it
    elif hasattr(source, "read"):
        # Uploaded-file objects may not be seekable; a copy also frees us from the caller's handle.
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError("open_image needs a binary file object (opened with 'rb')")
    else:
        raise TypeError(f"open_image cannot read a {type(source).__name__}")
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    return io.BytesIO(data)


def _check_size(size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageError(
            f"Image is {w}x{h} = {_mp(w * h)}, more than the limit of {_mp(max_pixels)}; please use a smaller image."
        )
    if min(w, h) < min_side:
        raise ImageError(f"Image is only {w}x{h} pixels; it needs at least {min_side} pixels on each side.")
    _check_aspect((w, h))


def _check_aspect(size: tuple[int, int]) -> None:
    w, h = size
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(
            f"Image is {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1; at most {MAX_ASPECT}:1 is "
            f"accepted: the model sees a centred square, less than 1/{MAX_ASPECT} of it, and resizing the whole "
            "image for that crop would take too much memory. Please crop it closer to a square."
        )


def _mp(pixels: int) -> str:
    """400000000 -> '400 MP'; small counts (only seen with small custom limits) stay exact."""
    return f"{pixels / 1e6:.0f} MP" if pixels >= 1_000_000 else f"{pixels:,} pixels"


def _too_many_pixels_message(pil_message: str, max_pixels: int) -> str:
    match = re.search(r"\((\d+) pixels\)", pil_message)
    size = f"{_mp(int(match.group(1)))}" if match else "too large"
    return (
        f"Image is {size}, more than the limit of {_mp(max_pixels)}; it could be a decompression bomb. "
        "Please use a smaller image."
    )


def _decode_first_frame(img: Image.Image, max_side: int) -> Image.Image:
    """Load frame 0 of an opened image into memory (reduced scale for big JPEGs), EXIF-rotated."""
    try:
        img.seek(0)  # animated GIF/WebP/TIFF: the first frame is the one a viewer shows first
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; draft keeps the result >= max_side.
        img.draft(None, (max_side, max_side))
        img.load()
        # Rotating here, while TIFF tags are still attached, also detaches the pixels from the file
        # (exif_transpose always returns a new image) so the file can be closed.
        return _exif_transpose(img)
    except OSError as err:
        if "truncated" in str(err):
            raise ImageError(
                "The image file is truncated: it ends before all pixels were read (an incomplete download or copy?)."
            ) from err
        raise ImageError(f"The image file is corrupt and cannot be decoded ({err}).") from err
    except (SyntaxError, ValueError, EOFError, IndexError) as err:
        # Pillow's plugins signal malformed headers and streams with these.
        raise ImageError(f"The image file is corrupt and cannot be decoded ({err}).") from err


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (phone photos are stored sideways)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block should not make an otherwise good photo unusable
        return img.copy()


def _not_an_image_message(data: io.BytesIO | Path) -> str:
    """Name what the unreadable file probably is, from its first bytes."""
    if isinstance(data, Path):
        with open(data, "rb") as f:
            head = f.read(512)
    else:
        head = data.getvalue()[:512]
    # Order matters: specific non-image signatures, then text (so a note starting "BM..." is not
    # taken for a BMP), then the weaker signatures of the supported formats.
    what = next((desc for magic, off, desc in _KNOWN_SIGNATURES if head[off : off + len(magic)] == magic), None)
    stripped = head.lstrip().lower()
    if what:
        pass
    elif stripped.startswith((b"<svg", b"<?xml")) and b"<svg" in head.lower():
        what = "it is an SVG drawing; vector images are not supported"
    elif stripped.startswith((b"<!doctype html", b"<html")):
        what = "it looks like a web page (HTML)"
    elif _looks_like_text(head):
        what = "it looks like a text file"
    else:
        for magic, offset, fmt in _SUPPORTED_SIGNATURES:
            if head[offset : offset + len(magic)] == magic:
                # a cut inside the first chunks and garbled bytes both end here: name both
                return f"The file looks like a {fmt} image but is truncated or corrupt: its header cannot be read."
        what = "the format is not recognised"
    return f"Not an image file ({what}). Supported formats: {_SUPPORTED_TEXT}."


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the 512-byte boundary; judge the rest.
        text = head[:-4].decode("utf-8", errors="replace")
        if "\ufffd" in text:
            return False
    return all(c.isprintable() or c in "\r\n\t\f" for c in text)


# ----------------------------------------------------------------------------------------------
# Colour modes
# ----------------------------------------------------------------------------------------------


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited onto ``background``."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(img), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except ValueError as err:
        raise ImageError(f"Unsupported colour mode {mode!r}.") from err


def _rescale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map high-bit-depth greyscale to 0..255 without clipping away detail.

    ``I;16`` files span 0..65535 by definition, so they are scaled by 255/65535. ``I`` (32-bit int)
    and ``F`` (float) carry no range, so the smallest standard range that holds the data is used:
    [0, 1], [0, 255], [0, 65535]; failing those (negative or huge values) the data's own min..max.
    This keeps a dark image dark and a constant image constant, where a blind min-max would not.
    """
    a = arr.astype(np.float32)  # exact for 16-bit values, half the memory of float64
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo_data, hi_data = float(finite.min()), float(finite.max())
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif lo_data >= 0 and hi_data <= 1 and mode == "F":
        lo, hi = 0.0, 1.0
    elif lo_data >= 0 and hi_data <= 255:
        lo, hi = 0.0, 255.0
    elif lo_data >= 0 and hi_data <= 65535:
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = lo_data, max(hi_data, lo_data + 1e-12)
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Preprocessing (timm eval transform)
# ----------------------------------------------------------------------------------------------


@dataclass
class PreprocessSteps:
    """Every stage of :func:`preprocess`, for showing the preprocessing to a person.

    ``stats`` and ``description`` are computed when first read: a batch job that only wants the
    tensor does not pay for them (the per-channel std alone costs about as much as the decode).
    """

    original: Image.Image
    resized: Image.Image
    cropped: Image.Image
    tensor: torch.Tensor  # (1, 3, S, S), normalised
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in ``resized`` pixels
    crop_box_original: tuple[float, float, float, float]  # the same region in ``original`` pixels
    mean: Triple
    std: Triple
    crop_pct: float
    interpolation: str

    @property
    def resize_factor(self) -> float:
        """Resized / original shorter side: above 1 the image was upsampled (a 1x1 image: 248.0 at
        224 px with crop_pct 0.9), below 1 shrunk."""
        return min(self.resized.size) / min(self.original.size)

    @property
    def upsampled(self) -> bool:
        """Whether the resize enlarged the image, i.e. the model sees interpolated pixels."""
        return self.resize_factor > 1

    @functools.cached_property
    def stats(self) -> dict[str, list[float]]:
        """Per-channel min / max / mean / std of the normalised tensor."""
        flat = self.tensor[0].flatten(1)
        return {
            "min": flat.min(1).values.tolist(),
            "max": flat.max(1).values.tolist(),
            "mean": flat.mean(1).tolist(),
            "std": flat.std(1, unbiased=False).tolist(),
        }

    @functools.cached_property
    def description(self) -> list[str]:
        """One human-readable line per step."""
        (w0, h0), (w1, h1), size = self.original.size, self.resized.size, self.cropped.size[0]
        left, top = self.crop_box[:2]
        stats = self.stats
        fmt = lambda v: "(" + ", ".join(f"{t:.3f}" for t in v) + ")"
        factor = self.resize_factor
        how = "same size" if factor == 1 else f"{'upsampled' if factor > 1 else 'shrunk'} {factor:.3g}x"
        return [
            f"Original: {w0}x{h0} px.",
            f"Resized ({self.interpolation}) so the shorter side is {min(w1, h1)} = "
            f"floor({size} / {self.crop_pct}): {w1}x{h1} px ({how}).",
            f"Centre-cropped {size}x{size} px at (left={left}, top={top}); "
            f"the crop keeps {size * size / (w1 * h1):.0%} of the resized image.",
            f"Scaled to [0, 1] and normalised per channel (R, G, B) with mean {fmt(self.mean)} and std "
            f"{fmt(self.std)}: values now range {min(stats['min']):.2f} to {max(stats['max']):.2f}, "
            f"channel means {fmt(stats['mean'])}, stds {fmt(stats['std'])}.",
        ]


def resize_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(w, h) after resizing so the shorter side is ``shorter``, as torchvision's ``Resize(int)``."""
    w, h = size
    if w <= h:
        return shorter, int(shorter * h / w)
    return int(shorter * w / h), shorter


def center_crop_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centred ``crop`` square, rounded as torchvision's CenterCrop."""
    w, h = size
    left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    return left, top, left + crop, top + crop


def preprocess_steps(
    img: Image.Image,
    mean: Triple,
    std: Triple,
    img_size: int = 224,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
) -> PreprocessSteps:
    """Run timm's eval transform on ``img`` and keep each intermediate image.

    Resize the shorter side to ``floor(img_size / crop_pct)`` (aspect kept) with PIL's
    ``interpolation``, centre crop ``img_size``, scale to [0, 1], then ``(x - mean) / std``.
    Any image from 1x1 pixel up is resized (``resize_factor`` of the result says by how much);
    aspect ratios beyond ``MAX_ASPECT`` raise :class:`ImageError`.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    img = to_rgb(img)
    _check_aspect(img.size)
    scale_size = math.floor(img_size / crop_pct)
    new_size = resize_size(img.size, scale_size)
    resized = img.resize(new_size, _INTERPOLATIONS[interpolation])
    box = center_crop_box(new_size, img_size)
    cropped = resized.crop(box)

    x = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = ((x - m) / s).unsqueeze(0).contiguous()

    fx, fy = img.size[0] / new_size[0], img.size[1] / new_size[1]
    box_orig = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    return PreprocessSteps(img, resized, cropped, x, box, box_orig, mean, std, crop_pct, interpolation)


def preprocess(
    img: Image.Image,
    mean: Triple,
    std: Triple,
    img_size: int = 224,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Model input ``(1, 3, img_size, img_size)`` from ``img``, as timm's eval transform makes it."""
    return preprocess_steps(img, mean, std, img_size, crop_pct, interpolation).tensor


def denormalize(
    tensor: torch.Tensor,
    mean: Triple,
    std: Triple,
) -> torch.Tensor:
    """Undo the normalisation of a ``(3, S, S)`` or ``(1, 3, S, S)`` tensor: ``(3, S, S)`` in [0, 1]."""
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got shape {tuple(tensor.shape)}")
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected shape (3, S, S) or (1, 3, S, S), got {tuple(tensor.shape)}")
    t = tensor.detach().float().cpu()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t * s + m).clamp(0.0, 1.0)


def tensor_to_pil(tensor: torch.Tensor, mean: Triple, std: Triple) -> Image.Image:
    """The normalised model input as a viewable RGB image."""
    arr = denormalize(tensor, mean, std).permute(1, 2, 0).numpy()
    return Image.fromarray(np.rint(arr * 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# Bundled data
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    lines = (ASSETS / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (0 = tench, 1 = goldfish, …)."""
    return list(_class_names())


def sample_images() -> dict[str, Path]:
    """Bundled sample photographs, name (file stem) -> path; sources in ``assets/NOTICE.md``."""
    folder = ASSETS / "samples"
    return {p.stem: p for p in sorted(folder.glob("*.jpg"))}
