"""t2t.loading.load_model: the one loader (weights specs, EMA choice, class names, architecture from the file)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import t2t
from t2t.data import CLASS_NAMES
from t2t.images import imagenet_class_names
from t2t.loading import describe_model, load_model, parse_weights

NAME = "deit_tiny_patch16_224"


def test_parse_weights():
    assert parse_weights("embedded") == "embedded"
    assert parse_weights("ImageNet") is True and parse_weights("released") is True and parse_weights("official")
    assert parse_weights("random") is None and parse_weights(None) is None
    assert parse_weights("https://x/y.pth") == "https://x/y.pth"


def test_random_weights_are_seeded_and_sized():
    a, b = load_model(NAME, "random"), load_model(NAME, "random")
    torch.testing.assert_close(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, load_model(NAME, "random", seed=1).head.weight)
    assert a.num_classes == 10 and a.class_names == list(CLASS_NAMES) and not a.training
    wide = load_model(NAME, "random", num_classes=1000)
    assert wide.num_classes == 1000 and wide.class_names == imagenet_class_names()
    assert a.default_cfg["weights"] == "random (seed 0)" and a.default_cfg["state_dict_key"] is None


def test_use_ema_chooses_the_dictionary_of_an_official_checkpoint(tmp_path):
    """An official-style .pth.tar with different weights under state_dict and state_dict_ema."""
    plain, ema = (t2t.create_model(NAME, num_classes=10) for _ in range(2))
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 3}, path)
    got = load_model(NAME, str(path))
    assert got.default_cfg["state_dict_key"] == "state_dict_ema" and got.default_cfg["use_ema"] is True
    torch.testing.assert_close(got.head.weight, ema.head.weight)
    got = load_model(NAME, str(path), use_ema=False)
    assert got.default_cfg["state_dict_key"] == "state_dict" and got.default_cfg["use_ema"] is False
    torch.testing.assert_close(got.head.weight, plain.head.weight)
    desc = describe_model(got)
    assert desc["state_dict_key"] == "state_dict" and desc["use_ema"] is False and desc["num_classes"] == 10


def test_architecture_from_the_checkpoint_only_when_allowed(tmp_path, capsys):
    model = t2t.create_model("t2t_vit_7", num_classes=10)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"class_names": json.dumps(CLASS_NAMES)})
    got = load_model(NAME, str(path))
    assert got.default_cfg["name"] == "t2t_vit_7" and "holds a t2t_vit_7" in capsys.readouterr().err
    assert got.class_names == list(CLASS_NAMES)
    with pytest.raises(t2t.CheckpointError, match="does not fit"):
        load_model(NAME, str(path), match_architecture=False)


def test_embedded_falls_back_only_when_asked(monkeypatch, capsys):
    monkeypatch.setattr(t2t, "list_embedded", lambda: [])
    with pytest.raises(t2t.CheckpointError, match="--weights random"):
        load_model(NAME, "embedded")
    assert load_model(NAME, "embedded", fallback=True).default_cfg["weights"].startswith("random")
    assert "RANDOM weights" in capsys.readouterr().err
