"""`python -m t2t validate`, labelled folders, shards and the journal.

The accuracy test writes an ImageFolder of synthetic images and checks validate against a direct
evaluation of the same images with the same models (the embedded ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import t2t
from t2t import validate
from t2t.__main__ import main as cli
from t2t.data import CLASS_NAMES, LocalStructureDataset
from t2t.data.folder import class_index, imagenet_synsets, labelled_images
from t2t.distributed import Journal, shard
from t2t.images import open_image, preprocess
from t2t.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
N = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 synthetic test images (224 px) in class-index sub-folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("val") / "val"
    ds = LocalStructureDataset("test", size=N)
    for i in range(N):
        (root / str(ds.label(i))).mkdir(parents=True, exist_ok=True)
        ds.image(i).save(root / str(ds.label(i)) / f"{i:03d}.png")
    (root / "4" / "notes.png").write_text("not pixels")
    return root


def direct(name: str, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every image, preprocessed one by one and run as one batch."""
    model = load_model(name, "embedded")
    cfg = model.default_cfg
    paths = sorted(p for p in folder.rglob("*.png") if p.name != "notes.png")
    x = torch.cat([preprocess(open_image(p), cfg["mean"], cfg["std"], cfg["img_size"], cfg["crop_pct"]) for p in paths])
    with torch.inference_mode():
        return model(x), torch.tensor([int(p.parent.name) for p in paths])


@pytest.mark.parametrize("name", t2t.list_embedded())
def test_validate_gives_the_accuracy_of_a_direct_evaluation(name, folder, tmp_path):
    out = tmp_path / "result.json"
    result = validate.main(["--model", name, "--weights", "embedded", "--data", str(folder), "--out", str(out),
                            "--batch-size", "8", "--workers", "1", "--predictions", str(tmp_path / "p.csv")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    logits, labels = direct(name, folder)
    pred = logits.argmax(-1)
    assert result["num_images"] == N and result["num_skipped"] == 1
    assert result["top1"] == (pred == labels).float().mean().item()
    assert result["top5"] == (logits.topk(5).indices == labels[:, None]).any(-1).float().mean().item()
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), labels).item(), rel=1e-5)
    assert result["world_size"] == 1 and result["images_per_rank"] == [N + 1]
    for c, stats in result["per_class"].items():
        mine = labels == CLASS_NAMES.index(c)
        assert stats["images"] == int(mine.sum())
        assert stats["top1"] == (pred[mine] == labels[mine]).float().mean().item()
    worst = result["worst_classes"][0]
    assert worst["top1"] == min(s["top1"] for s in result["per_class"].values())
    wrong = pred[labels == worst["index"]]
    for m in worst["mistaken_for"]:
        assert m["images"] == int((wrong == m["index"]).sum())
    assert "notes.png" in result["skipped"][0]["path"] and "not an image" in result["skipped"][0]["reason"].lower()
    assert result["model"]["crop_pct"] == 1.0 and result["settings"]["transform"]["interpolation"] == "bicubic"
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + N


def test_two_torchrun_processes_give_the_same_result(folder, tmp_path):
    name = t2t.list_embedded()[0]
    one = validate.main(["--model", name, "--weights", "embedded", "--data", str(folder), "--batch-size", "4",
                         "--workers", "0", "--out", str(tmp_path / "one.json")])
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "t2t", "validate", "--model", name, "--weights", "embedded", "--data", str(folder),
                           "--batch-size", "4", "--workers", "1", "--out", str(tmp_path / "two.json")],
                          capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and sorted(two["images_per_rank"]) == [(N + 1) // 2, (N + 2) // 2]
    for key in ("top1", "top5", "num_images", "num_skipped", "per_class", "worst_classes", "skipped"):
        assert two[key] == one[key], key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)


