"""What the parts of the GPU check share: sizes, the result a part writes, timing, the image folder."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-3  # largest difference of a reported number (probability, loss, map value) from the reference run
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class Scale:
    """How much each part does: "full" on a GPU, "tiny" for the CPU path (time limits: each part's LIMIT_S)."""

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
    trace_batches=(1, 16, 64), repeats=10, oom_batch=1024)
TINY = Scale(
    "tiny", images=12, batches=(4, 8), validate_models=(("t2t_vit_7", "embedded"),),
    report_runs=((EMBEDDED_MODELS, "embedded", 4, False), (EMBEDDED_MODELS, "embedded", 4, True)),
    cpu_subset=6, torchrun_images=6, pairs=(TINY_PAIR,), trace_model="t2t_vit_7", trace_batches=(1,),
    repeats=1, oom_batch=8)
SCALES = {"full": FULL, "tiny": TINY}


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
    status: str = "running"  # then ok | differs | simulated | not available | skipped | error | timeout

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


def unavailable(res: Result, what: str, error: BaseException | str) -> None:
    """Mark the part "not available": what it checks (a module, a method) is missing from this tree."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    res.status = NOT_AVAILABLE
    res.note(f"{what} is not available here ({reason[:500]}): nothing was measured.")
    print(f"  [not available] {what}: {reason[:300]}", flush=True)


# ----------------------------------------------------------------------------------------------
# Timing and calls
# ----------------------------------------------------------------------------------------------


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


def quiet_call(fn: Callable[[], Any]) -> tuple[Any, str]:
    """fn() with its stderr captured (progress bars, the command's summary); returns (value, stderr text)."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        out = fn()
    return out, buf.getvalue()


def command(argv: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    """argv run from the repository root, with the root on PYTHONPATH; (seconds, the finished process)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                              os.environ.get("PYTHONPATH"), str(ROOT)]))})
    return time.perf_counter() - t0, done


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
