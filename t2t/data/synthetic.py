"""Procedural image-classification data whose classes are defined by *local* structure.

Ten classes of edges, lines, corners and textures -- what T2T-ViT's overlapping soft split
is built to model -- drawn at a random position, size, rotation and colour on a random
gradient background with shared clutter (soft blobs, thin strokes) and pixel noise.
Foreground and background colours are drawn independently of the class, so neither the
mean colour nor the position tells the class: only the local geometry does.

Every image is a pure function of (split, seed, index): `np.random.default_rng((split_seed,
seed, index))`. The split seeds are fixed, ``SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}``,
and sit in a different slot of the seed from `seed` and `index`, so the three splits never
share an image whatever their sizes. Labels cycle through the classes (``label = index %
10``), so every split is balanced.

Rendering is vectorised numpy, planar (3, S, S), on a crop around each object (no per-pixel
Python): 0.75-1.1 ms per 224 x 224 image on one core of the dev machine, 1.9 ms on the GPU box's
CPU; a DataLoader with 16 workers delivers ~9,000 images/s to an H100.
`python benchmarks/bench_dataset.py` measures both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

CLASS_NAMES: tuple[str, ...] = (
    "stripes",           # parallel straight lines filling a patch
    "checkerboard",      # two sets of perpendicular edges, alternating fill
    "dot grid",          # lattice of small discs
    "ring",              # one circle (or ellipse) outline
    "concentric rings",  # 3-5 nested outlines around one centre
    "triangle",          # filled triangle: three straight edges, three corners
    "plus",              # two crossing bars: an X junction
    "corner",            # L shape: a single right-angle junction
    "zigzag",            # stroke with sharp turns
    "wave",              # stroke with smooth turns (same amplitude/period range as zigzag)
)
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- drawing helpers

def _cover(d: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) -> coverage in [0, 1], ~1 px anti-aliased edge."""
    return np.clip(0.5 - d, 0.0, 1.0, out=d)


def _frame(img_size: int, cx: float, cy: float, radius: float, angle: float):
    """Crop bounds around (cx, cy) and the rotated local coordinates (u, v) of its pixel centres.

    Returns (y0, y1, x0, x1, u, v) with u, v of shape (y1 - y0, x1 - x0) in pixels.
    Only the crop is computed: most objects cover a fraction of the image.
    """
    cx, cy, r = float(cx), float(cy), radius + 2.0
    y0, y1 = max(0, int(cy - r)), min(img_size, int(math.ceil(cy + r)))
    x0, x1 = max(0, int(cx - r)), min(img_size, int(math.ceil(cx + r)))
    ys = (np.arange(y0, y1, dtype=np.float32) + (0.5 - cy))[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) + (0.5 - cx))[None, :]
    c, s = math.cos(angle), math.sin(angle)
    u = xs * c + ys * s
    v = ys * c - xs * s
    return y0, y1, x0, x1, u, v


def _paint(img: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray, colour: np.ndarray,
           alpha: float = 1.0) -> None:
    """Alpha-composite `colour` (3,) over img[:, y0:y1, x0:x1] (3, h, w) with coverage `mask` (h, w).

    Images are planar (3, S, S) while drawing: broadcasting over a trailing axis of 3 is ~30x slower.
    """
    y0, y1, x0, x1 = box
    crop = img[:, y0:y1, x0:x1]
    a = mask if alpha == 1.0 else mask * np.float32(alpha)
    crop += a[None] * (colour[:, None, None] - crop)


def _random_colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
    """Uniform RGB in [0, 1]; if `away_from` is given, at least 0.35 away (Euclidean) so it stays visible."""
    for _ in range(20):
        c = rng.random(3, dtype=np.float32)
        if away_from is None or float(np.linalg.norm(c - away_from)) > 0.35:
            return c
    return (away_from < 0.5).astype(np.float32)  # rare fallback: the farthest RGB corner is >= 0.87 away


# ----------------------------------------------------------------------------- the ten classes
# Each takes local coordinates (u, v) in pixels around the object's centre, its radius R and a
# pixel scale k (= img_size / 224), and returns a signed distance / coverage map of u's shape.

