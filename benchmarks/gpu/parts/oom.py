"""oom: the out-of-memory fall-back, caused for real (GPU) or simulated (CPU).

GPU memory filled with one tensor in the same process, then (library) validate and the report at a
batch that cannot fit, (app) the first page: does the work complete, on which device, with which
message; then the tensor is freed and the GPU checked usable (a forward equal to the CPU's; the app's
"Use the GPU again"). Without CUDA it is simulated (a patched `t2t.loading.load_model` raises
torch.OutOfMemoryError), which checks this script's code, not the fall-back's behaviour on a GPU: the
part's status is then "simulated".
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.gpu.common import EMBEDDED_MODELS, ROOT, Ctx, Result, r, subset_list
from benchmarks.gpu.parts.pages import app_run
from benchmarks.gpu.parts.validate import run_report, run_validate

LIMIT_S = {"full": 60, "tiny": 180}


def run(ctx: Ctx) -> None:
    measure(ctx)
    if not ctx.cuda:  # whatever its checks say, nothing ran out of memory for real
        ctx.result.status = "simulated"


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


def measure(ctx: Ctx) -> None:
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
