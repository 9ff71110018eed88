"""Read any released checkpoint safely and map it onto our models.

Formats: the official T2T-ViT release (`.pth.tar` holding `state_dict` / `state_dict_ema`,
keys maybe prefixed `module.`), its CIFAR fine-tunes (`{'net': state_dict, 'acc', 'epoch'}` saved
by `transfer_learning.py` from a DataParallel model: `module.` keys), timm / DeiT `.pth` (maybe
under `model`), `.safetensors`; from a path or an http(s) URL (downloaded once into the cache,
see `t2t.hub`).
Pickles are never executed: `torch.load(..., weights_only=True)`.

Which dictionary of a training checkpoint: with `use_ema=True` (the default) the EMA weights
`state_dict_ema` (or `model_ema`, timm's later name) when the file has them, else `state_dict`
(or `model`, `module`, `net`). This is what the official evaluation does (`main.py --eval_checkpoint`
calls timm's `load_checkpoint(model, path, args.model_ema)` with `--model-ema` on by default)
and what the official README's `load_for_transfer_learning(..., use_ema=True)` does; the
released top-1 numbers are those of the EMA weights. The key loaded is logged (logger
"t2t.weights") and recorded as `model.default_cfg["state_dict_key"]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from t2t.registry import MODELS, build_model, get_config

ASSETS = Path(__file__).parent / "assets"
EMBEDDED = ASSETS / "embedded"
EMA_KEYS = ("state_dict_ema", "model_ema")  # preferred with use_ema=True, in this order
PLAIN_KEYS = ("state_dict", "model", "module", "net")  # otherwise, in this order ("net": transfer_learning.py)

log = logging.getLogger("t2t.weights")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class Checkpoint(NamedTuple):
    """What a checkpoint file holds: its state dict, the class names it carries, and where.

    state_dict_key: the dictionary of a training checkpoint the weights came from
    ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net"), or None for a flat
    state dict or a safetensors file.
    meta: what the file says beside the weights: the scalar entries of a torch checkpoint (e.g.
    `epoch`, `acc`) or a safetensors file's metadata (strings; `t2t.train` writes `qk_scale`).
    """

    state_dict: dict[str, Tensor]
    class_names: list[str] | None
    state_dict_key: str | None
    meta: dict[str, Any] = {}


def read_checkpoint(source: str | os.PathLike, use_ema: bool = True) -> dict[str, Tensor]:
    """The raw state dict of a file or URL, not yet mapped onto a model (EMA weights preferred)."""
    return load_checkpoint(source, use_ema).state_dict


def read_checkpoint_and_class_names(
    source: str | os.PathLike, use_ema: bool = True
) -> tuple[dict[str, Tensor], list[str] | None]:
    """The raw state dict, and the class names the checkpoint carries, if any."""
    ckpt = load_checkpoint(source, use_ema)
    return ckpt.state_dict, ckpt.class_names


def load_checkpoint(source: str | os.PathLike, use_ema: bool = True) -> Checkpoint:
    """Read a checkpoint file or URL: state dict, class names and the dictionary used.

    use_ema: take the EMA weights (`state_dict_ema`, then `model_ema`) when present, as the
    official evaluation does; False takes `state_dict` (then `model`, `module`).
    Class names may sit beside the weights as a `class_names` list of strings (torch checkpoints)
    or as JSON under the `class_names` metadata key (safetensors).
    """
    source = str(source)
    if source.startswith(("http://", "https://")):
        from t2t.hub import download

        path = download(source, filename=_cache_name(source))
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise CheckpointError(f"checkpoint file not found: {path}")
        if path.is_dir():
            raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        state_dict, names, meta = _read_safetensors(path)
        key = None
    else:
        obj = _read_torch(path)
        names = _as_names(obj.get("class_names") if isinstance(obj, dict) else None)
        state_dict, key = _unwrap(obj, path, use_ema)
        meta = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool))} if isinstance(obj, dict) else {}
    if key == "net":
        log.info("loaded 'net' from %s: a transfer_learning.py checkpoint (DataParallel 'module.' keys) saved at "
                 "epoch %s with test accuracy %s%%", path.name, meta.get("epoch", "?"), meta.get("acc", "?"))
    else:
        log.info("loaded %s from %s", key or "a flat state dict", path.name)
    return Checkpoint(state_dict, names, key, meta)


def _as_names(names: Any) -> list[str] | None:
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _cache_name(url: str) -> str:
    """A cache file name that tells checkpoints apart: hub files are all called `model.safetensors`."""
    segments = [s for s in urlsplit(url).path.split("/") if s]
    name = unquote(segments[-1]) if segments else "checkpoint"
    if name.split(".")[0] in ("model", "pytorch_model") and "resolve" in segments:
        repo = segments[segments.index("resolve") - 1]  # .../<owner>/<repo>/resolve/<rev>/model.safetensors
        name = f"{repo}_{name}"
    return name


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], list[str] | None, dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        try:
            names = _as_names(json.loads(meta["class_names"])) if "class_names" in meta else None
        except json.JSONDecodeError:
            names = None  # unreadable metadata is not worth refusing the weights for
        return load_file(str(path)), names, dict(meta)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a valid safetensors file (corrupt or truncated?): {e}") from e


def _read_torch(path: Path) -> Any:
    # Training scripts store their argparse Namespace and numpy scalars next to the weights;
    # both are plain data, so allow exactly these, and nothing that could run code.
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [argparse.Namespace, np.dtype, core.multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path.name} holds Python objects other than tensors, which would have to be executed to load; "
                f"refusing (weights_only=True). Re-save only its state_dict. Details: {str(e).splitlines()[0]}"
            ) from e
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (cannot unpickle: {e})") from e
    except Exception as e:  # the unpickler fails in many ways on bytes that are not a pickle
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _looks_like_zip(path):
            raise CheckpointError(f"{path.name} is truncated or corrupt: {msg}") from e
        raise CheckpointError(f"{path.name} is not a PyTorch or safetensors checkpoint: {msg}") from e


def _looks_like_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _unwrap(obj: Any, path: Path, use_ema: bool = True) -> tuple[dict[str, Tensor], str | None]:
    """The state dict inside a training checkpoint, and its key (None for a flat state dict).

    With use_ema the EMA keys are tried first (as timm's `load_state_dict(use_ema=True)`, which
    the official T2T-ViT evaluation calls); without, a file holding only EMA weights is refused
    rather than silently giving the EMA weights that were not asked for.
    """
    key = None
    if isinstance(obj, dict):
        keys = (EMA_KEYS if use_ema else ()) + PLAIN_KEYS
        key = next((k for k in keys if isinstance(obj.get(k), dict)), None)
        if key is None and not use_ema and any(isinstance(obj.get(k), dict) for k in EMA_KEYS):
            found = ", ".join(k for k in EMA_KEYS if k in obj)
            raise CheckpointError(f"{path.name} holds only EMA weights ({found}), but use_ema=False asks for "
                                  "the non-EMA state_dict; load it with use_ema=True")
        obj = obj[key] if key is not None else obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        where = f" under {key!r}" if key else ""
        raise CheckpointError(f"{path.name} holds no state dict of tensors{where} (found {type(obj).__name__})")
    return obj, key


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """(1, prefix + h*w, D) -> (1, prefix + grid[0]*grid[1], D), bicubic over the 2-D grid (as timm)."""
    prefix, tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.isqrt(tokens.shape[1]))
    if old * old != tokens.shape[1]:
        raise CheckpointError(f"position embedding of {tokens.shape[1]} tokens is not a square grid")
    tokens = rearrange(tokens, "1 (h w) d -> 1 d h w", h=old)
    tokens = F.interpolate(tokens.float(), size=grid, mode="bicubic", align_corners=False)
    return torch.cat([prefix, rearrange(tokens, "1 d h w -> 1 (h w) d").to(pos_embed.dtype)], dim=1)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a foreign state dict onto our names: strip `module.`, resize position embeddings."""
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resize_pos_embed(v, model.grid(model.img_size, model.img_size), model.num_prefix_tokens)
        out[k] = v
    return out


