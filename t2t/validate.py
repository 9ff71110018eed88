"""`python -m t2t validate`: a model's top-1 / top-5 on a labelled image folder, on one process or many.

    python -m t2t validate --model t2t_vit_14 --weights released --data imagenet/val --out result.json
    torchrun --nproc_per_node=8 -m t2t validate --model t2t_vit_14 --weights released --data imagenet/val

Each image goes through the model's own evaluation transform (`t2t.data.folder.eval_transform`),
decoded in DataLoader worker processes. Reported: top-1 and top-5 (fractions), the mean
cross-entropy loss, per-class top-1, and for the worst classes what they are mistaken for. Files
that are not usable images are skipped with their reason and left out of every number.
Under torchrun every rank evaluates a disjoint shard and rank 0 writes (see `t2t.distributed`);
`--resume` continues a killed run from its journal.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from t2t.data.folder import Transform, eval_transform, labelled_images, read_inputs, unusable
from t2t.distributed import Dist, Journal, default_workers, run_batches


class EvalImages(Dataset):
    """Item i -> (i, (3, S, S) input or None, label, reason the file was skipped or None)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Transform) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, int, str | None]:
        path, label = self.samples[i]
        try:
            return i, read_inputs(path, [self.transform])[1][self.transform], label, None
        except Exception as e:  # every reading failure becomes a skipped file, never the end of the run
            return i, None, label, unusable(e)


@dataclass
class Batch:
    indices: list[int]
    x: Tensor | None  # (B, 3, S, S) of the readable images
    labels: Tensor  # (B,)
    skipped: list[tuple[int, str]]


def collate(items: list[tuple[int, Tensor | None, int, str | None]]) -> Batch:
    good = [it for it in items if it[1] is not None]
    return Batch([it[0] for it in good], torch.stack([it[1] for it in good]) if good else None,
                 torch.tensor([it[2] for it in good], dtype=torch.long),
                 [(it[0], it[3]) for it in items if it[1] is None])


def make_loader(dataset: Dataset, batches: list[list[int]], workers: int, pin: bool) -> DataLoader:
    """Batches of exactly the given indices, decoded by `workers` processes (0: in this process)."""
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers, pin_memory=pin,
                      persistent_workers=False)


def forward(model: nn.Module, x: Tensor, amp: bool) -> Tensor:
    """(B, C) float32 logits; on a GPU out of memory, the batch is split in halves (batches sized to memory)."""
    try:
        with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            return model(x).float()
    except torch.OutOfMemoryError:
        if x.shape[0] == 1:
            raise
        torch.cuda.empty_cache()
        half = x.shape[0] // 2
        return torch.cat([forward(model, x[:half], amp), forward(model, x[half:], amp)])


def batch_lines(batch: Batch, logits: Tensor | None) -> list[dict[str, Any]]:
    """Journal lines of a batch: per image its label, top-5 indices, top-1 probability and loss (nats)."""
    lines: list[dict[str, Any]] = [{"i": i, "skip": reason} for i, reason in batch.skipped]
    if logits is not None:
        logp = logits.double().log_softmax(dim=-1)
        top = logp.topk(min(5, logp.shape[1]), dim=-1)
        loss = -logp.gather(1, batch.labels[:, None])[:, 0]
        for b, i in enumerate(batch.indices):
            lines.append({"i": i, "y": int(batch.labels[b]), "top5": top.indices[b].tolist(),
                          "p": float(top.values[b, 0].exp()), "loss": float(loss[b])})
    return lines