def _region(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, R: float) -> np.ndarray:
    """Coverage of the patch a texture fills: a disc or a square, at random for each texture class."""
    if rng.random() < 0.5:
        return _cover(np.sqrt(u * u + v * v) - R)
    side = R * 0.75  # corners at 1.06 R stay inside the crop
    return _cover(np.maximum(np.abs(u), np.abs(v)) - side)


def _stripes(rng, u, v, R, k):
    p = rng.uniform(7, 15) * k
    w = p * rng.uniform(0.3, 0.5)
    d = np.abs(np.mod(u, p) - p / 2) - w / 2
    return _cover(d) * _region(rng, u, v, R)


def _checkerboard(rng, u, v, R, k):
    p = rng.uniform(7, 15) * k
    # anti-aliased square wave in [-0.5, 0.5] along each axis; their product alternates cell by cell
    su = np.clip(np.abs(np.mod(u, 2 * p) - p) - p / 2, -0.5, 0.5)
    sv = np.clip(np.abs(np.mod(v, 2 * p) - p) - p / 2, -0.5, 0.5)
    return (0.5 + 2.0 * su * sv) * _region(rng, u, v, R)


def _dots(rng, u, v, R, k):
    p = rng.uniform(9, 17) * k
    rad = p * rng.uniform(0.22, 0.33)
    du = np.mod(u, p) - p / 2
    dv = np.mod(v, p) - p / 2
    return _cover(np.sqrt(du * du + dv * dv) - rad) * _region(rng, u, v, R)


def _ring(rng, u, v, R, k):
    w = rng.uniform(2.5, 6) * k
    aspect = rng.uniform(0.7, 1.0)
    r = np.sqrt(u * u + (v / aspect) ** 2)
    return _cover(np.abs(r - R) - w / 2)


def _concentric(rng, u, v, R, k):
    n = int(rng.integers(3, 6))
    p = R / n
    w = min(rng.uniform(2.5, 5) * k, p * 0.5)
    r = np.sqrt(u * u + v * v)
    d = np.abs(r - p * np.maximum(np.round(r / p), 1.0)) - w / 2  # nearest ring, innermost at r = p
    return _cover(np.maximum(d, r - (R + w)))


def _triangle(rng, u, v, R, k):
    # three vertices on the circle of radius R, jittered so the triangle is not always equilateral
    ang = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    px, py = R * np.cos(ang), R * np.sin(ang)
    d = None
    for i in range(3):
        ax, ay, bx, by = float(px[i]), float(py[i]), float(px[(i + 1) % 3]), float(py[(i + 1) % 3])
        nx, ny = by - ay, ax - bx  # outward normal for counter-clockwise vertices
        norm = math.hypot(nx, ny)
        di = ((u - ax) * (nx / norm) + (v - ay) * (ny / norm))
        d = di if d is None else np.maximum(d, di)
    return _cover(d)


def _bar(u, v, u0, u1, h):
    """Signed distance to the box u in [u0, u1], |v| <= h."""
    return np.maximum(np.abs(u - (u0 + u1) / 2) - (u1 - u0) / 2, np.abs(v) - h)


def _plus(rng, u, v, R, k):
    h = rng.uniform(2.0, 5.0) * k
    a, b = R * rng.uniform(0.7, 1.0), R * rng.uniform(0.7, 1.0)
    return _cover(np.minimum(_bar(u, v, -a, a, h), _bar(v, u, -b, b, h)))


def _corner(rng, u, v, R, k):
    h = rng.uniform(2.0, 5.0) * k
    a, b = R * rng.uniform(1.0, 1.6), R * rng.uniform(1.0, 1.6)
    u, v = u + a / 2, v + b / 2  # put the L's bounding box, not its joint, at the centre
    return _cover(np.minimum(_bar(u, v, -h, a, h), _bar(v, u, -h, b, h)))


def _stroke_params(rng, R, k):
    h = rng.uniform(1.5, 3.5) * k
    amp = R * rng.uniform(0.15, 0.3) + 2 * h  # keep the turns visible against the stroke width
    period = R * rng.uniform(0.5, 0.9)
    return h, amp, period


