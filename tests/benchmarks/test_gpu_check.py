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

from benchmarks.gpu import runner, wheels
from benchmarks.gpu.common import NOT_AVAILABLE
from benchmarks.gpu.parts import pages, torchrun, validate

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


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
    assert list(parts) == list(runner.PARTS)
    # the analysis methods' parts report "not available" (and nothing else) when their module is not in the tree
    absent = {name for name, module in (("lrp", "analysis.lrp"), ("mechanisms", "analysis.mechanisms"))
              if importlib.util.find_spec(module) is None}
    for name, part in parts.items():
        if name in absent:
            assert part["status"] == NOT_AVAILABLE and not part["checks"], (name, part)
            continue
        assert part["status"] in ("ok", "differs", "simulated"), (name, part["status"], part["notes"])
        assert part["rows"] and part["checks"], name
    # what must hold on the CPU too: the trace equals the bare forward, torchrun's 2 gloo ranks give the
    # one-process JSON and their collectives work, every page renders, the (simulated) fall-back shows its notice,
    # the analysis methods give the same numbers twice and their identities (conservation, DLA's sum) hold
    for name in {"trace", "torchrun", "pages", "oom", "lrp", "mechanisms"} - absent:
        assert all(c["ok"] for c in parts[name]["checks"]), (name, parts[name]["checks"])
    checks = {c["check"]: c for c in parts["validate"]["checks"]}
    assert any("cpu fp32 vs cpu fp32" in k and c["ok"] for k, c in checks.items())
    assert any("bf16" in k for k in checks), "the bf16 runs are compared with the fp32 ones"
    visited = {row[1] for row in parts["pages"]["rows"]}
    assert set(pages.app_pages()) <= visited and len(pages.app_pages()) >= 5
    md = (tmp_path / "gpu_check.md").read_text()
    for name in runner.PARTS:
        assert f"## {name}:" in md
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def run(images: dict[str, tuple[int, float, float]], top1: float = 0.5) -> dict:
    return {"json": {"top1": top1, "top5": 1.0, "loss": 0.3}, "images": images}


def test_diff_validate_names_what_exceeds_the_tolerance() -> None:
    ref = run({"a.png": (1, 0.9, 0.1), "b.png": (2, 0.6, 0.5)})
    assert validate.diff_validate(ref, run({"a.png": (1, 0.9004, 0.1), "b.png": (2, 0.6, 0.5003)}))["exceeds"] == []
    d = validate.diff_validate(ref, run({"a.png": (1, 0.902, 0.1), "b.png": (3, 0.6, 0.5)}, top1=0.0))
    assert d["prob"] == pytest.approx(0.002) and d["predictions_changed"] == 1
    assert d["exceeds"][:2] == ["top1", "prob"] and "prediction of 1 image(s), e.g. b.png" in d["exceeds"][-1]


def test_diff_report_compares_probabilities_and_maps() -> None:
    def rec(prob: float, cell: float, pred: int = 3) -> dict:
        return {"path": "x.png", "model": "m", "pred_index": pred, "pred_prob": prob,
                "top5": [{"index": pred, "prob": prob}], "maps": {"rollout": [[cell, 0.1], [0.2, 0.3]]}}

    ref = {"json": {"results": [rec(0.8, 0.4)]}}
    assert validate.diff_report(ref, {"json": {"results": [rec(0.8, 0.4)]}})["exceeds"] == []
    d = validate.diff_report(ref, {"json": {"results": [rec(0.8, 0.403)]}})
    assert d["rollout"] == pytest.approx(0.003) and d["exceeds"] == ["rollout"]
    d = validate.diff_report(ref, {"json": {"results": [rec(0.8, 0.4, pred=4)]}})
    assert d["predictions_changed"] == 1 and d["exceeds"] and "x.png (m)" in d["exceeds"][0]


def test_json_diff_ignores_only_what_describes_the_run() -> None:
    a = {"top1": 0.5, "timing": {"images_per_s": 10.0}, "world_size": 1, "per_class": {"0": {"top1": 1.0}}}
    b = {"top1": 0.5, "timing": {"images_per_s": 20.0}, "world_size": 2, "per_class": {"0": {"top1": 1.0}}}
    assert torchrun.json_diff(torchrun.strip_run(a), torchrun.strip_run(b))[0] == []
    b["per_class"]["0"]["top1"] = 0.9
    assert torchrun.json_diff(torchrun.strip_run(a), torchrun.strip_run(b))[0] == ["/per_class/0/top1 (1.0 vs 0.9)"]


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
    dropped, _ = wheels.prune(wheel, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / wheel.name) as z:
        assert sorted(z.namelist()) == ["streamlit-1.0.dist-info/RECORD", "streamlit/__init__.py"]
        assert "static" not in z.read("streamlit-1.0.dist-info/RECORD").decode()
    assert dropped == 1


def test_only_what_the_device_lacks_is_carried() -> None:
    need = wheels.missing_on_device()
    assert {"streamlit", "plotly", "captum"} <= set(need)
    assert not set(need) & {"torch", "numpy", "pillow", "einops", "safetensors", "matplotlib", "pandas"}
