"""The GPU check's shared pieces: the device-vs-CPU comparison of analysis methods (the lrp and mechanisms
parts), "not available" for what analysis/ lacks, and the runner keeping a part's own status.

Fast: one embedded T2T-ViT-7 at batch 2 on the CPU, and parts that are plain functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import common, methods, runner
from benchmarks.gpu.common import NOT_AVAILABLE, TINY, Ctx, Result
from benchmarks.gpu.methods import Method, Sizes
from benchmarks.gpu.parts import lrp, mechanisms
from t2t.loading import load_model


def make_ctx(tmp_path: Path) -> Ctx:
    return Ctx(TINY, "cpu", tmp_path, time.monotonic() + 600, Result(tmp_path / "part.json"))


def test_rel_diff_is_the_largest_difference_on_the_reference_scale() -> None:
    want = torch.tensor([[2.0, -4.0], [1.0, float("nan")]], dtype=torch.float64)
    assert methods.rel_diff(want.clone(), want) == 0.0
    got = torch.tensor([[2.0, -4.004], [1.0, 5.0]], dtype=torch.float64)  # the NaN entry of `want` is left out
    assert methods.rel_diff(got, want) == pytest.approx(0.001)
    assert methods.rel_diff(torch.zeros(3), torch.zeros(2)) == float("inf")


def test_compare_checks_each_method_against_the_cpu_and_keeps_going(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)

    def logits(model, x, target):
        with torch.no_grad():
            return {"logits": model(x), "target": target.float()}

    def batch_size(model, x, target):  # differs between the device batch (2) and the cpu images (1)
        return {"size": torch.full((len(x),), float(len(x)))}

    def broken(model, x, target):
        raise RuntimeError("no kernel for this")

    found = [Method("logits", logits, ("holds", lambda m, x, t, out: 0.0, 1e-4)),
             Method("batch size", batch_size),
             Method("broken", broken),
             Method("false identity", logits, ("never", lambda m, x, t, out: 1.0, 1e-4))]
    sizes = Sizes((("t2t_vit_7", "embedded"),), batch=2, cpu_images=1, repeats=1)
    methods.compare(ctx, sizes, found, {"gone": "ImportError: no module named analysis.gone"})
    res = ctx.result
    checks = {c["check"]: c["ok"] for c in res.checks}
    label = "t2t_vit_7 (embedded)"
    assert checks[f"{label}: logits on cpu = on the cpu (1 images, max |diff| / max |cpu| <= 0.001)"]
    assert checks[f"{label}: logits on cpu: holds (relative error <= 0.0001)"]
    assert not checks[f"{label}: batch size on cpu = on the cpu (1 images, max |diff| / max |cpu| <= 0.001)"]
    assert not checks[f"{label}: broken runs on cpu"]
    assert not checks[f"{label}: false identity on cpu: never (relative error <= 0.0001)"]
    rows = {row[1]: row for row in res.rows}
    assert rows["gone"][4] == NOT_AVAILABLE and rows["broken"][4] == "failed"
    assert "RuntimeError: no kernel for this" in rows["broken"][-1]
    assert rows["batch size"][8].startswith("1.0e+00") and float(rows["logits"][8]) < 1e-5  # batch 2 vs 1
    assert isinstance(rows["logits"][4], float) and rows["logits"][4] > 0  # ms per image was measured
    assert any("gone: not available" in n for n in res.notes)
    assert res.status == "running"  # the runner sets ok / differs from the checks
    assert json.loads((tmp_path / "part.json").read_text())["rows"]  # saved as it went


def test_nothing_available_makes_the_part_not_available(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    methods.compare(ctx, Sizes((("no_such_model", "embedded"),), 1, 1, 1), [], {"lrp attnlrp": "ImportError: x"})
    assert ctx.result.status == NOT_AVAILABLE and not ctx.result.checks  # no model was even loaded
    assert ctx.result.rows[0][1:5] == ["lrp attnlrp", "cpu", "", NOT_AVAILABLE]


def test_a_missing_function_is_not_available_not_a_crash(monkeypatch) -> None:
    real = methods.lookup

    def lookup(module: str, name: str):
        if name in ("activation_patching", "lrp"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return real(module, name)

    monkeypatch.setattr(mechanisms, "lookup", lookup)
    found, missing = mechanisms.methods()
    assert [m.name for m in found] == ["logit_lens", "direct_logit_attribution"]
    assert set(missing) == {"activation_patching heads exact", "activation_patching heads attribution"}
    monkeypatch.setattr(lrp, "lookup", lookup)
    found, missing = lrp.methods()
    assert {"lrp attnlrp", "lrp cp + constants"} <= set(missing)
    assert not {m.name for m in found} & {"lrp attnlrp", "lrp cp + constants"}


def test_lrp_methods_run_and_cp_lrp_conserves_on_this_device() -> None:
    found, _ = lrp.methods()
    cp = next(m for m in found if m.name == "lrp cp + constants")
    model = load_model("t2t_vit_7", "embedded", "cpu")
    x = methods.synthetic_images(model, 1)
    with torch.no_grad():
        target = model(x).argmax(-1)
    out = cp.run(model, x, target)
    what, error, tol = cp.identity
    assert error(model, x, target, out) <= tol
    out["constants"] = out["constants"] + 0.1 * out["logit"].abs()  # a relevance that leaks: the check says so
    assert error(model, x, target, out) > tol


def fake_part(tmp_path: Path, monkeypatch, run) -> argparse.Namespace:
    module = types.ModuleType("benchmarks.gpu.parts.fake")
    module.LIMIT_S = {"full": 10, "tiny": 10}
    module.run = run
    monkeypatch.setitem(sys.modules, "benchmarks.gpu.parts.fake", module)
    monkeypatch.setattr(runner, "PARTS", (*runner.PARTS, "fake"))
    return argparse.Namespace(part="fake", scale="tiny", work=str(tmp_path), result=str(tmp_path / "fake.json"),
                              limit=60.0)


@pytest.mark.parametrize("outcome", ["not available", "differs", "ok", "error"])
def test_the_runner_keeps_a_part_status_and_sets_the_rest(tmp_path: Path, monkeypatch, outcome: str) -> None:
    def run(ctx: Ctx) -> None:
        ctx.result.row("a", 1)
        if outcome == "not available":
            common.unavailable(ctx.result, "analysis.fake", ImportError("No module named 'analysis.fake'"))
        elif outcome == "error":
            raise ValueError("a bug")
        else:
            ctx.result.check("holds", outcome == "ok")

    code = runner.run_part(fake_part(tmp_path, monkeypatch, run))
    saved = json.loads((tmp_path / "fake.json").read_text())
    assert saved["status"] == outcome and code == (1 if outcome == "error" else 0)
    if outcome == "not available":
        assert "analysis.fake is not available here" in saved["notes"][0]
        report = {"mode": "m", "machine": {"torch": "t", "cuda": None, "python": "p", "cpus": 1, "load": [0.0]},
                  "created": "c", "seconds": 1, "budget_s": 2, "parts": {"fake": saved}}
        assert "## fake: not available" in runner.markdown(report)


def test_every_part_states_its_limits_and_runs() -> None:
    for name in runner.PARTS:
        module = runner.part_module(name)
        assert set(module.LIMIT_S) == set(common.SCALES) and callable(module.run), name
    assert runner.limits(TINY)["lrp"] == lrp.LIMIT_S["tiny"]
    with pytest.raises(KeyError):
        runner.part_module("nope")
