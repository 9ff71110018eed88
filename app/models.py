"""The model pair: weight sources, loading, and what a loaded model is.

Owns: the default pair (`T2T_DEFAULT`, `VIT_DEFAULT`), the weight sources the sidebar offers
(`WEIGHT_SOURCES`, `SOURCE_LABELS`, `weight_sources(name, mode)`, `default_source`), `MODELS` (the
loaded models of the whole server under one budget in bytes, $T2T_LENS_MODEL_MB, default 2048 MB;
least recently used unloaded first, see app/model_cache.py `ModelCache`), `model_bytes` (a model's size
from the registry, before loading), `load_model`, `LoadedModel` (a model with where its weights came
from and the numbers pages read: key, family, crop, class names), `resolve_model` (load what this
session may use, or fall back to the default weights with the reason why), `preload`, and checkpoint
uploads (`save_checkpoint_upload`, in a folder bounded by bytes, $T2T_LENS_UPLOADS_MB).
A new weight source (or a rule about which sources a server allows: app/access.py) goes here: the
sidebar draws whatever `weight_sources` returns, and `resolve_model` is the one path from a choice to
a model; it refuses a source the session's mode does not allow, whatever the session state says.

Models are shared by every session and must stay read-only: work that changes a model (knock-outs)
uses thread-local hooks or a copy; a model found altered in place is dropped and loaded again.

May import: app.model_cache, app.access, app.device (GPU -> CPU fall-back while loading), t2t, torch, streamlit.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
import torch
from torch import nn

import t2t
from app.access import SessionMode, session_mode
from app.device import guarded
from app.model_cache import ModelCache, ModelTooLarge, megabytes, module_bytes

T2T_DEFAULT = "t2t_vit_7"
VIT_DEFAULT = "deit_tiny_patch16_224"

WEIGHT_SOURCES: dict[str, str] = {  # source -> how messages name it
    "embedded": "Project-trained (shipped)",
    "random": "Random (untrained)",
    "released": "Released weights (download)",
    "path": "Checkpoint file on this machine",
    "upload": "Upload a checkpoint",
    "url": "Checkpoint URL",
}
SOURCE_LABELS = {  # short enough to show whole in the sidebar's select boxes
    "embedded": "Project-trained (shipped)",
    "random": "Random (untrained)",
    "released": "Released (download)",  # the sidebar names the release's dataset: `source_label`
    "path": "File on this machine",
    "upload": "Upload a file",
    "url": "From a URL",
}
CHECKPOINT_SOURCES = ("path", "url", "upload")  # the sources that read a checkpoint the user names
CHECKPOINT_TYPES = ["pth", "tar", "pt", "bin", "safetensors", "ckpt"]
UNTRAINED_NOTICE = "untrained weights"


def weight_sources(name: str, mode: SessionMode | None = None) -> list[str]:
    """The weight choices offered for `name` in this session's mode: project-trained only where the
    repository ships them; a classroom session never gets a path or a URL (app/access.py)."""
    allowed = (mode or session_mode()).sources
    return [s for s in WEIGHT_SOURCES if s in allowed and (s != "embedded" or name in t2t.list_embedded())]


def source_label(name: str, source: str) -> str:
    """The sidebar's short name of `source` for model `name`: a release names the dataset its weights
    were trained on ("ImageNet-1k (download)", "CIFAR-100 (download)")."""
    if source == "released":
        return f"{t2t.get_config(name).dataset} (download)"
    return SOURCE_LABELS[source]


def default_source(name: str) -> str:
    """Embedded (project-trained) weights when the repository ships them for `name`, else random."""
    return "embedded" if name in t2t.list_embedded() else "random"


MODEL_ENV = "T2T_LENS_MODEL_MB"
DEFAULT_MODEL_MB = 2048


def model_budget() -> int:
    """Bytes of weights the server keeps loaded: $T2T_LENS_MODEL_MB megabytes, else 2048 MB."""
    env = os.environ.get(MODEL_ENV, "").strip()
    return (int(env) if env.isdigit() and int(env) > 0 else DEFAULT_MODEL_MB) * 1024 * 1024


MODELS = ModelCache(model_budget())


@functools.cache
def model_bytes(name: str, num_classes: int | None = None) -> int:
    """The bytes of `name`'s weights in float32, from the registry, without loading anything (the
    architecture is built on the meta device: shapes only). num_classes None: the registry's head."""
    from t2t.registry import build_model

    with torch.device("meta"):
        return module_bytes(build_model(name, num_classes=num_classes))


