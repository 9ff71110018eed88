"""Every released checkpoint as its reference evaluates it: the attention scale, the file's dictionary,
the head (CIFAR classes, TokenLabeling's auxiliary head) and the eval transform.

Checkpoints are written here and served from a local HTTP server under their real file names; the
architectures are cut to one block (`_small`) so that files stay a few MB: file format, head,
classes, transform and the logits' definition do not depend on the depth.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import t2t
from t2t.__main__ import main as cli
from t2t.__main__ import release_rows
from t2t.data.folder import eval_transform
from t2t.images import preprocess
from t2t.loading import describe_model, load_model
from t2t.registry import MODELS, dataset_class_names

ROOT = Path(__file__).resolve().parents[2]
CIFAR = ["t2t_vit_14_cifar10", "t2t_vit_14_cifar100", "t2t_vit_19_cifar10", "t2t_vit_19_cifar100"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2T_LENS_CACHE", str(tmp_path / "cache"))


def _small(monkeypatch, name: str, url: str) -> None:
    """Registry entry `name` cut to one block and pointed at `url` (everything else as released)."""
    cfg = MODELS[name]
    monkeypatch.setitem(MODELS, name, dataclasses.replace(cfg, url=url, args={**cfg.args, "depth": 1}))


def _served_file(tmp_path, http_server, name: str, obj) -> str:
    folder = tmp_path / "www"
    folder.mkdir(exist_ok=True)
    torch.save(obj, folder / MODELS[name].file)
    return f"{http_server(folder)}/{MODELS[name].file}"


def _images(n: int = 2, size: int = 224) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


# --- 1. the attention scale -----------------------------------------------------------------------


@pytest.mark.parametrize("name", t2t.list_models())
def test_every_model_uses_head_dim_scale(name):
    with torch.device("meta"):
        model = t2t.create_model(name)
    head_dim = model.embed_dim // model.blocks[0].attn.num_heads
    assert all(b.attn.scale == head_dim**-0.5 for b in model.blocks)
    assert model.default_cfg["qk_scale"] == head_dim**-0.5 and model.default_cfg["qk_scale_rule"] == "head_dim ** -0.5"


def test_the_scale_is_an_override_and_changes_the_output():
    torch.manual_seed(0)
    a = t2t.create_model("t2t_vit_7", img_size=64).eval()
    b = t2t.create_model("t2t_vit_7", img_size=64, qk_scale=256**-0.5).eval()
    b.load_state_dict(a.state_dict())
    assert b.blocks[-1].attn.scale == 1 / 16 and b.default_cfg["qk_scale"] == 1 / 16
    assert b.default_cfg["qk_scale_rule"] == "qk_scale=0.0625 given"
    with torch.no_grad():
        x = _images(1, 64)
        assert not torch.allclose(a(x), b(x), atol=1e-4)


def test_list_shows_the_scale_and_the_dataset(capsys):
    cli(["list"])
    out = capsys.readouterr().out
    assert "qk scale" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["t2t_vit_14"][-1] == "0.125" and rows["t2t_vit_14_resnext"][-1] == "0.2887"  # 384 / 32 heads
    assert rows["t2t_vit_14_cifar100"][-2] == "CIFAR-100" and rows["t2t_vit_24"][-2] == "ImageNet-1k"


# --- 2. the CIFAR releases ------------------------------------------------------------------------


def test_cifar_class_names_in_index_order():
    assert dataset_class_names("CIFAR-10") == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                               "horse", "ship", "truck")
    fine = dataset_class_names("CIFAR-100")
    # CIFAR-100's fine_label_names are in alphabetical order, underscores as in the dataset's meta file
    assert len(fine) == 100 and len(set(fine)) == 100 and list(fine) == sorted(fine)
    assert fine[:4] == ("apple", "aquarium_fish", "baby", "bear") and fine[-3:] == ("wolf", "woman", "worm")
    assert fine.index("maple_tree") == 47 and fine.index("sweet_pepper") == 83 and fine.index("cattle") == 19
    with pytest.raises(KeyError, match="unknown dataset"):
        dataset_class_names("CIFAR-1000")


def test_cifar_entries_are_the_official_files():
    files = {n: MODELS[n].file for n in CIFAR}
    assert files == {"t2t_vit_14_cifar10": "cifar10_t2t-vit_14_98.3.pth",
                     "t2t_vit_14_cifar100": "cirfar100_t2t-vit-14_88.4.pth",  # sic: the real URL
                     "t2t_vit_19_cifar10": "cifar10_t2t-vit_19_98.4.pth",
                     "t2t_vit_19_cifar100": "cifar100_t2t-vit-19_89.0.pth"}
    assert all(MODELS[n].url.startswith("https://github.com/yitu-opensource/T2T-ViT/releases/download/main/")
               for n in CIFAR)
    assert [MODELS[n].top1 for n in CIFAR] == [98.3, 88.4, 98.4, 89.0]


@pytest.mark.parametrize("name", ["t2t_vit_14_cifar10", "t2t_vit_19_cifar100"])
def test_cifar_release_loads_the_net_dictionary(name, tmp_path, http_server, monkeypatch, caplog):
    """transfer_learning.py saves {'net': DataParallel state dict, 'acc', 'epoch'}; the head has 10 / 100 classes."""
    _small(monkeypatch, name, "pending")
    classes = MODELS[name].num_classes
    torch.manual_seed(1)
    source = t2t.create_model(name).eval()
    assert source.num_classes == classes and source.head.weight.shape == (classes, source.embed_dim)
    url = _served_file(tmp_path, http_server, name, {"net": {f"module.{k}": v for k, v in source.state_dict().items()},
                                                     "acc": MODELS[name].top1, "epoch": 57})
    _small(monkeypatch, name, url)
    with caplog.at_level("INFO", logger="t2t.weights"):
        model = t2t.create_model(name, pretrained=True)
    assert "'net'" in caplog.text and "transfer_learning.py" in caplog.text and "epoch 57" in caplog.text
    cfg = model.default_cfg
    assert cfg["state_dict_key"] == "net" and cfg["checkpoint_meta"] == {"acc": MODELS[name].top1, "epoch": 57}
    assert cfg["dataset"] == MODELS[name].dataset and cfg["qk_scale"] == 0.125
    assert model.class_names == list(dataset_class_names(MODELS[name].dataset))
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    # the one loader (notebooks, report, validate) gives the same model, classes and dataset
    loaded = load_model(name, "released")
    assert loaded.class_names == model.class_names and describe_model(loaded)["dataset"] == MODELS[name].dataset
    described = describe_model(loaded)
    assert described["imagenet_top1"] is None and described["release_top1"] == MODELS[name].top1


def test_validate_a_cifar_release_with_class_name_folders(tmp_path, http_server, monkeypatch, capsys):
    """`python -m t2t validate --weights released` on 32 px images in folders named by CIFAR-10 class."""
    from t2t import validate

    name = "t2t_vit_14_cifar10"
    _small(monkeypatch, name, "pending")
    torch.manual_seed(2)
    source = t2t.create_model(name).eval()
    _small(monkeypatch, name, _served_file(tmp_path, http_server, name, {"net": source.state_dict(), "acc": 98.3,
                                                                       "epoch": 1}))
    data = tmp_path / "cifar"
    rng = np.random.default_rng(0)
    images = []
    for i, cls in enumerate(["cat", "ship", "truck"]):
        (data / cls).mkdir(parents=True)
        img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        img.save(data / cls / f"{i}.png")
        images.append(img)
    result = validate.main(["--model", name, "--data", str(data), "--workers", "0", "--batch-size", "2",
                            "--out", str(tmp_path / "result.json")])
    # the same images through the transform written out here: Resize(224) bilinear, CIFAR mean / std
    mean, std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.2023, 0.1994, 0.2010))
    x = torch.stack([(torch.from_numpy(np.asarray(im.resize((224, 224), Image.Resampling.BILINEAR), np.float32)
                                        / 255).permute(2, 0, 1) - mean[:, None, None]) / std[:, None, None]
                     for im in images])
    with torch.no_grad():
        pred = source(x).argmax(-1)
    labels = torch.tensor([3, 8, 9])
    assert result["top1"] == pytest.approx((pred == labels).float().mean().item())
    assert result["model"]["dataset"] == "CIFAR-10" and result["data"]["labels"] == "class name"
    assert "10,000 CIFAR-10 test images" in capsys.readouterr().err


# --- 3. T2T-ViT-24 with Token Labeling ------------------------------------------------------------

TL = "t2t_vit_24_token_labeling"


def _tl_source():
    """A (one-block) T2T-ViT-24 state dict with TokenLabeling's aux_head, and normed tokens of `_images()`."""
    torch.manual_seed(4)
    model = t2t.create_model(TL).eval()
    assert model.aux_head.weight.shape == (1000, 512)
    with torch.no_grad():
        model.aux_head.weight.mul_(20)  # make the auxiliary term large enough that using it or not shows
        tokens = model.forward_tokens(_images())
    return model.state_dict(), tokens