def summarise(lines: Iterable[dict[str, Any]], samples: Sequence[tuple[str, int]], num_classes: int,
              class_names: list[str] | None, worst: int = 10, predictions: Path | None = None) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class top-1 and the worst classes' confusions, from the lines in item order.

    Running counts only (the lines are read one at a time); `predictions` streams a CSV row per image.
    """
    name = lambda c: class_names[c] if class_names and c < len(class_names) else str(c)  # noqa: E731
    n = top1 = top5 = 0
    loss = 0.0
    per_class = torch.zeros(num_classes, 2, dtype=torch.long)  # images, correct
    confused: Counter[tuple[int, int]] = Counter()
    skipped = []
    writer = None
    f = open(predictions, "w", newline="") if predictions else None
    if f is not None:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "label", "label_class", "pred", "pred_class", "pred_prob", "loss", "correct"])
    for line in lines:
        i = line["i"]
        if "skip" in line:
            skipped.append({"path": samples[i][0], "reason": line["skip"]})
            continue
        y, pred = line["y"], line["top5"][0]
        n += 1
        top1 += pred == y
        top5 += y in line["top5"]
        loss += line["loss"]
        per_class[y, 0] += 1
        per_class[y, 1] += pred == y
        if pred != y:
            confused[y, pred] += 1
        if writer is not None:
            writer.writerow([i, samples[i][0], y, name(y), pred, name(pred), f"{line['p']:.6g}", f"{line['loss']:.6g}",
                             int(pred == y)])
    if f is not None:
        f.close()
    seen = [c for c in range(num_classes) if per_class[c, 0] > 0]
    acc = {c: per_class[c, 1].item() / per_class[c, 0].item() for c in seen}
    worst_classes = []
    for c in sorted(seen, key=lambda c: (acc[c], c))[:worst]:
        mistaken = sorted(((k, v) for k, v in confused.items() if k[0] == c), key=lambda kv: (-kv[1], kv[0][1]))[:5]
        worst_classes.append({"index": c, "class": name(c), "images": int(per_class[c, 0]), "top1": acc[c],
                              "mistaken_for": [{"index": p, "class": name(p), "images": v} for (_, p), v in mistaken]})
    return {
        "top1": top1 / n if n else None, "top5": top5 / n if n else None, "loss": loss / n if n else None,
        "num_images": n, "num_skipped": len(skipped),
        "per_class": {name(c): {"index": c, "images": int(per_class[c, 0]), "top1": acc[c]} for c in seen},
        "worst_classes": worst_classes, "skipped": skipped,
    }


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Evaluate, write --out (rank 0) and return the result (None on the other ranks)."""
    from t2t.loading import describe_model, load_model

    dist_ = Dist.from_env(args.device)
    try:
        device = dist_.device(args.device)
        model = load_model(args.model, args.weights, device, use_ema=not args.no_ema, match_architecture=False,
                           img_size=args.img_size, aux_head=False if args.cls_head_only else None)
        labelled: Any = None
        if dist_.is_main:
            try:
                labelled = labelled_images(args.data, model.num_classes, model.class_names)
            except (OSError, ValueError) as e:
                labelled = f"error: {e}"
        labelled = dist_.broadcast(labelled)  # every rank stops on rank 0's error, none waits for ever
        if isinstance(labelled, str):
            raise SystemExit(labelled)
        samples = labelled.samples
        transform = eval_transform(model, args.crop_pct)
        out = Path(args.out) if args.out else None
        journal = None
        if dist_.is_main:
            settings = {"model": describe_model(model), "transform": list(transform), "amp": args.amp,
                        "files": hashlib.sha1("\n".join(f"{p} {y}" for p, y in samples).encode()).hexdigest(),
                        "num_files": len(samples)}
            where = Path(args.journal) if args.journal else (out or Path("validate")).with_suffix(".journal.jsonl")
            where.parent.mkdir(parents=True, exist_ok=True)
            journal = Journal(where, settings, resume=args.resume)
        done = dist_.broadcast(sorted(journal.done) if journal else None)
        todo = sorted(set(range(len(samples))) - set(done))
        mine = len(todo[dist_.rank::dist_.world_size])
        per_rank = dist_.gather(mine)
        dataset = EvalImages(samples, transform)
        pin = device.type == "cuda"
        workers = args.workers if args.workers is not None else default_workers(device)

        def step(batch: Batch) -> list[dict[str, Any]]:
            logits = forward(model, batch.x.to(device, non_blocking=True), args.amp) if batch.x is not None else None
            return batch_lines(batch, logits.cpu() if logits is not None else None)

        t0 = time.perf_counter()
        run_batches(dist_, todo, args.batch_size, lambda b: make_loader(dataset, b, workers, pin), step,
                    journal, f"validate {model.default_cfg['name']}")
        seconds = time.perf_counter() - t0
        if not dist_.is_main:
            return None
        result = summarise(journal.in_order(), samples, model.num_classes, model.class_names, args.worst,
                           Path(args.predictions) if args.predictions else None)
        journal.close()
        result.update({
            "world_size": dist_.world_size, "images_per_rank": per_rank,
            "model": describe_model(model), "data": {"source": str(args.data), "labels": labelled.labels,
                                                     "files": len(samples) + len(labelled.missing)},
            "missing": [{"path": p, "reason": r} for p, r in labelled.missing],
            "settings": {"batch_size": args.batch_size, "workers": workers, "amp": args.amp,
                         "device": str(device), "transform": {"mean": list(transform[0]), "std": list(transform[1]),
                                                              "img_size": transform[2], "crop_pct": transform[3],
                                                              "interpolation": transform[4]},
                         "resumed_images": len(done)},
            "timing": {"seconds": seconds, "images_per_s": len(todo) / max(seconds, 1e-9)},
        })
        report(result, model)
        if out is not None:
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, out)
        if journal.path.exists() and not args.keep_journal:
            journal.path.unlink()  # the result is complete: nothing is left to resume
        return result
    finally:
        dist_.close()


