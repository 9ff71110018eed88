"""The synthetic local-structure dataset: deterministic, balanced, valid, and drawing what it says."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from t2t.data import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, SPLIT_SEEDS, LocalStructureDataset, render
from t2t.data import synthetic as syn

S = 64  # small images keep the suite fast; the drawing code is resolution independent


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(a.tobytes()).hexdigest()


def test_at_least_ten_distinct_classes():
    assert len(CLASS_NAMES) >= 10
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert len(syn._CLASSES) == len(CLASS_NAMES)


def test_same_seed_and_index_give_identical_pixels():
    a = LocalStructureDataset("train", size=20, img_size=S, seed=3)
    b = LocalStructureDataset("train", size=20, img_size=S, seed=3)
    for i in (0, 7, 19):
        assert np.array_equal(a.array(i), b.array(i))
        assert torch.equal(a[i][0], b[i][0])
    # rendering does not depend on what was rendered before (no hidden state)
    assert np.array_equal(a.array(7), LocalStructureDataset("train", size=20, img_size=S, seed=3).array(7))


def test_different_seeds_give_different_images():
    a = LocalStructureDataset("train", size=10, img_size=S, seed=0)
    b = LocalStructureDataset("train", size=10, img_size=S, seed=1)
    assert all(not np.array_equal(a.array(i), b.array(i)) for i in range(10))


def test_splits_never_share_an_image():
    assert sorted(SPLIT_SEEDS.values()) == [0, 1, 2]
    seen: dict[str, str] = {}
    for split in SPLIT_SEEDS:
        ds = LocalStructureDataset(split, size=60, img_size=S)
        for i in range(len(ds)):
            h = digest(ds.array(i))
            assert h not in seen, f"{split}[{i}] repeats {seen.get(h)}"
            seen[h] = f"{split}[{i}]"


def test_every_class_is_generated_and_labelled_in_turn():
    n = 3 * len(CLASS_NAMES)
    ds = LocalStructureDataset("val", size=n, img_size=S)
    labels = [ds[i][1] for i in range(n)]
    assert labels == [i % len(CLASS_NAMES) for i in range(n)]
    assert np.bincount(labels).tolist() == [3] * len(CLASS_NAMES)


def test_images_are_valid():
    ds = LocalStructureDataset("test", size=len(CLASS_NAMES), img_size=S)
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, S, S) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert (x >= lo.view(3, 1, 1) - 1e-5).all() and (x <= hi.view(3, 1, 1) + 1e-5).all()
        assert isinstance(y, int) and 0 <= y < len(CLASS_NAMES)
        a = ds.array(i)
        assert a.shape == (S, S, 3) and a.dtype == np.uint8 and a.std() > 5  # not blank
        img = ds.image(i)
        assert isinstance(img, Image.Image) and img.size == (S, S) and img.mode == "RGB"
        # the uint8 path and the normalised path are the same image
        raw = LocalStructureDataset("test", size=len(CLASS_NAMES), img_size=S, as_uint8=True)[i][0]
        assert raw.dtype == torch.uint8 and torch.allclose(syn.normalize(raw), x)
    with pytest.raises(IndexError):
        ds.array(len(ds))


def test_render_shape_and_default_size():
    a = render(0, np.random.default_rng(0))
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8


def test_two_samples_of_a_class_differ():
    ds = LocalStructureDataset("train", size=4 * len(CLASS_NAMES), img_size=S)
    for c in range(len(CLASS_NAMES)):
        assert not np.array_equal(ds.array(c), ds.array(c + len(CLASS_NAMES)))


def test_mean_colour_does_not_reveal_the_class():
    # nearest-class-mean on the image's mean RGB must stay near chance (10%)
    per = 30
    ds = LocalStructureDataset("train", size=per * len(CLASS_NAMES), img_size=S)
    feats = np.stack([ds.array(i).reshape(-1, 3).mean(0) for i in range(len(ds))])
    labels = np.arange(len(ds)) % len(CLASS_NAMES)
    train, test = np.arange(len(ds)) < len(ds) // 2, np.arange(len(ds)) >= len(ds) // 2
    centres = np.stack([feats[train & (labels == c)].mean(0) for c in range(len(CLASS_NAMES))])
    pred = np.linalg.norm(feats[test][:, None] - centres[None], axis=-1).argmin(1)
    assert (pred == labels[test]).mean() < 0.3


# ----------------------------------------------------------------------------- the drawing of each class
# Coverage maps of the class functions on an upright grid (no rotation), radius R = 40 px.

R = 40.0


def mask(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fn = syn._CLASSES[CLASS_NAMES.index(name)]
    y0, y1, x0, x1, u, v = syn._frame(120, 60.0, 60.0, 1.1 * R, 0.0)
    return fn(np.random.default_rng(seed), u.copy(), v.copy(), R, 1.0), u, v


def at(m, u, v, x, y):
    """Coverage at local point (x, y)."""
    return m[np.unravel_index(np.argmin((u - x) ** 2 + (v - y) ** 2), m.shape)]


@pytest.mark.parametrize("seed", range(4))
def test_class_drawings_have_their_geometry(seed):
    m, u, v = mask("ring", seed)
    assert at(m, u, v, 0, 0) == 0 and at(m, u, v, R, 0) == 1  # empty centre, outline at R

    m, u, v = mask("concentric rings", seed)
    r = np.sqrt(u * u + v * v)
    hit = np.unique(np.round(r[m > 0.9] / 4))  # radii (in 4 px bins) that are drawn
    assert len(hit) >= 3 and at(m, u, v, 0, 0) == 0

    m, u, v = mask("triangle", seed)
    assert at(m, u, v, 0, 0) == 1 and 0.15 < m.mean() < 0.5  # filled

    m, u, v = mask("plus", seed)
    assert at(m, u, v, 0, 0) == 1 and at(m, u, v, 0.6 * R, 0) == 1 and at(m, u, v, 0, 0.6 * R) == 1
    assert at(m, u, v, 0.5 * R, 0.5 * R) == 0  # no fill between the arms

    m, u, v = mask("corner", seed)
    ys, xs = np.nonzero(m > 0.5)
    corners = [at(m, u, v, u[ys, xs].min() + 1, v[ys, xs].min() + 1),  # the L's joint
               at(m, u, v, u[ys, xs].max() - 1, v[ys, xs].max() - 1)]  # the empty opposite corner
    assert corners == [1, 0]

    for name in ("stripes", "checkerboard", "dot grid"):
        m, u, v = mask(name, seed)
        inside = m[(np.abs(u) < R / 2) & (np.abs(v) < R / 2)]
        assert 0.15 < inside.mean() < 0.85  # on and off inside the patch: a texture, not a blob
        assert np.ptp(u[m > 0.5]) > R and np.ptp(v[m > 0.5]) > R  # and the patch is large

    for name in ("zigzag", "wave"):
        m, u, v = mask(name, seed)
        cols = (m > 0.5).any(0)
        assert cols.sum() > 1.6 * R  # a stroke spanning the width ...
        assert (m > 0.5).mean() < 0.2  # ... that is thin


def test_zigzag_turns_are_sharp_and_wave_turns_smooth():
    # The centre line's slope: a zigzag has two values (up and down), a wave a continuum of values.
    def slopes(name):
        m, u, v = mask(name, seed=1)
        cols = np.nonzero((m > 0.5).any(0))[0][5:-5]
        centre = np.array([np.average(v[:, c], weights=m[:, c]) for c in cols])
        return np.abs(np.diff(centre))

    z, w = slopes("zigzag"), slopes("wave")
    # fraction of columns whose slope is near the max slope: high for a zigzag, low for a wave
    assert (z > 0.7 * z.max()).mean() > 0.6
    assert (w > 0.7 * w.max()).mean() < 0.6


def test_gallery_is_small_png(tmp_path):
    from t2t.data.gallery import make_gallery

    path = make_gallery(tmp_path / "g.png", per_class=1, img_size=S)
    assert path.stat().st_size < 300_000
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] > img.size[1]
