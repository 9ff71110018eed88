"""Train a registry model from scratch on the synthetic local-structure dataset.

    python -m t2t.train --model t2t_vit_7 --out runs/t2t_vit_7    # 4000 steps x 256 images

On one H100 the defaults take ~4.6 min for t2t_vit_7 (~4,000 images/s, 98.5% test accuracy) and
~3.6 min for deit_tiny_patch16_224 (~5,000 images/s, 93.0%).

AdamW, linear warm-up then cosine decay, label smoothing, gradient clipping, bf16 autocast on
CUDA. Every `--eval-every` steps: validation, a line in `log.jsonl` and an atomic checkpoint
(`checkpoint.pt`: model, optimizer, scheduler, step, RNG states, args) that `--resume`
continues from exactly. At the end: test accuracy in `final.json`, the weights in
`model.safetensors` (float16 when that leaves test accuracy unchanged) and a model card
(`card.json`, `model_card.md`) that `t2t.create_model` can read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from t2t.data.synthetic import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, SPLIT_SEEDS, LocalStructureDataset

# args that change where/how a run executes but not what it computes: they may differ on --resume
# and are left out of the reproduce command
RUNTIME_ARGS = ("out", "resume", "device", "workers", "stop_after", "compile")
FP16_TOLERANCE = 0.001  # accuracy the float16 export may lose vs float32 (0.1 point) and still be used


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the unset (None) and off (False) ones."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:  # (0 == False: compare identity)
            return action.help or ""
        return super()._get_help_string(action) or ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m t2t.train", description=__doc__.split("\n")[0],
                                formatter_class=_Help)
    p.add_argument("--model", default="t2t_vit_7", help="registry name, e.g. t2t_vit_7, deit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=224, help="input resolution")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (default 4000)")
    length.add_argument("--epochs", type=float, default=None, help="passes over --train-size images")
    p.add_argument("--batch-size", type=int, default=256, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW decay (none on norms, biases, tokens)")
    p.add_argument("--warmup-steps", type=int, default=200, help="linear warm-up before the cosine")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the training loss")
    p.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm; 0 disables")
    p.add_argument("--seed", type=int, default=0, help="model init and data order")
    p.add_argument("--data-seed", type=int, default=0, help="which synthetic images (same for every model)")
    p.add_argument("--train-size", type=int, default=1_000_000,
                   help="distinct training images (rendered on the fly, so large costs nothing)")
    p.add_argument("--val-size", type=int, default=2_000, help="validation images, every --eval-every")
    p.add_argument("--test-size", type=int, default=10_000, help="test images, at the end")
    p.add_argument("--eval-every", type=int, default=500, help="steps between validation + checkpoint")
    p.add_argument("--qk-scale", type=float, default=None,
                   help="backbone attention scale (default: the registry's, head_dim ** -0.5); the card records it")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="DataLoader processes")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) once this global step is reached; finish later with --resume")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = f"runs/{args.model}"
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """The command line that recomputes this run (runtime-only options left out)."""
    parts = ["python", "-m", "t2t.train"]
    for k, v in vars(args).items():
        if k in RUNTIME_ARGS or v is None or (k == "epochs" and args.steps is not None):
            continue  # --steps, once known, is what the run did; --epochs would conflict with it
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            parts += [flag, str(v)]
    return shlex.join(parts)


# ----------------------------------------------------------------------------- pieces

def build_model(name: str, img_size: int, num_classes: int, **overrides: Any) -> nn.Module:
    """A fresh registry model (tests swap this for a stand-in); `overrides`: e.g. qk_scale."""
    import t2t

    return t2t.create_model(name, img_size=img_size, num_classes=num_classes, **overrides)


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments the command line sets (only those given, so a stand-in needs none)."""
    return {"qk_scale": args.qk_scale} if getattr(args, "qk_scale", None) else {}


def _scale_before_qk_scale_was_recorded(name: str) -> float | None:
    """A run checkpointed before --qk-scale existed trained its T2T-ViT at embed_dim ** -0.5 (the registry's
    default then); a resumed run must go on with the scale it started with."""
    from t2t.registry import MODELS

    cfg = MODELS.get(name)
    if cfg is None or cfg.family != "t2t":
        return None
    print(f"note: this checkpoint predates --qk-scale; continuing at the scale it was trained with, "
          f"embed_dim ** -0.5 = {cfg.args['embed_dim'] ** -0.5:.6g}")
    return cfg.args["embed_dim"] ** -0.5


