"""validate: `python -m t2t validate` and `python -m analysis.report --only rollout`, fp32 and bf16, and the CPU.

On a 2,000-image synthetic folder (t2t.data.LocalStructureDataset's test split, PNG): images/s at two
batch sizes, fp32 and `--amp`; every reported number (top-1, top-5, mean loss; per image the
prediction, its probability and loss; the report's top-5 probabilities and rollout maps) against the
fp32 run, tolerance TOLERANCE (1e-3), naming what differs; a CPU run on 256 of the images (images/s,
and GPU fp32 vs CPU). The report has no --amp option: its "amp" runs are the same call inside a
bfloat16 `torch.autocast`, what such an option would do (said so in the output). Without CUDA the
CPU is compared with itself, which checks this code only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from benchmarks.gpu.common import TOLERANCE, Ctx, quiet_call, r, subset_list, timed

LIMIT_S = {"full": 150, "tiny": 240}


def run_validate(ctx: Ctx, name: str, weights: str, data: Path, batch: int, amp: bool, tag: str,
                 device: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`python -m t2t validate` in this process; its JSON plus per-image rows {path: (pred, prob, loss)}."""
    from t2t import validate

    out = ctx.work / "out" / f"{tag}.json"
    pred = out.with_suffix(".csv")
    argv = ["--model", name, "--weights", weights, "--data", str(data), "--batch-size", str(batch),
            "--out", str(out), "--predictions", str(pred), "--device", device or ctx.device, *extra]
    if amp:
        argv.append("--amp")
    wall, _ = timed(lambda: quiet_call(lambda: validate.main(argv)))
    result = json.loads(out.read_text())
    with open(pred) as f:
        per_image = {row["path"]: (int(row["pred"]), float(row["pred_prob"]), float(row["loss"]))
                     for row in csv.DictReader(f)}
    return {"json": result, "images": per_image, "wall_s": wall}


