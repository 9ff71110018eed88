"""t2t-lens on a GPU, in one call: the app's pages, validate and the report with and without mixed
precision, torchrun, the out-of-memory fall-back, and the trace against a bare forward.

    bash benchmarks/gpu_check.sh --download        # here (internet): wheels the GPU machine lacks -> .gpu_wheels/
    bash benchmarks/gpu_check.sh [--out DIR]       # there: install them (pip --no-index), run every part

The lent GPU machine (no internet; its own python3 with a CUDA build of torch) gets its one call
from the `run` tool of a session whose `status` says a device is drawn, with the wheel folder carried:

    run(command="bash benchmarks/gpu_check.sh --budget-s 370", carry=[".gpu_wheels"], timeout_s=420)

That fits the 15 device minutes with one rerun: about 1.5 min to start a machine, 7 min for the
call, and a rerun of only what failed on a fresh machine (start again included):
`run(command="bash benchmarks/gpu_check.sh --budget-s 200 --parts oom pages", carry=[".gpu_wheels"],
timeout_s=240)`. What comes back under $OUT: gpu_check.json (every number), gpu_check.md (the
tables for the README) and gpu_check.log (every part's output). The working tree travels too: keep
tracked files + .gpu_wheels under 64 MiB (`--download` prints the sum: 46.2 + 8.0 = 54.2 MiB when
written). The wheels are the runtime dependencies the machine's image lacks (KINDS.md's list:
streamlit, plotly, captum, altair, pydeck and their 11 small needs), at this .venv's versions, for
CPython 3.12 x86-64, with the browser and notebook assets (streamlit/static, plotly.min.js, pydeck's
nbextension bundle) left out: AppTest and figure JSON never read them. They were checked to install
with `pip --no-index` and run AppTest with a plotly chart under a Python 3.12 here; the machine's
torch (2.11 when last read) is older than the pinned 2.13, which could not be tried here.

Each part runs in its own process with its own time limit (killed with its children when over it;
results written after every row survive), in this order:
- trace: t2t_vit_14 bare forward, full trace (`t2t.trace(..., attention=True)`) and a plain
  functional forward (benchmarks/bench_trace.py's) at batch 1 / 16 / 64, fp32 and bf16 autocast;
  the same bare forward on the machine's CPU: the GPU's speed-up.
- validate: `python -m t2t validate` and `python -m analysis.report --only rollout` on a
  2,000-image synthetic folder (t2t.data.LocalStructureDataset's test split, PNG), images/s at two
  batch sizes, fp32 and `--amp`; every reported number (top-1, top-5, mean loss; per image the
  prediction, its probability and loss; the report's top-5 probabilities and rollout maps) against
  the fp32 run, tolerance 1e-3, naming what differs; a CPU run on 256 of the images (images/s, and
  GPU fp32 vs CPU). The report has no --amp option: its "amp" runs are the same call inside a
  bfloat16 `torch.autocast`, what such an option would do (said so in the output).
- torchrun: `torchrun --nproc_per_node=1` (NCCL on a GPU) against one process: the same JSON
  except timing. With one process the library starts no process group (`Dist.from_env`: a run of
  one), so NCCL itself is checked by an all_reduce under the same torchrun. Without CUDA: 2 ranks
  on gloo, which does shard and gather.
- pages: every page of app/main.py through streamlit's AppTest, with the embedded models and with
  t2t_vit_14 + deit_small_patch16_224 (random weights: the released models' compute), chosen by
  the app's own link parameters: seconds to start (models loaded), per page the first visit and a
  new image (the Example number), the device the sidebar names, errors and bars still running.
- oom: GPU memory filled with one tensor in the same process, then (library) validate and the
  report at a batch that cannot fit, (app) the first page: does the work complete, on which
  device, with which message; then the tensor is freed and the GPU checked usable (a forward equal
  to the CPU's; the app's "Use the GPU again"). Without CUDA it is simulated (a patched
  `t2t.loading.load_model` raises torch.OutOfMemoryError), which checks this script's code, not
  the fall-back's behaviour on a GPU.

Without CUDA every part runs at tiny sizes on the CPU and the script exits 0 when its own code
worked (tests/benchmarks/test_gpu_check.py): no GPU number is measured then. Only the app's public
paths (app/main.py, app/views/*.py), widget keys and link parameters are used, never its modules.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = ("trace", "validate", "torchrun", "pages", "oom")
TOLERANCE = 1e-3
WHEELS = ".gpu_wheels"


@dataclass(frozen=True)
class Scale:
    name: str
    images: int  # the synthetic folder
    batches: tuple[int, ...]  # validate and the report
    validate_models: tuple[tuple[str, str], ...]  # (name, weights)
    report_runs: tuple[tuple[tuple[str, str], str, int, bool], ...]  # (models, weights, batch, amp)
    cpu_subset: int  # images of the CPU comparison (0: none)
    torchrun_images: int
    pairs: tuple[tuple[str, dict[str, str]], ...]  # app model pairs: label, link parameters
    trace_model: str
    trace_batches: tuple[int, ...]
    repeats: int
    oom_batch: int
    limits: dict[str, int] = field(default_factory=dict)  # seconds per part


EMBEDDED_PAIR = ("embedded (t2t_vit_7 + deit_tiny_patch16_224)", {})
RANDOM_PAIR = ("t2t_vit_14 + deit_small_patch16_224, random weights",
               {"t2t": "t2t_vit_14", "t2t_w": "random", "vit": "deit_small_patch16_224", "vit_w": "random"})
EMBEDDED_MODELS = ("t2t_vit_7", "deit_tiny_patch16_224")
TINY_PAIR = ("t2t_vit_7 + deit_tiny_patch16_224, random weights (chosen by link parameters)",
             {"t2t": "t2t_vit_7", "t2t_w": "random", "vit": "deit_tiny_patch16_224", "vit_w": "random"})

FULL = Scale(
    "full", images=2000, batches=(64, 256),
    validate_models=(("t2t_vit_7", "embedded"), ("t2t_vit_14", "random")),
    report_runs=tuple((EMBEDDED_MODELS, "embedded", b, amp) for b in (64, 256) for amp in (False, True))
    + tuple((("t2t_vit_14", "deit_small_patch16_224"), "random", 64, amp) for amp in (False, True)),
    cpu_subset=256, torchrun_images=512, pairs=(EMBEDDED_PAIR, RANDOM_PAIR), trace_model="t2t_vit_14",
    trace_batches=(1, 16, 64), repeats=10, oom_batch=1024,
    limits={"trace": 40, "validate": 150, "torchrun": 45, "pages": 100, "oom": 60})
TINY = Scale(
    "tiny", images=12, batches=(4, 8), validate_models=(("t2t_vit_7", "embedded"),),
    report_runs=((EMBEDDED_MODELS, "embedded", 4, False), (EMBEDDED_MODELS, "embedded", 4, True)),
    cpu_subset=6, torchrun_images=6, pairs=(TINY_PAIR,), trace_model="t2t_vit_7", trace_batches=(1,),
    repeats=1, oom_batch=8,
    # only against hangs: on a shared 2-core CPU the parts took 4-50 s each, at a load of 4 to 9
    limits={"trace": 120, "validate": 240, "torchrun": 180, "pages": 240, "oom": 180})


# ----------------------------------------------------------------------------------------------
# What a part hands back: rows of a table, checks, notes (saved after every row)
# ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    path: Path
    title: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # {"check", "ok", "detail"}
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    status: str = "running"  # then ok | differs | simulated | skipped | error | timeout

    def row(self, *values: Any) -> None:
        self.rows.append(list(values))
        self.save()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  [{'ok' if ok else 'DIFFERS'}] {name}{': ' + detail if detail else ''}", flush=True)
        self.save()
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()

    def save(self) -> None:
        d = asdict(self)
        d.pop("path")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(d, indent=1, default=str))
        os.replace(tmp, self.path)


@dataclass
class Ctx:
    scale: Scale
    device: str  # "cuda" or "cpu"
    work: Path  # scratch folder: data, outputs of the commands
    deadline: float  # time.monotonic() by which the part must be done
    result: Result

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def r(v: Any, digits: int = 4) -> Any:
    return round(v, digits) if isinstance(v, float) and math.isfinite(v) else v


# ----------------------------------------------------------------------------------------------
# Data: the synthetic folder and subsets of it as file lists
# ----------------------------------------------------------------------------------------------


def _write_image(args: tuple[str, int, int]) -> None:
    from t2t.data import LocalStructureDataset

    root, i, n = args
    ds = LocalStructureDataset("test", size=n)
    folder = Path(root) / str(ds.label(i))
    folder.mkdir(parents=True, exist_ok=True)
    ds.image(i).save(folder / f"{i:05d}.png", compress_level=1)


def write_folder(root: Path, n: int) -> float:
    """n synthetic test images, 224 px PNG, in class-index sub-folders (validate's layout); seconds taken."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    jobs = [(str(root), i, n) for i in range(n)]
    procs = min(16, os.cpu_count() or 1)
    if procs > 1 and n > 64:
        with mp.get_context("fork").Pool(procs) as pool:
            pool.map(_write_image, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_image(job)
    return time.perf_counter() - t0


def all_images(data: Path) -> list[tuple[str, int]]:
    return sorted((f"{p.parent.name}/{p.name}", int(p.parent.name)) for p in data.glob("*/*.png"))


def subset_list(work: Path, n: int) -> Path:
    """A validate file list of n images spread over every class (paths relative to the data folder)."""
    files = all_images(work / "data")
    step = max(1, len(files) // n)
    chosen = files[::step][:n]
    path = work / f"list_{n}.txt"
    path.write_text("".join(f"{p} {y}\n" for p, y in chosen))
    (work / "data" / path.name).write_text(path.read_text())  # beside the images: paths resolve from there
    return work / "data" / path.name


# ----------------------------------------------------------------------------------------------
# Part 5: trace vs bare forward
# ----------------------------------------------------------------------------------------------


def part_trace(ctx: Ctx) -> None:
    import importlib.util

    import torch

    import t2t

    spec = importlib.util.spec_from_file_location("bench_trace", ROOT / "benchmarks" / "bench_trace.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    res, dev, s = ctx.result, ctx.device, ctx.scale
    res.title = f"{s.trace_model} at 224, random weights: bare forward, full trace, plain forward (ms, median)"
    res.columns = ["device", "batch", "bare ms", "trace ms", "plain ms", "bare bf16 ms", "trace/bare", "bare/plain",
                   "bare images/s"]
    torch.manual_seed(0)
    model = t2t.create_model(s.trace_model).eval().to(dev)
    if ctx.cuda:
        res.data["gpu"] = torch.cuda.get_device_name(0)
    for batch in s.trace_batches:
        x = torch.randn(batch, 3, 224, 224, device=dev)
        with torch.inference_mode():
            bare, plain = model(x), bench.plain_forward(model, x)
            traced = t2t.trace(model, x, attention=True)["logits"]
            res.check(f"batch {batch}: trace and plain logits = bare (1e-4)",
                      torch.allclose(traced, bare, atol=1e-4) and torch.allclose(plain, bare, atol=1e-4),
                      f"max |trace - bare| {float((traced - bare).abs().max()):.2e}, "
                      f"max |plain - bare| {float((plain - bare).abs().max()):.2e}")

            def bf16(x: Any = x) -> Any:
                with torch.autocast(dev, torch.bfloat16):
                    return model(x)

            runs = {"bare": lambda x=x: model(x), "trace": lambda x=x: t2t.trace(model, x, attention=True),
                    "plain": lambda x=x: bench.plain_forward(model, x), "bf16": bf16}
            for fn in runs.values():
                for _ in range(2 if ctx.cuda else 1):
                    timed(fn, dev)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(s.repeats):
                for k, fn in runs.items():
                    times[k].append(timed(fn, dev)[0])
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        res.row(dev, batch, r(med["bare"], 2), r(med["trace"], 2), r(med["plain"], 2), r(med["bf16"], 2),
                r(med["trace"] / med["bare"], 2), r(med["bare"] / med["plain"], 2), r(batch / med["bare"] * 1e3, 1))
    if ctx.cuda:  # the same forward on this machine's CPU: what the GPU buys
        model = model.cpu()
        x = torch.randn(16, 3, 224, 224)
        with torch.inference_mode():
            model(x)
            cpu = statistics.median(timed(lambda: model(x))[0] for _ in range(3)) * 1e3
        res.row(f"cpu ({torch.get_num_threads()} threads)", 16, r(cpu, 1), "", "", "", "", "", r(16 / cpu * 1e3, 1))
        res.note("The cpu row: the same bare forward on the GPU machine's own CPU (3 runs).")


# ----------------------------------------------------------------------------------------------
# Part 2: validate and the report, fp32 and bf16, two batch sizes, and the CPU
# ----------------------------------------------------------------------------------------------


def quiet_call(fn: Callable[[], Any]) -> tuple[Any, str]:
    """fn() with its stderr captured (progress bars, the command's summary); returns (value, stderr text)."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        out = fn()
    return out, buf.getvalue()


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


def part_validate(ctx: Ctx) -> None:
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


# ----------------------------------------------------------------------------------------------
# Part 3: torchrun against one process
# ----------------------------------------------------------------------------------------------


def strip_run(j: Any) -> Any:
    """A validate JSON without what describes the run rather than the result."""
    return {k: v for k, v in j.items() if k not in ("timing", "world_size", "images_per_rank")}


def json_diff(a: Any, b: Any, where: str = "") -> tuple[list[str], float]:
    """Paths where a and b differ (floats beyond 1e-6) and the largest float difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        out, worst = [], 0.0
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}/{k} (only in one)")
                continue
            o, w = json_diff(a[k], b[k], f"{where}/{k}")
            out, worst = out + o, max(worst, w)
        return out, worst
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where} (length {len(a)} vs {len(b)})"], 0.0
        out, worst = [], 0.0
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            o, w = json_diff(x, y, f"{where}[{i}]")
            out, worst = out + o, max(worst, w)
        return out, worst
    if isinstance(a, float) and isinstance(b, float):
        d = abs(a - b)
        return ([f"{where} ({a} vs {b})"] if d > 1e-6 else []), d
    return ([] if a == b else [f"{where} ({a!r} vs {b!r})"]), 0.0


def command(argv: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                              os.environ.get("PYTHONPATH"), str(ROOT)]))})
    return time.perf_counter() - t0, done


