"""What the model modules share, below all of them: the soft-split geometry and the Tape.

`layers`, `t2t_vit`, `vit` and `trace` all import from here and this module imports none of them,
so the model code has no import cycle (tests/t2t/test_imports.py):

- `SOFT_SPLITS`, `grid_after`: the (kernel, stride, padding) of T2T-ViT's three soft splits and the
  token grid an unfold leaves, used by the model (`t2t_vit.SoftSplit`) and by receptive fields
  (`trace.stage_geometry`).
- `Tape`: what a forward records named tensors on (every layer takes an optional one), and
  `LazyAttention`, the T2T attention maps it keeps as factors. `trace.trace` reads a Tape into a `Trace`.

`t2t.trace` and `t2t.t2t_vit` re-export these names where they lived before.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

# (kernel, stride, padding) of the three soft splits
SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


def grid_after(size: int, kernel: int, stride: int, padding: int) -> int:
    """Number of windows along one side: the output size of an unfold."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class LazyAttention:
    """A T2T attention matrix kept as factors, formed (in full or by rows) only when asked.

    softmax:   A = softmax(q k^T)                         q, k: (B, N, d), q already scaled
    performer: A_ij = phi(q_i).phi(k_j) / (phi(q_i) . sum_j phi(k_j) + eps)   q, k: (B, N, m)
    """

    kind: str
    q: Tensor
    k: Tensor
    eps: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.q.shape[0], 1, self.q.shape[1], self.k.shape[1])

    def rows(self, index: Tensor | Iterable[int] | int) -> Tensor:
        """Rows of the matrix for the query tokens `index`: (B, 1, len(index), N)."""
        index = torch.as_tensor(index, device=self.q.device).reshape(-1)
        q = self.q[:, index]
        scores = q @ self.k.transpose(-2, -1)
        if self.kind == "softmax":
            a = scores.softmax(dim=-1)
        else:
            a = scores / (q @ self.k.sum(dim=1)[:, :, None] + self.eps)
        return a[:, None]

    def full(self) -> Tensor:
        return self.rows(torch.arange(self.q.shape[1]))

    def row_sums(self) -> Tensor:
        """(B, N) sums of the rows. 1 for softmax; for the Performer n / (n + eps), which is ~0 where
        its normaliser n = phi(q_i) . sum_j phi(k_j) underflows: that token takes nothing from the
        others and the layer passes on its own value."""
        if self.kind == "softmax":
            return torch.ones(self.q.shape[:2], dtype=self.q.dtype, device=self.q.device)
        n = (self.q @ self.k.sum(dim=1)[:, :, None])[..., 0]
        return n / (n + self.eps)

    def left_product(self, r: Tensor, chunk: int = 512) -> Tensor:
        """r^T A, (B, N) -> (B, N): where the tokens' weights `r` came from.

        Performer: A = diag(1 / (n + eps)) phi(q) phi(k)^T, applied through its factors in O(N m).
        Softmax: formed a block of rows at a time, so the 3136 x 3136 map never exists whole.
        """
        r = r.to(self.q.dtype)
        if self.kind == "performer":
            n = self.q @ self.k.sum(dim=1)[:, :, None] + self.eps  # (B, N, 1)
            return torch.einsum("bi,bim,bjm->bj", r / n[..., 0], self.q, self.k)
        out = torch.zeros(r.shape[0], self.k.shape[1], dtype=r.dtype, device=r.device)
        for start in range(0, self.q.shape[1], chunk):
            rows = self.rows(torch.arange(start, min(start + chunk, self.q.shape[1])))[:, 0]  # (B, chunk, N)
            out += torch.einsum("bi,bij->bj", r[:, start:start + rows.shape[1]], rows)
        return out


class Tape:
    """Collects named tensors during one forward; `scope(prefix)` views it under a name prefix."""

    def __init__(self, attention: bool = True, keep_graph: bool = False, keep: Iterable[str] | None = None):
        self.attention = attention
        self.keep_graph = keep_graph
        # glob patterns of the names to store (None: all); grids are noted for every name
        self.wanted = None if keep is None else re.compile("|".join(fnmatch.translate(k) for k in keep) or "(?!)")
        self.tensors: dict[str, Tensor] = {}
        self.lazy: dict[str, LazyAttention] = {}
        self.grids: dict[str, tuple[int, int]] = {}
        self.prefix = ""
        self.grid: tuple[int, int] | None = None

    def scope(self, prefix: str, grid: tuple[int, int] | None = None) -> Tape:
        child = object.__new__(Tape)
        child.__dict__.update(self.__dict__)  # shares the three dicts
        child.prefix, child.grid = self.prefix + prefix, grid
        return child

    def _keep(self, t: Tensor) -> Tensor:
        if not self.keep_graph:
            return t.detach()
        if t.requires_grad:
            t.retain_grad()  # so attributions can read d(output)/d(t) after backward
        return t

    def _wants(self, name: str) -> bool:
        return self.wanted is None or self.wanted.match(name) is not None

    def record(self, name: str, tensor: Tensor, grid: tuple[int, int] | None = None) -> None:
        name = self.prefix + name
        if grid or self.grid:
            self.grids[name] = grid or self.grid  # type: ignore[assignment]
        if self._wants(name):
            self.tensors[name] = self._keep(tensor)

    def record_softmax_map(self, name: str, q: Tensor, k: Tensor) -> None:
        if self.attention:
            self._lazy(name, LazyAttention("softmax", q.detach(), k.detach()))

    def record_performer_map(self, name: str, qp: Tensor, kp: Tensor, eps: float) -> None:
        if self.attention:
            self._lazy(name, LazyAttention("performer", qp.detach(), kp.detach(), eps))

    def _lazy(self, name: str, lazy: LazyAttention) -> None:
        if self.grid:
            self.grids[self.prefix + name] = self.grid
        if self._wants(self.prefix + name):
            self.lazy[self.prefix + name] = lazy
