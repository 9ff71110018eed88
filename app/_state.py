"""Caches and the per-run context that every page of the app reads.

What is expensive is computed once and reused, by every session of the server:

- models: `load_model` (st.cache_resource), keyed by name, weights and device (a few at most);
- everything per image (decoded uploads, preprocessing, traces, explanations, faithfulness,
  metrics, CKA): `@memo`, keyed by model key + image key + its own parameters, in one `CACHE`
  bounded by bytes ($T2T_LENS_CACHE_MB, default 512 MB: see app/_cache.py), least recently used
  out first. A hit returns the same tensors without a copy, so a rerun that needs no new forward
  pass costs only the figures. What no session shows any more ages out of the budget;
- heavy work (Integrated Gradients, occlusion, token ablation, CKA: `HEAVY`; faithfulness curves:
  `QUICK`) runs in fair queues of a few worker threads shared by all sessions: the page is drawn at
  once with a progress bar in the result's place. A heavy result reruns the page when it is ready
  (`background`); a quick one is drawn in its place at the end of the same run (`soon`,
  `draw_when_ready`, `finish_run`). One student's jobs take turns with everyone else's.

The sidebar (main.py) builds a `Context` each run and stores it in session state; pages call
`context()` to get it. Out-of-memory on the GPU switches the session to the CPU (`guarded`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib
import inspect
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import streamlit as st
import torch
from PIL import Image
from torch import Tensor, nn

import t2t
from app._cache import Abandoned, ByteCache, FairQueue, Job
from t2t.images import ImageError, PreprocessSteps, open_image, preprocess_steps, sample_images

T = TypeVar("T")

T2T_DEFAULT = "t2t_vit_7"
VIT_DEFAULT = "deit_tiny_patch16_224"
CTX_KEY = "_t2t_lens_context"

WEIGHT_SOURCES: dict[str, str] = {
    "embedded": "Project-trained (shipped)",
    "random": "Random (untrained)",
    "released": "Released ImageNet-1k weights (download)",
    "path": "Checkpoint file on this machine",
    "upload": "Upload a checkpoint",
    "url": "Checkpoint URL",
}
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
CHECKPOINT_TYPES = ["pth", "tar", "pt", "bin", "safetensors", "ckpt"]
UNTRAINED_NOTICE = "untrained weights"


# ----------------------------------------------------------------------------------------------
# Device
# ----------------------------------------------------------------------------------------------


def device_name() -> str:
    """The device this session computes on: the GPU when there is one, unless it ran out of memory."""
    if st.session_state.get("force_cpu"):
        return "cpu"
    return str(t2t.default_device())


THREADS_ENV = "T2T_LENS_THREADS"


def cpu_threads() -> int:
    """Intra-op threads for CPU work: $T2T_LENS_THREADS, else half the cores (at least 1).

    Half, not all: Streamlit runs each script run in its own thread, and with every core busy
    OpenMP's spinning workers wait on each other; on a busy 2-core machine two threads made the
    pages 3 to 20 times slower than one (benchmarks/bench_app.py).
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) // 2)


def configure_threads(device: str) -> int:
    """Set torch's thread count for this script run's thread (OpenMP's setting is per thread)."""
    n = cpu_threads()
    if device == "cpu" and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# ----------------------------------------------------------------------------------------------
# The shared cache and the queues for heavy work (one of each per server process)
# ----------------------------------------------------------------------------------------------

CACHE_ENV = "T2T_LENS_CACHE_MB"
DEFAULT_CACHE_MB = 512