def load_weights(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load strictly, or raise a CheckpointError saying what does not fit and what would."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    # structural keys (stems, heads) say more about an architecture than the Nth block: list them first
    order = lambda k: (k.startswith("blocks."), k)  # noqa: E731
    missing = sorted(set(own) - set(state_dict), key=order)
    unexpected = sorted(set(state_dict) - set(own), key=order)
    wrong = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        name = model.default_cfg["name"]
        lines = [f"checkpoint does not fit {name}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:8])}{more}")
        match = matching_model(state_dict)
        if match:
            lines.append(f"  its names and shapes match registry model {match!r}: create_model({match!r}, ...)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


@cache
def _signature(name: str, num_classes: int) -> frozenset[tuple[str, tuple[int, ...]]]:
    cfg = get_config(name)
    with torch.device("meta"):
        model = build_model(name, cfg.img_size, num_classes)
    return frozenset((k, tuple(v.shape)) for k, v in model.state_dict().items() if k != "pos_embed")


def matching_model(state_dict: dict[str, Tensor]) -> str | None:
    """The registry model whose names and shapes (position embedding aside) the state dict has."""
    head = state_dict.get("head.weight")
    num_classes = head.shape[0] if head is not None else 1000
    sig = frozenset((k.removeprefix("module."), tuple(v.shape)) for k, v in state_dict.items()
                    if k.removeprefix("module.") != "pos_embed")
    return next((name for name in MODELS if _signature(name, num_classes) == sig), None)


def embedded_files(name: str) -> tuple[Path, Path]:
    """The shipped weights and model card of an embedded (project-trained) model."""
    return EMBEDDED / f"{name}.safetensors", EMBEDDED / f"{name}.json"


def list_embedded() -> list[str]:
    return sorted(p.stem for p in EMBEDDED.glob("*.safetensors")) if EMBEDDED.exists() else []


#: default_cfg["token_labeling"] -> what the logits of a token-labeling model are
HEAD_FORMS = {
    "cls+aux": "class-token head + 0.5 x max over patch tokens of the auxiliary token head (TokenLabeling's eval)",
    "cls": "class-token head alone (aux_head=False: the auxiliary token head is not used)",
    "plain": "class-token head: the file has no aux_head.* keys, so it is the plain T2T-ViT-24 architecture",
}


def create_model(name: str, img_size: int | None = None, num_classes: int | None = None,
                 pretrained: bool | str | os.PathLike | None = None, use_ema: bool = True,
                 aux_head: bool | None = None, **overrides: Any) -> nn.Module:
    """Build a registry model and optionally load weights.

    pretrained: None/False  fresh weights;
                True        the released weights (ImageNet-1k, or CIFAR for the `*_cifar*` names),
                            downloaded once into the cache;
                "embedded"  the project's own model trained on the synthetic dataset, shipped in the repo;
                a path or http(s) URL of a checkpoint in any supported format.
    use_ema: from a training checkpoint take the EMA weights (`state_dict_ema` / `model_ema`) when
             it has them, as the official evaluation does; False takes `state_dict` / `model`.
    num_classes: None takes it from the checkpoint (the release's head without one).
    aux_head: token-labeling models only (`t2t_vit_24_token_labeling`). None: a file with
             `aux_head.*` keys is evaluated as TokenLabeling's models are (class-token head + 0.5 x
             max over patch tokens of the auxiliary head), a file without them is the plain
             T2T-ViT-24 (with a note); False: the class-token head alone; True: require the aux head.
             The form is logged and kept as `default_cfg["token_labeling"]` ("cls+aux", "cls",
             "plain") with `default_cfg["head"]` saying it in words.
    qk_scale (an override): the backbone attention scale. Without it, the scale a model card or
             the file's metadata records (the embedded T2T-ViT-7 was trained at 1/16; `t2t.train`
             records the scale of every run), else head_dim ** -0.5. Kept as `default_cfg["qk_scale"]`
             with `default_cfg["qk_scale_rule"]`.
    The model carries `default_cfg` (mean, std, crop, interpolation, dataset, ...; `state_dict_key`:
    the checkpoint dictionary loaded, None for a flat state dict, safetensors or fresh weights) and
    `class_names` (a list, or None).
    """
    cfg = get_config(name)
    if aux_head is not None and not cfg.token_labeling:
        token_labeling = [n for n, c in MODELS.items() if c.token_labeling]
        raise ValueError(f"aux_head applies to the token-labeling models ({', '.join(token_labeling)}), not {name}")
    card: dict[str, Any] = {}
    ckpt = None
    if pretrained is True:
        if cfg.url is None:
            raise CheckpointError(f"{name} has no released weights; pass a checkpoint path or URL")
        ckpt = load_checkpoint(cfg.url, use_ema)
    elif pretrained == "embedded":
        weights, card_path = embedded_files(name)
        if not weights.exists():
            raise CheckpointError(f"no embedded weights for {name}; embedded models: {', '.join(list_embedded())}")
        ckpt = load_checkpoint(weights, use_ema)
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        img_size = img_size or card.get("img_size")
    elif pretrained:
        ckpt = load_checkpoint(pretrained, use_ema)
    state_dict, names = (ckpt.state_dict, ckpt.class_names) if ckpt else (None, None)
    if num_classes is None:
        head = state_dict.get("head.weight", state_dict.get("module.head.weight")) if state_dict else None
        num_classes = head.shape[0] if head is not None else cfg.num_classes

    # the attention scale the weights were trained with, when their card or file records it
    scale_rule = None
    if overrides.get("qk_scale") is None:
        trained = card.get("qk_scale") if card else (ckpt.meta.get("qk_scale") if ckpt else None)
        if trained is not None:
            overrides["qk_scale"] = float(trained)
            scale_rule = f"trained with {float(trained):.6g} ({'model card' if card else 'checkpoint metadata'})"
            log.info("%s: attention scale %.6g, as its %s records", name, float(trained),
                     "model card" if card else "checkpoint metadata")

    form = None
    if cfg.token_labeling:
        state_dict, form = _token_labeling_form(name, state_dict, aux_head)
        overrides["aux_head"] = form == "cls+aux"
    model = build_model(name, img_size, num_classes, **overrides)
    if scale_rule:
        model.default_cfg["qk_scale_rule"] = scale_rule
    if form is not None:
        model.default_cfg["token_labeling"] = form
        model.default_cfg["head"] = HEAD_FORMS[form]
    if state_dict is not None:
        load_weights(model, state_dict)
        model.default_cfg["weights"] = "embedded" if pretrained == "embedded" else str(
            cfg.url if pretrained is True else pretrained)
    model.default_cfg["state_dict_key"] = ckpt.state_dict_key if ckpt else None
    model.default_cfg["checkpoint_meta"] = dict(ckpt.meta) if ckpt and ckpt.state_dict_key else {}
    model.class_names = _class_names(card.get("class_names") or names, num_classes, cfg.dataset)
    if card:
        model.default_cfg["card"] = card
        model.default_cfg.update({k: tuple(card[k]) for k in ("mean", "std") if k in card})
        model.default_cfg["crop_pct"] = card.get("crop_pct", model.default_cfg["crop_pct"])
    # the dataset the weights in use were trained on (None for fresh weights); a file of the release's
    # head size is taken to be of the release's dataset, as its class names are
    model.default_cfg["dataset"] = (card.get("dataset") or card.get("data", {}).get("dataset") if card
                                    else cfg.dataset if state_dict is not None and num_classes == cfg.num_classes
                                    else None)
    return model.eval() if state_dict is not None else model


def _token_labeling_form(name: str, state_dict: dict[str, Tensor] | None,
                         aux_head: bool | None) -> tuple[dict[str, Tensor] | None, str]:
    """Which form of a token-labeling model to build ("cls+aux", "cls", "plain"), and the state dict to load."""
    if state_dict is None:
        return None, "cls" if aux_head is False else "cls+aux"
    is_aux = lambda k: k.removeprefix("module.").startswith("aux_head.")  # noqa: E731
    if any(is_aux(k) for k in state_dict):
        if aux_head is False:
            log.info("%s: the file's auxiliary token head (aux_head.*) is left unused: class-token head alone", name)
            return {k: v for k, v in state_dict.items() if not is_aux(k)}, "cls"
        log.info("%s: auxiliary token head found (aux_head.*): logits = head(class token) + 0.5 x max over patch "
                 "tokens of aux_head, as TokenLabeling evaluates", name)
        return state_dict, "cls+aux"
    if aux_head:
        raise CheckpointError(f"{name}: aux_head=True, but the checkpoint has no aux_head.* keys")
    log.warning("note: %s: the checkpoint has no aux_head.* keys; loaded as the plain T2T-ViT-24 (class-token head "
                "only). TokenLabeling's own evaluation would add its auxiliary head, which this file does not hold.",
                name)
    return state_dict, "plain"


def _class_names(names: list[str] | None, num_classes: int, dataset: str = "ImageNet-1k") -> list[str] | None:
    """The checkpoint's or card's own names when they fit the head, else those of the release's dataset
    (ImageNet-1k, CIFAR-10, CIFAR-100) when their count fits, else ImageNet's for 1000 classes."""
    from t2t.registry import DATASETS, dataset_class_names

    if names and len(names) == num_classes:
        return list(names)
    if dataset in DATASETS and DATASETS[dataset][1] == num_classes:
        return list(dataset_class_names(dataset))
    if num_classes == 1000:
        return list(dataset_class_names("ImageNet-1k"))
    return None
