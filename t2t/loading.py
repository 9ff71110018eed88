"""One way to load a model: a registry name and a weights spec -> a model in eval mode.

    from t2t.loading import load_model
    model = load_model("t2t_vit_14", "released")              # the official ImageNet-1k checkpoint (EMA)
    model = load_model("t2t_vit_14_cifar100", "released")     # its official CIFAR-100 fine-tune
    model = load_model("t2t_vit_7", "embedded")               # the project's synthetic-data model
    model = load_model("t2t_vit_7", "runs/x/model.safetensors")  # a path or an http(s) URL
    model = load_model("t2t_vit_7", "random", seed=0)         # untrained, the same network every time

The app, the notebooks, `python -m t2t validate` and `python -m analysis.report` all call this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2t.registry import get_config

WEIGHT_ALIASES: dict[str, bool | str | None] = {
    "embedded": "embedded", "imagenet": True, "released": True, "official": True, "random": None, "none": None,
}


def parse_weights(spec: str | None) -> bool | str | None:
    """A weights spec -> `create_model(pretrained=...)`.

    "embedded" -> the project's synthetic-data models; "imagenet" (or "released", "official") ->
    the released weights of the registry name (ImageNet-1k, or CIFAR-10 / CIFAR-100 for the
    `*_cifar*` names; `default_cfg["dataset"]` says which); "random" (or "none", None) -> untrained; anything else is a
    checkpoint path or URL.
    """
    if spec is None:
        return None
    return WEIGHT_ALIASES.get(str(spec).strip().lower(), str(spec))


def _create(name: str, pretrained: bool | str, use_ema: bool, num_classes: int | None,
            img_size: int | None, aux_head: bool | None = None) -> nn.Module:
    import t2t

    extra = {} if aux_head is None else {"aux_head": aux_head}
    return t2t.create_model(name, img_size, num_classes, pretrained=pretrained, use_ema=use_ema, **extra)


def load_model(name: str, weights: str | None = "embedded", device: str | torch.device = "cpu", *,
               use_ema: bool = True, fallback: bool = False, seed: int = 0, num_classes: int | None = None,
               match_architecture: bool = True, img_size: int | None = None,
               aux_head: bool | None = None) -> nn.Module:
    """A registry model with `weights` (see `parse_weights`), in eval mode on `device`.

    - use_ema: with an official `.pth.tar` holding an EMA copy, load it (as the official
      `main.py --eval_checkpoint` does); False loads `state_dict`. The key loaded is recorded as
      `model.default_cfg["state_dict_key"]` and the choice as `default_cfg["use_ema"]`.
    - "embedded" when this checkout has no embedded weights yet: with `fallback`, a warning is
      printed and the model gets random weights; without, a CheckpointError says what to do.
    - random weights are seeded (`seed`) without touching the global RNG; `num_classes` None gives
      the synthetic dataset's 10 classes, like the embedded models (1000 gives ImageNet's names).
    - `num_classes` with a checkpoint: None takes it from the checkpoint's head.
    - img_size: the input size to run at (a multiple of 16; position embeddings are resized), None
      the model's own (its card's, for the embedded models).
    - match_architecture: a checkpoint of another registry architecture (e.g. a T2T-ViT-14 file
      given with the default name t2t_vit_7) loads into that architecture, with a note; False
      raises the CheckpointError instead (the app, whose model name is the user's choice).
    - aux_head: for t2t_vit_24_token_labeling, False evaluates the class-token head alone (see
      `t2t.create_model`); None keeps TokenLabeling's evaluation when the file has the aux head.
    """
    import t2t
    from t2t.data import CLASS_NAMES

    pretrained = parse_weights(weights)
    if pretrained == "embedded" and name not in t2t.list_embedded():
        if not fallback:
            have = ", ".join(t2t.list_embedded()) or "none"
            raise t2t.CheckpointError(
                f"no embedded weights for {name} in this checkout (embedded: {have}); "
                "pass --weights random for an untrained model, or a checkpoint path or URL")
        print(f"WARNING: no embedded weights for {name} yet; using RANDOM weights (seed {seed}). "
              "Numbers from an untrained model say nothing about T2T-ViT or ViT.", file=sys.stderr)
        pretrained = None
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = t2t.create_model(name, img_size, num_classes=num_classes or len(CLASS_NAMES))
        if num_classes is None:
            model.class_names = list(CLASS_NAMES)
        model.default_cfg["weights"] = f"random (seed {seed})"
        model.default_cfg["state_dict_key"] = None
    else:
        try:
            model = _create(name, pretrained, use_ema, num_classes, img_size, aux_head)
        except t2t.CheckpointError:
            if pretrained in (True, "embedded") or not match_architecture:
                raise
            from t2t.weights import matching_model

            match = matching_model(t2t.read_checkpoint(pretrained, use_ema=use_ema))
            if match is None or match == name:
                raise
            print(f"note: {pretrained} holds a {match}, not a {name}; using {match}", file=sys.stderr)
            model = _create(match, pretrained, use_ema, num_classes, img_size)
        if model.class_names is None and isinstance(pretrained, str):
            model.class_names = checkpoint_class_names(pretrained, model.num_classes)
        model.default_cfg.setdefault("state_dict_key", None)
    model.default_cfg["use_ema"] = bool(use_ema)
    return model.eval().to(device)


def checkpoint_class_names(source: str, num_classes: int) -> list[str] | None:
    """Class names stored with a local checkpoint: `t2t.train` puts them in the safetensors metadata
    and in `card.json` beside the weights."""
    path = Path(source)
    names = None
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get("class_names", "null"))
    for card in (path.with_suffix(".json"), path.parent / "card.json"):
        if names is None and card.is_file():
            names = json.loads(card.read_text()).get("class_names")
    return list(names) if names and len(names) == num_classes else None


def describe_model(model: nn.Module) -> dict[str, Any]:
    """What a results file needs to say about a model: name, weights and the dictionary loaded, the dataset they
    were trained on, the attention scale and head in use, sizes, transform, and the top-1 the release states."""
    cfg = model.default_cfg
    card = cfg.get("card", {})
    return {"name": cfg["name"], "family": cfg["family"], "weights": cfg.get("weights", "random"),
            "use_ema": cfg.get("use_ema"), "state_dict_key": cfg.get("state_dict_key"),
            "dataset": cfg.get("dataset"), "qk_scale": cfg.get("qk_scale"), "qk_scale_rule": cfg.get("qk_scale_rule"),
            "token_labeling": cfg.get("token_labeling"), "checkpoint_meta": cfg.get("checkpoint_meta", {}),
            "img_size": cfg["img_size"], "num_classes": cfg["num_classes"], "num_blocks": len(model.blocks),
            "params": sum(p.numel() for p in model.parameters()), "mean": list(cfg["mean"]),
            "std": list(cfg["std"]), "crop_pct": cfg["crop_pct"],
            "interpolation": cfg.get("interpolation", "bicubic"), "test_acc": card.get("test_acc"),
            "release_top1": cfg.get("top1"), "release_top1_source": cfg.get("top1_source"),
            # kept for results files that read it: the release's top-1 when it is an ImageNet-1k number
            "imagenet_top1": cfg.get("top1") if get_config(cfg["name"]).dataset == "ImageNet-1k" else None}
