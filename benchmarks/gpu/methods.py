"""Analysis methods on the device against the CPU, and what they cost: what the lrp and mechanisms parts share.

A part names its models and its `Method`s; `compare` runs each method on a batch of synthetic images on
the device (timed, median of `repeats`, against the bare forward), then on the CPU for the first few of
those images with the same target classes, and checks that every output agrees with the CPU's within
TOLERANCE of the CPU output's own largest magnitude (a relevance map, a logit, a DLA component: each on
its own scale). A method may also state an identity that must hold on the device (conservation, a
decomposition that sums to the logit). A method whose function is missing is a row "not available".
Without CUDA the "device" is the CPU as well: the comparison then checks this code, not a GPU.
"""

from __future__ import annotations

import copy
import statistics
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.gpu.common import NOT_AVAILABLE, TOLERANCE, Ctx, r, timed, unavailable

Outputs = dict[str, Any]  # name -> tensor (B, ...), batch axis first


@dataclass(frozen=True)
class Method:
    """One analysis call: run(model, images (B, 3, S, S), target (B,)) -> named outputs, batch axis first.

    identity: optional (description, fn(model, images, target, outputs) -> relative error, tolerance): a
    property the outputs must have on the device whatever the CPU says.
    """

    name: str
    run: Callable[[Any, Any, Any], Outputs]
    identity: tuple[str, Callable[[Any, Any, Any, Outputs], float], float] | None = None


@dataclass(frozen=True)
class Sizes:
    models: tuple[tuple[str, str], ...]  # (registry name, weights)
    batch: int  # images per call on the device
    cpu_images: int  # the first of them, run again on the CPU
    repeats: int  # timed calls on the device (median)


def lookup(module: str, name: str) -> Any:
    """`module.name`, or raise ImportError / AttributeError: what makes a method "not available"."""
    import importlib

    return getattr(importlib.import_module(module), name)


def synthetic_images(model: Any, n: int, start: int = 0) -> Any:
    """(n, 3, S, S) synthetic test images (t2t.data's LocalStructureDataset), normalised for `model`."""
    import numpy as np
    import torch

    from t2t.data import synthetic

    cfg = model.default_cfg
    ds = synthetic.LocalStructureDataset("test", size=start + n, img_size=cfg["img_size"])
    arrays = np.stack([ds.array_chw(i) for i in range(start, start + n)])
    return synthetic.normalize(torch.from_numpy(arrays), cfg["mean"], cfg["std"])


def rel_diff(got: Any, want: Any) -> float:
    """max |got - want| / max |want| over the entries finite in both (float64 on the CPU); 0 for empty."""
    import torch

    a, b = got.detach().double().cpu(), want.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf")
    keep = torch.isfinite(a) & torch.isfinite(b)
    if not keep.any():
        return 0.0
    scale = b[keep].abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((a[keep] - b[keep]).abs().max() / scale)


def median_ms(fn: Callable[[], Any], device: str, repeats: int, warm: int) -> float:
    for _ in range(warm):
        timed(fn, device)
    return statistics.median(timed(fn, device)[0] for _ in range(max(1, repeats))) * 1e3


COLUMNS = ["model", "method", "device", "batch", "ms / image", "x bare forward", "cpu ms / image", "cpu images",
           "max |diff| / max |cpu|", "identity on device"]


def compare(ctx: Ctx, sizes: Sizes, methods: list[Method], missing: dict[str, str]) -> None:
    """Every method of `methods` on every model of `sizes`, device against CPU (rows and checks on ctx.result).

    missing: name -> why, for the methods that are not available (a row each, and a note).
    """
    import torch

    res, dev = ctx.result, ctx.device
    res.columns = COLUMNS
    for name, why in missing.items():
        res.row("", name, dev, "", NOT_AVAILABLE, "", "", "", "", "")
        res.note(f"{name}: {NOT_AVAILABLE} ({why[:300]})")
    if not methods:
        unavailable(res, "every method of this part", "; ".join(missing.values()) or "none named")
        return
    for model_name, weights in sizes.models:
        finished = compare_model(ctx, sizes, methods, model_name, weights)
        if ctx.cuda:
            torch.cuda.empty_cache()
        if not finished:
            break
    res.note(f"ms / image: the median of {sizes.repeats} calls on {dev} at batch {sizes.batch} (after a first, "
             "untimed call), divided by the batch; x bare forward: that time over the model's own forward of the "
             f"same batch. The cpu run: the first {sizes.cpu_images} images with the device's target classes, "
             "one call. Each output is compared on its own scale: max |device - cpu| / max |cpu|.")
    if not ctx.cuda:
        res.note("No CUDA: the device is the CPU, so the comparison is the CPU against itself (this code only).")


def compare_model(ctx: Ctx, sizes: Sizes, methods: list[Method], model_name: str, weights: str) -> bool:
    """The methods on one model, a row and checks each; False when the part ran out of time."""
    import torch

    from t2t.loading import load_model

    res, dev = ctx.result, ctx.device
    cpu_model = load_model(model_name, weights, "cpu")
    model = copy.deepcopy(cpu_model).to(dev) if ctx.cuda else cpu_model
    x_cpu = synthetic_images(cpu_model, sizes.batch)
    x = x_cpu.to(dev)
    n = min(sizes.cpu_images, sizes.batch)
    # no_grad, not inference_mode: the targets index logits inside the methods' autograd graphs
    with torch.no_grad():
        target = model(x).argmax(dim=-1)  # the device's classes, explained on both devices
        bare = median_ms(lambda: model(x), dev, sizes.repeats, 1)
    label = f"{model_name} ({weights})"
    for method in methods:
        if ctx.left() < 5:
            res.note(f"out of time: {label} {method.name} and what follows were not run")
            return False
        try:
            out = method.run(model, x, target)  # also the warm-up: the timed calls come after it
            ms = median_ms(lambda m=method: m.run(model, x, target), dev, sizes.repeats, 0)
            t_cpu, want = timed(lambda m=method: m.run(cpu_model, x_cpu[:n], target[:n].cpu()))
            ident = method.identity[1](model, x, target, out) if method.identity else None
        except Exception as e:  # a method that fails is a finding of this part: the others still run
            res.row(label, method.name, dev, sizes.batch, "failed", "", "", n, "", f"{type(e).__name__}: {e}"[:300])
            res.check(f"{label}: {method.name} runs on {dev}", False, traceback.format_exc()[-1500:])
            continue
        diffs = {k: rel_diff(v[:n], want[k]) for k, v in out.items()}
        worst = max(diffs.values(), default=0.0)
        over = [k for k, d in diffs.items() if not d <= TOLERANCE]
        res.check(f"{label}: {method.name} on {dev} = on the cpu ({n} images, max |diff| / max |cpu| "
                  f"<= {TOLERANCE:g})", not over, ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()))
        if method.identity:
            what, _, tol = method.identity
            res.check(f"{label}: {method.name} on {dev}: {what} (relative error <= {tol:g})", ident <= tol,
                      f"{ident:.1e}")
        res.row(label, method.name, dev, sizes.batch, r(ms / sizes.batch, 2), r(ms / bare, 1),
                r(t_cpu * 1e3 / n, 1), n, f"{worst:.1e}" + (f" ({', '.join(over)})" if over else ""),
                "" if ident is None else f"{ident:.1e}")
    return True
