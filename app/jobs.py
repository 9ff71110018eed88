"""What one server process shares between its sessions, and how a page waits for work.

Owns:
- `CACHE`, the per-image cache bounded by bytes ($T2T_LENS_CACHE_MB, default 512 MB; see
  app/_cache.py), and `memo`, the decorator that puts a function's results in it, keyed by the
  function's name and its arguments whose names do not start with "_" (model key + image key +
  its own parameters). A hit returns the same tensors without a copy. Models are not in it
  (`app/models.py`, `MODELS`, their own budget in bytes);
- the fair queues `QUICK` (faithfulness curves) and `HEAVY` (Integrated Gradients, occlusion, token
  ablation, CKA), shared by all sessions, one student's jobs taking turns with everyone else's;
- waiting for their results: `soon` (a `Pending`: the cached value, or a queued job),
  `background` (a heavy result: a progress bar now, a rerun when it is ready), `draw_when_ready` /
  `finish_run` (a quick result drawn in its place at the end of the same run), `new_run`, and the
  progress bars' text;
- process housekeeping main.py calls: `import_page_modules` (once, before any page runs) and
  `return_free_memory` (after each run).

May import: app._cache, app.device, streamlit, torch. Nothing above it (models, images, compute,
figures, widgets, pages all import this module, never the other way round).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import streamlit as st
import torch

from app._cache import Abandoned, ByteCache, FairQueue, Job
from app.device import cpu_threads, guarded

T = TypeVar("T")

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
HEAVY = FairQueue(max(1, _CORES // 2), "t2t-lens-heavy", setup=_worker_setup, nice=10)  # pages first (README)
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


# ----------------------------------------------------------------------------------------------
# Process housekeeping (main.py): free heap pages after runs, imports before the first page
# ----------------------------------------------------------------------------------------------

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
    "analysis.knockout", "analysis.sanity", "analysis.paper_fig2", "analysis.mechanisms", "plotly.subplots",
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