def test_resume_skips_what_the_journal_holds(folder, tmp_path):
    name = t2t.list_embedded()[0]
    args = ["--model", name, "--weights", "embedded", "--data", str(folder), "--batch-size", "4", "--workers", "0",
            "--out", str(tmp_path / "r.json"), "--keep-journal"]
    full = validate.main(args)
    journal = tmp_path / "r.journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:6]) + lines[6][:25])  # 5 items done, the 6th cut short by a "kill"
    resumed = validate.main([*args, "--resume"])
    assert resumed["settings"]["resumed_images"] == 5 and resumed["images_per_rank"] == [N + 1 - 5]
    for key in ("top1", "top5", "per_class", "worst_classes", "skipped"):
        assert resumed[key] == full[key], key
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-6)  # other batches: float32 differs in the last bits


def test_journal_counts_only_complete_lines_and_checks_settings(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, {"a": (1, 2)}, resume=False)
    j.append([{"i": 3}, {"i": 1}])
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"i": 7')
    again = Journal(path, {"a": [1, 2]}, resume=True)
    assert again.done == {1, 3}
    again.append([{"i": 2}])
    assert [line["i"] for line in again.in_order()] == [1, 2, 3]
    again.close()
    with pytest.raises(SystemExit, match="other settings"):
        Journal(path, {"a": [1, 3]}, resume=True)
    assert Journal(path, {"b": 1}, resume=False).done == set()  # without --resume: a new journal


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_are_disjoint_and_complete(world):
    for n in range(0, 12):
        items = list(range(100, 100 + n))
        parts = [shard(items, r, world) for r in range(world)]
        assert sorted(sum(parts, [])) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_labels_by_wordnet_id_index_name_or_list(tmp_path):
    wnids = imagenet_synsets()
    assert wnids[0] == "n01440764" and len(wnids) == 1000
    assert class_index(["n01443537", "n01440764"], 1000)[0] == {"n01440764": 0, "n01443537": 1}
    assert class_index(["3", "0"], 10) == ({"0": 0, "3": 3}, "class index")
    assert class_index(["ring", "stripes"], 10, CLASS_NAMES)[0] == {"ring": 3, "stripes": 0}
    with pytest.raises(ValueError, match="1000"):
        class_index(["n01440764"], 10)
    with pytest.raises(ValueError, match="not below"):
        class_index(["10"], 10)
    with pytest.raises(ValueError, match="cannot tell"):
        class_index(["0", "ring"], 10, CLASS_NAMES)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "list.txt").write_text("# path label\na/x.png 2\nmissing.png, 1\n\n")
    found = labelled_images(tmp_path / "list.txt", 10)
    assert found.samples == [(str(tmp_path / "a" / "x.png"), 2)] and found.labels == "class index"
    assert found.missing == [(str(tmp_path / "missing.png"), "not found")]
    folder = tmp_path / "folder"
    (folder / "ring").mkdir(parents=True)
    (folder / "ring" / "y.png").write_bytes(b"")
    (folder / "loose.png").write_bytes(b"")
    found = labelled_images(folder, 10, CLASS_NAMES)
    assert found.samples == [(str(folder / "ring" / "y.png"), 3)] and found.missing[0][0] == "loose.png"


def test_command_line_errors_are_clear(folder, tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        cli(["validate", "--model", "t2t_vit_7", "--weights", "random", "--data", str(tmp_path / "nope")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cats").mkdir()
    (tmp_path / "bad" / "cats" / "c.png").write_bytes(b"")
    with pytest.raises(SystemExit, match="cannot tell the classes of cats"):
        cli(["validate", "--model", "t2t_vit_7", "--weights", "random", "--data", str(tmp_path / "bad")])


def test_default_workers_decode_in_the_main_process_on_a_small_cpu(monkeypatch) -> None:
    """No decoding process beside a CPU model with 2 cores or fewer per rank; up to 4 with a GPU."""
    import os

    from t2t.distributed import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(torch.device("cpu")) == 0
    assert default_workers(torch.device("cuda")) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers(torch.device("cpu")) == 4
    assert default_workers(torch.device("cuda")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun, 8 ranks sharing 16 cores: 2 cores each
    assert default_workers(torch.device("cpu")) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 32)  # 8 ranks, each pinned to 4 of 32 cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert default_workers(torch.device("cpu")) == 3