def _zigzag(rng, u, v, R, k):
    h, amp, period = _stroke_params(rng, R, k)
    tri = 4 * np.abs(np.mod(u / period + rng.random(), 1.0) - 0.5) - 1  # triangle wave in [-1, 1]
    slope = 4 * amp / period
    d = np.abs(v - amp * tri) / math.sqrt(1 + slope * slope) - h  # distance to the nearer segment
    return _cover(np.maximum(d, np.abs(u) - R))


def _wave(rng, u, v, R, k):
    h, amp, period = _stroke_params(rng, R, k)
    phase = 2 * np.pi * (u / period + rng.random())
    slope = amp * 2 * np.pi / period * np.cos(phase)
    d = np.abs(v - amp * np.sin(phase)) / np.sqrt(1 + slope * slope) - h
    return _cover(np.maximum(d, np.abs(u) - R))


_CLASSES = (_stripes, _checkerboard, _dots, _ring, _concentric, _triangle, _plus, _corner, _zigzag, _wave)
assert len(_CLASSES) == NUM_CLASSES


# ----------------------------------------------------------------------------- one image

def _clutter_blob(img: np.ndarray, rng: np.random.Generator) -> None:
    """A soft translucent ellipse: a distractor shared by every class."""
    S = img.shape[1]
    R = rng.uniform(0.05, 0.15) * S
    cx, cy = rng.uniform(0, S, 2)
    y0, y1, x0, x1, u, v = _frame(S, cx, cy, R, rng.uniform(0, np.pi))
    aspect = rng.uniform(0.4, 1.0)
    m = np.clip(1.0 - np.sqrt(u * u + (v / aspect) ** 2) / R, 0.0, 1.0)  # soft edge, no crisp outline
    _paint(img, (y0, y1, x0, x1), np.minimum(m * 3.0, 1.0), rng.random(3, dtype=np.float32),
           alpha=rng.uniform(0.25, 0.6))


def _clutter_stroke(img: np.ndarray, rng: np.random.Generator) -> None:
    """A short thin straight segment: a distractor edge shared by every class."""
    S = img.shape[1]
    half = rng.uniform(0.06, 0.18) * S
    cx, cy = rng.uniform(0, S, 2)
    y0, y1, x0, x1, u, v = _frame(S, cx, cy, half, rng.uniform(0, np.pi))
    h = rng.uniform(0.5, 1.5) * S / 224
    m = _cover(_bar(u, v, -half, half, h))
    _paint(img, (y0, y1, x0, x1), m, rng.random(3, dtype=np.float32), alpha=rng.uniform(0.4, 0.9))


def render(class_index: int, rng: np.random.Generator, img_size: int = 224) -> np.ndarray:
    """Draw one image of class `class_index` with randomness from `rng`.

    Returns an (img_size, img_size, 3) uint8 array (a view of the planar `render_chw`).
    """
    return render_chw(class_index, rng, img_size).transpose(1, 2, 0)


#: replace_object(u, v, radius, k) -> mask of what is drawn where the object goes
ObjectMask = Callable[[np.ndarray, np.ndarray, float, float], np.ndarray]


