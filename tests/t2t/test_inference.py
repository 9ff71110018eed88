"""t2t.transform_for / load_images / predict: a photo to the model's answer with the model's own transform."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import t2t
from t2t.data.synthetic import LocalStructureDataset
from t2t.images import ImageError, open_image, preprocess


@pytest.fixture(scope="module")
def model():
    return t2t.create_model("t2t_vit_7", pretrained="embedded")


def photo(tmp_path: Path, name: str = "photo.jpg") -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / name
    Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_transform_is_the_models_own_settings(model):
    tf = t2t.transform_for(model)
    cfg = model.default_cfg
    assert (tf.mean, tf.std, tf.img_size, tf.crop_pct) == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["img_size"],
                                                           cfg["crop_pct"])
    assert t2t.transform_for(model, crop_pct=0.5).crop_pct == 0.5
    with torch.device("meta"):
        deit = t2t.create_model("deit_small_patch16_224")
        cifar = t2t.create_model("t2t_vit_14_cifar10")
    assert t2t.transform_for(deit).crop_pct == 0.875
    assert t2t.transform_for(cifar).interpolation == "bilinear"
    assert t2t.transform_for(deit) != t2t.transform_for(model)
    assert hash(t2t.transform_for(model)) == hash(t2t.transform_for(model))


def test_transform_refuses_what_is_not_a_t2t_lens_model():
    with pytest.raises(TypeError, match="t2t.create_model"):
        t2t.transform_for(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="crop_pct"):
        t2t.transform_for(t2t.create_model("t2t_vit_7", pretrained="embedded"), crop_pct=1.5)


def test_load_images_from_every_kind_of_source(model, tmp_path):
    path = photo(tmp_path)
    img = open_image(path)
    expected = preprocess(img, *t2t.transform_for(model).as_tuple())
    batch = t2t.load_images([path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), img], model)
    assert batch.shape == (5, 3, 224, 224) and batch.dtype == torch.float32
    for x in batch:
        torch.testing.assert_close(x[None], expected, rtol=0, atol=0)
    torch.testing.assert_close(t2t.load_images(path, model), expected)  # one source, not in a list


def test_load_images_refuses_urls_and_bad_files_naming_them(model, tmp_path):
    with pytest.raises(ImageError, match="never downloads"):
        t2t.load_images(["https://example.com/cat.jpg"], model)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image at all")
    with pytest.raises(ImageError, match=r"image 1 \(.*notes.jpg\).*text file"):
        t2t.load_images([photo(tmp_path), bad], model)
    with pytest.raises(ImageError, match="image 0 .*File not found"):
        t2t.load_images([tmp_path / "missing.png"], model)
    with pytest.raises(ValueError, match="no images"):
        t2t.load_images([], model)


def test_predict_names_the_models_classes_with_softmax_probabilities(model):
    ds = LocalStructureDataset("test", size=6)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    top = t2t.predict(model, x, k=3)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    assert len(top) == len(x)
    for row, p in zip(top, probs):
        assert [n for n, _ in row] == [model.class_names[c] for c in p.topk(3).indices.tolist()]
        assert [q for _, q in row] == pytest.approx(p.topk(3).values.tolist(), abs=1e-6)
    assert {name for row in top for name, _ in row} <= set(model.class_names)
    assert len(t2t.predict(model, x[:1], k=50)[0]) == model.num_classes  # k is capped by the classes


def test_predict_on_random_weights_names_classes_by_index():
    model = t2t.create_model("t2t_vit_7", img_size=64, num_classes=4)
    out = t2t.predict(model, torch.zeros(1, 3, 64, 64), k=2)
    assert all(name.startswith("class ") for name, _ in out[0])
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        t2t.predict(model, torch.zeros(3, 64, 64))


def test_quickstart_from_the_analysis_package(model, tmp_path):
    from analysis import explain

    assert callable(explain)
    import analysis.explain  # a later import of the module must not rebind the package's name
    from analysis import explain as again
    assert again is explain and analysis.explain is explain
    x = t2t.load_images([photo(tmp_path)], model)
    maps = explain("rollout", model, x)
    assert maps.shape == (1, 14, 14)


def test_analysis_entry_points_are_functions():
    import analysis

    for name in analysis.ENTRY_POINTS:
        assert callable(getattr(analysis, name)) or isinstance(getattr(analysis, name), dict), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        analysis.nope  # noqa: B018
