"""A CIFAR release through the notebooks' loader and the batch report: its classes, dataset and transform.

The release is written here in transfer_learning.py's format and served from localhost under its
real file name (registry entry cut to one block, as in tests/t2t/test_releases.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import t2t
from analysis import notebook, report
from t2t.images import open_image, preprocess, sample_images
from t2t.registry import dataset_class_names
from tests.t2t.test_releases import _served_file, _small

NAME = "t2t_vit_14_cifar100"


@pytest.fixture
def release(tmp_path, http_server, monkeypatch):
    monkeypatch.setenv("T2T_LENS_CACHE", str(tmp_path / "cache"))
    _small(monkeypatch, NAME, "pending")
    torch.manual_seed(5)
    source = t2t.create_model(NAME).eval()
    sd = {f"module.{k}": v for k, v in source.state_dict().items()}
    _small(monkeypatch, NAME, _served_file(tmp_path, http_server, NAME, {"net": sd, "acc": 88.4, "epoch": 60}))
    return source


def test_notebook_loader_takes_a_cifar_release(release):
    models = notebook.load_models({"T2T_LENS_MODEL_T2T": NAME, "T2T_LENS_WEIGHTS_T2T": "released",
                                   "T2T_LENS_WEIGHTS_VIT": "random"})
    model = models["T2T-ViT"]
    assert notebook.is_trained(model) and model.default_cfg["dataset"] == "CIFAR-100"
    assert notebook.class_name(model, 0) == "apple" and notebook.class_name(model, 99) == "worm"
    # its photos go through transfer_learning.py's transform: bilinear resize, CIFAR mean / std
    photos, _ = notebook.photo_batch(model)
    first = next(iter(sample_images().values()))
    want = preprocess(open_image(first), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 224, 1.0, "bilinear")
    torch.testing.assert_close(photos[:1], want)


def test_report_runs_a_cifar_release(release, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    report.main(["--models", NAME, "--weights", "released", "--images", str(images), "--out", str(out),
                 "--only", "rollout", "--html", "link"])
    data = json.loads((out / "results.json").read_text())
    (model,) = data["models"]
    assert model["dataset"] == "CIFAR-100" and model["state_dict_key"] == "net" and model["qk_scale"] == 0.125
    assert model["interpolation"] == "bilinear" and model["crop_pct"] == 1.0 and model["num_classes"] == 100
    mean, std = np.array((0.4914, 0.4822, 0.4465), np.float32), np.array((0.2023, 0.1994, 0.2010), np.float32)

    def cifar_input(i: int) -> torch.Tensor:  # transfer_learning.py: Resize(224) bilinear, ToTensor, Normalize
        arr = np.asarray(Image.open(images / f"{i}.png").resize((224, 224), Image.Resampling.BILINEAR), np.float32)
        return torch.from_numpy((arr / 255 - mean) / std).permute(2, 0, 1)

    x = torch.stack([cifar_input(i) for i in range(2)])
    with torch.no_grad():
        pred = release(x).argmax(-1).tolist()
    names = [dataset_class_names("CIFAR-100")[p] for p in pred]
    assert [r["pred_class"] for r in sorted(data["results"], key=lambda r: r["image"])] == names
    assert "CIFAR-100" in (out / "report.html").read_text()