def part_torchrun(ctx: Ctx) -> None:
    res, s = ctx.result, ctx.scale
    ranks = 1 if ctx.cuda else 2
    backend = "nccl" if ctx.cuda else "gloo"
    res.title = (f"validate t2t_vit_7 on {s.torchrun_images} images: `torchrun --nproc_per_node={ranks}` "
                 f"({backend}) against one process")
    res.columns = ["run", "seconds", "images/s (loop)", "top-1", "same JSON (timing aside)"]
    data = subset_list(ctx.work, s.torchrun_images)
    workers = "4" if ctx.cuda else "0"
    common = ["-m", "t2t", "validate", "--model", "t2t_vit_7", "--weights", "embedded", "--data", str(data),
              "--batch-size", str(s.batches[0]), "--workers", workers]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    outs = {}
    for label, prefix in (("one process", [sys.executable]), (f"torchrun {ranks} x {backend}", torchrun)):
        out = ctx.work / "out" / f"torchrun_{ranks if 'torchrun' in label else 0}.json"
        wall, done = command([*prefix, *common, "--out", str(out)], max(5.0, ctx.left() - 5))
        if done.returncode:
            res.check(f"{label} ran", False, done.stderr[-2000:])
            return
        outs[label] = json.loads(out.read_text())
        j = outs[label]
        same = ""
        if len(outs) == 2:
            diffs, worst = json_diff(*(strip_run(v) for v in outs.values()))
            same = "yes" if not diffs else f"no: {len(diffs)} field(s)"
            res.check(f"torchrun {ranks} x {backend} gives the one-process JSON (timing, world_size and "
                      f"images_per_rank aside)", not diffs, "; ".join(diffs[:5]) or f"largest float diff {worst:.1e}")
            res.data["images_per_rank"] = j["images_per_rank"]
        res.row(label, r(wall, 2), r(j["timing"]["images_per_s"], 1), r(j["top1"]), same)
    if ctx.cuda:
        res.note("With --nproc_per_node=1 the library starts no process group (t2t.distributed.Dist.from_env: "
                 "WORLD_SIZE 1 is a run of one), so validate does not use NCCL here; NCCL is checked below "
                 "by an all_reduce and a gloo object broadcast under the same torchrun. One GPU cannot host two "
                 "NCCL ranks (each rank takes cuda:LOCAL_RANK).")
    # the collectives themselves, with this backend, under the same torchrun
    dev = "cuda" if ctx.cuda else "cpu"
    script = (f"import torch, torch.distributed as d; d.init_process_group('{backend}'); "
              + ("torch.cuda.set_device(0); " if ctx.cuda else "")
              + f"t = torch.ones(4, device='{dev}'); d.all_reduce(t); g = d.new_group(backend='gloo'); "
              "box = [{'ok': 1}] if d.get_rank() == 0 else [None]; d.broadcast_object_list(box, 0, group=g); "
              "print('rank', d.get_rank(), 'all_reduce', t.tolist(), box[0], flush=True); d.destroy_process_group()")
    wall, done = command([*torchrun, "--no-python", sys.executable, "-c", script], max(5.0, ctx.left() - 2))
    want = f"all_reduce {[float(ranks)] * 4} {{'ok': 1}}"
    res.check(f"{backend} under torchrun --nproc_per_node={ranks}: init, all_reduce, gloo object broadcast",
              done.returncode == 0 and done.stdout.count(want) == ranks, done.stdout.strip() or done.stderr[-1500:])


