"""The model pair: weight sources, loading, and what a loaded model is.

Owns: the default pair (`T2T_DEFAULT`, `VIT_DEFAULT`), the weight sources the sidebar offers
(`WEIGHT_SOURCES`, `SOURCE_LABELS`, `weight_sources(name)`, `default_source`), `load_model` (one
st.cache_resource entry per name, weights, device and EMA choice), `LoadedModel` (a model with where
its weights came from and the numbers pages read: key, family, crop, class names), `resolve_model`
(load, or fall back to the default weights with the reason why) and `save_checkpoint_upload`.
A new weight source (or a rule about which sources a server allows) goes here: the sidebar draws
whatever `weight_sources` returns, and `resolve_model` is the one path from a choice to a model.

May import: app.device (GPU -> CPU fall-back while loading), t2t, torch, streamlit.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
from torch import nn

import t2t
from app.device import guarded

T2T_DEFAULT = "t2t_vit_7"
VIT_DEFAULT = "deit_tiny_patch16_224"

WEIGHT_SOURCES: dict[str, str] = {  # source -> how messages name it
    "embedded": "Project-trained (shipped)",
    "random": "Random (untrained)",
    "released": "Released ImageNet-1k weights (download)",
    "path": "Checkpoint file on this machine",
    "upload": "Upload a checkpoint",
    "url": "Checkpoint URL",
}
SOURCE_LABELS = {  # short enough to show whole in the sidebar's select boxes
    "embedded": "Project-trained (shipped)",
    "random": "Random (untrained)",
    "released": "ImageNet-1k (download)",
    "path": "File on this machine",
    "upload": "Upload a file",
    "url": "From a URL",
}
CHECKPOINT_SOURCES = ("path", "url", "upload")  # the sources that read a checkpoint the user names
CHECKPOINT_TYPES = ["pth", "tar", "pt", "bin", "safetensors", "ckpt"]
UNTRAINED_NOTICE = "untrained weights"


def weight_sources(name: str) -> list[str]:
    """The weight choices offered for `name`: project-trained only where the repository ships them."""
    return [s for s in WEIGHT_SOURCES if s != "embedded" or name in t2t.list_embedded()]


def default_source(name: str) -> str:
    """Embedded (project-trained) weights when the repository ships them for `name`, else random."""
    return "embedded" if name in t2t.list_embedded() else "random"


@st.cache_resource(max_entries=8, show_spinner="Loading the model …")
def load_model(name: str, source: str, location: str, device: str, use_ema: bool = True) -> nn.Module:
    """A registry model with weights from `source` (a key of WEIGHT_SOURCES), in eval mode on `device`.

    use_ema: from a training checkpoint take `state_dict_ema` when present (the official evaluation's
    choice); the dictionary loaded is `model.default_cfg["state_dict_key"]`.

    Random weights are drawn from a fixed seed so "untrained" means the same model on every load.
    Raises t2t.CheckpointError (or a download error) when the weights cannot be used.
    """
    from t2t.loading import load_model as load  # the one loader (validate, the report, the notebooks)

    weights = location if source in CHECKPOINT_SOURCES else source  # embedded, released, random
    return load(name, weights, device, use_ema=use_ema, num_classes=1000 if source == "random" else None,
                match_architecture=False)  # random: ImageNet-sized, seed 0; a misfit checkpoint is an error here


@dataclass(frozen=True)
class LoadedModel:
    """A model of the pair with where its weights came from."""

    role: str  # "T2T-ViT" or "ViT"
    name: str
    source: str
    location: str
    device: str
    model: nn.Module = field(compare=False, repr=False)
    use_ema: bool = True

    @property
    def key(self) -> str:
        return f"{self.name}|{self.source}|{self.location}|{self.device}|{'ema' if self.use_ema else 'raw'}"

    @property
    def trained(self) -> bool:
        return self.source != "random"

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def cfg(self) -> dict[str, Any]:
        return self.model.default_cfg

    @property
    def img_size(self) -> int:
        return int(self.cfg["img_size"])

    @property
    def crop_pct(self) -> float:
        """The crop the model is evaluated with: create_model takes it from the model card
        (1.0 for the project-trained models) or the registry (timm's eval crop)."""
        return float(self.cfg["crop_pct"])

    @property
    def class_names(self) -> list[str]:
        names = self.model.class_names
        return list(names) if names else [f"class {i}" for i in range(int(self.cfg["num_classes"]))]

    @property
    def weights_label(self) -> str:
        if self.source in CHECKPOINT_SOURCES:
            return Path(self.location).name or self.location
        return {"embedded": "project-trained", "random": UNTRAINED_NOTICE, "released": "ImageNet-1k"}[self.source]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.weights_label})"

    @property
    def num_blocks(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[0].attn.num_heads)


def resolve_model(role: str, name: str, source: str, location: str, device: str,
                  use_ema: bool = True) -> tuple[LoadedModel, str | None]:
    """Load a model; when its weights cannot be used, the default weights and the reason why.

    Returns (model, error message or None). A checkpoint that does not fit the model is the usual
    reason (t2t.CheckpointError says which keys or shapes differ).
    """
    if source in CHECKPOINT_SOURCES and not location.strip():
        source, location = default_source(name), ""
    try:
        model = guarded(load_model, name, source, location.strip(), device, use_ema)
        return LoadedModel(role, name, source, location.strip(), device, model, use_ema), None
    except Exception as err:  # CheckpointError, DownloadError, OSError: all shown to the user as they are
        fallback = default_source(name)
        model = guarded(load_model, name, fallback, "", device)
        what = f"'{Path(location).name or location}'" if location else WEIGHT_SOURCES[source].lower()
        message = f"Could not use {what} for {name}: {err}"
        return LoadedModel(role, name, fallback, "", device, model), message


def save_checkpoint_upload(name: str, data: bytes) -> str:
    """Write an uploaded checkpoint to a temporary file (kept by content hash) and return its path.

    The file keeps its name (so messages name it as the user knows it) in a folder named by the
    content hash; the suffix matters: `t2t.read_checkpoint` tells safetensors from pickles by it.
    """
    digest = hashlib.sha1(data).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "t2t-lens-uploads" / digest
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[-100:].lstrip(".") or "checkpoint"
    path = folder / safe
    if not path.exists():
        part = path.with_suffix(path.suffix + ".part")
        part.write_bytes(data)
        part.replace(path)
    return str(path)

