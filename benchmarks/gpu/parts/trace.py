"""trace: t2t_vit's bare forward, full trace and a plain functional forward, fp32 and bf16 autocast.

t2t_vit_14 at 224 with random weights (tiny: t2t_vit_7), at batch 1 / 16 / 64: the bare forward, the full
trace (`t2t.trace(..., attention=True)`) and benchmarks/bench_trace.py's plain functional forward, with
their logits checked equal (1e-4); then, on a GPU, the same bare forward on the machine's own CPU: the
GPU's speed-up.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.gpu.common import ROOT, Ctx, r, timed

LIMIT_S = {"full": 40, "tiny": 120}  # tiny: only against hangs (4-50 s per part on a shared 2-core CPU)


def run(ctx: Ctx) -> None:
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