def cache_budget() -> int:
    """Bytes the per-image cache may hold: $T2T_LENS_CACHE_MB megabytes, else 512 MB."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return (int(env) if env.isdigit() and int(env) > 0 else DEFAULT_CACHE_MB) * 1024 * 1024


CACHE = ByteCache(cache_budget())


def _worker_setup() -> None:
    torch.set_num_threads(cpu_threads())  # per thread, as for a script run


_CORES = os.cpu_count() or 2
# short jobs (faithfulness curves, ~1 s each on a CPU): one per core, so a page's four run two at a time
QUICK = FairQueue(_CORES, "t2t-lens-quick", setup=_worker_setup)
# long jobs (Integrated Gradients, occlusion, ablation, CKA: tens of seconds on a CPU): half the cores,
# so the other half is left for everyone's page runs
HEAVY = FairQueue(max(1, _CORES // 2), "t2t-lens-heavy", setup=_worker_setup)
# A heavy job's progress bar looks whether its jobs are done once a second. Four looks a second made the
# faithfulness scores of Explanations come later, not sooner, when they were polled this way (bench_app
# after a steps change: complete 2.10 s instead of 1.48 s, 2 cores): each look is a fragment run, in the
# server and in the browser, beside the jobs. Quick jobs are now waited for in the run itself (`soon`).
POLL_S = 1.0


def memo(fn: Callable[..., T]) -> Callable[..., T]:
    """Cache `fn`'s results in `CACHE`, like st.cache_resource but bounded by bytes.

    As with Streamlit, arguments whose name starts with "_" are not part of the key (models,
    tensors, traces: the model and image keys before them name what they are). Two sessions asking
    for the same key at once compute it once.
    """
    sig = inspect.signature(fn)

    def key_of(*args: Any, **kwargs: Any) -> tuple:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return (fn.__qualname__, *((k, v) for k, v in bound.arguments.items() if not k.startswith("_")))

    @functools.wraps(fn)
    def cached(*args: Any, **kwargs: Any) -> T:
        return CACHE.get_or_compute(key_of(*args, **kwargs), lambda: fn(*args, **kwargs))

    cached.key_of = key_of  # type: ignore[attr-defined]
    return cached


def browser_polls() -> bool:
    """True when a browser runs this session (it reruns fragments on their timer); False under AppTest
    (a mock runtime) or in bare mode, where nothing would ever rerun the page."""
    from streamlit import runtime

    return runtime.exists() and type(runtime.get_instance()) is runtime.Runtime


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


@dataclass(eq=False)
class Pending:
    """A value that is known now (`job` None) or that `job` computes in `queue`."""

    value: Any = None
    job: Job | None = None
    queue: FairQueue | None = None

    @property
    def ready(self) -> bool:
        return self.job is None


def soon(queue: FairQueue, label: str, fn: Callable[..., T], *args: Any) -> Pending:
    """`fn(*args)` (a @memo function, so cached in `CACHE`) as a `Pending`: the cached value, or a job of
    `queue`. Without a browser (AppTest) this waits for the value here.

    A job's result is drawn by `draw_when_ready` at the end of this run, for results that take a second
    or two (faithfulness curves: no second run of the page, which cost Explanations about 0.4 s more
    on a 2-core CPU), or by a rerun of the page when it is ready (`background`, for heavy work)."""
    key = fn.key_of(*args)  # type: ignore[attr-defined]
    found, value = CACHE.peek(key)
    if found:
        return Pending(value)
    while True:
        job = queue.submit(key, _session_id(), label, lambda: fn(*args))
        if browser_polls() and not job.done:
            return Pending(job=job, queue=queue)
        try:
            return Pending(guarded(job.future.result))
        except Abandoned:  # dropped just before this session asked again: queue it anew
            continue


def background(queue: FairQueue, label: str, fn: Callable[..., T], *args: Any) -> T | None:
    """`fn(*args)` (a @memo function, so cached in `CACHE`), computed by `queue`'s workers.

    In a browser session: the value when it is cached; otherwise the job is queued (or found
    queued), a progress bar (the first of this run in this queue: its place in the queue or its
    running time, for all of them) or a caption is drawn here, and None is returned: the page goes on,
    and the bar's fragment reruns the page when all those values are ready.
    Without a browser (AppTest) this waits for the value.
    """
    pending = soon(queue, label, fn, *args)
    if pending.ready:
        return pending.value
    group = st.session_state.setdefault(_JOBS_KEY, {}).setdefault(queue.name, [])
    group.append(pending.job)
    if len(group) == 1:  # one live bar per queue and run, where its first job's result goes
        _progress(queue, group)
    else:
        st.caption(f"{label}: computing in the background (progress above) …")
    return None


_JOBS_KEY = "_t2t_lens_jobs"
_LATER_KEY = "_t2t_lens_later"


@dataclass(eq=False)
class _Later:
    needs: list[Pending]
    slot: Any  # the st.empty() that holds a progress bar until the drawing replaces it
    draw: Callable[..., None] = field(repr=False)
    progress: bool = True

    def show_progress(self) -> None:
        """The bar of the jobs still running, in the drawing's place (nothing when `progress` is off)."""
        if self.progress:
            running = [p for p in self.needs if not p.ready]
            self.slot.progress(*_progress_text(running[0].queue, [p.job for p in running]))


def draw_when_ready(needs: Sequence[Pending], draw: Callable[..., None], progress: bool = True) -> None:
    """`draw(*values)` here, now if every value of `needs` is known, else at the end of this run
    (`finish_run`): a progress bar (or, with `progress=False`, nothing) holds the place meanwhile.

    `draw` draws one element: it replaces the bar in its placeholder (`st.empty`), the one kind of
    in-place change Streamlit's placeholders are made for (an element, never a block of them)."""
    if all(p.ready for p in needs):
        draw(*(p.value for p in needs))
        return
    later = _Later(list(needs), st.empty(), draw, progress)
    later.show_progress()
    st.session_state.setdefault(_LATER_KEY, []).append(later)


