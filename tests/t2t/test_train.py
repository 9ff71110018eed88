"""The training CLI: it learns, resumes exactly, and exports weights and a card that load back."""

import json
import random
import shlex

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from t2t import train as train_mod
from t2t.data import CLASS_NAMES, LocalStructureDataset, normalize
from t2t.train import StepSampler, lr_lambda, parse_args, reproduce_command, train

TINY = ("--img-size 32 --batch-size 16 --train-size 96 --val-size 32 --test-size 32 --workers 0 "
        "--warmup-steps 2 --device cpu --lr 3e-3")


class StandIn(nn.Module):
    """A tiny conv net with the registry models' interface; its dropout exercises the RNG restore."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(32), nn.Dropout(0.2))
        self.head = nn.Linear(32, num_classes)
        self.default_cfg = {"name": "stand_in"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def built(monkeypatch):
    """Swap the registry for the stand-in; returns the models train() built, in order."""
    models: list[nn.Module] = []

    def fake(name, img_size, num_classes):
        models.append(StandIn(num_classes))
        return models[-1]

    monkeypatch.setattr(train_mod, "build_model", fake)
    return models


def run(tmp_path, extra: str, name: str = "run"):
    return train(parse_args(shlex.split(f"{TINY} --model stand_in --out {tmp_path / name} {extra}")))


def test_training_lowers_the_loss(tmp_path, built):
    ds = LocalStructureDataset("train", size=96, img_size=32, as_uint8=True)
    x = normalize(torch.stack([ds[i][0] for i in range(64)]))
    y = torch.tensor([ds[i][1] for i in range(64)])

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            return nn.functional.cross_entropy(model(x), y).item()

    torch.manual_seed(0)
    before = loss_of(StandIn())  # the same init train() makes (it seeds 0 before building)
    final = run(tmp_path, "--steps 40 --eval-every 20")
    after = loss_of(built[0])
    assert after < before - 0.1, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [20, 40]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert set(log[0]) >= {"step", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s",
                           "wall_time"}
    assert final["steps"] == 40 and 0 <= final["test_acc"] <= 1


def test_resume_continues_the_same_run(tmp_path, built):
    straight = run(tmp_path, "--steps 6 --eval-every 2", "straight")
    stopped = run(tmp_path, "--steps 6 --eval-every 2 --stop-after 3", "split")
    assert stopped == {"stopped": True, "step": 3}
    assert not (tmp_path / "split/final.json").exists()
    # recipe options come from the checkpoint: the bogus --lr here must be ignored
    resumed = train(parse_args(["--out", str(tmp_path / "split"), "--resume", "--workers", "0", "--lr", "9"]))

    a = torch.load(tmp_path / "straight/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    log_a = [json.loads(line) for line in (tmp_path / "straight/log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "split/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [2, 4, 6]
    for ra, rb in zip(log_a, log_b, strict=True):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["step"], k)
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-5)


def test_outputs_load_back(tmp_path, built):
    final = run(tmp_path, "--steps 4 --eval-every 4")
    out = tmp_path / "run"
    assert json.loads((out / "final.json").read_text()) == final
    card = json.loads((out / "card.json").read_text())
    assert card["model"] == "stand_in" and card["img_size"] == 32
    assert card["class_names"] == list(CLASS_NAMES)
    assert card["test_acc"] == final["test_acc"] and card["steps"] == 4 and card["hardware"]
    assert "python -m t2t.train" in card["command"] and card["command"] in (out / "model_card.md").read_text()

    # the exported weights reproduce the accuracy recorded for their precision
    weights = load_file(str(out / "model.safetensors"))
    assert {str(v.dtype) for v in weights.values()} == {f"torch.{final['export_dtype']}"}
    model = StandIn()
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    model.eval()
    ds = LocalStructureDataset("test", size=32, img_size=32)
    x = torch.stack([ds[i][0] for i in range(32)])
    y = torch.tensor([ds[i][1] for i in range(32)])
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert acc == pytest.approx(final["test_acc"])
    key = {"float16": "test_acc_fp16_weights", "float32": "test_acc_fp32_weights"}[final["export_dtype"]]
    assert final[key] == final["test_acc"]


def test_reproduce_command_parses_back_to_the_same_recipe():
    args = parse_args(["--model", "deit_tiny_patch16_224", "--epochs", "2", "--train-size", "1000",
                       "--batch-size", "100", "--no-amp"])
    args.steps = 20  # what train() derives from --epochs
    again = parse_args(shlex.split(reproduce_command(args))[3:])
    for k in vars(args):
        if k not in train_mod.RUNTIME_ARGS and k != "epochs":
            assert getattr(again, k) == getattr(args, k), k


def test_step_sampler_resumes_mid_epoch_and_covers_each_epoch():
    full = list(StepSampler(50, 8, seed=1, start=0, total=12))  # 6 steps an epoch, 2 images dropped
    assert len(full) == 12 * 8
    assert list(StepSampler(50, 8, seed=1, start=5, total=12)) == full[5 * 8:]
    epoch0, epoch1 = full[:48], full[48:]
    assert len(set(epoch0)) == 48 and len(set(epoch1)) == 48 and epoch0 != epoch1


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_lambda(s, warmup=10, total=100, min_ratio=0.01) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[100] == pytest.approx(0.01)


def test_trains_a_registry_model_and_the_loader_reads_the_card(tmp_path):
    t2t = pytest.importorskip("t2t")
    if not hasattr(t2t, "create_model"):
        pytest.skip("t2t.create_model not available yet")
    final = train(parse_args(shlex.split(
        f"{TINY} --model t2t_vit_7 --steps 2 --eval-every 2 --qk-scale 0.0625 --out {tmp_path / 'real'}")))
    assert np.isfinite(final["test_loss"])
    # the card records the attention scale trained with, and loading the weights applies it
    card = json.loads((tmp_path / "real/card.json").read_text())
    assert card["qk_scale"] == 0.0625 and card["qk_scale_rule"] == "--qk-scale"
    assert "--qk-scale 0.0625" in card["command"]
    assert "attention scale | 0.0625" in (tmp_path / "real/model_card.md").read_text()
    model = t2t.create_model("t2t_vit_7", img_size=32, num_classes=len(CLASS_NAMES),
                             pretrained=str(tmp_path / "real/model.safetensors"))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(CLASS_NAMES))
    assert model.blocks[0].attn.scale == 0.0625 and "checkpoint metadata" in model.default_cfg["qk_scale_rule"]


def test_the_card_records_the_default_scale(tmp_path):
    import t2t

    train(parse_args(shlex.split(f"{TINY} --model deit_tiny_patch16_224 --steps 1 --eval-every 1 "
                                 f"--out {tmp_path / 'vit'}")))
    card = json.loads((tmp_path / "vit/card.json").read_text())
    assert card["qk_scale"] == 0.125 and card["qk_scale_rule"].startswith("head_dim ** -0.5")
    model = t2t.create_model("deit_tiny_patch16_224", img_size=32, pretrained=str(tmp_path / "vit/model.safetensors"))
    assert model.default_cfg["qk_scale"] == 0.125


def test_resuming_a_run_from_before_qk_scale_keeps_its_scale(capsys):
    assert train_mod._scale_before_qk_scale_was_recorded("t2t_vit_14") == 384**-0.5
    assert "predates --qk-scale" in capsys.readouterr().out
    assert train_mod._scale_before_qk_scale_was_recorded("deit_tiny_patch16_224") is None


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    torch.save({"rng": train_mod.rng_state()}, tmp_path / "rng.pt")
    draws = (torch.rand(3), np.random.rand(3), random.random())
    train_mod.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
