"""The report at dataset scale: two torchrun processes (gloo, CPU) write what one process writes, a run
killed with kill -9 resumes to the outputs of an uninterrupted run, and the issue-11 options reach the library."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import t2t
from analysis import report, rollout
from t2t.data import LocalStructureDataset
from t2t.images import open_image, preprocess

MODEL = "deit_tiny_patch16_224"
N_GOOD = 7
ROOT = Path(__file__).resolve().parents[2]


def write_folder(folder: Path, n: int = N_GOOD, size: int = 48) -> None:
    folder.mkdir(parents=True)
    ds = LocalStructureDataset("test", size=n, img_size=size)
    for i in range(n):
        ds.image(i).save(folder / f"img_{i:02d}.png")
    (folder / "img_03b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))  # a bad file among the good


def argv(images: Path, out: Path, *extra: str) -> list[str]:
    return ["--models", MODEL, "--weights", "random", "--images", str(images), "--out", str(out), "--only",
            "rollout", "attention", "--batch-size", "2", "--workers", "0", "--pictures", "2",
            "--least-confident", "1", "--html", "link", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("scale")
    write_folder(root / "images")
    report.main(argv(root / "images", root / "one"))
    return SimpleNamespace(root=root, out=root / "one", **read(root / "one"))


def read(out: Path) -> dict:
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    return {"rows": rows, "json": json.loads((out / "results.json").read_text())}


def assert_same(a, b, path="") -> None:
    """Equal structure and strings; numbers equal to 1e-6 (absolute or relative).

    Standard deviations (and the CIs built on them) over images of a nearly constant metric
    magnify the last-bit differences of the values (1 process x 2 threads vs 2 x 1 sum in other
    orders): e.g. attention distances ~100 px with a std of 0.06 px. They are held to 2e-5 absolute.
    """
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), path
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        spread = any(part.split("[")[0] in ("std", "ci_low", "ci_high") for part in path.split("."))
        assert b == pytest.approx(a, rel=1e-6, abs=2e-5 if spread else 1e-6), path
    elif isinstance(a, str) and isinstance(b, str) and a != b:
        fa, fb = (float(a), float(b)) if _number(a) and _number(b) else (None, None)
        assert fa is not None and fb == pytest.approx(fa, rel=1e-6, abs=1e-6), (path, a, b)
    else:
        assert a == b, path


def _number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


SAME_KEYS = ("settings", "models", "counts", "skipped", "agreement", "summary", "figures", "pictured", "results")


def test_one_process_run(single):
    data = single.json
    assert data["run"]["world_size"] == 1 and data["run"]["images_per_rank"] == [N_GOOD + 1]
    assert data["counts"] == {"files": N_GOOD + 1, "analysed": N_GOOD, "skipped": 1}
    assert [r["image"] for r in data["results"]] == sorted(f"img_{i:02d}.png" for i in range(N_GOOD))
    assert not (single.out / "journal.jsonl").exists()  # a finished run leaves nothing to resume


def test_two_torchrun_processes_write_what_one_process_writes(single, tmp_path):
    out = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "analysis.report", *argv(single.root / "images", out)],
                          capture_output=True, text=True, timeout=240, env=env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    two = read(out)
    assert two["rows"][0] == single.rows[0] and len(two["rows"]) == len(single.rows) == 1 + N_GOOD
    assert_same(single.rows, two["rows"])
    for key in SAME_KEYS:
        assert_same(single.json[key], two["json"][key], key)
    run = two["json"]["run"]
    assert run["world_size"] == 2 and run["backend"] == "gloo"
    assert sum(run["images_per_rank"]) == N_GOOD + 1 and min(run["images_per_rank"]) >= N_GOOD // 2
    pictures = sorted(p.name for p in (out / "figures").iterdir())
    assert pictures == sorted(p.name for p in (single.out / "figures").iterdir())


def test_a_run_killed_with_kill_9_resumes_to_the_same_outputs(single, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "analysis.report", *argv(single.root / "images", out),
                             "--batch-size", "1"], env=env(), cwd=ROOT, stderr=subprocess.DEVNULL)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_bytes().splitlines()) >= 3:  # settings + 2 finished files
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    lines = journal.read_bytes().splitlines()
    assert 3 <= len(lines) < 2 + N_GOOD and not (out / "results.json").exists()
    with open(journal, "ab") as f:  # as if the kill had cut a line short: never counted as done
        f.write(b'{"i": 6, "records": [{"image": "img_06.png", "pred_prob": 0.')
    data = report.main(argv(single.root / "images", out, "--resume"))
    assert data["run"]["resumed_images"] == len(lines) - 1
    assert data["run"]["images_per_rank"] == [N_GOOD + 2 - len(lines)]
    resumed = read(out)
    assert_same(single.rows, resumed["rows"])
    for key in SAME_KEYS:
        assert_same(single.json[key], resumed["json"][key], key)


def test_resume_refuses_a_journal_of_other_settings(single, tmp_path):
    out, image = tmp_path / "other", single.root / "images" / "img_00.png"
    report.main(argv(image, out, "--keep-journal"))
    with pytest.raises(SystemExit, match="other settings"):
        report.main(argv(image, out, "--resume", "--discard-ratio", "0.5"))


def test_discard_rule_reaches_the_library(single, tmp_path):
    """--discard-rule vit-explain with --discard-ratio 0.5: the rollout maps are analysis.rollout's for that rule."""
    out = tmp_path / "rule"
    report.main(argv(single.root / "images" / "img_00.png", out, "--discard-ratio", "0.5", "--discard-rule",
                     "vit-explain"))
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["discard_rule"] == "vit-explain"
    model = report.load_model(MODEL, "random")
    cfg = model.default_cfg
    x = preprocess(open_image(single.root / "images" / "img_00.png"), cfg["mean"], cfg["std"], 224, cfg["crop_pct"])
    with torch.no_grad():
        tr = t2t.trace(model, x)
    maps = {rule: rollout.cls_rollout(tr.attentions(), discard_ratio=0.5, discard=rule).view(14, 14)
            for rule in rollout.DISCARD_RULES}
    got = torch.tensor(data["results"][0]["maps"]["rollout"])
    torch.testing.assert_close(got, maps["vit-explain"].float(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps["vit-explain"], maps["row"], atol=1e-4)  # the rule matters here
    assert single.json["settings"]["discard_rule"] == report.analyse.library_discard_rule()


def test_integrated_gradients_completeness_is_recorded_and_shown(single, tmp_path):
    from analysis.attributions import COMPLETENESS_TOLERANCE, integrated_gradients_map

    out = tmp_path / "ig"
    images = [str(single.root / "images" / f"img_0{i}.png") for i in (0, 1)]
    report.main(["--models", MODEL, "--weights", "random", "--images", *images, "--out", str(out), "--only",
                 "explain", "--methods", "integrated_gradients", "--ig-steps", "4", "--workers", "0"])
    data = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    model = report.load_model(MODEL, "random")
    cfg = model.default_cfg
    x = torch.cat([preprocess(open_image(p), cfg["mean"], cfg["std"], 224, cfg["crop_pct"]) for p in images])
    _, completeness = integrated_gradients_map(model, x, None, n_steps=4, return_completeness=True)
    page = (out / "report.html").read_text()
    for b, (rec, row) in enumerate(zip(data["results"], rows, strict=True)):
        gap = rec["completeness"]["integrated_gradients"]["relative_gap"]
        assert gap == pytest.approx(float(completeness.relative_gap[b]), rel=1e-3, abs=1e-6)
        assert float(row["integrated_gradients_relative_gap"]) == pytest.approx(gap, rel=1e-9)
        assert f"completeness gap {gap:.1%}" in page
    flagged = sum(r["completeness"]["integrated_gradients"]["relative_gap"] > COMPLETENESS_TOLERANCE
                  for r in data["results"])
    assert page.count("&#9888; completeness gap") == flagged
    assert data["summary"][MODEL]["completeness"]["integrated_gradients"]["above_tolerance"] == flagged


def test_the_ema_choice_and_the_dictionary_loaded_are_recorded(single, tmp_path):
    """An official-style checkpoint with state_dict and state_dict_ema: the report loads the EMA weights
    unless --no-ema, and results.json says which dictionary it loaded."""
    plain, ema = (t2t.create_model(MODEL, num_classes=10) for _ in range(2))
    ckpt = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, ckpt)
    image = str(single.root / "images" / "img_00.png")
    for flag, key, weights in (([], "state_dict_ema", ema), (["--no-ema"], "state_dict", plain)):
        out = tmp_path / key
        report.main(["--models", MODEL, "--weights", str(ckpt), "--images", image, "--out", str(out), "--only",
                     "rollout", "--workers", "0", *flag])
        data = json.loads((out / "results.json").read_text())
        assert data["models"][0]["state_dict_key"] == key and data["models"][0]["use_ema"] == (not flag)
        cfg = weights.default_cfg
        x = preprocess(open_image(image), cfg["mean"], cfg["std"], 224, cfg["crop_pct"])
        with torch.no_grad():
            probs = weights.eval()(x).softmax(-1)[0]
        assert data["results"][0]["pred_prob"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_the_completeness_gap_beside_an_ig_map_warns_above_the_tolerance():
    from analysis.report.page import gap_note

    assert "&#9888; completeness gap 12.0% &gt; 5%" in gap_note({"relative_gap": 0.12}, 0.05)
    quiet = gap_note({"relative_gap": 0.01}, 0.05)
    assert "completeness gap 1.0%" in quiet and "&#9888;" not in quiet and "warn" not in quiet
    assert "undefined" in gap_note({"relative_gap": None}, 0.05) and gap_note(None, 0.05) == ""
