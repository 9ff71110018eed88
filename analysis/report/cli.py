"""The run: arguments, the distributed batch loop, and the final writing by rank 0."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from analysis.report.analyse import (
    ANALYSES,
    DEFAULT_ANALYSES,
    DEFAULT_METHODS,
    Options,
    analyse_batch,
    image_records,
    library_discard_rule,
)
from analysis.report.inputs import Prepared, Skipped, find_images, load_models, make_loader, transform_key
from analysis.report.page import write_html
from analysis.report.pictures import draw_pictures, name_pictures, summary_figures
from analysis.report.writers import LeastConfident, ResultWriter, Summary, csv_fields
from t2t.distributed import Dist, Journal, default_workers, run_batches, shard
from t2t.loading import describe_model


def step_lines(models: list, keys: list[tuple], opts: Options, device: torch.device,
               batch: list[Prepared | Skipped]) -> list[dict[str, Any]]:
    """Journal lines of one batch: {"i", "records": one per model} per image, {"i", "skip": reason} per bad file."""
    items = [b for b in batch if isinstance(b, Prepared)]
    lines: list[dict[str, Any]] = [{"i": b.index, "skip": b.reason} for b in batch if isinstance(b, Skipped)]
    per_item: list[list[dict[str, Any]]] = [[] for _ in items]
    for model, key in zip(models, keys, strict=True):
        if not items:
            break
        x = torch.stack([it.inputs[key] for it in items]).to(device)
        for recs, rec in zip(per_item, image_records(model, items, analyse_batch(model, x, opts)), strict=True):
            recs.append(rec)
    return lines + [{"i": it.index, "records": recs} for it, recs in zip(items, per_item, strict=True)]


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Analyse every image with every model and write all outputs (rank 0); returns the JSON content
    without its "results" (None on the other ranks)."""
    dist_ = Dist.from_env(args.device)
    try:
        return _run(args, dist_)
    finally:
        dist_.close()


