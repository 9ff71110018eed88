import matplotlib
import pytest
import torch
from matplotlib.font_manager import FontProperties

import t2t
from analysis import notebook
from t2t.data import CLASS_NAMES, LocalStructureDataset
from t2t.images import open_image, sample_images

TEXT_SIZES = ["font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize", "ytick.labelsize",
              "legend.fontsize", "legend.title_fontsize", "figure.titlesize", "figure.labelsize"]


def test_style_puts_every_text_at_10_pt_or_more_at_96_dpi():
    with matplotlib.rc_context():
        notebook.use_style()
        assert matplotlib.rcParams["figure.dpi"] == 96  # one matplotlib point = one displayed point
        for key in TEXT_SIZES:  # "medium", "large", ... scale font.size
            value = matplotlib.rcParams[key]
            points = FontProperties(size=value).get_size_in_points()
            assert points >= 10, f"{key} = {value!r} is {points} pt"


def test_load_models_reads_the_environment():
    models = notebook.load_models({"T2T_LENS_WEIGHTS": "random", "T2T_LENS_MODEL_VIT": "vit_tiny_patch16_224"})
    assert list(models) == ["T2T-ViT", "ViT"]
    assert models["T2T-ViT"].default_cfg["name"] == "t2t_vit_7"
    assert models["ViT"].default_cfg["name"] == "vit_tiny_patch16_224"
    assert not any(notebook.is_trained(m) for m in models.values())
    assert all(not m.training for m in models.values())
    text = notebook.describe(models)
    assert text.count("weights: random") == 2 and "vit_tiny_patch16_224" in text


@pytest.mark.skipif(not {"t2t_vit_7", "deit_tiny_patch16_224"} <= set(t2t.list_embedded()), reason="no embedded")
def test_load_models_defaults_to_the_embedded_pair_and_per_model_overrides_win():
    models = notebook.load_models({"T2T_LENS_WEIGHTS": "random", "T2T_LENS_WEIGHTS_T2T": "embedded"})
    assert notebook.is_trained(models["T2T-ViT"]) and not notebook.is_trained(models["ViT"])
    models = notebook.load_models({})
    assert [m.default_cfg["name"] for m in models.values()] == ["t2t_vit_7", "deit_tiny_patch16_224"]
    assert all(notebook.is_trained(m) for m in models.values())
    assert "synthetic test accuracy" in notebook.describe(models)


def test_batches_and_denormalize():
    model = t2t.create_model("t2t_vit_7", num_classes=len(CLASS_NAMES))
    cfg = model.default_cfg
    x, y = notebook.synthetic_batch(model, 3, start=2)
    assert x.shape == (3, 3, cfg["img_size"], cfg["img_size"]) and y.tolist() == [2, 3, 4]
    raw = torch.from_numpy(LocalStructureDataset("test", size=5, img_size=cfg["img_size"]).array_chw(3)) / 255
    shown = torch.from_numpy(notebook.denormalize(x[1], model))               # (S, S, 3) in [0, 1]
    assert torch.allclose(shown, raw.permute(1, 2, 0), atol=1e-5)            # undoes exactly the normalisation

    photos, names = notebook.photo_batch(model)
    assert names == list(sample_images()) and len(photos) == len(names)
    assert photos.shape[1:] == (3, cfg["img_size"], cfg["img_size"])
    assert open_image(sample_images()[names[0]]).mode == "RGB"


def test_class_name():
    model = t2t.create_model("t2t_vit_7", num_classes=3)
    model.class_names = None
    assert notebook.class_name(model, 2) == "2"
    model.class_names = ["a", "b", "c"]
    assert notebook.class_name(model, 1) == "b"