# ----------------------------------------------------------------------------------------------
# Part 1: every app page through AppTest
# ----------------------------------------------------------------------------------------------


def app_pages() -> list[str]:
    """The pages as AppTest.switch_page takes them: paths relative to app/main.py."""
    return [str(p.relative_to(ROOT / "app")) for p in sorted((ROOT / "app" / "views").glob("[0-9]*.py"))]


def app_state(at: Any) -> dict[str, Any]:
    """What a user sees that this check reads: headers, errors, warnings, the device caption, exceptions."""
    captions = [c.value for c in at.sidebar.caption]
    return {"header": [h.value for h in at.header], "errors": [e.value for e in at.error],
            "warnings": [w.value for w in at.warning] + [w.value for w in at.sidebar.warning],
            "device": next((c for c in captions if c.startswith("Device:")), "no device caption"),
            "exceptions": [str(e.value)[:500] for e in at.exception], "bars_running": len(at.get("progress"))}


def app_run(at: Any, timeout: float) -> tuple[float, dict[str, Any] | str]:
    """Run the app once; (seconds, what it shows) or (seconds, the error text) when the run itself failed."""
    t0 = time.perf_counter()
    try:
        at.run(timeout=timeout)
    except Exception as e:  # a run over its time, or AppTest itself failing
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:500]
    return time.perf_counter() - t0, app_state(at)