def _run(args: argparse.Namespace, dist_: Dist) -> dict[str, Any] | None:
    t_start = time.perf_counter()
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    device = dist_.device(args.device)
    models = load_models(args, device)
    names = [m.default_cfg["name"] for m in models]
    extra = (["faithfulness"] if args.faithfulness else []) + (["scorecard"] if args.scorecard else [])
    opts = Options(analyses=tuple(dict.fromkeys([*args.only, *extra])),
                   methods=tuple(args.methods), head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
                   discard_rule=args.discard_rule, ig_steps=args.ig_steps, faithfulness_steps=args.faithfulness_steps,
                   knockouts=args.knockouts, road_percentages=tuple(args.road_percentages),
                   sanity_steps=args.sanity_steps or None)
    keys = [transform_key(m, args.crop_pct) for m in models]
    files, missing = dist_.broadcast(find_images(args.images) if dist_.is_main else None)

    journal = None
    if dist_.is_main:
        settings = {"models": [describe_model(m) for m in models], "options": asdict(opts), "transforms": keys,
                    "files": hashlib.sha1("\n".join(str(p) for p, _ in files).encode()).hexdigest()}
        journal = Journal(out / "journal.jsonl", settings, resume=args.resume)
    done = dist_.broadcast(sorted(journal.done) if journal else None)
    todo = sorted(set(range(len(files))) - set(done))
    per_rank = dist_.gather(len(shard(todo, dist_.rank, dist_.world_size)))

    t_loop = time.perf_counter()
    workers = args.workers if args.workers is not None else default_workers(device)
    run_batches(dist_, todo, args.batch_size, lambda batches: make_loader(files, keys, batches, workers),
                lambda batch: step_lines(models, keys, opts, device, batch), journal, "report")
    t_write = time.perf_counter()
    if not dist_.is_main:
        return None

    tolerance = 0.05
    if "explain" in opts.analyses and "integrated_gradients" in opts.methods:
        from analysis.attributions import COMPLETENESS_TOLERANCE as tolerance
    # pass 1: running summaries and which images get pictures
    summary, least = Summary(names, tolerance), LeastConfident(args.least_confident)
    skipped, first, analysed = list(missing), [], 0
    for line in journal.in_order():
        if "skip" in line:
            skipped.append(Skipped(files[line["i"]][1], line["skip"], line["i"]))
            continue
        analysed += 1
        summary.add(line["records"])
        least.add(line["i"], line["records"])
        if args.pictures < 0 or len(first) < args.pictures:
            first.append(line["i"])
    why = {i: "first" for i in first} | {i: "least confident" for i in least.indices() if i not in first}
    card = summary.scorecard()
    # pass 2: the CSV and the JSON records in file order; the chosen images' pictures and the summary
    # plots are drawn meanwhile by threads (this pass was a tenth of a 200-image run on 2 cores)
    depth = max(len(m.blocks) for m in models)
    writer = ResultWriter(out, csv_fields(depth, opts))
    pictured: dict[int, dict[str, Any]] = {}
    summary_result = summary.result()
    # one torch thread each: two pictures at once, each on its own core, took 0.24 s for 80 images
    # where two threads of two torch threads each took 0.30 s (0.40 s in one thread). The setting
    # leaks into the process's thread pool, so the main thread's count is put back afterwards.
    threads = torch.get_num_threads()
    drawers = max(1, min(4, threads))
    window: deque[Future] = deque()  # pictures being drawn: a bounded queue, whatever --pictures is
    try:
        with ThreadPoolExecutor(max_workers=drawers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            plots = pool.submit(summary_figures, summary_result, out / "figures") if summary_result else None
            for line in journal.in_order():
                if "records" not in line:
                    continue
                recs = line["records"]
                if line["i"] in why:
                    name_pictures(line["i"], recs, args.image_format)
                    if len(window) >= 2 * drawers:
                        window.popleft().result()  # a failed picture fails the run, as when drawn in this thread
                    window.append(pool.submit(draw_pictures, out, recs, keys))
                    shown = ("model", "pred_class", "pred_prob", "figures", "completeness", "conservation",
                             "knockouts")
                    pictured[line["i"]] = {"index": line["i"], "image": recs[0]["image"], "why": why[line["i"]],
                                           "models": [{k: r[k] for k in shown if k in r} for r in recs]}
                for rec in recs:
                    writer.add(rec)
            while window:
                window.popleft().result()
            figures = plots.result() if plots is not None else {}
    except BaseException:
        for job in window:
            job.cancel()
        raise
    finally:
        torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "command": args.command or " ".join(["python -m analysis.report", *sys.argv[1:]]),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "settings": {"analyses": list(opts.analyses), "methods": list(opts.methods), "maps": opts.maps(),
                     "head_fusion": opts.head_fusion, "discard_ratio": opts.discard_ratio,
                     "grad_discard_ratio": opts.grad_discard_ratio,
                     "discard_rule": opts.discard_rule or library_discard_rule(), "ig_steps": opts.ig_steps,
                     "completeness_tolerance": tolerance, "faithfulness_steps": opts.faithfulness_steps,
                     "faithfulness_baseline": opts.faithfulness_baseline, "knockouts": opts.knockouts,
                     "road_percentages": list(opts.road_percentages), "sanity_steps": opts.sanity_steps,
                     "batch_size": args.batch_size,
                     "crop_pct": args.crop_pct, "pictures": args.pictures, "least_confident": args.least_confident,
                     "pictures_rule": (f"the first {args.pictures}" if args.pictures >= 0 else "all")
                     + (f" and the {args.least_confident} least confident" if args.least_confident else "")},
        "run": {"world_size": dist_.world_size, "images_per_rank": per_rank, "backend": dist_.backend,
                "workers": workers, "resumed_images": len(done)},
        "models": [describe_model(m) for m in models],
        "counts": {"files": len(files) + len(missing), "analysed": analysed, "skipped": len(skipped)},
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "agreement": summary.agreement(),
        "summary": summary_result,
        "scorecard": scorecard_json(card) if card is not None else None,
        "figures": figures,
        "pictured": [pictured[i] for i in why if i in pictured],
    }
    now = time.perf_counter()
    report["timing"] = {"setup_s": t_loop - t_start, "images_s": t_write - t_loop, "write_s": now - t_write,
                        "total_s": now - t_start, "images_per_s": len(todo) / max(now - t_start, 1e-9),
                        "loop_images_per_s": len(todo) / max(t_write - t_loop, 1e-9)}
    writer.finish(report)
    write_html(report, out, embed=args.html == "embed" or (args.html == "auto" and folder_size(out / "figures") < 40e6))
    journal.close()
    if not args.keep_journal:
        journal.path.unlink()  # every output is complete: nothing is left to resume
    print(f"{analysed} images analysed with {len(models)} models, {len(skipped)} skipped, in "
          f"{report['timing']['total_s']:.1f} s -> {out / 'report.html'}", file=sys.stderr)
    for s in skipped:
        print(f"  skipped {s.path}: {s.reason}", file=sys.stderr)
    return report


def finite(v: float) -> float | None:
    """JSON has no NaN: an undefined number is null."""
    return v if v == v and abs(v) != float("inf") else None


