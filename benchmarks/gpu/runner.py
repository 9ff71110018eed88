"""The runner of the GPU check: each part in its own process under its own time limit, then JSON and Markdown.

`main` is benchmarks/gpu_check.py's command line (see its docstring); a part is a module of
benchmarks/gpu/parts named in PARTS (see benchmarks/gpu/__init__.py for what it defines).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.gpu.common import FULL, ROOT, SCALES, TINY, Ctx, Result, Scale, write_folder

# the parts, in the order they run and are reported; each is benchmarks/gpu/parts/<name>.py
PARTS = ("trace", "validate", "torchrun", "pages", "oom", "lrp", "mechanisms")
ENTRY = ROOT / "benchmarks" / "gpu_check.py"  # what a part's process runs (with --part)
DESCRIPTION = ("t2t-lens on a GPU, in one call: the app's pages, validate and the report with and without mixed "
               "precision, torchrun, the out-of-memory fall-back, the trace against a bare forward, and AttnLRP and "
               "the mechanisms against the CPU")


def part_module(name: str) -> ModuleType:
    """benchmarks/gpu/parts/<name>.py: LIMIT_S and run(ctx)."""
    if name not in PARTS:
        raise KeyError(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
    return importlib.import_module(f"benchmarks.gpu.parts.{name}")


def limits(scale: Scale, parts: tuple[str, ...] | list[str] = PARTS) -> dict[str, int]:
    """Seconds each part may take at this scale (the parts' own LIMIT_S)."""
    return {name: part_module(name).LIMIT_S[scale.name] for name in parts}


def run_part(args: argparse.Namespace) -> int:
    """In a child process: one part, its result saved to --result as it goes."""
    import torch

    os.environ.setdefault("TQDM_DISABLE", "1")
    scale = SCALES[args.scale]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = Result(Path(args.result))
    ctx = Ctx(scale, device, Path(args.work), time.monotonic() + args.limit, res)
    (ctx.work / "out").mkdir(parents=True, exist_ok=True)
    res.save()
    try:
        part_module(args.part).run(ctx)
    except BaseException:
        res.status = "error"
        res.note("error: " + traceback.format_exc()[-3000:])
        traceback.print_exc()
        return 1
    if res.status == "running":  # a part may have said "simulated" or "not available" itself
        res.status = "ok" if all(c["ok"] for c in res.checks) else "differs"
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
    cmd = [sys.executable, str(ENTRY), "--part", part, "--scale", scale, "--work", str(work),
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
    p = argparse.ArgumentParser(description=DESCRIPTION)
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
        from benchmarks.gpu.wheels import download

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
    limit_s = limits(scale)
    budget = args.budget_s or sum(limit_s[k] for k in args.parts) + 30
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mode": f"{'GPU' if cuda else 'no CUDA: CPU path at tiny sizes'}, scale {scale.name}",
        "cuda": cuda, "scale": {**asdict(scale), "limits": limit_s}, "budget_s": budget, "machine": machine(),
        "parts": {}}

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
            limit = min(limit_s[part], left)
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

