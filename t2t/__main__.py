"""`python -m t2t list`: the model table (parameters, GMACs at each model's size, reported top-1).
`python -m t2t validate`: top-1 / top-5 of a model on a labelled image folder (see `t2t.validate`)."""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from t2t.registry import MODELS, build_model


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
                     "released": cfg.url is not None})
    return rows


def main(argv: list[str] | None = None) -> None:
    from t2t import validate

    parser = argparse.ArgumentParser(prog="python -m t2t")
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("list", help="the model table")
    table.add_argument("--markdown", action="store_true", help="print a Markdown table")
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
    rows = model_table()
    if args.markdown:
        print("| model | size | params | GMACs (ours) | GMACs (paper) | top-1 (%) | weights |")
        print("|---|---|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['name']} | {r['img_size']} | {r['params']:,} | {r['gmacs']:.2f} | {r['paper_gmacs'] or ''} |"
                  f" {r['top1'] or ''} | {'released' if r['released'] else '-'} |")
        return
    print(f"{'model':24s} {'size':>4s} {'params':>12s} {'GMACs':>7s} {'paper':>6s} {'top-1':>6s}")
    for r in rows:
        print(f"{r['name']:24s} {r['img_size']:4d} {r['params']:12,d} {r['gmacs']:7.2f} "
              f"{r['paper_gmacs'] or '':>6} {r['top1'] or '':>6}")


if __name__ == "__main__":
    main()
