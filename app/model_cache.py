"""The loaded models every session shares, under one budget in bytes of weights (free of Streamlit).

Owns: `ModelCache` (least recently used unloaded first; a model that cannot fit is refused with
`ModelTooLarge` before anything is loaded; a model that comes back altered in place is never served
again), `module_bytes` (a model's weights in bytes, also on the meta device) and `megabytes`.

May import: app._cache (`_Flight`, the one-computation-per-key wait), torch. Nothing else of app/.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from app._cache import _Flight


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage once (shared weights count once); on
    the meta device (a model built without weights), what they will take once loaded."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _fingerprint(model: torch.nn.Module) -> tuple[bool, int]:
    """(training mode, sum of the tensors' in-place version counters): any in-place change of a weight
    (a zeroed head, an optimiser step, `load_state_dict`) or `model.train()` changes it."""
    return model.training, sum(t._version for t in [*model.parameters(), *model.buffers()])


class ModelTooLarge(RuntimeError):
    """A model that the budget cannot hold; the message names its size and the budget."""


def megabytes(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


@dataclass
class _Model:
    model: torch.nn.Module
    size: int
    fingerprint: tuple[bool, int]


class ModelCache:
    """Loaded models shared by every session, under one budget in bytes of weights; thread-safe.

    `get_or_load(key, size, load, what)`: the cached model, or `load()` once (other threads asking for
    the same key meanwhile wait for it). `size` is the model's size known before loading (parameter
    count x 4 bytes from the registry): a model larger than the whole budget is refused at once with
    `ModelTooLarge`, naming both; otherwise the least recently used models are unloaded until it fits,
    before it is loaded, so weights never exceed the budget even while loading. Its real size is
    measured after loading.

    A model must be read-only: when one comes back altered (its weights changed in place, or left in
    training mode) it is dropped and loaded again, so no session ever gets another's altered model
    (`altered` counts them).

    Models unloaded here while a session still holds them stay in memory until that session lets go;
    `stats()["live_bytes"]` counts every loaded model still alive, cached or not.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self._items: OrderedDict[Hashable, _Model] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self._alive: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
        self.total = 0
        self.loads = self.evictions = self.altered = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def refuse(self, size: int, what: str) -> None:
        """Raise ModelTooLarge when a model of `size` bytes can never fit."""
        if size > self.budget:
            raise ModelTooLarge(f"{what} needs {megabytes(size)} of weights, more than the server's whole model "
                                f"budget of {megabytes(self.budget)} (T2T_LENS_MODEL_MB)")

    def get_or_load(self, key: Hashable, size: int, load: Callable[[], torch.nn.Module],
                    what: str = "this model") -> torch.nn.Module:
        self.refuse(size, what)
        while True:
            with self._lock:
                entry = self._items.get(key)
                if entry is not None and _fingerprint(entry.model) != entry.fingerprint:
                    self.total -= self._items.pop(key).size  # altered in place: never served again
                    self.altered += 1
                    entry = None
                if entry is not None:
                    self._items.move_to_end(key)
                    return entry.model
                flight = self._flights.get(key)
                owner = flight is None
                if owner:
                    flight = self._flights[key] = _Flight()
                    self._evict(self.budget - size)  # room before loading
            if not owner:
                flight.done.wait()
                continue
            try:
                model = load()
                real = module_bytes(model)
                self.refuse(real, what)
            except BaseException:
                with self._lock:
                    del self._flights[key]
                flight.done.set()
                raise
            with self._lock:
                del self._flights[key]
                self._evict(self.budget - real)
                self._items[key] = _Model(model, real, _fingerprint(model))
                self.total += real
                self._alive[model] = real
                self.loads += 1
            flight.done.set()
            return model

    def _evict(self, room: int) -> None:
        """Unload least recently used models until the cached ones take at most `room` bytes."""
        while self.total > room and self._items:
            _, entry = self._items.popitem(last=False)
            self.total -= entry.size
            self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"models": len(self._items), "bytes": self.total, "budget": self.budget, "loads": self.loads,
                    "evictions": self.evictions, "altered": self.altered, "live_bytes": sum(self._alive.values())}