def part_pages(ctx: Ctx) -> None:
    from streamlit.testing.v1 import AppTest

    res, s = ctx.result, ctx.scale
    pages = app_pages()
    res.title = "every app page through AppTest: seconds for the first visit and for a new image"
    res.columns = ["models", "page", "first visit s", "new image s", "device", "shown errors", "bars left"]
    example = 100
    for label, params in s.pairs:
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=max(10.0, ctx.left()))
        at.query_params.update(params)
        seconds, state = app_run(at, max(10.0, ctx.left()))
        if isinstance(state, str) or state["exceptions"]:
            res.check(f"{label}: the app starts", False, str(state))
            continue
        chosen = {k: at.selectbox(key=k).value for k in ("T2T-ViT_name", "ViT_name")}
        wanted = {"T2T-ViT_name": params.get("t2t", EMBEDDED_MODELS[0]), "ViT_name": params.get("vit",
                                                                                                 EMBEDDED_MODELS[1])}
        res.check(f"{label}: the sidebar shows the models asked for", chosen == wanted, json.dumps(chosen))
        res.check(f"{label}: computes on {ctx.device}", f"**{ctx.device}" in state["device"], state["device"])
        res.row(label, "start (loads both models, default page)", r(seconds, 2), "", state["device"],
                len(state["errors"]), state["bars_running"])
        for page in pages:
            at.switch_page(page)
            first, state1 = app_run(at, max(10.0, ctx.left()))
            example += 1
            new = float("nan")
            state2: dict[str, Any] | str = "not run"
            if not isinstance(state1, str):
                at.number_input(key="synthetic_example").set_value(example)
                new, state2 = app_run(at, max(10.0, ctx.left()))
            bad = [x for x in (state1, state2) if isinstance(x, str) or x["exceptions"]]
            res.check(f"{label}: {page} renders, first visit and new image", not bad, str(bad)[:800])
            shown = [x for x in (state1, state2) if isinstance(x, dict)]
            res.row(label, page, r(first, 2), r(new, 2), shown[-1]["device"] if shown else "",
                    sum(len(x["errors"]) for x in shown), shown[-1]["bars_running"] if shown else "")
            if ctx.left() < 5:
                res.note("out of time: the remaining pages were not visited")
                return
    res.note("AppTest runs each script run in this process, no browser: the seconds are the script runs "
             "(compute, figures built) without sending or drawing. The start row includes loading both models and "
             "the default page; a page's first visit follows it in the same session (models loaded); new image: "
             "the sidebar's Example number changed, so both traces and the page's analyses are new. Bars left: "
             "progress bars of background jobs still running when the run ended.")