def load_model(name: str, source: str, location: str, device: str, use_ema: bool = True) -> nn.Module:
    """A registry model with weights from `source` (a key of WEIGHT_SOURCES), in eval mode on `device`,
    from `MODELS` (loaded once for the whole server; refused with ModelTooLarge when it cannot fit).

    use_ema: from a training checkpoint take `state_dict_ema` when present (the official evaluation's
    choice); the dictionary loaded is `model.default_cfg["state_dict_key"]`.

    Random weights are drawn from a fixed seed so "untrained" means the same model on every load.
    Raises t2t.CheckpointError (or a download error) when the weights cannot be used.
    """
    from t2t.loading import load_model as load  # the one loader (validate, the report, the notebooks)

    weights = location if source in CHECKPOINT_SOURCES else source  # embedded, released, random

    def fresh() -> nn.Module:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        with st.spinner(f"Loading {name} …", show_time=True) if get_script_run_ctx() else contextlib.nullcontext():
            return load(name, weights, device, use_ema=use_ema, num_classes=1000 if source == "random" else None,
                        match_architecture=False)  # random: ImageNet-sized, seed 0; a misfit checkpoint is an error

    key = (name, source, location, device, use_ema)
    return MODELS.get_or_load(key, model_bytes(name, 1000 if source == "random" else None), fresh, name)


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
        if self.source == "released":
            return t2t.get_config(self.name).dataset  # "ImageNet-1k", "CIFAR-10", "CIFAR-100"
        return {"embedded": "project-trained", "random": UNTRAINED_NOTICE}[self.source]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.weights_label})"

    @property
    def num_blocks(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[0].attn.num_heads)


class SourceRefused(ValueError):
    """A weight source (or checkpoint location) this session's mode does not allow."""


def check_allowed(source: str, location: str, mode: SessionMode) -> None:
    """Raise SourceRefused unless `mode` allows `source`; a classroom upload must be a file this
    server saved from an upload (never a path typed or put in the session state some other way)."""
    if source not in mode.sources:
        raise SourceRefused(f"{WEIGHT_SOURCES.get(source, repr(source)[:40])} is not offered in {mode.mode} mode "
                            f"({mode.reason})")
    if source == "upload" and not mode.local and location:
        inside = Path(location).resolve().is_relative_to(UPLOAD_DIR.resolve())
        if not inside:
            raise SourceRefused("only a checkpoint uploaded to this server can be used in classroom mode")


def resolve_model(role: str, name: str, source: str, location: str, device: str,
                  use_ema: bool = True, mode: SessionMode | None = None) -> tuple[LoadedModel, str | None]:
    """Load a model this session may use; when its weights cannot be used, the default weights and
    the reason why.

    Returns (model, error message or None). A checkpoint that does not fit the model is the usual
    reason (t2t.CheckpointError says which keys or shapes differ); a source the session's mode does
    not allow is refused (SourceRefused); a model larger than the server's model budget is refused
    before loading (ModelTooLarge), and the role's default model is shown instead. Raises
    ModelTooLarge when even the default cannot be loaded (a budget set below its size).
    """
    mode = mode or session_mode()
    location = location.strip()
    if source in CHECKPOINT_SOURCES and not location:
        source = default_source(name)
    try:
        check_allowed(source, location, mode)
        model = guarded(load_model, name, source, location, device, use_ema)
        return LoadedModel(role, name, source, location, device, model, use_ema), None
    except Exception as err:  # CheckpointError, DownloadError, OSError, refusals: all shown as they are
        if isinstance(err, ModelTooLarge):  # the role's default model, not the same one again
            name = T2T_DEFAULT if role == "T2T-ViT" else VIT_DEFAULT
        fallback = default_source(name)
        model = guarded(load_model, name, fallback, "", device)
        if isinstance(err, (ModelTooLarge, SourceRefused)):
            message = f"Could not use {WEIGHT_SOURCES.get(source, 'that source').lower()}: {err}"
        else:
            what = f"'{Path(location).name or location}'" if location else WEIGHT_SOURCES[source].lower()
            message = f"Could not use {what} for {name}: {err}"
        return LoadedModel(role, name, fallback, "", device, model), message


