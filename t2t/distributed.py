"""Dataset-scale runs: shards over torch.distributed ranks, a resumable journal, one loop for both.

    torchrun --nproc_per_node=4 -m t2t validate ...        # one process per GPU (NCCL) or per CPU share (gloo)

How a run is organised (validate and the report share it):
- `Dist.from_env()` joins the process group torchrun describes in the environment (gloo on the
  CPU, NCCL on GPUs; several nodes with torchrun's usual --nnodes/--rdzv flags). Objects travel on
  a gloo group, so gathering results works the same with either backend.
- Rank 0 lists the inputs and broadcasts the list: every rank sees the same items in the same order.
- Items already in the journal are done; the rest are dealt round-robin, rank r taking
  remaining[r::world_size]: disjoint shards, none left out, for any world size and item count
  (no DistributedSampler, which pads the last shard by repeating items).
- After every batch step the ranks gather their finished lines to rank 0, which appends them to
  the journal (JSON Lines, flushed after every step, fsync'ed every few seconds and at the end):
  memory holds one batch step, never the dataset.
- The outputs are written at the end by rank 0 from the journal in item order, so they do not
  depend on the world size, and a run killed at any moment (kill -9) resumes from the journal.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the run: rank, world size, and the collectives the run needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    _objects: Any = field(default=None, repr=False)  # the gloo group that carries Python objects

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> Dist:
        """Join torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK in the environment), or a run of one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local)
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        objects = dist.new_group(backend="gloo") if backend != "gloo" else None
        return cls(dist.get_rank(), dist.get_world_size(), local, backend, objects)

    def device(self, requested: str = "auto") -> torch.device:
        """The device this rank computes on: its own GPU under torchrun (cuda:LOCAL_RANK)."""
        from t2t.trace import default_device

        device = default_device(None if requested == "auto" else requested)
        if device.type == "cuda" and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._objects)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._objects)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self._objects)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def default_workers(device: torch.device) -> int:
    """DataLoader decoding processes per rank when --workers is not given.

    With the model on a GPU the CPU is free for decoding: up to 4 processes (cores - 1). With the
    model on the CPU its threads already take every core; with 2 cores or fewer per rank a decoding
    process only takes turns with them (OpenMP threads then wait for each other), and decoding in
    the main process between batches is faster: the report's loop over 192 images with both
    embedded models took 7.6-7.9 s that way and 8.4-8.6 s with one worker, on a 2-core CPU.
    """
    machine = os.cpu_count() or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    if device.type != "cpu":
        return min(4, max(1, cores - 1))
    # the ranks of this node share its cores, unless a launcher already pinned each to its own
    shared = cores >= machine
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if shared else cores
    return 0 if per_rank <= 2 else min(4, per_rank - 1)


def shard(items: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s share of `items`: every world_size-th from position rank (disjoint, complete, unpadded)."""
    return list(items[rank::world_size])


class Journal:
    """An append-only JSON Lines file of finished work, safe against being killed at any moment.

    The first line holds the run's settings; every later line is one finished item with its
    index under "i". A line counts only when it is complete (ends in a newline and parses): a
    line cut short by a kill is cut off when the journal is reopened, so nothing half-written is
    ever read as done.

    Every append is flushed to the operating system, so a killed process (kill -9) loses
    nothing appended. It is fsync'ed at most every `sync_every_s` seconds and on close: a
    per-batch fsync cost ~10 ms a step (2% of the report's loop on a 2-core CPU), and what an
    operating-system crash could lose is at most those last seconds of work, which `--resume`
    redoes.
    """

    def __init__(self, path: Path, settings: dict[str, Any], resume: bool, sync_every_s: float = 5.0) -> None:
        self.path = Path(path)
        self.sync_every_s = sync_every_s
        self._synced = time.monotonic()
        self.done: set[int] = set()
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples are lists
        if resume and self.path.exists():
            head, end = self._scan(settings)
            with open(self.path, "r+b") as f:
                f.truncate(end)  # a line cut short by the kill
            self.settings = head
        else:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"settings": settings}) + "\n")
            os.replace(tmp, self.path)  # a journal exists only with its settings line
            self.settings = settings
        self._file = open(self.path, "a", encoding="utf-8")

    def _scan(self, settings: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Read the finished indices; returns the settings line and the byte length of the complete lines."""
        end = 0
        head = None
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = None
                if not raw.endswith(b"\n") or not isinstance(line, dict):
                    break  # only the last line can be cut short; everything after it is ignored
                if head is None:
                    head = line.get("settings")
                    if head != settings:
                        raise SystemExit(f"error: {self.path} was written by a run with other settings; "
                                         f"run without --resume to start again.\n  journal: {head}\n  now: {settings}")
                else:
                    self.done.add(int(line["i"]))
                end += len(raw)
        if head is None:
            raise SystemExit(f"error: {self.path} has no settings line; run without --resume to start again")
        return head, end

    def append(self, lines: Iterable[dict[str, Any]]) -> None:
        """Write finished items: each counts as done once its whole line is written and flushed."""
        lines = list(lines)
        for line in lines:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()
        self.done.update(int(line["i"]) for line in lines)
        if time.monotonic() - self._synced >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        """Put everything appended on disk (beyond the operating system's caches)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def in_order(self) -> Iterator[dict[str, Any]]:
        """The finished items sorted by index, read one at a time (an offset per item is all that is held)."""
        self._file.flush()
        offsets: list[tuple[int, int]] = []
        with open(self.path, "rb") as f:
            pos = len(f.readline())
            for raw in f:
                offsets.append((int(json.loads(raw)["i"]), pos))
                pos += len(raw)
            offsets.sort()
            for _, pos in offsets:
                f.seek(pos)
                yield json.loads(f.readline())


def run_batches(dist_: Dist, todo: Sequence[int], batch_size: int,
                loader: Callable[[list[list[int]]], Iterable[Any]], step: Callable[[Any], list[dict[str, Any]]],
                journal: Journal | None, desc: str) -> None:
    """Deal `todo` to the ranks, run `step` on each batch of this rank's share, journal the lines on rank 0.

    loader(batches) yields this rank's batches (a DataLoader over `batches`, lists of item
    indices); step(batch) -> the finished lines of a batch, each a dict with its item index "i".
    Ranks gather after every batch step; a rank whose share has no batch left sends nothing.
    """
    mine = shard(todo, dist_.rank, dist_.world_size)
    batches = [mine[k:k + batch_size] for k in range(0, len(mine), batch_size)]
    # the longest share sets the number of gathers every rank takes part in
    steps = math.ceil(len(shard(todo, 0, dist_.world_size)) / batch_size) if todo else 0
    bar = progress(len(todo), desc, dist_)
    it = iter(loader(batches)) if batches else iter(())
    for _ in range(steps):
        batch = next(it, None)
        lines = step(batch) if batch is not None else []
        gathered = dist_.gather(lines)
        if gathered is not None:
            merged = [line for part in gathered for line in part]
            if journal is not None:
                journal.append(merged)
            if bar is not None:
                bar.update(len(merged))
    if bar is not None:
        bar.close()


def progress(total: int, desc: str, dist_: Dist) -> Any:
    """A tqdm bar with images/s and ETA, on rank 0 only (the others stay quiet)."""
    if not dist_.is_main:
        return None
    from tqdm import tqdm

    label = desc if dist_.world_size == 1 else f"{desc} ({dist_.world_size} ranks)"
    return tqdm(total=total, unit="img", desc=label, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