def finish_run(tick_s: float = 0.2) -> None:
    """Wait for the jobs this run's `draw_when_ready` calls need, and draw each result in its place as
    soon as its values are in (main.py, after the page).

    The page is on screen meanwhile; its progress bars move every `tick_s`. Each move is a Streamlit
    call, where a widget change of the user stops this run at once (Streamlit's rerun request), so
    waiting here never delays the next interaction by more than `tick_s`; the jobs go on in their
    queue and their results are cached for that next run."""
    later: list[_Later] = st.session_state.get(_LATER_KEY) or []
    st.session_state[_LATER_KEY] = []
    while later:
        waiting = [p.job.future for item in later for p in item.needs if not p.ready and not p.job.done]
        if waiting:
            concurrent.futures.wait(waiting, timeout=tick_s, return_when=concurrent.futures.FIRST_COMPLETED)
        now, left = time.monotonic(), []
        for item in later:
            jobs = [p for p in item.needs if not p.ready]
            if all(p.job.done for p in jobs):
                try:
                    values = [p.value if p.ready else guarded(p.job.future.result) for p in item.needs]
                except Abandoned:  # dropped before it ran (no one had asked for it for a minute):
                    st.rerun()  # the next run asks for it anew
                with item.slot:
                    item.draw(*values)
                continue
            for p in jobs:
                p.job.wanted = now  # this session still waits for it: keep it queued
            item.show_progress()
            left.append(item)
        if left and not any(item.progress for item in left):
            left[0].slot.empty()  # one Streamlit call a tick all the same: where a click stops this wait
        later = left


def new_run() -> None:
    """Start this session's lists of the background jobs the current run waits for (main.py, each run).

    One progress bar per queue and run, and one rerun when all of its jobs are done: every poll is a
    small script run holding the GIL, and every rerun of a busy page costs a second or more, so a bar
    per job (four faithfulness jobs: eight polls a second, four reruns) slowed the jobs themselves
    several times over on a 2-core machine. Results an interrupted run left to draw are forgotten:
    their places belong to that run."""
    st.session_state[_JOBS_KEY] = {}
    st.session_state[_LATER_KEY] = []


def _progress_text(queue: FairQueue, group: list[Job]) -> tuple[float, str]:
    """(fraction done, what is going on) for the jobs of one run in one queue."""
    labels = sorted({j.label.split(" for ")[0] for j in group})
    what = ", ".join(labels)
    done = sum(j.done for j in group)
    running = [j for j in group if j.started is not None and not j.done]
    waiting = [j for j in group if j.started is None and not j.done]
    partial = 0.0
    for j in running:
        last = queue.durations.get(j.label)
        partial += min(0.95, j.elapsed() / last) if last else 0.05
    fraction = min(1.0, (done + partial) / len(group))
    parts = [f"{done} of {len(group)} done"] if len(group) > 1 else []  # one job: its own label says it all
    if len(group) == 1:
        what = group[0].label
    if running:
        seconds = max(j.elapsed() for j in running)
        parts.append(f"running for {seconds:.1f} s" if seconds < 10 else f"running for {seconds:.0f} s")
    if waiting and not running:
        ahead = min(queue.ahead(j) for j in waiting)
        parts.append(f"waiting for a free worker ({ahead} job{'s' * (ahead != 1)} of others ahead)")
    return fraction, f"{what}: {', '.join(parts) or 'done'}"


def _progress(queue: FairQueue, group: list[Job]) -> None:
    """A progress bar for `group` that updates itself every second and reruns the page when every job
    of it is done (more jobs join the group later in the same run)."""

    def poll() -> None:
        now = time.monotonic()
        for j in group:
            j.wanted = now  # a session still waits for them: keep them queued
        if all(j.done for j in group):
            st.rerun(scope="app")
        fraction, text = _progress_text(queue, group)
        st.progress(fraction, text=text)

    poll.__qualname__ = f"poll_{queue.name}"  # fragments are told apart by their function
    st.fragment(poll, run_every=POLL_S)()


_TRIM = {"last": 0.0, "lock": threading.Lock()}


