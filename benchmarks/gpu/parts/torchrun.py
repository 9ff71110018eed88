"""torchrun: `torchrun --nproc_per_node=1` (NCCL on a GPU) against one process, the same validate JSON.

The JSON must be the same except what describes the run (timing, world_size, images_per_rank). With
one process the library starts no process group (`Dist.from_env`: a run of one), so NCCL itself is
checked by an all_reduce under the same torchrun. Without CUDA: 2 ranks on gloo, which does shard and
gather.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks.gpu.common import Ctx, command, r, subset_list

LIMIT_S = {"full": 45, "tiny": 180}


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


def run(ctx: Ctx) -> None:
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