def render_chw(class_index: int, rng: np.random.Generator, img_size: int = 224,
               replace_object: ObjectMask | None = None) -> np.ndarray:
    """As `render`, channels first: (3, img_size, img_size) uint8, C-contiguous.

    `replace_object(u, v, radius, k) -> mask` draws something else where the object goes (nothing, another
    class's shape: `analysis.mechanisms.render_variant`); the class's own shape is still drawn, into nothing,
    so that every later random number, hence the rest of the image, is the same."""
    S, k = img_size, img_size / 224
    # background: a linear gradient between two independent random colours, built as
    # row ramp + column ramp so that only one full-size operation is needed
    c0 = rng.random(3, dtype=np.float32)[:, None, None]
    dc = rng.uniform(-0.3, 0.3, 3).astype(np.float32)[:, None, None]
    phi = rng.uniform(0, 2 * np.pi)
    ramp = np.arange(S, dtype=np.float32) / S - 0.5
    img = (c0 + dc * (0.5 + 0.5 * math.cos(phi) * ramp)[None, None, :]) + \
        dc * (0.5 * math.sin(phi) * ramp)[None, :, None]  # (3, 1, S) + (3, S, 1) -> (3, S, S) float32

    for _ in range(int(rng.integers(1, 4))):
        _clutter_blob(img, rng)
    strokes_after = int(rng.integers(0, 3))  # some strokes go on top, partly occluding the object
    for _ in range(int(rng.integers(0, 3))):
        _clutter_stroke(img, rng)

    # the object: radius R, fully inside the image, at a random position and rotation
    R = rng.uniform(0.16, 0.32) * S
    margin = 1.1 * R + 2 * k
    cx, cy = rng.uniform(margin, S - margin, 2)
    y0, y1, x0, x1, u, v = _frame(S, cx, cy, 1.1 * R, rng.uniform(0, 2 * np.pi))
    if replace_object is None:
        mask = _CLASSES[class_index](rng, u, v, R, k).astype(np.float32, copy=False)
    else:
        _CLASSES[class_index](rng, u.copy(), v.copy(), R, k)
        mask = replace_object(u, v, R, k).astype(np.float32, copy=False)
    fg = _random_colour(rng, away_from=img[:, int(cy), int(cx)])
    _paint(img, (y0, y1, x0, x1), mask, fg)

    for _ in range(strokes_after):
        _clutter_stroke(img, rng)

    # pixel noise, from a shared bank at a random offset: drawing 150k normals per image would
    # cost as much as all the drawing above
    sigma = rng.uniform(0.0, 0.08) * 255.0
    bank = _noise_bank(S)
    off = int(rng.integers(0, bank.size - img.size))
    img *= 255.0
    img += sigma * bank[off:off + img.size].reshape(img.shape)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)  # truncation: a 0.5 bias under the noise does not matter


_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(img_size: int) -> np.ndarray:
    """Fixed standard-normal noise, 4 images long, made once per process from a fixed seed."""
    if img_size not in _NOISE_BANKS:
        rng = np.random.default_rng(12345)
        _NOISE_BANKS[img_size] = rng.standard_normal(4 * img_size * img_size * 3, dtype=np.float32)
    return _NOISE_BANKS[img_size]


# ----------------------------------------------------------------------------- dataset

class LocalStructureDataset(Dataset):
    """`size` images of the ten `CLASS_NAMES`, rendered on the fly; image i is fixed by (split, seed, i).

    `__getitem__` returns (image (3, S, S), label). The image is normalised float32 by default;
    with `as_uint8=True` it is the raw uint8 tensor, 4x less to move between processes, for
    a trainer that normalises on the device (see `normalize`).
    """

    def __init__(self, split: str = "train", size: int = 50_000, img_size: int = 224, seed: int = 0,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 as_uint8: bool = False):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
        self.split, self.size, self.img_size, self.seed = split, size, img_size, seed
        self.mean, self.std, self.as_uint8 = tuple(mean), tuple(std), as_uint8
        self.classes = CLASS_NAMES

    def __len__(self) -> int:
        return self.size

    def label(self, i: int) -> int:
        return i % NUM_CLASSES

    def array_chw(self, i: int) -> np.ndarray:
        """Image i as (3, S, S) uint8."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} images")
        rng = np.random.default_rng((SPLIT_SEEDS[self.split], self.seed, i))
        return render_chw(self.label(i), rng, self.img_size)

    def array(self, i: int) -> np.ndarray:
        """Image i as (S, S, 3) uint8, C-contiguous."""
        return np.ascontiguousarray(self.array_chw(i).transpose(1, 2, 0))

    def image(self, i: int) -> Image.Image:
        """Image i un-normalised, for display."""
        return Image.fromarray(self.array(i))

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = torch.from_numpy(self.array_chw(i))  # (3, S, S) uint8
        if not self.as_uint8:
            x = normalize(x, self.mean, self.std)
        return x, self.label(i)


def normalize(x: Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """uint8 images (..., 3, H, W) -> float32 (x / 255 - mean) / std, on x's device."""
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x.float().div_(255.0) - m) / s


def benchmark(n: int = 500, img_size: int = 224) -> float:
    """Mean milliseconds per `__getitem__` (render + normalise, one core, all classes in turn)."""
    ds = LocalStructureDataset("train", size=n, img_size=img_size)
    ds[0]  # warm the noise bank
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return (time.perf_counter() - t0) / n * 1e3