def attention_scale(model: nn.Module) -> float | None:
    """The backbone attention scale of a registry model (None for a model without `blocks`)."""
    blocks = getattr(model, "blocks", None)
    return float(blocks[0].attn.scale) if blocks is not None and len(blocks) else None


def pick_device(name: str) -> torch.device:
    from t2t.trace import default_device

    return default_device(None if name == "auto" else name)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type.upper()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


class StepSampler(Sampler[int]):
    """Sample indices for global steps [start, total): epoch e is a fixed permutation seeded by (seed, e).

    Step s always sees the same images, so a resumed run sees exactly what an unbroken one would.
    The last `n % batch_size` images of each permutation are dropped so batches never straddle epochs.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int):
        if n < batch_size:
            raise ValueError(f"train size {n} is smaller than the batch size {batch_size}")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.steps_per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.batch_size

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.total):
            e, j = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, np.random.default_rng((self.seed, e)).permutation(self.n)
            yield from perm[j * self.batch_size:(j + 1) * self.batch_size].tolist()


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr: linear warm-up from ~0, then cosine down to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, class tokens and position embeddings (1-d or named so)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def loader(ds: LocalStructureDataset, batch_size: int, workers: int, device: torch.device,
           sampler: Sampler | None = None, persistent: bool = True) -> DataLoader:
    # Images are uint8 (4x fewer bytes through shared memory and PCIe) and normalised on the device.
    # Its own generator: creating an iterator must not draw from the global RNG, or a resumed run
    # (one fewer iterator created) would drift from an unbroken one.
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                      prefetch_factor=4 if workers > 0 else None, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def evaluate(models: list[nn.Module], dl: DataLoader, device: torch.device, amp: bool,
             mean: Tensor, std: Tensor) -> list[dict[str, float]]:
    """Plain cross-entropy and accuracy of each model on one pass over `dl` (images rendered once)."""
    for m in models:
        m.eval()
    loss = torch.zeros(len(models), device=device, dtype=torch.float64)
    correct = torch.zeros(len(models), device=device, dtype=torch.long)
    n = 0
    for x, y in dl:
        x = (x.to(device, non_blocking=True).float() / 255 - mean) / std
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for i, m in enumerate(models):
                logits = m(x).float()
                loss[i] += F.cross_entropy(logits, y, reduction="sum")
                correct[i] += (logits.argmax(-1) == y).sum()
        n += len(y)
    return [{"loss": loss[i].item() / n, "acc": correct[i].item() / n, "correct": correct[i].item(), "n": n}
            for i in range(len(models))]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain Python values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the run

def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) training as configured by `parse_args`; returns final.json's content,
    or {"stopped": True, "step": ...} when `--stop-after` ended it early."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if args.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        # the run's recipe is the checkpoint's (recipe options on the command line are ignored);
        # runtime options (RUNTIME_ARGS: --out, --workers, --device, ...) are today's
        print(f"resuming {ckpt_path} at step {ckpt['step']} with its recipe")
        for k, v in ckpt["args"].items():
            if k not in RUNTIME_ARGS:
                setattr(args, k, v)
        if "qk_scale" not in ckpt["args"]:
            args.qk_scale = _scale_before_qk_scale_was_recorded(args.model)

    device = pick_device(args.device)
    amp = args.amp = device.type == "cuda" if args.amp is None else args.amp  # resolved: recorded as run
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    num_classes = len(CLASS_NAMES)
    train_ds = LocalStructureDataset("train", args.train_size, args.img_size, args.data_seed, as_uint8=True)
    val_ds = LocalStructureDataset("val", args.val_size, args.img_size, args.data_seed, as_uint8=True)
    steps_per_epoch = args.train_size // args.batch_size
    if args.steps is None:
        args.steps = 4000 if args.epochs is None else math.ceil(args.epochs * steps_per_epoch)
    total = args.steps

    model = build_model(args.model, args.img_size, num_classes, **model_overrides(args)).to(device)
    run_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999),
                            fused=device.type == "cuda")
    min_ratio = args.min_lr / args.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, args.warmup_steps, total, min_ratio))
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    step, elapsed = 0, 0.0
    window = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}  # train stats since the last eval
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, elapsed, window = ckpt["step"], ckpt["elapsed"], ckpt["window"]
        set_rng_state(ckpt["rng"])
        _truncate_log(out / "log.jsonl", step)  # drop lines written after the checkpoint
    del ckpt

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params / 1e6:.2f}M params on {hardware(device)}, amp={amp}, "
          f"{total} steps x {args.batch_size} = {total * args.batch_size:,} images "
          f"({total / steps_per_epoch:.2f} epochs of {args.train_size:,}), starting at step {step}")

    def checkpoint() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "elapsed": elapsed, "window": window, "rng": rng_state(),
                     "args": vars(args)}, ckpt_path)

    stop = total if args.stop_after is None else min(total, args.stop_after)
    val_dl = loader(val_ds, args.batch_size, args.workers, device)
    if step < stop:
        sampler = StepSampler(args.train_size, args.batch_size, args.seed, step, stop)
        train_dl = loader(train_ds, args.batch_size, args.workers, device, sampler, persistent=False)
        criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        bar = tqdm(total=total, initial=step, desc=args.model, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)  # a log file gets a line per 30 s
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # on device: no sync per step
        correct_sum = torch.zeros((), device=device, dtype=torch.long)
        t_mark = time.perf_counter()  # wall clock counted into `elapsed` up to here
        shown = (step, t_mark)
        model.train()
        for x, y in train_dl:
            x = (x.to(device, non_blocking=True).float() / 255 - mean) / std
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = run_model(x)
            loss = criterion(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.detach() * len(y)
            correct_sum += (logits.detach().argmax(-1) == y).sum()
            window["seen"] += len(y)
            bar.update(1)

            if step % 20 == 0 or step == stop:
                now = time.perf_counter()
                seen = window["seen"]
                rate = (step - shown[0]) * args.batch_size / max(now - shown[1], 1e-9)
                shown = (step, now)
                bar.set_postfix(loss=f"{(window['loss'] + loss_sum.item()) / max(seen, 1):.3f}",
                                acc=f"{(window['correct'] + correct_sum.item()) / max(seen, 1):.3f}",
                                img_s=f"{rate:.0f}", lr=f"{sched.get_last_lr()[0]:.2e}")

            if step % args.eval_every == 0 or step == stop:
                window["time"] += time.perf_counter() - t_mark  # training time only: images/s
                window["loss"] += loss_sum.item()
                window["correct"] += correct_sum.item()
                loss_sum.zero_()
                correct_sum.zero_()
                val = None
                if step % args.eval_every == 0 or step == total:
                    (val,) = evaluate([run_model], val_dl, device, amp, mean, std)
                    model.train()
                now = time.perf_counter()
                elapsed += now - t_mark  # wall time, evaluation included
                t_mark = now
                if val is not None:
                    record = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                              "train_loss": window["loss"] / max(window["seen"], 1),
                              "train_acc": window["correct"] / max(window["seen"], 1),
                              "val_loss": val["loss"], "val_acc": val["acc"],
                              "images_per_s": window["seen"] / max(window["time"], 1e-9),
                              "lr": sched.get_last_lr()[0], "wall_time": elapsed}
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.write(f"step {step}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f} | "
                              f"val loss {val['loss']:.4f} acc {val['acc']:.4f} | "
                              f"{record['images_per_s']:.0f} img/s")
                    window = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}
                checkpoint()  # after the log line: a crash in between is undone by _truncate_log
                shown = (step, time.perf_counter())
        bar.close()
        del train_dl

    if step < total:
        print(f"stopped at step {step} of {total}; continue with --resume --out {out}")
        return {"stopped": True, "step": step}
    return finish(args, model, out, device, amp, mean, std, elapsed)


def _truncate_log(path: Path, step: int) -> None:
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        write_atomic("".join(ln + "\n" for ln in lines), path)


def finish(args: argparse.Namespace, model: nn.Module, out: Path, device: torch.device, amp: bool,
           mean: Tensor, std: Tensor, elapsed: float) -> dict[str, Any]:
    """Test accuracy in float32 and with float16-rounded weights; export, final.json and model card."""
    from safetensors.torch import save_file

    test_ds = LocalStructureDataset("test", args.test_size, args.img_size, args.data_seed, as_uint8=True)
    test_dl = loader(test_ds, args.batch_size, args.workers, device, persistent=False)
    half = build_model(args.model, args.img_size, len(CLASS_NAMES), **model_overrides(args)).to(device)
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    # in float32 (no autocast): the number a user loading the weights will see
    fp32, fp16 = evaluate([model, half], test_dl, device, False, mean, std)
    # float16 halves the file; keep it when test accuracy is unchanged at 0.1-point precision
    # (rounding the weights flips a few borderline images either way; it must not cost accuracy)
    dtype = torch.float16 if fp16["acc"] >= fp32["acc"] - FP16_TOLERANCE else torch.float32
    exported = fp16 if dtype == torch.float16 else fp32
    del half

    weights = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    scale = attention_scale(model)
    metadata = {"model": args.model, "img_size": str(args.img_size), "num_classes": str(len(CLASS_NAMES)),
                "class_names": json.dumps(list(CLASS_NAMES)), "dtype": str(dtype).removeprefix("torch.")}
    if scale is not None:  # `t2t.create_model` evaluates the weights at the scale they were trained with
        metadata["qk_scale"] = repr(scale)
    tmp = out / "model.safetensors.tmp"
    save_file(weights, str(tmp), metadata=metadata)
    os.replace(tmp, out / "model.safetensors")

    final = {"model": args.model, "img_size": args.img_size, "steps": args.steps,
             "images_seen": args.steps * args.batch_size, "test_size": fp32["n"],
             "test_acc": exported["acc"], "test_loss": exported["loss"], "export_dtype": metadata["dtype"],
             "test_acc_fp32_weights": fp32["acc"], "test_acc_fp16_weights": fp16["acc"],
             "wall_time_s": elapsed, "hardware": hardware(device)}
    write_atomic(json.dumps(final, indent=2) + "\n", out / "final.json")

    card = {
        "model": args.model, "img_size": args.img_size, "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        # trained on whole img_size renders, no resize-and-crop: evaluate them the same way
        "crop_pct": 1.0,
        # the backbone attention scale trained with: loading applies it (`t2t.create_model`)
        "qk_scale": scale,
        "qk_scale_rule": "--qk-scale" if args.qk_scale else "head_dim ** -0.5 (the registry's)",
        "dataset": "synthetic local structure",
        "weights": "model.safetensors", "dtype": metadata["dtype"],
        "params": sum(p.numel() for p in model.parameters()),
        "data": {"dataset": "t2t.data.synthetic.LocalStructureDataset", "data_seed": args.data_seed,
                 "split_seeds": SPLIT_SEEDS, "train_size": args.train_size, "val_size": args.val_size,
                 "test_size": args.test_size},
        "recipe": {k: v for k, v in vars(args).items() if k not in RUNTIME_ARGS},
        "steps": args.steps, "images_seen": final["images_seen"], "wall_time_s": elapsed,
        "hardware": final["hardware"], "test_acc": exported["acc"], "test_loss": exported["loss"],
        "torch": torch.__version__, "command": reproduce_command(args),
    }
    write_atomic(json.dumps(card, indent=2) + "\n", out / "card.json")
    write_atomic(model_card_md(card), out / "model_card.md")
    print(f"test acc {fp32['acc']:.4f} (float16 weights {fp16['acc']:.4f}) -> {out}/model.safetensors "
          f"({metadata['dtype']})")
    return final


def model_card_md(card: dict[str, Any]) -> str:
    d, r = card["data"], card["recipe"]
    rows = [
        ("test accuracy", f"**{card['test_acc'] * 100:.2f}%** on {d['test_size']:,} test images "
                          f"(loss {card['test_loss']:.4f})"),
        ("classes", ", ".join(card["class_names"])),
        ("input", f"{card['img_size']}x{card['img_size']} RGB, normalised with mean {card['mean']}, "
                  f"std {card['std']}"),
        ("parameters", f"{card['params']:,}"),
        ("attention scale", f"{card['qk_scale']:.6g} ({card['qk_scale_rule']}); loading applies it"
         if card.get("qk_scale") is not None else "n/a"),
        ("data", f"`{d['dataset']}`, data seed {d['data_seed']}, split seeds {d['split_seeds']}, "
                 f"{d['train_size']:,} train / {d['val_size']:,} val images"),
        ("recipe", f"AdamW lr {r['lr']} (min {r['min_lr']}), weight decay {r['weight_decay']}, "
                   f"batch {r['batch_size']}, {r['warmup_steps']} warm-up steps then cosine, "
                   f"label smoothing {r['label_smoothing']}, grad clip {r['clip_grad']}, seed {r['seed']}"
                   + (", bf16 autocast" if r["amp"] else ", float32")),
        ("steps", f"{card['steps']:,} ({card['images_seen']:,} images)"),
        ("wall time", f"{card['wall_time_s'] / 60:.1f} min on {card['hardware']} (torch {card['torch']})"),
        ("weights", f"`{card['weights']}` ({card['dtype']})"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# {card['model']} trained on synthetic local-structure images\n\n| | |\n| --- | --- |\n{table}\n\n"
            f"Reproduce:\n\n```\n{card['command']}\n```\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, "-m", "t2t.train", *(argv or sys.argv[1:])]))
    train(args)


if __name__ == "__main__":
    main()
