"""benchmarks/gpu_check.py: its CPU path end to end (no CUDA here), and the comparisons it reports with.

The GPU numbers come from one call on a lent GPU machine; what CI can check is that the script's own
code works: every part runs at tiny sizes on the CPU and writes its JSON and Markdown, and the
functions that decide "within 1e-3" or "the same JSON" say no when the numbers differ.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = load()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the full GPU check")
def test_cpu_path_runs_every_part(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "No CUDA device" in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["cuda"] and report["scale"]["name"] == "tiny"
    parts = report["parts"]
    assert list(parts) == list(gc.PARTS)
    for name, part in parts.items():
        assert part["status"] in ("ok", "differs", "simulated"), (name, part["status"], part["notes"])
        assert part["rows"] and part["checks"], name
    # what must hold on the CPU too: the trace equals the bare forward, torchrun's 2 gloo ranks give the
    # one-process JSON and their collectives work, every page renders, the (simulated) fall-back shows its notice
    for name in ("trace", "torchrun", "pages", "oom"):
        assert all(c["ok"] for c in parts[name]["checks"]), (name, parts[name]["checks"])
    checks = {c["check"]: c for c in parts["validate"]["checks"]}
    assert any("cpu fp32 vs cpu fp32" in k and c["ok"] for k, c in checks.items())
    assert any("bf16" in k for k in checks), "the bf16 runs are compared with the fp32 ones"
    pages = {row[1] for row in parts["pages"]["rows"]}
    assert set(gc.app_pages()) <= pages and len(gc.app_pages()) >= 5
    md = (tmp_path / "gpu_check.md").read_text()
    for name in gc.PARTS:
        assert f"## {name}:" in md
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def run(images: dict[str, tuple[int, float, float]], top1: float = 0.5) -> dict:
    return {"json": {"top1": top1, "top5": 1.0, "loss": 0.3}, "images": images}


def test_diff_validate_names_what_exceeds_the_tolerance() -> None:
    ref = run({"a.png": (1, 0.9, 0.1), "b.png": (2, 0.6, 0.5)})
    assert gc.diff_validate(ref, run({"a.png": (1, 0.9004, 0.1), "b.png": (2, 0.6, 0.5003)}))["exceeds"] == []
    d = gc.diff_validate(ref, run({"a.png": (1, 0.902, 0.1), "b.png": (3, 0.6, 0.5)}, top1=0.0))
    assert d["prob"] == pytest.approx(0.002) and d["predictions_changed"] == 1
    assert d["exceeds"][:2] == ["top1", "prob"] and "prediction of 1 image(s), e.g. b.png" in d["exceeds"][-1]


def test_diff_report_compares_probabilities_and_maps() -> None:
    def rec(prob: float, cell: float, pred: int = 3) -> dict:
        return {"path": "x.png", "model": "m", "pred_index": pred, "pred_prob": prob,
                "top5": [{"index": pred, "prob": prob}], "maps": {"rollout": [[cell, 0.1], [0.2, 0.3]]}}

    ref = {"json": {"results": [rec(0.8, 0.4)]}}
    assert gc.diff_report(ref, {"json": {"results": [rec(0.8, 0.4)]}})["exceeds"] == []
    d = gc.diff_report(ref, {"json": {"results": [rec(0.8, 0.403)]}})
    assert d["rollout"] == pytest.approx(0.003) and d["exceeds"] == ["rollout"]
    d = gc.diff_report(ref, {"json": {"results": [rec(0.8, 0.4, pred=4)]}})
    assert d["predictions_changed"] == 1 and d["exceeds"] and "x.png (m)" in d["exceeds"][0]


def test_json_diff_ignores_only_what_describes_the_run() -> None:
    a = {"top1": 0.5, "timing": {"images_per_s": 10.0}, "world_size": 1, "per_class": {"0": {"top1": 1.0}}}
    b = {"top1": 0.5, "timing": {"images_per_s": 20.0}, "world_size": 2, "per_class": {"0": {"top1": 1.0}}}
    assert gc.json_diff(gc.strip_run(a), gc.strip_run(b))[0] == []
    b["per_class"]["0"]["top1"] = 0.9
    assert gc.json_diff(gc.strip_run(a), gc.strip_run(b))[0] == ["/per_class/0/top1 (1.0 vs 0.9)"]


def test_prune_drops_assets_and_their_record_lines(tmp_path: Path) -> None:
    wheel = tmp_path / "raw" / "streamlit-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    record = ("streamlit/__init__.py,sha256=x,1\nstreamlit/static/index.html,sha256=y,2\n"
              "streamlit-1.0.dist-info/RECORD,,\n")
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("streamlit/__init__.py", "x = 1\n")
        z.writestr("streamlit/static/index.html", "<html>" * 1000)
        z.writestr("streamlit-1.0.dist-info/RECORD", record)
    (tmp_path / "out").mkdir()
    dropped, _ = gc.prune(wheel, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / wheel.name) as z:
        assert sorted(z.namelist()) == ["streamlit-1.0.dist-info/RECORD", "streamlit/__init__.py"]
        assert "static" not in z.read("streamlit-1.0.dist-info/RECORD").decode()
    assert dropped == 1


def test_only_what_the_device_lacks_is_carried() -> None:
    need = gc.missing_on_device()
    assert {"streamlit", "plotly", "captum"} <= set(need)
    assert not set(need) & {"torch", "numpy", "pillow", "einops", "safetensors", "matplotlib", "pandas"}