# ----------------------------------------------------------------------------------------------
# Part 4: the out-of-memory fall-back, caused for real (GPU) or simulated (CPU)
# ----------------------------------------------------------------------------------------------


def fill_gpu(leave_bytes: int) -> list[Any]:
    """uint8 tensors taking all free GPU memory but about `leave_bytes` (0: everything down to the last MiB)."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()  # cached blocks would serve the next allocations: nothing would run out
    blocks: list[Any] = []
    size = max(0, torch.cuda.mem_get_info()[0] - leave_bytes)
    while size >= 2**20:
        try:
            blocks.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:  # rounding, fragmentation: take what does fit, in smaller pieces
            size //= 2
            continue
        size = min(size, max(0, torch.cuda.mem_get_info()[0] - leave_bytes))
    return blocks


@contextlib.contextmanager
def simulated_oom(library: bool) -> Iterator[None]:
    """No CUDA: t2t.loading.load_model patched so the code path of an out-of-memory error runs.

    library: models whose forward raises torch.OutOfMemoryError on batches over 2 (validate's split).
    app: torch.cuda reports a device, and loading onto it raises torch.OutOfMemoryError.
    """
    import torch

    import t2t.loading

    real = t2t.loading.load_model
    patched: list[tuple[Any, str, Any]] = []

    def load(name: str, weights: Any = "embedded", device: Any = "cpu", **kw: Any) -> Any:
        if not library and torch.device(device).type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by benchmarks/gpu_check.py)")
        model = real(name, weights, "cpu" if not library else device, **kw)
        if library:
            forward = model.forward

            def small_batches_only(x: Any, *a: Any, **k: Any) -> Any:
                if x.shape[0] > 2:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated by benchmarks/gpu_check.py)")
                return forward(x, *a, **k)

            model.forward = small_batches_only
        return model

    patched.append((t2t.loading, "load_model", load))
    if not library:
        patched += [(torch.cuda, "is_available", lambda: True), (torch.cuda, "get_device_name", lambda *_: "simulated")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]
    for obj, name, value in patched:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def gpu_usable(res: Result) -> bool:
    """After freeing: a forward on the GPU equals the CPU's."""
    import torch

    import t2t

    torch.manual_seed(0)
    model = t2t.create_model("t2t_vit_7").eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        want = model(x)
        got = model.cuda()(x.cuda()).cpu()
    err = float((got - want).abs().max())
    return res.check("the GPU is usable afterwards: a t2t_vit_7 forward on it equals the CPU's (1e-4)",
                     err < 1e-4, f"max |gpu - cpu| {err:.1e}, {torch.cuda.memory_allocated() / 2**20:.0f} MiB "
                     "allocated")


def part_oom(ctx: Ctx) -> None:
    import torch

    res, s = ctx.result, ctx.scale
    simulate = not ctx.cuda
    res.title = "out of GPU memory: validate, the report and the app" + (" (SIMULATED: no CUDA)" if simulate else "")
    res.columns = ["what", "batch", "completed", "device", "seconds", "what the user sees"]
    if simulate:
        res.note("No CUDA: nothing can run out of GPU memory here. The out-of-memory error is raised by a patched "
                 "t2t.loading.load_model (library: forwards over 2 images; app: loading onto the GPU), which runs "
                 "this check's code, not a measurement.")
    data = subset_list(ctx.work, min(s.oom_batch, s.images))
    files = [str(data.parent / line.split()[0]) for line in data.read_text().splitlines()]

    # library: validate and the report at a batch that cannot fit
    filler = None
    if not simulate:
        import t2t.loading

        model = t2t.loading.load_model("t2t_vit_7", "embedded", "cuda")
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            model(torch.randn(16, 3, 224, 224, device="cuda"))
        per16 = torch.cuda.max_memory_allocated() - base
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        torch.cuda.empty_cache()
        leave = 2 * weights + 8 * per16 + 256 * 2**20  # ~128 images fit; the batch of s.oom_batch does not
        filler = fill_gpu(leave)
        res.data["library"] = {"peak_bytes_per_16_images": per16, "left_free_bytes": leave,
                               "filler_bytes": sum(t.numel() for t in filler)}
    with simulated_oom(library=True) if simulate else contextlib.nullcontext():
        for what, call in (
            ("validate", lambda: run_validate(ctx, "t2t_vit_7", "embedded", data, s.oom_batch, False, "oom_validate")),
            ("report --only rollout", lambda: run_report(ctx, list(EMBEDDED_MODELS), "embedded", files, s.oom_batch,
                                                         False, "oom_report")),
        )[:1 if simulate else 2]:  # simulated, the report (no forward() call: it traces) would show nothing
            t0 = time.perf_counter()
            try:
                out = call()
                j = out["json"]
                dev = j["settings"]["device"] if "settings" in j and "device" in j["settings"] else j.get("device")
                res.row(what, s.oom_batch, "yes", dev, r(time.perf_counter() - t0, 2),
                        "nothing: batches split in halves until they fit" if what == "validate" else "nothing")
                res.check(f"{what} completes with the GPU full", True, f"on {dev}")
                res.data[what] = {k: j.get(k) for k in ("top1", "top5", "loss")}
            except BaseException as e:  # what the user would see: the error that ends the command
                text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                res.row(what, s.oom_batch, "no", "", r(time.perf_counter() - t0, 2), text)
                res.check(f"{what} completes with the GPU full", False, text)
                if isinstance(e, KeyboardInterrupt):
                    raise
    if filler is not None:
        del filler
        torch.cuda.empty_cache()
        gpu_usable(res)
        again = run_validate(ctx, "t2t_vit_7", "embedded", data, s.oom_batch, False, "oom_validate_free")
        if "validate" in res.data:
            j = again["json"]
            d = max(abs(j[k] - res.data["validate"][k]) for k in ("top1", "top5", "loss"))
            res.check("validate with the GPU full (split batches) = with the GPU free (1e-4)", d < 1e-4, f"{d:.1e}")

    # the app: its first page with the GPU full
    from streamlit.testing.v1 import AppTest

    if not simulate:
        torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")  # cuBLAS set up before the filling
        filler = fill_gpu(0)
    with simulated_oom(library=False) if simulate else contextlib.nullcontext():
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=max(10.0, ctx.left()))
        seconds, state = app_run(at, max(10.0, ctx.left()))
        if isinstance(state, str) or state["exceptions"]:
            res.row("app, first page", 1, "no", "", r(seconds, 2), str(state)[:300])
            res.check("the app falls back to the CPU with a message", False, str(state)[:800])
            return
        notice = [w for w in state["warnings"] if "out of memory" in w]
        on_cpu = "**cpu**" in state["device"]
        res.row("app, first page", 1, "yes" if state["header"] else "no", state["device"], r(seconds, 2),
                notice[0] if notice else "no out-of-memory notice")
        res.check("the app falls back to the CPU: page drawn on the CPU with the out-of-memory notice",
                  bool(state["header"]) and on_cpu and bool(notice), json.dumps(state)[:800])
    buttons = [b for b in at.button if b.label == "Use the GPU again"]
    offered = res.check("the app offers 'Use the GPU again'", bool(buttons), str([b.label for b in at.button]))
    if not offered or simulate:
        return
    del filler
    torch.cuda.empty_cache()
    gpu_usable(res)
    buttons[0].click()
    seconds, state = app_run(at, max(10.0, ctx.left()))
    ok = not isinstance(state, str) and not state["exceptions"] and "**cuda" in state["device"]
    res.row("app, 'Use the GPU again'", 1, "yes" if ok else "no", state if isinstance(state, str) else state["device"],
            r(seconds, 2), "")
    res.check("after 'Use the GPU again' the app computes on the GPU", ok, str(state)[:800])