def scorecard_json(card: Any) -> dict[str, Any]:
    """The scorecard as results.json keeps it: per (model, method, metric) mean, interval, n and rank; per model
    Kendall's tau between the metrics' rankings with its interval; the verdicts; the metrics' labels."""
    from analysis.scorecard import METRICS

    rows = [{k: finite(v) if isinstance(v, float) else v for k, v in r.items()} for r in card.table()]
    kendall = {m: [{"metrics": [a, b], "tau": finite(t), "low": finite(lo), "high": finite(hi)}
                   for (a, b), (t, lo, hi) in card.kendall(m).items()] for m in card.models}
    return {"metrics": {k: {"label": METRICS[k][0], "lower_is_better": METRICS[k][1]} for k in card.metrics},
            "methods": card.methods, "images": card.images, "level": card.level, "n_boot": card.n_boot,
            "rankings": {m: {k: card.ranking(m, k) for k in card.metrics} for m in card.models},
            "table": rows, "kendall": kendall, "verdicts": card.verdicts()}


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from analysis.explain import EXPLAINERS
    from analysis.report import __doc__ as doc
    from analysis.rollout import DISCARD_RULES

    count = lambda s: -1 if s == "all" else int(s)  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=doc.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["t2t_vit_7", "deit_tiny_patch16_224"], help="registry names")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", nargs="+", default=["embedded"],
                   help="one for all models or one per model: embedded, imagenet, random, or a checkpoint path/URL")
    p.add_argument("--no-ema", action="store_true", help="load a checkpoint's state_dict, not its EMA weights")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader decoding processes per rank (0: decode in the main process; default: up to 4 "
                   "with a GPU, none on a CPU of 2 cores or fewer per rank)")
    p.add_argument("--device", default="auto", help="auto = this rank's GPU, then mps, then cpu")
    p.add_argument("--only", nargs="+", choices=ANALYSES, default=list(DEFAULT_ANALYSES), metavar="ANALYSIS",
                   help=f"analyses to run, of {', '.join(ANALYSES)} (the prediction is always made)")
    p.add_argument("--methods", nargs="+", choices=sorted(EXPLAINERS), default=list(DEFAULT_METHODS),
                   metavar="METHOD", help=f"explanations for 'explain', of {', '.join(sorted(EXPLAINERS))}")
    p.add_argument("--faithfulness", action="store_true", help="also score every map by deletion / insertion AUC")
    p.add_argument("--faithfulness-steps", type=int, default=10)
    p.add_argument("--scorecard", action="store_true",
                   help="also score every map, and a random map, by deletion, insertion, ROAD MoRF / LeRF, Quantus's "
                   "Random Logit and the sanity check, with bootstrap intervals, each metric's ranking of the methods, "
                   "Kendall's tau between rankings and verdicts (analysis.scorecard)")
    p.add_argument("--road-percentages", nargs="+", type=float, default=[20, 50, 80], metavar="PCT",
                   help="the scorecard's ROAD: percentages of pixels removed (each a sparse solve per image and order)")
    p.add_argument("--sanity-steps", type=int, default=1,
                   help="the scorecard's sanity check: the cascade grouped into this many steps (0: one per layer)")
    p.add_argument("--knockouts", action="store_true",
                   help="also each model's head-importance grid per image: the predicted class's logit and probability "
                   "drop when each backbone head alone is zero-ablated (batched; its time is reported)")
    p.add_argument("--ig-steps", type=int, default=16, help="integration steps of integrated_gradients")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="rollout head fusion")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: fraction of the weakest weights dropped")
    p.add_argument("--discard-rule", choices=DISCARD_RULES, default=None,
                   help="rollout and grad_rollout discard rule (default: analysis.rollout's)")
    p.add_argument("--crop-pct", type=float, default=None, help="override every model's centre-crop fraction")
    p.add_argument("--img-size", type=int, default=None,
                   help="run every model at this input size (a multiple of 16; position embeddings resized)")
    p.add_argument("--pictures", type=count, default=64, metavar="N|all",
                   help="draw the first N images and their maps (all: every image)")
    p.add_argument("--least-confident", type=int, default=16, metavar="K",
                   help="also draw the K images whose prediction is the least confident")
    p.add_argument("--html", choices=["auto", "embed", "link"], default="auto",
                   help="figures inlined in report.html (embed), linked from figures/ (link), or embed unless > 40 MB")
    p.add_argument("--image-format", choices=["jpg", "png"], default="jpg",
                   help="per-image pictures (inputs, overlays); summary plots are always PNG")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")
    p.add_argument("--resume", action="store_true", help="continue a killed run from --out/journal.jsonl")
    p.add_argument("--keep-journal", action="store_true", help="keep journal.jsonl after a finished run")
    args = p.parse_args(argv)
    args.command = None if argv is None else " ".join(["python -m analysis.report", *argv])
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if (args.workers is not None and args.workers < 0) or args.least_confident < 0:
        p.error("--workers and --least-confident must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    return run(parse_args(argv))
