"""What every session of one server shares: a cache bounded by bytes, and fair queues for heavy work.

Streamlit runs every session's script in a thread of one process, so memory and cores are shared by
the whole class. Two pieces keep that in check, both free of Streamlit so they can be tested alone
(the third, the models' cache, is `app/model_cache.py`):

- `ByteCache`: a least-recently-used cache whose budget is in bytes, measured on the values
  (`nbytes`: tensor storages, arrays, images, bytes, and whatever objects hold them), not in
  entries: a trace of a 224 px image and a 32-bit float take very different room. A value is
  computed once even when several sessions ask for it at the same moment (the others wait for it).
  An entry is measured again when it is read, because a trace grows when a lazy map is formed.
- `FairQueue`: a fixed number of worker threads for heavy work (Integrated Gradients, occlusion,
  CKA, faithfulness curves). Jobs are taken in turn from each session that has some waiting (round
  robin), so one student's ten jobs do not hold back another student's one; a job nobody has asked
  about for `abandon_s` seconds (the student moved on) is dropped before it starts.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

T = TypeVar("T")


def nbytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by `obj` and what it references: tensor storages (each counted once, views share
    theirs), numpy buffers, PIL pixels, bytes and strings, and the contents of containers, dataclasses
    and plain objects. Modules (models) are not counted: they are cached on their own."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.is_sparse or obj.layout != torch.strided:
            return obj.element_size() * obj.numel()
        storage = obj.untyped_storage()
        key = -abs(hash(("storage", storage.data_ptr(), str(obj.device))))  # negative: never an id()
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, np.ndarray):
        return obj.nbytes if obj.base is None else nbytes(obj.base, seen)
    if isinstance(obj, Image.Image):
        return obj.width * obj.height * max(1, len(obj.getbands())) * (4 if obj.mode in ("I", "F") else 1)
    if isinstance(obj, (bytes, bytearray, str, memoryview)):
        return len(obj)
    if isinstance(obj, torch.nn.Module) or obj is None or isinstance(obj, (bool, int, float, complex, type)):
        return sys.getsizeof(obj) if not isinstance(obj, torch.nn.Module) else 0
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(nbytes(k, seen) + nbytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset, deque)):
        return sys.getsizeof(obj) + sum(nbytes(v, seen) for v in obj)
    if is_dataclass(obj):
        return sys.getsizeof(obj) + sum(nbytes(getattr(obj, f.name, None), seen) for f in fields(obj))
    total = sys.getsizeof(obj)
    if hasattr(obj, "__dict__"):
        total += nbytes(vars(obj), seen)
    for name in getattr(type(obj), "__slots__", ()):
        total += nbytes(getattr(obj, name, None), seen)
    return total


@dataclass
class _Entry:
    value: Any
    size: int


class _Flight:
    """A computation under way: the sessions asking for the same key wait on it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.failed = False


class ByteCache:
    """Least-recently-used values under a budget in bytes, shared by threads; thread-safe.

    `get_or_compute(key, compute)` returns the cached value or computes it once (other threads asking
    for the same key meanwhile wait and get the same value; if the computation fails, one of them
    tries again). Values larger than the whole budget are returned but not kept.
    """

    def __init__(self, budget_bytes: int, measure: Callable[[Any], int] = nbytes) -> None:
        self.budget = int(budget_bytes)
        self._measure = measure
        self._items: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self.total = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def peek(self, key: Hashable) -> tuple[bool, Any]:
        """(found, value) without computing; a hit counts as a use (and re-measures the entry)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return False, None
            self._use(key, entry)
            return True, entry.value

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        while True:
            with self._lock:
                entry = self._items.get(key)
                if entry is not None:
                    self.hits += 1
                    self._use(key, entry)
                    return entry.value
                flight = self._flights.get(key)
                owner = flight is None
                if owner:
                    flight = self._flights[key] = _Flight()
                    self.misses += 1
            if not owner:
                flight.done.wait()
                continue  # the value is cached now, or the computation failed and this thread tries
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    del self._flights[key]
                flight.failed = True
                flight.done.set()
                raise
            size = self._measure(value)
            with self._lock:
                del self._flights[key]
                if size <= self.budget:
                    self._items[key] = _Entry(value, size)
                    self.total += size
                    self._evict()
            flight.done.set()
            return value

    def _use(self, key: Hashable, entry: _Entry) -> None:
        """Mark as recently used; measure again (a trace grows when a lazy map is formed)."""
        self._items.move_to_end(key)
        size = self._measure(entry.value)
        if size != entry.size:
            self.total += size - entry.size
            entry.size = size
            if size > self.budget:  # grown past the whole budget: no longer kept (the caller has it)
                self.total -= self._items.pop(key).size
            self._evict(keep=key)

    def _evict(self, keep: Hashable | None = None) -> None:
        while self.total > self.budget and self._items:
            key = next(iter(self._items))
            if key == keep:
                if len(self._items) == 1:
                    break
                self._items.move_to_end(key)
                continue
            self.total -= self._items.pop(key).size
            self.evictions += 1

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key matches (e.g. an image no session shows any more); returns how many."""
        with self._lock:
            gone = [k for k in self._items if predicate(k)]
            for k in gone:
                self.total -= self._items.pop(k).size
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self.total, "budget": self.budget, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions}


