"""`python -m t2t list`: the model table (parameters, GMACs at each model's size, reported top-1, the dataset
of the release and the attention scale in use); `--releases`: how each released file is evaluated.
`python -m t2t validate`: top-1 / top-5 of a model on a labelled image folder (see `t2t.validate`)."""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from t2t.registry import CIFAR_MEAN, IMAGENET_MEAN, MODELS, ModelConfig, attention_scale, build_model


def count_params(name: str) -> int:
    """All state-dict elements (position table and Performer features included, as the paper counts)."""
    with torch.device("meta"):
        model = build_model(name)
    return sum(v.numel() for v in model.state_dict().values())


def count_gmacs(name: str, img_size: int | None = None) -> float:
    """Multiply-accumulates of one image's forward, in billions (torch's FLOP counter / 2).

    Runs on the meta device: shapes only, no arithmetic, so it takes milliseconds.
    """
    with torch.device("meta"):
        model = build_model(name, img_size)
        size = model.img_size
        x = torch.empty(1, 3, size, size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops() / 2e9


def model_table() -> list[dict]:
    rows = []
    for name, cfg in MODELS.items():
        rows.append({"name": name, "family": cfg.family, "img_size": cfg.img_size, "params": count_params(name),
                     "gmacs": count_gmacs(name), "paper_gmacs": cfg.paper_gmacs, "top1": cfg.top1,
                     "released": cfg.url is not None, "dataset": cfg.dataset if cfg.url else None,
                     "qk_scale": attention_scale(cfg)})
    return rows


def scale_text(cfg: ModelConfig) -> str:
    """'64 ** -0.5 = 0.125': the backbone attention scale and where it comes from."""
    return f"{cfg.args['embed_dim'] // cfg.args['num_heads']} ** -0.5 = {attention_scale(cfg):.4g}"


def transform_text(cfg: ModelConfig) -> str:
    """The eval transform in words, as `t2t.images.preprocess` runs it."""
    norm = {IMAGENET_MEAN: "ImageNet", CIFAR_MEAN: "CIFAR", (0.5, 0.5, 0.5): "0.5"}.get(cfg.mean, str(cfg.mean))
    scale = math.floor(cfg.img_size / cfg.crop_pct)
    if cfg.crop_pct == 1.0:
        how = f"resize to {cfg.img_size} ({cfg.interpolation}), no crop of a square image"
    else:
        how = f"resize to {scale} ({cfg.interpolation}), centre crop {cfg.img_size} (crop {cfg.crop_pct})"
    return f"{how}; {norm} mean / std"


def release_rows() -> list[str]:
    """One Markdown row per released file: file, what is loaded, scale, transform, expected top-1 and its source."""
    rows = ["| model | file | format: dictionary loaded | attention scale | eval transform | top-1 (%) | "
            "dataset | source of the top-1 |", "|---|---|---|---|---|---:|---|---|"]
    for name, cfg in MODELS.items():
        if cfg.url:
            rows.append(f"| {name} | `{cfg.file}` | {cfg.checkpoint} | {scale_text(cfg)} | {transform_text(cfg)} | "
                        f"{cfg.top1} | {cfg.dataset} | {cfg.top1_source} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    from t2t import validate

    parser = argparse.ArgumentParser(prog="python -m t2t")
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("list", help="the model table")
    table.add_argument("--markdown", action="store_true", help="print a Markdown table")
    table.add_argument("--releases", action="store_true",
                       help="the released files: format, dictionary, attention scale, transform, top-1 (Markdown)")
    check = commands.add_parser("validate", help="top-1 / top-5 on a labelled image folder (torchrun for many)",
                                description=validate.__doc__.split("\n")[0])
    validate.add_arguments(check)
    args = parser.parse_args(argv)
    if args.command == "validate":
        validate.check(args, check)
        try:
            validate.run(args)
        except (FileNotFoundError, KeyError, ValueError) as e:  # data folder or labels, model name, checkpoint
            raise SystemExit(f"error: {e}") from e
        return
    if args.releases:
        print("\n".join(release_rows()))
        return
    rows = model_table()
    if args.markdown:
        print("| model | size | params | GMACs (ours) | GMACs (paper) | top-1 (%) | weights | attention scale |")
        print("|---|---|---:|---:|---:|---:|---|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['img_size']} | {r['params']:,} | {r['gmacs']:.2f} | {r['paper_gmacs'] or ''} |"
                  f" {r['top1'] or ''} | {r['dataset'] or '-'} | {r['qk_scale']:.4g} |")
        return
    print(f"{'model':26s} {'size':>4s} {'params':>12s} {'GMACs':>7s} {'paper':>6s} {'top-1':>6s} {'weights':>11s} "
          f"{'qk scale':>8s}")
    for r in rows:
        print(f"{r['name']:26s} {r['img_size']:4d} {r['params']:12,d} {r['gmacs']:7.2f} "
              f"{r['paper_gmacs'] or '':>6} {r['top1'] or '':>6} {r['dataset'] or '-':>11s} {r['qk_scale']:8.4g}")

if __name__ == "__main__":
    main()