def diff_validate(ref: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Largest differences of `run` from `ref` over the images both saw: each number, and which exceed TOLERANCE."""
    common = sorted(set(ref["images"]) & set(run["images"]))
    a = {k: [ref["images"][p] for p in common] for k in ("x",)}["x"]
    b = [run["images"][p] for p in common]
    changed = [p for p, x, y in zip(common, a, b, strict=True) if x[0] != y[0]]
    same = [(x, y) for x, y in zip(a, b, strict=True) if x[0] == y[0]]
    d = {"images": len(common), "predictions_changed": len(changed),
         "prob": max((abs(x[1] - y[1]) for x, y in same), default=0.0),
         "loss_per_image": max((abs(x[2] - y[2]) for x, y in zip(a, b, strict=True)), default=0.0)}
    if len(common) == len(ref["images"]) == len(run["images"]):  # the summaries cover the same images
        for k in ("top1", "top5", "loss"):
            d[k] = abs(ref["json"][k] - run["json"][k])
    d["exceeds"] = [k for k in ("top1", "top5", "loss", "prob", "loss_per_image") if d.get(k, 0.0) > TOLERANCE] + (
        [f"prediction of {len(changed)} image(s), e.g. {changed[0]}"] if changed else [])
    return d


def run_report(ctx: Ctx, models: list[str], weights: str, images: list[str], batch: int, amp: bool, tag: str,
               device: str | None = None) -> dict[str, Any]:
    """`python -m analysis.report --only rollout` in this process (inside a bf16 autocast when amp)."""
    import torch

    from analysis.report import cli

    out = ctx.work / "out" / tag
    dev = device or ctx.device
    argv = ["--models", *models, "--weights", weights, "--images", *images, "--only", "rollout", "--batch-size",
            str(batch), "--out", str(out), "--device", dev, "--pictures", "0", "--least-confident", "0",
            "--html", "link"]

    def call() -> Any:
        with torch.autocast(torch.device(dev).type, torch.bfloat16, enabled=amp):
            return cli.main(argv)

    wall, _ = timed(lambda: quiet_call(call))
    result = json.loads((out / "results.json").read_text())
    return {"json": result, "wall_s": wall}


def diff_report(ref: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Per (image, model): prediction, its probability, the top-5 probabilities and the rollout map, vs `ref`."""
    import numpy as np

    key = lambda rec: (rec["path"], rec["model"])  # noqa: E731
    a = {key(rec): rec for rec in ref["json"]["results"]}
    b = {key(rec): rec for rec in run["json"]["results"]}
    common = sorted(set(a) & set(b))
    changed = [k for k in common if a[k]["pred_index"] != b[k]["pred_index"]]
    d = {"records": len(common), "predictions_changed": len(changed), "prob": 0.0, "top5_probs": 0.0,
         "rollout": 0.0, "rollout_max_value": 0.0}
    for k in common:
        x, y = a[k], b[k]
        if x["pred_index"] == y["pred_index"]:
            d["prob"] = max(d["prob"], abs(x["pred_prob"] - y["pred_prob"]))
        px = {t["index"]: t["prob"] for t in x["top5"]}
        py = {t["index"]: t["prob"] for t in y["top5"]}
        d["top5_probs"] = max([d["top5_probs"], *(abs(px[i] - py[i]) for i in set(px) & set(py))])
        if "rollout" in x["maps"]:
            mx, my = np.asarray(x["maps"]["rollout"]), np.asarray(y["maps"]["rollout"])
            d["rollout"] = max(d["rollout"], float(np.abs(mx - my).max()))
            d["rollout_max_value"] = max(d["rollout_max_value"], float(mx.max()))
    d["worst"] = max(d["prob"], d["top5_probs"], d["rollout"])
    d["exceeds"] = [k for k in ("prob", "top5_probs", "rollout") if d[k] > TOLERANCE] + (
        [f"prediction of {len(changed)} record(s), e.g. {changed[0][0]} ({changed[0][1]})"] if changed else [])
    return d


def run(ctx: Ctx) -> None:
    res, s, data = ctx.result, ctx.scale, ctx.work / "data"
    res.title = (f"validate and the report on {s.images} synthetic images, {ctx.device}: images/s and the largest "
                 f"difference from the fp32 run at batch {s.batches[0]} (tolerance {TOLERANCE:g})")
    res.columns = ["command", "models", "device", "batch", "precision", "images/s (loop)", "wall s", "top-1",
                   "max |diff| vs fp32", "exceeds 1e-3"]
    for name, weights in s.validate_models:
        ref = None
        for batch in s.batches:
            for amp in (False, True):
                run = run_validate(ctx, name, weights, data, batch, amp, f"validate_{name}_{batch}_{int(amp)}")
                j = run["json"]
                if ref is None:
                    ref, d = run, None
                else:
                    d = diff_validate(ref, run)
                    what = f"validate {name} batch {batch} {'bf16' if amp else 'fp32'} vs fp32 batch {s.batches[0]}"
                    res.check(what, not d["exceeds"], json.dumps({k: r(v, 6) for k, v in d.items()}))
                worst = max((v for k, v in (d or {}).items() if k not in ("images", "exceeds", "predictions_changed")),
                            default=0.0)
                res.row("validate", f"{name} ({weights})", j["settings"]["device"], batch, "bf16" if amp else "fp32",
                        r(j["timing"]["images_per_s"], 1), r(run["wall_s"], 2), r(j["top1"]),
                        "reference" if d is None else f"{worst:.2e}",
                        "" if d is None else (", ".join(d["exceeds"]) or "none"))
        if s.cpu_subset:  # without CUDA: the CPU against itself, which checks this code only
            sub = subset_list(ctx.work, s.cpu_subset)
            cpu = run_validate(ctx, name, weights, sub, s.batches[0], False, f"validate_{name}_cpu", device="cpu")
            d = diff_validate(ref, cpu)  # the GPU's fp32 run on the same images
            res.check(f"validate {name}: cpu fp32 vs {ctx.device} fp32 on {d['images']} images", not d["exceeds"],
                      json.dumps({k: r(v, 6) for k, v in d.items()}))
            worst = max(d["prob"], d["loss_per_image"])
            res.row("validate", f"{name} ({weights})", "cpu", s.batches[0], "fp32",
                    r(cpu["json"]["timing"]["images_per_s"], 1), r(cpu["wall_s"], 2), r(cpu["json"]["top1"]),
                    f"{worst:.2e} (vs {ctx.device})", ", ".join(d["exceeds"]) or "none")
    refs: dict[tuple, dict[str, Any]] = {}
    for models, weights, batch, amp in s.report_runs:
        run = run_report(ctx, list(models), weights, [str(data)], batch, amp,
                         f"report_{'_'.join(models)}_{batch}_{int(amp)}")
        key = (models, weights)
        d = None
        if key not in refs:
            refs[key] = run
        else:
            d = diff_report(refs[key], run)
            ref_batch = refs[key]["json"]["settings"]["batch_size"]
            res.check(f"report {' + '.join(models)} batch {batch} {'bf16 autocast' if amp else 'fp32'} vs fp32 batch "
                      f"{ref_batch}", not d["exceeds"], json.dumps({k: r(v, 6) for k, v in d.items()}))
        t = run["json"]["timing"]
        res.row("report --only rollout", " + ".join(models) + f" ({weights})", run["json"]["device"], batch,
                "bf16 autocast" if amp else "fp32", r(t["loop_images_per_s"], 1), r(run["wall_s"], 2),
                "", "reference" if d is None else f"{d['worst']:.2e}",
                "" if d is None else (", ".join(d["exceeds"]) or "none"))
    res.note("images/s (loop): the command's own timing of its batch loop (decoding in DataLoader workers, the "
             "forward or trace, the journal); wall s: the whole call in this process, model loading and writing "
             "included. The report is run with --pictures 0 --least-confident 0 (no pictures drawn).")
    res.note("The report has no --amp option: its bf16 rows are the same call inside torch.autocast(bfloat16), "
             "what such an option would do.")