# ----------------------------------------------------------------------------------------------
# Heavy work
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One piece of heavy work; `future` gives its result. Times are time.monotonic()."""

    key: Hashable
    owner: Hashable  # the session that asked first
    label: str
    fn: Callable[[], Any] = field(repr=False)
    future: Future = field(default_factory=Future, repr=False)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    wanted: float = field(default_factory=time.monotonic)  # when a session last asked for it

    @property
    def done(self) -> bool:
        return self.future.done()

    def elapsed(self) -> float:
        return time.monotonic() - (self.started if self.started is not None else self.submitted)


class Abandoned(RuntimeError):
    """The job was dropped before it started: no session asked for it for a while."""


def lower_priority(nice: int) -> bool:
    """Raise this thread's nice value by `nice` (Linux: the nice value is per thread), so that it gets
    the CPU only when threads of normal priority (the sessions' page runs) leave some; False where
    the system does not allow it."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return True
    except (AttributeError, OSError):  # not Linux / not permitted: the thread keeps its priority
        return False


class FairQueue:
    """`workers` threads running jobs in turn from each owner (session) with jobs waiting.

    `submit(key, owner, label, fn)` returns the job for `key` (the one already queued or running, if
    any: the same work is never queued twice). `setup` runs once in each worker thread (e.g. to set
    torch's thread count, a per-thread setting). `nice` > 0 lowers the workers' CPU priority by that
    much (`lower_priority`): their work then takes what the page runs leave.
    """

    def __init__(self, workers: int, name: str, abandon_s: float = 60.0,
                 setup: Callable[[], None] | None = None, nice: int = 0) -> None:
        self.workers = max(1, int(workers))
        self.name = name
        self.nice = nice
        self.abandon_s = abandon_s
        self._setup = setup
        self._cv = threading.Condition()
        self._waiting: OrderedDict[Hashable, deque[Job]] = OrderedDict()  # owner -> its jobs, in turn
        self._jobs: dict[Hashable, Job] = {}  # queued or running, by key
        self._threads: list[threading.Thread] = []
        self.durations: dict[Hashable, float] = {}  # last run time of a kind of job, for estimates

    def submit(self, key: Hashable, owner: Hashable, label: str, fn: Callable[[], Any]) -> Job:
        with self._cv:
            job = self._jobs.get(key)
            if job is not None:
                job.wanted = time.monotonic()
                return job
            job = Job(key, owner, label, fn)
            self._jobs[key] = job
            self._waiting.setdefault(owner, deque()).append(job)
            while len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cv.notify()
            return job

    def ahead(self, job: Job) -> int:
        """How many waiting jobs will start before `job` (0 when it is running or next)."""
        with self._cv:
            if job.started is not None or job.done:
                return 0
            queues = [list(q) for q in self._waiting.values()]
            order: list[Job] = []
            for i in range(max((len(q) for q in queues), default=0)):  # the round-robin order
                order += [q[i] for q in queues if i < len(q)]
            return order.index(job) if job in order else 0

    def running(self) -> int:
        with self._cv:
            return sum(1 for j in self._jobs.values() if j.started is not None)

    def pending(self) -> int:
        with self._cv:
            return len(self._jobs)

    def _next(self) -> Job:
        with self._cv:
            while True:
                while not self._waiting:
                    self._cv.wait()
                owner, queue = next(iter(self._waiting.items()))
                job = queue.popleft()
                del self._waiting[owner]
                if queue:  # this owner's next job waits until every other owner has had a turn
                    self._waiting[owner] = queue
                if time.monotonic() - job.wanted > self.abandon_s:
                    del self._jobs[job.key]
                    job.future.set_exception(Abandoned(f"{job.label}: no session asked for it any more"))
                    continue
                job.started = time.monotonic()
                job.future.set_running_or_notify_cancel()
                return job

    def _work(self) -> None:
        if self.nice:
            lower_priority(self.nice)
        if self._setup is not None:
            self._setup()
        while True:
            job = self._next()
            try:
                result = job.fn()
            except BaseException as err:  # reported to whoever reads the job's result
                with self._cv:
                    del self._jobs[job.key]
                job.future.set_exception(err)
            else:
                with self._cv:
                    del self._jobs[job.key]
                    self.durations[job.label] = time.monotonic() - (job.started or job.submitted)
                job.future.set_result(result)