# ----------------------------------------------------------------------------------------------
# --download (here, with internet): the wheels the GPU machine lacks, pruned to fit the carry limit
# ----------------------------------------------------------------------------------------------

# The GPU machine's python3 packages (/work/.library/device/KINDS.md, "Python packages already there", read on
# that image 2026-11-17): only what is not among them is carried.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split())
# What the library, the report and the app import (requirements.txt without torch and the test/notebook tools).
RUNTIME = ("einops", "safetensors", "numpy", "pillow", "tqdm", "streamlit", "plotly", "matplotlib", "captum")
# Browser and notebook assets that AppTest and figure JSON never read: left out so the wheels fit the carry limit.
PRUNE = {"streamlit": ("streamlit/static/",),
         "plotly": ("plotly/package_data/widgetbundle.js", "plotly/package_data/plotly.min.js",
                    "plotly/labextension/static/", "plotly-{version}.data/"),
         "pydeck": ("pydeck/nbextension/static/", "pydeck-{version}.data/")}  # pydeck/nbextension/__init__ is imported
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
CARRY_LIMIT = 64 * 2**20


def canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def missing_on_device() -> dict[str, str]:
    """name -> version (this environment's, where the tests ran) of every runtime dependency the device lacks."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, seen, need = list(RUNTIME), set(), {}
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise SystemExit(f"{name} is needed on the device but not installed here: no version to pin") from e
        if name not in DEVICE_HAS:
            need[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(DEVICE_PYTHON):
                todo.append(req.name)
    return dict(sorted(need.items()))


def prune(wheel: Path, dest: Path) -> tuple[int, int]:
    """Copy `wheel` to dest/, leaving out PRUNE's paths (and their RECORD lines); returns (files dropped, bytes)."""
    import zipfile

    name, version = wheel.name.split("-")[:2]
    drop = tuple(p.format(version=version) for p in PRUNE.get(canonical(name), ()))
    target = dest / wheel.name
    dropped = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info in src.infolist():
            if drop and info.filename.startswith(drop):
                dropped += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD") and drop:
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not line.startswith(drop)).encode()
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dropped, target.stat().st_size