def preload(names: tuple[str, ...], device: str) -> list[str]:
    """Load `names` (default weights each) into `MODELS`; returns a problem per name that failed."""
    problems = []
    for name in names:
        try:
            load_model(name, default_source(name), "", device)
        except Exception as err:  # an unknown name, a budget too small: said, never fatal
            problems.append(f"--preload {name}: {err}")
    return problems


_PRELOAD = threading.Event()


def preload_in_background(names: tuple[str, ...]) -> None:
    """`preload(names)` in a thread, once per process (later calls do nothing); problems go to stderr."""
    if not names or _PRELOAD.is_set():
        return
    with _UPLOAD_LOCK:
        if _PRELOAD.is_set():
            return
        _PRELOAD.set()
    device = str(t2t.default_device())

    def run() -> None:
        for problem in preload(names, device):
            print(f"t2t-lens: {problem}", file=sys.stderr)

    threading.Thread(target=run, name="t2t-lens-preload", daemon=True).start()


# ----------------------------------------------------------------------------------------------
# Checkpoint uploads: one folder per content hash under UPLOAD_DIR, bounded by bytes
# ----------------------------------------------------------------------------------------------

UPLOAD_DIR = Path(tempfile.gettempdir()) / "t2t-lens-uploads"
UPLOADS_ENV = "T2T_LENS_UPLOADS_MB"
DEFAULT_UPLOADS_MB = 1024
_UPLOAD_LOCK = threading.Lock()


def uploads_budget() -> int:
    """Bytes the checkpoint upload folder may hold: $T2T_LENS_UPLOADS_MB megabytes, else 1024 MB."""
    env = os.environ.get(UPLOADS_ENV, "").strip()
    return (int(env) if env.isdigit() and int(env) > 0 else DEFAULT_UPLOADS_MB) * 1024 * 1024


class UploadRefused(ValueError):
    """A checkpoint upload over the cap."""


def save_checkpoint_upload(name: str, data: bytes, cap_bytes: int | None = None,
                           folder: Path | None = None, budget_bytes: int | None = None) -> str:
    """Write an uploaded checkpoint under the upload folder (kept by content hash) and return its path.

    The file keeps its name (so messages name it as the user knows it) in a folder named by the
    content hash; the suffix matters: `t2t.read_checkpoint` tells safetensors from pickles by it.
    It is written to a temporary name and renamed, so no reader ever sees half a file. Then the
    least recently used uploads are removed until the folder holds at most its budget (this one
    always stays). Raises UploadRefused over `cap_bytes` (None: no cap) or over the folder's budget.
    """
    root = UPLOAD_DIR if folder is None else folder
    budget = uploads_budget() if budget_bytes is None else budget_bytes
    for limit, what in ((cap_bytes, "the checkpoint upload cap"), (budget, "the upload folder's budget")):
        if limit is not None and len(data) > limit:
            raise UploadRefused(f"'{Path(name).name[:80]}' is {megabytes(len(data))}, over {what} of "
                                f"{megabytes(limit)}")
    digest = hashlib.sha1(data).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[-100:].lstrip(".") or "checkpoint"
    with _UPLOAD_LOCK:
        here = root / digest
        here.mkdir(parents=True, exist_ok=True)
        path = here / safe
        if not path.exists():
            with tempfile.NamedTemporaryFile(dir=here, prefix=".part-", delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, path)
        os.utime(here)  # most recently used
        _clean_uploads(root, budget, keep=here)
    return str(path)


def _clean_uploads(root: Path, budget: int, keep: Path) -> None:
    """Remove the least recently used upload folders until `root` holds at most `budget` bytes."""
    folders = []
    for here in root.iterdir():
        if here.is_dir():
            size = sum(f.stat().st_size for f in here.iterdir() if f.is_file())
            folders.append((here.stat().st_mtime, size, here))
    total = sum(size for _, size, _ in folders)
    for _, size, here in sorted(folders):
        if total <= budget:
            break
        if here != keep:
            shutil.rmtree(here, ignore_errors=True)
            total -= size
    for stray in root.glob("*/.part-*"):  # a write that died half-way, an hour ago or more
        if time.time() - stray.stat().st_mtime > 3600:
            stray.unlink(missing_ok=True)
