"""Checkpoints in every supported format, from paths and from a local HTTP server, and every error."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import t2t
from t2t.hub import DownloadError
from t2t.registry import MODELS
from t2t.weights import CheckpointError, create_model, matching_model, read_checkpoint, resize_pos_embed
from tests.t2t.test_fidelity import REFERENCE_DIR, _fill, relative_error


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2T_LENS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def source():
    """A small t2t_vit_7 (64 px, 10 classes) whose weights every format must reproduce."""
    torch.manual_seed(0)
    model = t2t.create_model("t2t_vit_7", img_size=64, num_classes=10).eval()
    for p in model.parameters():  # away from the fresh-init values, so a load that did nothing is visible
        p.data.add_(torch.randn_like(p) * 0.01)
    return model


def _write_all_formats(model, folder):
    sd = model.state_dict()
    files = {
        # the official release: a training checkpoint, DataParallel prefixes, an argparse Namespace;
        # the weights to reproduce are the EMA ones (what the official evaluation loads)
        "official.pth.tar": {"epoch": 310, "arch": "t2t_vit_7", "args": argparse.Namespace(lr=1e-3, model="t2t_vit_7"),
                             "state_dict": {f"module.{k}": v * 0 for k, v in sd.items()},
                             "state_dict_ema": {f"module.{k}": v for k, v in sd.items()}},
        "timm.pth": sd,
        "deit.pth": {"model": sd},
        "timm_ema.pth": {"model": {k: v * 0 for k, v in sd.items()}, "model_ema": sd},
        "ema_only.pth.tar": {"state_dict_ema": sd},
    }
    for name, obj in files.items():
        torch.save(obj, folder / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "weights.safetensors"))
    return [*files, "weights.safetensors"]


def _assert_same(model, loaded):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert loaded.num_classes == 10 and not loaded.training


def test_every_format_from_a_path(source, tmp_path):
    for name in _write_all_formats(source, tmp_path):
        _assert_same(source, create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / name))


def test_every_format_from_a_url(source, tmp_path, http_server):
    served = tmp_path / "served"
    served.mkdir()
    names = _write_all_formats(source, served)
    base = http_server(served)
    for name in names:
        _assert_same(source, create_model("t2t_vit_7", img_size=64, pretrained=f"{base}/{name}"))
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == sorted(names)  # complete files only, no .part left behind
    # a second load comes from the cache, not the server
    before = len(http_server.requests)
    create_model("t2t_vit_7", img_size=64, pretrained=f"{base}/timm.pth")
    assert len(http_server.requests) == before


def test_pretrained_true_uses_the_release_url(source, tmp_path, http_server, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"state_dict_ema": source.state_dict(), "state_dict": source.state_dict()},
               served / "71.7_T2T_ViT_7.pth.tar")
    url = http_server(served) + "/71.7_T2T_ViT_7.pth.tar"
    monkeypatch.setitem(MODELS, "t2t_vit_7", dataclasses.replace(MODELS["t2t_vit_7"], url=url))
    model = create_model("t2t_vit_7", img_size=64, pretrained=True)
    _assert_same(source, model)
    assert model.default_cfg["weights"] == url


def _ema_checkpoint(folder, name):
    """A released-style .pth.tar of fidelity reference `name`: zeros under state_dict, the reference
    weights under state_dict_ema (with DataParallel prefixes), and the reference meta / tensors."""
    ref = torch.load(REFERENCE_DIR / f"{name}.pt", weights_only=True)
    meta = ref["meta"]
    weights = _fill()(meta["shapes"], meta["seed"])
    path = folder / f"{name}.pth.tar"
    torch.save({"epoch": 310, "state_dict": {f"module.{k}": torch.zeros_like(v) for k, v in weights.items()},
                "state_dict_ema": {f"module.{k}": v for k, v in weights.items()}}, path)
    return path, meta, ref["tensors"]


@pytest.mark.parametrize("name", ["t2t_vit_7", "deit_tiny_patch16_224"])
def test_ema_weights_are_preferred_as_the_official_evaluation_does(name, tmp_path, caplog):
    path, meta, want = _ema_checkpoint(tmp_path, name)
    with caplog.at_level("INFO", logger="t2t.weights"):
        model = create_model(meta["model"], img_size=meta["img_size"], pretrained=path)
    assert model.default_cfg["state_dict_key"] == "state_dict_ema"
    assert "state_dict_ema" in caplog.text and path.name in caplog.text
    with torch.no_grad():
        assert relative_error(model(want["input"]), want["logits"]) < 1e-4

    plain = create_model(meta["model"], img_size=meta["img_size"], pretrained=path, use_ema=False)
    assert plain.default_cfg["state_dict_key"] == "state_dict"
    assert all(not v.any() for v in plain.state_dict().values())  # the zeros, not the EMA weights
    with torch.no_grad():
        assert not plain(want["input"]).any()


def test_which_dictionary_is_loaded(source, tmp_path):
    _write_all_formats(source, tmp_path)
    keys = {name: create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / name).default_cfg["state_dict_key"]
            for name in ("official.pth.tar", "timm.pth", "deit.pth", "timm_ema.pth", "weights.safetensors")}
    assert keys == {"official.pth.tar": "state_dict_ema", "timm.pth": None, "deit.pth": "model",
                    "timm_ema.pth": "model_ema", "weights.safetensors": None}
    assert create_model("t2t_vit_7", img_size=64).default_cfg["state_dict_key"] is None
    # without EMA: model rather than model_ema; a file with EMA weights only is refused, not silently used
    assert create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / "timm_ema.pth",
                        use_ema=False).default_cfg["state_dict_key"] == "model"
    with pytest.raises(CheckpointError, match="only EMA weights .*state_dict_ema.* use_ema=True"):
        create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / "ema_only.pth.tar", use_ema=False)


def test_hub_style_names_do_not_collide_in_the_cache(tmp_path, http_server):
    for repo in ("vit_a", "vit_b"):
        folder = tmp_path / "served" / "timm" / repo / "resolve" / "main"
        folder.mkdir(parents=True)
        torch.manual_seed(len(repo) + ord(repo[-1]))
        save_file({"w": torch.randn(3)}, str(folder / "model.safetensors"))
    base = http_server(tmp_path / "served")
    a = read_checkpoint(f"{base}/timm/vit_a/resolve/main/model.safetensors")["w"]
    b = read_checkpoint(f"{base}/timm/vit_b/resolve/main/model.safetensors")["w"]
    assert not torch.equal(a, b)


def test_position_embedding_is_resized_for_another_image_size(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "w.pth")
    big = create_model("t2t_vit_7", img_size=128, pretrained=tmp_path / "w.pth")
    assert big.pos_embed.shape == (1, 65, 256)
    want = resize_pos_embed(source.pos_embed.data, (8, 8))
    assert torch.equal(big.pos_embed.data, want)
    assert torch.equal(big.pos_embed.data[:, 0], source.pos_embed.data[:, 0])  # class token untouched
    # bicubic resampling of a constant grid is the constant
    flat = torch.ones(1, 17, 4)
    assert torch.allclose(resize_pos_embed(flat, (6, 6)), torch.ones(1, 37, 4), atol=1e-6)
    with torch.no_grad():
        assert big(torch.randn(1, 3, 128, 128)).shape == (1, 10)


def test_vit_position_embedding_resize(tmp_path):
    torch.manual_seed(0)
    small = t2t.create_model("deit_tiny_patch16_224", img_size=64, num_classes=3)
    torch.save({"model": small.state_dict()}, tmp_path / "deit.pth")
    big = create_model("deit_tiny_patch16_224", img_size=96, pretrained=tmp_path / "deit.pth")
    assert big.pos_embed.shape == (1, 37, 192)


def test_num_classes_and_class_names_follow_the_checkpoint(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / "w.pth")
    assert model.num_classes == 10 and model.class_names is None
    imagenet = create_model("t2t_vit_7", img_size=64)
    assert imagenet.class_names[:2] == ["tench", "goldfish"] and len(imagenet.class_names) == 1000


# --- errors -----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model("t2t_vit_7", pretrained=tmp_path / "nope.pth")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "empty.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors checkpoint"):
        read_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "bad.safetensors").write_text("neither")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")


def test_truncated(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")


def test_a_dict_without_tensors(tmp_path):
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        read_checkpoint(tmp_path / "meta.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out


def test_another_architecture_names_keys_and_the_matching_model(tmp_path):
    torch.manual_seed(0)
    deit = t2t.create_model("deit_small_patch16_224")
    torch.save({"model": deit.state_dict()}, tmp_path / "deit_s.pth")
    with pytest.raises(CheckpointError) as err:
        create_model("t2t_vit_14", pretrained=tmp_path / "deit_s.pth")
    msg = str(err.value)
    assert "does not fit t2t_vit_14" in msg
    assert "missing keys (50): tokens_to_token.attention1" in msg
    assert "unexpected keys" in msg and "patch_embed.proj.weight" in msg
    assert "'deit_small_patch16_224'" in msg  # same names and shapes as vit_small_patch16_224 too: first wins


def test_shape_mismatch_is_reported(tmp_path):
    torch.manual_seed(0)
    torch.save(t2t.create_model("t2t_vit_10").state_dict(), tmp_path / "t10.pth")
    with pytest.raises(CheckpointError) as err:
        create_model("t2t_vit_7", pretrained=tmp_path / "t10.pth")
    assert "unexpected keys (33): blocks.7.attn.proj.bias" in str(err.value)  # 3 extra blocks x 11 tensors
    assert "match registry model 't2t_vit_10'" in str(err.value)
    torch.save(t2t.create_model("t2t_vit_19").state_dict(), tmp_path / "t19.pth")
    wrong_width = r"shape mismatch .*blocks\.0\.attn\.qkv\.weight: checkpoint \(1344, 448\)"
    with pytest.raises(CheckpointError, match=wrong_width):
        create_model("t2t_vit_14", pretrained=tmp_path / "t19.pth")


def test_matching_model_finds_the_registry_entry():
    with torch.device("meta"):
        sd = t2t.create_model("t2t_vit_t_19").state_dict()
    assert matching_model(sd) == "t2t_vit_t_19"
    assert matching_model({"foo": torch.zeros(2)}) is None


def test_url_that_fails(tmp_path, http_server, free_port):
    (tmp_path / "served").mkdir()
    base = http_server(tmp_path / "served")
    with pytest.raises(DownloadError, match="404"):
        create_model("t2t_vit_7", pretrained=f"{base}/missing.pth")
    with pytest.raises(DownloadError, match=f"127.0.0.1:{free_port}"):
        create_model("t2t_vit_7", pretrained=f"http://127.0.0.1:{free_port}/w.pth")
    assert not any((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_model_without_release_refuses_pretrained_true():
    with pytest.raises(CheckpointError, match="no released weights"):
        create_model("t2t_vit_14_wide", pretrained=True)


def test_class_names_carried_by_the_checkpoint(source, tmp_path):
    names = [f"class {i}" for i in range(10)]
    sd = source.state_dict()
    torch.save({"state_dict": sd, "class_names": names}, tmp_path / "named.pth")
    assert create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / "named.pth").class_names == names
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "named.safetensors"),
              metadata={"class_names": json.dumps(names)})
    assert create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / "named.safetensors").class_names == names
    # names that do not fit the head are ignored rather than mislabelling outputs
    torch.save({"state_dict": sd, "class_names": names[:3]}, tmp_path / "short.pth")
    assert create_model("t2t_vit_7", img_size=64, pretrained=tmp_path / "short.pth").class_names is None
