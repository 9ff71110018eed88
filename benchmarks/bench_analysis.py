"""Cost of the analysis relative to a bare forward pass, all measured in one run.

    python benchmarks/bench_analysis.py [--model t2t_vit_14] [--img-size 224] [--repeats 5]

For one image (random weights: the cost does not depend on them) it times
  - the bare forward `model(x)` (the reference, ratio 1.0),
  - the traced forward (`t2t.trace`, attention recorded),
  - the per-image analysis on an existing trace: attention rollout + every redundancy metric of
    every block (target: <= 10 % of the bare forward), exact and `fast=True`; attention
    distance / entropy separately,
  - each explanation method end to end (its own forwards and backwards included),
  - back-projection through the T2T module and deletion / insertion curves.
Times are medians over `--repeats` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import t2t  # noqa: E402
from analysis.attention_stats import attention_profile  # noqa: E402
from analysis.explain import explain  # noqa: E402
from analysis.faithfulness import faithfulness  # noqa: E402
from analysis.redundancy import METRICS, trace_metrics  # noqa: E402
from analysis.rollout import cls_rollout  # noqa: E402
from analysis.t2t_backproject import backproject, backproject_trace  # noqa: E402

TARGET_EXACT = "rollout + all block metrics (exact)"
TARGET_FAST = "rollout + all block metrics (fast=True)"
TARGET_NO_RANK = "rollout + block metrics but effective rank (fast=True)"
WITHOUT_RANK = tuple(m for m in METRICS if m != "effective_rank")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="t2t_vit_14")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=1, help="repeats for the methods taking seconds")
    parser.add_argument("--ig-steps", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = t2t.create_model(args.model, img_size=args.img_size).eval()
    x = torch.randn(1, 3, args.img_size, args.img_size)
    blocks = len(model.blocks)
    rows: list[tuple[str, float]] = []

    with torch.no_grad():
        rows.append(("bare forward model(x)", median_time(lambda: model(x), args.repeats)))
        rows.append(("traced forward (attention recorded)", median_time(lambda: t2t.trace(model, x), args.repeats)))
        tr = t2t.trace(model, x)
        grid = tr.grid("blocks.0")
        stride = (args.img_size / grid[0], args.img_size / grid[1])

        def rollout_only():
            return cls_rollout(tr.attentions())

        def metrics_only():
            return trace_metrics(tr, blocks)

        def metrics_fast():
            return trace_metrics(tr, blocks, fast=True)

        def metrics_no_rank():
            return trace_metrics(tr, blocks, fast=True, metrics=WITHOUT_RANK)

        def attn_stats_only():
            return attention_profile(tr.attentions(), grid, stride)

        def per_image_analysis():
            rollout_only()
            metrics_only()

        def per_image_fast():
            rollout_only()
            metrics_fast()

        def per_image_no_rank():
            rollout_only()
            metrics_no_rank()

        rows.append(("  rollout (on the trace)", median_time(rollout_only, args.repeats)))
        rows.append(("  all block metrics, exact (on the trace)", median_time(metrics_only, args.repeats)))
        rows.append(("  all block metrics, fast=True (on the trace)", median_time(metrics_fast, args.repeats)))
        rows.append(("  block metrics but effective rank, fast=True", median_time(metrics_no_rank, args.repeats)))
        rows.append(("  attention distance + entropy (on the trace)", median_time(attn_stats_only, args.repeats)))
        rows.append((TARGET_EXACT, median_time(per_image_analysis, args.repeats)))
        rows.append((TARGET_FAST, median_time(per_image_fast, args.repeats)))
        rows.append((TARGET_NO_RANK, median_time(per_image_no_rank, args.repeats)))

    methods = {
        "rollout": {},
        "grad_rollout": {},
        "chefer": {},
        "gradcam": {},
        f"integrated_gradients ({args.ig_steps} steps)": {"n_steps": args.ig_steps, "internal_batch_size": 16},
        "occlusion (2-cell window, 1-cell stride)": {},
        "token_ablation (one forward per token)": {},
    }
    for label, kwargs in methods.items():
        name = label.split(" ")[0]
        repeats = args.repeats if name in ("rollout", "grad_rollout", "chefer", "gradcam") else args.slow_repeats
        rows.append((f"explain: {label}", median_time(lambda n=name, k=kwargs: explain(n, model, x, **k), repeats)))

    heat = explain("rollout", model, x)
    if model.family == "t2t":
        with torch.no_grad():
            rows.append(("backproject through T2T (geometry only)", median_time(
                lambda: backproject_trace(heat, tr, args.img_size, use_attention=False), args.repeats)))
            n0, n1 = tr.shape("t2t.attn1_map")[-1], tr.shape("t2t.attn2_map")[-1]
            rows.append(("backproject through T2T (attn1, attn2 formed each time)", median_time(
                lambda: backproject(heat, args.img_size, tr.attention_rows("t2t.attn1_map", torch.arange(n0)),
                                    tr.attention_rows("t2t.attn2_map", torch.arange(n1))), args.repeats)))
    rows.append(("deletion + insertion curves (20 steps, 42 forwards)", median_time(
        lambda: faithfulness(model, x, heat, steps=20, batch_size=16), args.slow_repeats)))

    forward = rows[0][1]
    print(f"{args.model} at {args.img_size}px, 1 image, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats} (slow methods: {args.slow_repeats})")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) - 0.5:
        # other processes on the cores slow the multi-threaded forward far more than the small
        # analysis kernels, so every ratio below is skewed (seen: a 75 ms forward taking 3 s)
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: ratios are not meaningful")
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'ms':>10}  {'x forward':>10}")
    for label, seconds in rows:
        print(f"{label:<{width}}  {seconds * 1e3:10.1f}  {seconds / forward:10.3f}")
    print()
    for label in (TARGET_EXACT, TARGET_FAST, TARGET_NO_RANK):
        cost = next(s for name, s in rows if name == label)
        verdict = "meets" if cost <= 0.10 * forward else "misses"
        print(f"{label}: {cost / forward:.1%} of the bare forward ({verdict} the 10 % target)")


if __name__ == "__main__":
    main()