def tree_bytes() -> int:
    """Bytes of what a device call sends besides the carried folders: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def download(dest: Path) -> int:
    """pip download, for the device's Python 3.12 on x86-64 Linux, every missing wheel, pruned, into dest."""
    import shutil

    need = missing_on_device()
    raw = ROOT / ".cache" / "gpu_wheels_full"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                            "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version=3.12",
           "--implementation=cp", *platforms, "-d", str(raw), *(f"{n}=={v}" for n, v in need.items())]
    print("pip download", " ".join(f"{n}=={v}" for n, v in need.items()), flush=True)
    subprocess.run(cmd, check=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    total = 0
    lines = []
    for wheel in sorted(raw.glob("*.whl")):
        dropped, size = prune(wheel, dest)
        total += size
        lines.append(f"{wheel.name}: {size / 2**20:.2f} MiB (of {wheel.stat().st_size / 2**20:.2f})"
                     + (f", {dropped} browser/notebook asset files left out" if dropped else ""))
    got = {canonical(w.name.split("-")[0]) for w in dest.glob("*.whl")}
    if got != set(need):
        raise SystemExit(f"missing wheels: {sorted(set(need) - got)}")
    tree = tree_bytes()
    (dest / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{len(lines)} wheels, {total / 2**20:.1f} MiB; with the working tree ({tree / 2**20:.1f} MiB) "
          f"{(total + tree) / 2**20:.1f} MiB of the {CARRY_LIMIT / 2**20:.0f} MiB a call may send")
    if total + tree > CARRY_LIMIT:
        print("TOO LARGE to carry: remove untracked files or prune more", file=sys.stderr)
        return 1
    return 0


PART_FUNCTIONS: dict[str, Callable[[Ctx], None]] = {
    "trace": part_trace, "validate": part_validate, "torchrun": part_torchrun, "pages": part_pages, "oom": part_oom}


def run_part(args: argparse.Namespace) -> int:
    """In a child process: one part, its result saved to --result as it goes."""
    import torch

    os.environ.setdefault("TQDM_DISABLE", "1")
    scale = FULL if args.scale == "full" else TINY
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = Result(Path(args.result))
    ctx = Ctx(scale, device, Path(args.work), time.monotonic() + args.limit, res)
    (ctx.work / "out").mkdir(parents=True, exist_ok=True)
    res.save()
    try:
        PART_FUNCTIONS[args.part](ctx)
    except BaseException:
        res.status = "error"
        res.note("error: " + traceback.format_exc()[-3000:])
        traceback.print_exc()
        return 1
    res.status = ("simulated" if args.part == "oom" and device == "cpu"
                  else "ok" if all(c["ok"] for c in res.checks) else "differs")
    res.save()
    return 0


# ----------------------------------------------------------------------------------------------
# The whole run: parts as child processes with time limits, then JSON and Markdown
# ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpus": os.cpu_count(), "load": os.getloadavg()}
    for name in ("streamlit", "plotly", "captum", "numpy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[name] = version(name)
    with contextlib.suppress(Exception):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    return info


def run_child(part: str, scale: str, work: Path, limit: float, log: Path) -> dict[str, Any]:
    """Run one part in its own process group, killed (with its torchrun and DataLoader children) over `limit`."""
    result = work / f"{part}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--scale", scale, "--work", str(work),
           "--result", str(result), "--limit", str(limit)]
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== {part} (limit {limit:.0f} s) =====\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        status = None
        try:
            proc.wait(timeout=limit + 10)  # the part watches its own deadline; this is the backstop
        except subprocess.TimeoutExpired:
            status = "timeout"
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
    out = json.loads(result.read_text()) if result.exists() else {"status": "error", "rows": [], "checks": [],
                                                                  "notes": [], "columns": [], "title": part}
    if status:
        out["status"] = status
        out.setdefault("notes", []).append(f"stopped after {limit + 10:.0f} s (its limit): the rows above are what "
                                           "it finished")
    elif proc.returncode and out.get("status") not in ("error",):
        out["status"] = "error"
        out.setdefault("notes", []).append(f"the part's process ended with code {proc.returncode} (see the log)")
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# gpu_check: {report['mode']}", "",
             f"{m.get('gpu') or 'no GPU'}; torch {m['torch']} (CUDA {m['cuda']}), Python {m['python']}, "
             f"{m['cpus']} CPUs, load {', '.join(f'{v:.2f}' for v in m['load'])} at the start; streamlit "
             f"{m.get('streamlit')}, plotly {m.get('plotly')}, captum {m.get('captum')}. "
             f"{report['created']}, {report['seconds']:.0f} s of a {report['budget_s']} s budget.", ""]
    if report.get("data"):
        lines += [f"Data: {report['data']}", ""]
    for name, part in report["parts"].items():
        lines += [f"## {name}: {part.get('status')} ({part.get('seconds', 0)} s)", "", part.get("title", ""), ""]
        if part.get("columns") and part.get("rows"):
            lines.append("| " + " | ".join(part["columns"]) + " |")
            lines.append("|" + "---|" * len(part["columns"]))
            lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in part["rows"]]
            lines.append("")
        bad = [c for c in part.get("checks", []) if not c["ok"]]
        good = len(part.get("checks", [])) - len(bad)
        if part.get("checks"):
            lines.append(f"{good} of {len(part['checks'])} checks hold." + (" Not held:" if bad else ""))
            lines += [f"- {c['check']}: {c['detail'][:600]}" for c in bad]
            lines.append("")
        lines += [f"- {n[:1500]}" for n in part.get("notes", [])] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"),
                   help="folder for gpu_check.json, .md, .log (default: $OUT, else runs/gpu_check)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--scale", choices=["auto", "full", "tiny"], default="auto",
                   help="auto: full with CUDA, tiny without")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting parts after this (default: sum of "
                   "the part limits)")
    p.add_argument("--download", metavar="DIR", help="fetch the wheels the GPU machine lacks into DIR and stop")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.download:
        return download(Path(args.download))
    if args.part:
        return run_part(args)

    import torch

    t_start = time.monotonic()
    cuda = torch.cuda.is_available()
    scale = {"auto": FULL if cuda else TINY, "full": FULL, "tiny": TINY}[args.scale]
    if not cuda:
        print("No CUDA device: checking this script's own CPU path at tiny sizes (no GPU number is measured; "
              "the out-of-memory part is simulated).", flush=True)
    budget = args.budget_s or sum(scale.limits[k] for k in args.parts) + 30
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mode": f"{'GPU' if cuda else 'no CUDA: CPU path at tiny sizes'}, scale {scale.name}",
        "cuda": cuda, "scale": asdict(scale), "budget_s": budget, "machine": machine(), "parts": {}}

    def write() -> None:
        report["seconds"] = round(time.monotonic() - t_start, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / "gpu_check.md").write_text(markdown(report))

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        seconds = write_folder(work / "data", scale.images)
        report["data"] = (f"{scale.images} synthetic test images (224 px PNG, 10 classes) written in {seconds:.1f} s")
        print(report["data"], flush=True)
        for part in [p for p in PARTS if p in args.parts]:
            left = budget - (time.monotonic() - t_start) - 5
            limit = min(scale.limits[part], left)
            if limit < 10:
                report["parts"][part] = {"status": "not run", "notes": [f"out of time ({left:.0f} s left)"]}
                write()
                continue
            print(f"== {part} (limit {limit:.0f} s)", flush=True)
            report["parts"][part] = run_child(part, scale.name, work, limit, log)
            res = report["parts"][part]
            print(f"   {res['status']} in {res['seconds']} s: "
                  f"{sum(c['ok'] for c in res.get('checks', []))} of {len(res.get('checks', []))} checks hold",
                  flush=True)
            for c in res.get("checks", []):
                if not c["ok"]:
                    print(f"   not held: {c['check']}: {c['detail'][:300]}", flush=True)
            write()
    write()
    print(markdown(report), flush=True)
    broken = [k for k, v in report["parts"].items() if v.get("status") in ("error", "timeout", "not run")]
    if broken:
        print(f"parts that did not finish: {', '.join(broken)} (see {log})", flush=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