def return_free_memory(every_s: float = 2.0) -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim), at most every `every_s`.

    Freed tensors of a script run stay in glibc's heaps, one per thread that allocated them, and
    every run is a new thread: without this, the server's RSS kept what the busiest moment needed
    (about 0.3 GB above the cache in AppTest runs over 40 uploads). main.py calls it after each run.
    """
    with _TRIM["lock"]:
        now = time.monotonic()
        if now - _TRIM["last"] < every_s:
            return
        _TRIM["last"] = now
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        pass


# Every module the pages use, the lazily imported ones included (analysis/ imports its Captum and
# SciPy parts inside functions; plotly and Streamlit reach for pandas and pyarrow when they need them).
PAGE_MODULES = (
    "pandas", "pyarrow", "plotly.graph_objects", "plotly.colors", "plotly.io", "matplotlib", "matplotlib.colors",
    "captum.attr", "t2t.data.synthetic", "analysis.explain", "analysis.maps", "analysis.rollout",
    "analysis.relevance", "analysis.attributions", "analysis.modelio", "analysis.faithfulness",
    "analysis.attention_stats", "analysis.redundancy", "analysis.cka", "analysis.t2t_backproject",
)
_IMPORTED = threading.Event()
_IMPORT_LOCK = threading.Lock()


def import_page_modules() -> None:
    """Import what the pages need, once per process, before any page runs (main.py calls it first).

    Sessions run as threads of one process. A module imported for the first time by one session can
    be seen half-initialised by another that reaches it through sys.modules rather than an import
    statement (plotly does so for pandas: "partially initialized module 'pandas' has no attribute
    'Series'"). Here the first run imports everything while every other run waits at the lock.
    """
    if _IMPORTED.is_set():
        return
    with _IMPORT_LOCK:
        if not _IMPORTED.is_set():
            for name in PAGE_MODULES:
                importlib.import_module(name)
            _IMPORTED.set()


def fall_back_to_cpu(err: BaseException) -> NoReturn:
    """After a GPU out-of-memory error: free the cache, switch this session to the CPU, rerun."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if st.session_state.get("force_cpu"):
        raise err  # already on the CPU: nothing left to fall back to
    st.session_state["force_cpu"] = True
    st.session_state["device_notice"] = (
        "The GPU ran out of memory, so this session now computes on the CPU (slower). "
        "Choose a smaller model or image batch, then switch back to the GPU in the sidebar."
    )
    st.rerun()


def guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn`; on a GPU out-of-memory error fall back to the CPU with a clear message."""
    try:
        return fn(*args, **kwargs)
    except torch.OutOfMemoryError as err:  # torch.cuda.OutOfMemoryError is the same class
        fall_back_to_cpu(err)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


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

    weights = location if source in ("path", "url", "upload") else source  # embedded, released, random
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
        if self.source in ("path", "url", "upload"):
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
    if source in ("path", "url", "upload") and not location.strip():
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


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageChoice:
    """The image being looked at: a stable key (for caches), a label, and the decoded RGB image."""

    key: str
    label: str
    image: Image.Image = field(compare=False, repr=False)


@memo
def _decode(digest: str, _data: bytes) -> Image.Image:
    return open_image(_data)


def image_from_bytes(name: str, data: bytes) -> ImageChoice:
    """Decode uploaded bytes (any supported format, safely), or raise ImageError with a user message."""
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    digest = hashlib.sha1(data).hexdigest()
    return ImageChoice(f"bytes:{digest}", name, _decode(digest, data))


def upload_error_message(name: str, err: Exception) -> str:
    return f"Cannot use '{name}': {err}"


@memo
def _sample(name: str) -> Image.Image:
    return open_image(sample_images()[name])


def sample_image(name: str) -> ImageChoice:
    return ImageChoice(f"sample:{name}", f"sample photo '{name}'", _sample(name))


def synthetic_class_names() -> tuple[str, ...]:
    from t2t.data.synthetic import CLASS_NAMES

    return CLASS_NAMES


@memo
def _synthetic(index: int, img_size: int) -> Image.Image:
    from t2t.data.synthetic import LocalStructureDataset

    return LocalStructureDataset("test", size=index + 1, img_size=img_size).image(index)


def synthetic_image(class_index: int, example: int = 0) -> ImageChoice:
    """Example `example` of a synthetic class, from the test split (never seen in training)."""
    names = synthetic_class_names()
    index = example * len(names) + class_index
    return ImageChoice(f"synthetic:{index}", f"synthetic '{names[class_index]}' #{example}", _synthetic(index, 224))


def synthetic_batch(n: int) -> list[tuple[ImageChoice, int]]:
    """The first `n` test images of the synthetic dataset with their labels (balanced over classes)."""
    k = len(synthetic_class_names())
    return [(synthetic_image(i % k, i // k), i % k) for i in range(n)]


def default_image() -> ImageChoice:
    return synthetic_image(synthetic_class_names().index("triangle"), 0)


# ----------------------------------------------------------------------------------------------
# Preprocessing, traces and the context
# ----------------------------------------------------------------------------------------------


@memo
def _preprocessed(model_key: str, image_key: str, _lm: LoadedModel, _img: Image.Image) -> PreprocessSteps:
    cfg = _lm.cfg
    return preprocess_steps(_img, cfg["mean"], cfg["std"], _lm.img_size, _lm.crop_pct)


def preprocessed(lm: LoadedModel, image: ImageChoice) -> PreprocessSteps:
    return _preprocessed(lm.key, image.key, lm, image.image)


@memo
def _traced(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> t2t.Trace:
    with torch.no_grad():
        return t2t.trace(_model, _x, attention=True)


def traced(lm: LoadedModel, image: ImageChoice) -> t2t.Trace:
    x = preprocessed(lm, image).tensor
    if _traced.key_of(lm.key, image.key, lm.model, x) in CACHE:  # type: ignore[attr-defined]
        return _traced(lm.key, image.key, lm.model, x)
    with st.spinner("Running the model …"):
        return guarded(lambda: _traced(lm.key, image.key, lm.model, x.to(lm.device)))


@dataclass
class Context:
    """What the sidebar chose this run: the model pair, the image, the device."""

    t2t: LoadedModel
    vit: LoadedModel
    image: ImageChoice
    device: str

    @property
    def models(self) -> tuple[LoadedModel, LoadedModel]:
        return self.t2t, self.vit

    def steps(self, lm: LoadedModel) -> PreprocessSteps:
        return preprocessed(lm, self.image)

    def inputs(self, lm: LoadedModel) -> Tensor:
        """The model input (1, 3, S, S) on the model's device."""
        return self.steps(lm).tensor.to(lm.device)

    def trace(self, lm: LoadedModel) -> t2t.Trace:
        return traced(lm, self.image)

    def display_image(self, lm: LoadedModel) -> np.ndarray:
        """(S, S, 3) uint8: exactly what the model sees (resized, cropped), before normalisation."""
        return np.asarray(self.steps(lm).cropped)


def context() -> Context:
    """The context main.py built this run; a page run on its own gets a message instead."""
    ctx = st.session_state.get(CTX_KEY)
    if ctx is None:
        st.error("Start the app with `streamlit run app/main.py`: the pages need its sidebar.")
        st.stop()
    return ctx


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------


def probabilities(tr: t2t.Trace) -> np.ndarray:
    """(C,) softmax probabilities of the first image of a trace."""
    return tr["logits"][0].float().softmax(dim=-1).cpu().numpy()


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


@memo
def _predict(model_key: str, image_key: str, _lm: LoadedModel, _img: Image.Image) -> np.ndarray:
    x = _preprocessed(model_key, image_key, _lm, _img).tensor.to(_lm.device)
    with torch.no_grad():
        return _lm.model(x)[0].float().softmax(dim=-1).cpu().numpy()


def predict(lm: LoadedModel, image: ImageChoice) -> np.ndarray:
    """(C,) class probabilities of one image (no trace kept: for batches)."""
    return guarded(_predict, lm.key, image.key, lm, image.image)


# ----------------------------------------------------------------------------------------------
# Explanations (analysis/) and the T2T back-projection
# ----------------------------------------------------------------------------------------------

CHEAP_METHODS = ("rollout", "chefer", "grad_rollout", "gradcam")
EXPENSIVE_METHODS = ("integrated_gradients", "occlusion", "token_ablation")
METHOD_NAMES = {
    "rollout": "Attention rollout",
    "chefer": "Chefer relevance (gradient x attention)",
    "grad_rollout": "Gradient-weighted rollout",
    "gradcam": "Grad-CAM (last block)",
    "integrated_gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
    "token_ablation": "Token ablation",
}


@memo
def _explanation(model_key: str, image_key: str, method: str, target: int, _model: nn.Module, _x: Tensor) -> Tensor:
    from analysis.explain import explain

    kwargs: dict[str, Any] = {}
    if method == "integrated_gradients":
        kwargs["internal_batch_size"] = 8
    heat = explain(method, _model, _x, target=None if method == "rollout" else target, **kwargs)
    return heat[0].detach().float().cpu()


@memo
def _rollout(model_key: str, image_key: str, _tr: t2t.Trace) -> Tensor:
    from analysis.maps import tokens_to_grid
    from analysis.rollout import cls_rollout

    return tokens_to_grid(cls_rollout(_tr.attentions()), tuple(_tr.grid("blocks.0")))[0].float().cpu()


def explanation(ctx: Context, lm: LoadedModel, method: str, target: int) -> Tensor | None:
    """Token-grid map (h, w) of `method` for class `target` (ignored by rollout).

    Rollout reads the attention of the cached trace (no forward pass of its own); the gradient
    methods run `analysis.explain.explain`. The expensive methods run in the `HEAVY` queue: None
    while they are computed (a progress bar is drawn instead, see `background`).
    """
    if method == "rollout":
        return guarded(_rollout, lm.key, ctx.image.key, ctx.trace(lm))
    if method in EXPENSIVE_METHODS:
        return guarded(background, HEAVY, f"{METHOD_NAMES[method]} for {lm.name}", _explanation, lm.key,
                       ctx.image.key, method, target, lm.model, ctx.inputs(lm))
    return guarded(_explanation, lm.key, ctx.image.key, method, target, lm.model, ctx.inputs(lm))


@memo
def _explanation_pixels(model_key: str, image_key: str, method: str, target: int, mode: str, _heat: Tensor,
                        _tr: t2t.Trace, family: str) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
    from analysis.maps import normalize_map, upsample_map
    from analysis.t2t_backproject import backproject_stages

    size = tuple(_tr.image_size)
    if family == "t2t" and mode != "stretch":
        stages = backproject_stages(_heat, _tr, size, mode=mode)
        return normalize_map(stages[-1][1][None])[0], stages
    return normalize_map(upsample_map(_heat[None], size))[0], None


def explanation_pixels(ctx: Context, lm: LoadedModel, method: str, target: int,
                       mode: str) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
    """A method's map at pixel resolution, in [0, 1], and for T2T-ViT the stages of its way back.

    mode: "coverage" or "mass" carries a T2T-ViT map back through the T2T module (`carry_back`);
    "stretch" (and any ViT) upsamples the token map bilinearly.
    """
    heat = explanation(ctx, lm, method, target)
    t = -1 if method == "rollout" else target
    return _explanation_pixels(lm.key, ctx.image.key, method, t, mode, heat, ctx.trace(lm), lm.family)


@memo
def _end_scores(model_key: str, image_key: str, target: int, _model: nn.Module, _x: Tensor) -> tuple[Tensor, Tensor]:
    """The class score of the image (1, 3, S, S) and of the blurred baseline deletion / insertion use."""
    from analysis.faithfulness import make_baseline, model_score_fn

    fill = make_baseline(_x, "blur")
    scores = model_score_fn(_model, torch.tensor([target], device=_x.device))(torch.cat([_x, fill]),
                                                                          torch.zeros(2, dtype=torch.long))
    return fill, scores.detach().float()


@memo
def _faithfulness(model_key: str, image_key: str, map_id: str, target: int, steps: int,
                  _model: nn.Module, _x: Tensor, _saliency: Tensor) -> tuple[float, float]:
    from analysis.faithfulness import deletion_insertion, model_score_fn

    # the class is known: score directly, without faithfulness()'s extra forward pass to find it
    score = model_score_fn(_model, torch.tensor([target], device=_x.device))
    # Four of each map's 2 (steps + 1) images are the image itself or the whole baseline (the curves'
    # ends), the same for every map of this model, image and class: scored once, not once per map.
    fill, ends = _end_scores(model_key, image_key, target, _model, _x)

    def known_ends(batch: Tensor, index: Tensor) -> Tensor:
        out = torch.empty(len(batch), device=batch.device)
        whole = (batch == _x).flatten(1).all(1)
        blurred = (batch == fill).flatten(1).all(1) & ~whole
        out[whole], out[blurred] = ends[0], ends[1]
        rest = ~(whole | blurred)
        if rest.any():
            out[rest] = score(batch[rest], index[rest]).float()
        return out

    # `fill` is the blurred baseline deletion_insertion would make again (a 135-tap blur), same values
    curves = deletion_insertion(known_ends, _x, _saliency[None].to(_x.device), baseline=fill, steps=steps,
                                batch_size=2 * steps + 2)
    return float(curves.deletion_auc[0]), float(curves.insertion_auc[0])


def faithfulness_scores(ctx: Context, lm: LoadedModel, map_id: str, saliency: Tensor, target: int,
                        steps: int) -> Pending:
    """(deletion AUC, insertion AUC) of a map (h, w) or (S, S) for class `target`; `map_id` names it.

    Computed in the `QUICK` queue, so a page's maps are drawn while their curves run two at a time: a
    `Pending` for `draw_when_ready`, which shows the scores at the end of the same run.
    """
    return soon(QUICK, f"Deletion / insertion for {lm.name}", _faithfulness, lm.key, ctx.image.key,
                map_id, target, steps, lm.model, ctx.inputs(lm), saliency)


# ----------------------------------------------------------------------------------------------
# Statistics of one trace, and CKA over a batch of synthetic images
# ----------------------------------------------------------------------------------------------


@memo
def _attention_profile(model_key: str, image_key: str, _tr: t2t.Trace) -> dict[str, np.ndarray]:
    from analysis.attention_stats import attention_profile

    grid = tuple(_tr.grid("blocks.0"))
    stride = (_tr.image_size[0] / grid[0], _tr.image_size[1] / grid[1])
    prof = attention_profile(_tr.attentions(), grid, stride)
    return {k: v[0].float().cpu().numpy() for k, v in prof.items()}  # each (L, H)


def attention_profile(ctx: Context, lm: LoadedModel) -> dict[str, np.ndarray]:
    """{"distance" (pixels), "entropy" (nats)}, each (blocks, heads), of the current image."""
    return _attention_profile(lm.key, ctx.image.key, ctx.trace(lm))


@memo
def _redundancy(model_key: str, image_key: str, threshold: float, _tr: t2t.Trace) -> dict[str, np.ndarray]:
    from analysis.redundancy import trace_metrics

    return {k: v[0].float().cpu().numpy() for k, v in trace_metrics(_tr, _tr.num_blocks,
                                                                   rel_threshold=threshold).items()}


def redundancy(ctx: Context, lm: LoadedModel, threshold: float = 0.1) -> dict[str, np.ndarray]:
    """Redundancy metrics of every block on the current image, each (L,)."""
    return _redundancy(lm.key, ctx.image.key, threshold, ctx.trace(lm))


def batch_inputs(lm: LoadedModel, images: Sequence[ImageChoice]) -> Tensor:
    return torch.cat([preprocessed(lm, im).tensor for im in images]).to(lm.device)


@memo
def _cka(key1: str, key2: str, n: int, reduce: str, _lm1: LoadedModel, _lm2: LoadedModel) -> np.ndarray:
    from analysis.cka import block_features, cka_matrix

    images = [im for im, _ in synthetic_batch(n)]
    feats = []
    for lm in (_lm1, _lm2):
        chunks: list[list[Tensor]] = []
        for start in range(0, n, 16):
            with torch.no_grad():
                tr = t2t.trace(lm.model, batch_inputs(lm, images[start:start + 16]), attention=False)
            chunks.append([block_features(b, reduce).cpu() for b in tr.block_tokens()])
        feats.append([torch.cat(per_block) for per_block in zip(*chunks, strict=True)])
    return cka_matrix(feats[0], feats[1]).float().numpy()


def cka(lm1: LoadedModel, lm2: LoadedModel, n: int, reduce: str) -> np.ndarray | None:
    """(L1, L2) linear CKA between every block of two models over `n` synthetic test images.

    Runs in the `HEAVY` queue: None while it is computed (a progress bar is drawn instead)."""
    return guarded(background, HEAVY, f"CKA over {n} images", _cka, lm1.key, lm2.key, n, reduce, lm1, lm2)


# ----------------------------------------------------------------------------------------------
# Small tensor helpers for pages
# ----------------------------------------------------------------------------------------------


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def display_scale(heat: Tensor, upper: float = 0.995) -> Tensor:
    """A map scaled to [0, 1] for showing: min to the `upper` quantile, so a few hot pixels do not
    wash out the rest (rankings, hence faithfulness scores, use the unclipped map)."""
    lo = heat.min()
    hi = torch.quantile(heat.flatten().float(), upper) if heat.numel() <= 16_000_000 else heat.max()
    return ((heat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def keep_mass(maps: np.ndarray, mass: float = 0.6) -> np.ndarray:
    """Zero all but the largest weights that together hold `mass` of each map's total, (..., h, w).

    The weight that crosses the threshold is kept, so the kept weights hold at least `mass`.
    """
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    total = np.maximum(flat.sum(axis=1, keepdims=True), 1e-12)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranked = np.take_along_axis(flat, order, axis=1)
    before = np.cumsum(ranked, axis=1) - ranked  # mass of the larger weights
    keep = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(keep, order, before / total < mass, axis=1)
    return (flat * keep).reshape(maps.shape)


def scaled_index(index: int, size_from: int, size_to: int) -> int:
    """The cell of a `size_to` grid under cell `index` of a `size_from` grid covering the same image."""
    return min(size_to - 1, index * size_to // size_from)


# ----------------------------------------------------------------------------------------------
# Method options (issue 11: the discard rule by name, IG's completeness), block metrics without
# the effective rank, and how concentrated the T2T attention is (what the Explanations page says)
# ----------------------------------------------------------------------------------------------


@memo
def _explanation_opts(model_key: str, image_key: str, method: str, target: int, options: tuple,
                      _model: nn.Module, _x: Tensor) -> tuple[Tensor, dict[str, float] | None]:
    from analysis.explain import explain

    kwargs = dict(options)
    if method == "integrated_gradients":
        kwargs.setdefault("internal_batch_size", 8)
    out = explain(method, _model, _x, target=target, **kwargs)
    if kwargs.get("return_completeness"):
        heat, comp = out
        return heat[0].detach().float().cpu(), {"delta": float(comp.delta[0]),
                                                "output_change": float(comp.output_change[0]),
                                                "relative_gap": float(comp.relative_gap[0])}
    return out[0].detach().float().cpu(), None


def explanation_with(ctx: Context, lm: LoadedModel, method: str, target: int,
                     **options: Any) -> tuple[Tensor, dict[str, float] | None] | None:
    """`explain(method, ..., **options)` as a token-grid map (h, w), and with
    `return_completeness=True` IG's {"delta", "output_change", "relative_gap"} (else None).

    The expensive methods run in the `HEAVY` queue: None while they are computed (see `background`)."""
    args = (lm.key, ctx.image.key, method, target, tuple(sorted(options.items())), lm.model, ctx.inputs(lm))
    if method in EXPENSIVE_METHODS:
        return guarded(background, HEAVY, f"{METHOD_NAMES[method]} for {lm.name}", _explanation_opts, *args)
    return guarded(_explanation_opts, *args)


@memo
def _rollout_rule(model_key: str, image_key: str, discard: str, ratio: float, _tr: t2t.Trace) -> Tensor:
    from analysis.maps import tokens_to_grid
    from analysis.rollout import cls_rollout

    row = cls_rollout(_tr.attentions(), discard_ratio=ratio, discard=discard)
    return tokens_to_grid(row, tuple(_tr.grid("blocks.0")))[0].float().cpu()


def rollout_with(ctx: Context, lm: LoadedModel, discard: str, ratio: float) -> Tensor:
    """Attention rollout (h, w) of the cached trace with discard rule `discard` and `ratio`."""
    return guarded(_rollout_rule, lm.key, ctx.image.key, discard, ratio, ctx.trace(lm))


def pixels_of(ctx: Context, lm: LoadedModel, map_id: str, heat: Tensor,
              mode: str) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
    """`explanation_pixels` for a map computed elsewhere, cached under `map_id` (method + options)."""
    return _explanation_pixels(lm.key, ctx.image.key, map_id, -1, mode, heat, ctx.trace(lm), lm.family)


@memo
def _block_metrics(model_key: str, image_key: str, threshold: float, metrics: tuple[str, ...],
                   _tr: t2t.Trace) -> dict[str, np.ndarray]:
    from analysis.redundancy import trace_metrics

    out = trace_metrics(_tr, _tr.num_blocks, rel_threshold=threshold, metrics=metrics)
    return {k: v[0].float().cpu().numpy() for k, v in out.items()}


def block_metrics(ctx: Context, lm: LoadedModel, threshold: float, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named redundancy metrics of every block on the current image, each (L,).

    Asking for "effective_rank" computes the exact Roy-Vetterli rank (an eigendecomposition per
    block): the Feature richness page asks for it only when its toggle is on.
    """
    return _block_metrics(lm.key, ctx.image.key, threshold, tuple(metrics), ctx.trace(lm))


@memo
def _t2t_concentration(model_key: str, image_key: str, name: str, share: float, _tr: t2t.Trace) -> dict[str, float]:
    n = _tr.attention_row_sums(name).shape[1]
    k = max(1, int(n * share))
    col = _tr.attention_left_product(name, torch.ones(1, n))[0].float()
    per_row = []
    for start in range(0, n, 512):  # rows a block at a time: the 3136 x 3136 map never exists whole
        rows = _tr.attention_rows(name, torch.arange(start, min(start + 512, n)))[0, 0].float()
        per_row.append(rows.topk(k, dim=-1).values.sum(-1) / rows.sum(-1).clamp_min(1e-12))
    rows_share = torch.cat(per_row)
    return {"tokens": float(n), "top": float(k), "median_row": float(rows_share.median()),
            "min_row": float(rows_share.min()), "max_row": float(rows_share.max()),
            "columns": float(col.topk(k).values.sum() / col.sum().clamp_min(1e-12))}


def t2t_concentration(ctx: Context, lm: LoadedModel, name: str, share: float = 0.01) -> dict[str, float]:
    """How much of a T2T attention's weight the top `share` of tokens get, on the current image.

    "median_row" / "min_row" / "max_row": over queries, the weight a query puts on its own top
    `share` of tokens; "columns": the share of all the map's weight received by the `share` of
    tokens that receive most (the same few tokens for every query when it is near 1).
    """
    return _t2t_concentration(lm.key, ctx.image.key, name, share, ctx.trace(lm))