def test_token_labeling_file_with_aux_head_is_evaluated_as_tokenlabeling(tmp_path, http_server, monkeypatch, caplog):
    _small(monkeypatch, TL, "pending")
    sd, tokens = _tl_source()
    _small(monkeypatch, TL, _served_file(tmp_path, http_server, TL, {"state_dict_ema": sd, "epoch": 300}))
    # TokenLabeling (tlt/models/lvvit.py) at eval: head(x[:, 0]) + 0.5 * aux_head(x[:, 1:]).max(1)[0], x normed
    cls_logits = tokens[:, 0] @ sd["head.weight"].T + sd["head.bias"]
    aux_logits = tokens[:, 1:] @ sd["aux_head.weight"].T + sd["aux_head.bias"]  # (B, 196, 1000)
    want = cls_logits + 0.5 * aux_logits.max(dim=1).values
    assert (want - cls_logits).abs().max() > 1.0

    with caplog.at_level("INFO", logger="t2t.weights"):
        model = t2t.create_model(TL, pretrained=True)
    assert "auxiliary token head found" in caplog.text
    assert model.default_cfg["token_labeling"] == "cls+aux" and "TokenLabeling" in model.default_cfg["head"]
    with torch.no_grad():
        torch.testing.assert_close(model(_images()), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(t2t.trace(model, _images(), attention=False)["logits"], want, rtol=1e-4, atol=1e-4)

    caplog.clear()
    with caplog.at_level("INFO", logger="t2t.weights"):
        alone = t2t.create_model(TL, pretrained=True, aux_head=False)
    assert "left unused" in caplog.text and alone.aux_head is None
    assert alone.default_cfg["token_labeling"] == "cls"
    with torch.no_grad():
        torch.testing.assert_close(alone(_images()), cls_logits, rtol=1e-4, atol=1e-4)
    assert load_model(TL, "released", aux_head=False).default_cfg["token_labeling"] == "cls"


def test_token_labeling_file_without_aux_head_is_the_plain_t2t_vit_24(tmp_path, http_server, monkeypatch, caplog):
    _small(monkeypatch, TL, "pending")
    sd, tokens = _tl_source()
    plain = {k: v for k, v in sd.items() if not k.startswith("aux_head.")}
    _small(monkeypatch, TL, _served_file(tmp_path, http_server, TL, {"state_dict_ema": plain}))
    with caplog.at_level("INFO", logger="t2t.weights"):
        model = t2t.create_model(TL, pretrained=True)
    assert "no aux_head.* keys" in caplog.text and "plain T2T-ViT-24" in caplog.text
    assert model.default_cfg["token_labeling"] == "plain" and model.aux_head is None
    with torch.no_grad():
        torch.testing.assert_close(model(_images()), tokens[:, 0] @ sd["head.weight"].T + sd["head.bias"],
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(t2t.CheckpointError, match="no aux_head"):
        t2t.create_model(TL, pretrained=True, aux_head=True)


def test_aux_head_option_is_for_token_labeling_models_only():
    with pytest.raises(ValueError, match="token-labeling"):
        t2t.create_model("t2t_vit_24", aux_head=False)
    with torch.device("meta"):
        assert t2t.create_model(TL).default_cfg["token_labeling"] == "cls+aux"
        assert t2t.create_model("t2t_vit_24").default_cfg["token_labeling"] is None


def test_token_labeling_file_is_recognised_by_its_keys():
    from t2t.weights import matching_model

    with torch.device("meta"):
        sd = t2t.create_model(TL).state_dict()
    assert matching_model(sd) == TL
    assert matching_model({k: v for k, v in sd.items() if not k.startswith("aux_head")}) == "t2t_vit_24"


# --- 4. every release's eval transform ------------------------------------------------------------

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# the references' eval transforms, written out: (crop_pct, PIL interpolation, mean, std)
FAMILY = {
    "t2t": (0.9, Image.Resampling.BICUBIC, *IMAGENET),  # official main.py via timm's data config
    "deit": (0.875, Image.Resampling.BICUBIC, *IMAGENET),  # DeiT's main.py --eval
    "augreg": (0.9, Image.Resampling.BICUBIC, (0.5,) * 3, (0.5,) * 3),  # timm's AugReg ViT configs
}


def family(name: str) -> str:
    if "cifar" in name:
        return "cifar"
    return "t2t" if name.startswith("t2t") else "deit" if name.startswith("deit") else "augreg"


def reference_input(img: Image.Image, name: str, size: int) -> torch.Tensor:
    """(3, S, S) as the reference code feeds its model, computed with PIL and numpy only."""
    if family(name) == "cifar":  # transfer_learning.py: Resize(224) of the whole image, no crop
        out = img.resize((size, size), Image.Resampling.BILINEAR)
        mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    else:  # Resize(floor(size / crop_pct)) of the shorter side, CenterCrop(size)
        crop_pct, interp, mean, std = FAMILY[family(name)]
        if size == 384 and family(name) != "t2t":
            crop_pct = 1.0  # DeiT's and timm's 384 px configs are uncropped; T2T-ViT-14 at 384 keeps 0.9
        short = math.floor(size / crop_pct)
        w, h = img.size
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        resized = img.resize(new, interp)
        left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
        out = resized.crop((left, top, left + size, top + size))
    arr = np.asarray(out, np.float32) / 255
    return torch.from_numpy((arr - np.array(mean, np.float32)) / np.array(std, np.float32)).permute(2, 0, 1)


@pytest.mark.parametrize("name", [n for n, c in MODELS.items() if c.url])
def test_eval_transform_is_the_references(name):
    with torch.device("meta"):
        model = t2t.create_model(name)
    size = model.default_cfg["img_size"]
    rng = np.random.default_rng(len(name))
    # CIFAR images are 32 x 32; ImageNet photos are not square
    shape = (32, 32, 3) if family(name) == "cifar" else (300, 410, 3)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    got = t2t.transform_for(model)(img)  # the public API; validate and the report use its tuple form
    torch.testing.assert_close(preprocess(img, *eval_transform(model))[0], got, rtol=0, atol=0)
    torch.testing.assert_close(got, reference_input(img, name, size), rtol=0, atol=1e-5)


# --- the README's and docs' tables of releases ---------------------------------------------------------------


def test_readme_and_docs_list_every_release_as_the_registry_does(capsys):
    # the README shows `python -m t2t list --markdown`; docs/models.md the table of released files
    readme = (ROOT / "README.md").read_text()
    cli(["list", "--markdown"])
    for row in capsys.readouterr().out.splitlines():
        assert row in readme, row
    models_page = (ROOT / "docs" / "models.md").read_text()
    for row in release_rows():
        assert row in models_page, row
    for text in (readme, models_page):
        assert "python -m t2t validate --model NAME --weights released --data DIR" in text
    assert "None of these files was downloaded here" in models_page