def report(result: dict[str, Any], model: nn.Module) -> None:
    """The numbers on stderr, with the released top-1 to compare against when there is one."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    cfg = model.default_cfg
    print(f"{cfg['name']} ({cfg.get('weights', 'random')}): top-1 {pct(result['top1'])}, top-5 {pct(result['top5'])}"
          f", loss {result['loss'] if result['loss'] is None else round(result['loss'], 4)} on "
          f"{result['num_images']} images ({result['num_skipped']} skipped, {len(result['missing'])} missing), "
          f"{result['timing']['images_per_s']:.1f} images/s on {result['world_size']} process(es)", file=sys.stderr)
    if cfg.get("top1") and cfg.get("url") and str(cfg.get("weights")) == cfg["url"]:
        from t2t.registry import EVAL_SETS, get_config

        dataset = get_config(cfg["name"]).dataset
        print(f"  released weights: {cfg['top1']}% top-1 on {EVAL_SETS.get(dataset, dataset)} "
              f"({cfg.get('top1_source')}); attention scale {cfg.get('qk_scale'):.6g} ({cfg.get('qk_scale_rule')})"
              + (f"; head: {cfg['head']}" if cfg.get("head") else ""), file=sys.stderr)
    for w in result["worst_classes"][:5]:
        often = ", ".join(f"{m['class']} ({m['images']})" for m in w["mistaken_for"][:3])
        print(f"  worst: {w['class']} {pct(w['top1'])} of {w['images']}" + (f", mistaken for {often}" if often else ""),
              file=sys.stderr)
    for s in result["skipped"][:20]:
        print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry name (python -m t2t list)")
    p.add_argument("--weights", default="released",
                   help="released (the name's release: ImageNet-1k or CIFAR; EMA when the checkpoint has it), "
                   "embedded, random, or a path/URL")
    p.add_argument("--data", required=True, help="class folder (sub-folders by WordNet id, index or class name) "
                   "or a file list of 'path label' lines")
    p.add_argument("--out", default=None, help="result JSON (top1, top5, loss, per class, ...)")
    p.add_argument("--predictions", default=None, help="also a CSV row per image (label, prediction, loss)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader decoding processes per rank (0: decode in the main process; default: up to 4 "
                   "with a GPU, none on a CPU of 2 cores or fewer per rank)")
    p.add_argument("--device", default="auto", help="auto = this rank's GPU, else mps, else cpu")
    p.add_argument("--no-ema", action="store_true", help="load the checkpoint's state_dict, not its EMA weights")
    p.add_argument("--crop-pct", type=float, default=None, help="override the model's centre-crop fraction")
    p.add_argument("--cls-head-only", action="store_true",
                   help="t2t_vit_24_token_labeling: the class-token head alone, without TokenLabeling's auxiliary "
                   "token head (default: both, as TokenLabeling evaluates, when the file has aux_head.*)")
    p.add_argument("--img-size", type=int, default=None,
                   help="run the model at this input size (a multiple of 16; position embeddings resized)")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast on a GPU (faster; a prediction near a tie may change)")
    p.add_argument("--worst", type=int, default=10, help="how many of the worst classes to analyse")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its journal")
    p.add_argument("--journal", default=None, help="journal file (default: beside --out)")
    p.add_argument("--keep-journal", action="store_true", help="keep the journal after a finished run")


def check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be 0 or more")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        p.error("--crop-pct must be in (0, 1]")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(prog="python -m t2t validate", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    check(args, p)
    try:
        return run(args)
    except (FileNotFoundError, KeyError, ValueError) as e:  # bad data folder or labels, model name, checkpoint
        raise SystemExit(f"error: {e}") from e

