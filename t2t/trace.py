"""One forward pass that exposes every step: `trace(model, images)`.

Names (batch axis first), as in ../shared/fidelity/README.md:
    logits (B, C), features (B, D)
    T2T-ViT: t2t.split0 (B, N0, 147), t2t.attn1 (B, N0, 64), t2t.split1 (B, N1, 576),
             t2t.attn2 (B, N1, 64), t2t.split2 (B, N2, 576), t2t.project (B, N2, D),
             t2t.attn1_map (B, 1, N0, N0), t2t.attn2_map (B, 1, N1, N1)  [formed on demand]
    ViT:     patch_embed (B, N, D)
    both:    blocks.{i} (B, 1 + N, D) tokens out of block i, blocks.{i}.attn (B, heads, 1 + N, 1 + N)

Recording is explicit: the model's forward takes a `Tape` argument and writes to it,
so there is no hook and no global state; two threads can trace one model at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# Tape, LazyAttention and the soft-split geometry live in t2t.tokens (below the model modules, which
# record on a Tape): imported here for this module's use and kept importable from t2t.trace.
from t2t.tokens import SOFT_SPLITS, LazyAttention, Tape, grid_after


@dataclass
class Trace:
    """The named tensors of one forward pass; look them up with `trace[name]`."""

    tensors: dict[str, Tensor]
    lazy: dict[str, LazyAttention]
    grids: dict[str, tuple[int, int]]
    family: str
    image_size: tuple[int, int]
    num_blocks: int
    _formed: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> Tensor:
        name = self._resolve(name)
        if name in self.tensors:
            return self.tensors[name]
        if name in self.lazy:
            if name not in self._formed:
                self._formed[name] = self.lazy[name].full()
            return self._formed[name]
        raise KeyError(f"{name!r} is not in this trace; it has: {', '.join(self.names())}")

    def __contains__(self, name: str) -> bool:
        name = self._resolve(name)
        return name in self.tensors or name in self.lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _resolve(self, name: str) -> str:
        if name.startswith("blocks.last"):  # the reference files' name for the last block
            name = f"blocks.{self.num_blocks - 1}" + name[len("blocks.last"):]
        return name

    def names(self) -> list[str]:
        return list(self.tensors) + [n for n in self.lazy if n not in self.tensors]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape without forming a lazy map."""
        name = self._resolve(name)
        return tuple(self.lazy[name].shape) if name in self.lazy else tuple(self.tensors[name].shape)

    def attention_rows(self, name: str, index: Tensor | Iterable[int] | int) -> Tensor:
        """Rows `index` of an attention map, (B, heads, len(index), N), never forming the rest."""
        name = self._resolve(name)
        if name in self.lazy:
            return self.lazy[name].rows(index)
        index = torch.as_tensor(index).reshape(-1)
        return self[name][:, :, index]

    def attention_left_product(self, name: str, r: Tensor) -> Tensor:
        """r^T A for an attention map with a single head (the T2T maps): (B, N) -> (B, N)."""
        name = self._resolve(name)
        if name in self.lazy:
            return self.lazy[name].left_product(r)
        return torch.einsum("bi,bij->bj", r.to(self[name]), self[name][:, 0])

    def attention_row_sums(self, name: str) -> Tensor:
        """(B, N) row sums of a single-head attention map; see `LazyAttention.row_sums`."""
        name = self._resolve(name)
        return self.lazy[name].row_sums() if name in self.lazy else self[name][:, 0].sum(dim=-1)

    def grid(self, name: str) -> tuple[int, int]:
        """(h, w) of the token grid of a stage: 56x56, 28x28, 14x14 for T2T-ViT at 224."""
        return self.grids[self._resolve(name)]

    def attentions(self) -> list[Tensor]:
        """Backbone attention maps of all blocks, each (B, heads, 1 + N, 1 + N)."""
        return [self[f"blocks.{i}.attn"] for i in range(self.num_blocks)]

    def block_tokens(self) -> list[Tensor]:
        """Token features out of every block, each (B, 1 + N, D)."""
        return [self[f"blocks.{i}"] for i in range(self.num_blocks)]


def trace(
    model: nn.Module,
    images: Tensor,
    attention: bool = True,
    keep_graph: bool = False,
    keep: Iterable[str] | None = None,
) -> Trace:
    """Run `model` once on `images` (B, 3, H, W) and return every named step.

    attention:  record attention maps (backbone maps are formed, T2T maps kept as factors).
    keep_graph: keep the autograd graph; every recorded tensor gets `.retain_grad()`, so after
                `trace["logits"][:, c].sum().backward()` the attention maps carry `.grad`.
    keep:       glob patterns of the names to keep, e.g. ("blocks.*.attn",) for a rollout; default
                all. "features", "logits" (and "input" with keep_graph) are always kept, and `grid`
                knows every stage; "blocks.last" names the last block, as in lookups. A batch
                job keeping only what it reads frees the rest as the forward goes (the T2T stages
                hold 6.3 MB per image at 224 px), so their memory is reused instead of mapped anew.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if isinstance(keep, str):
        raise TypeError(f"keep takes a sequence of name patterns, e.g. ({keep!r},), not a string")
    if keep is not None:  # the "blocks.last" alias names the last block here too
        last = f"blocks.{len(model.blocks) - 1}"
        keep = [k.replace("blocks.last", last) for k in keep] + ["features", "logits"]
    tape = Tape(attention=attention, keep_graph=keep_graph, keep=keep)
    if keep_graph:
        # a leaf that wants grad, so the graph exists even for a frozen model
        images = images.detach().clone().requires_grad_(True)
    with torch.set_grad_enabled(keep_graph):
        tokens = model.forward_tokens(images, tape)
        features = tokens[:, 0]
        logits = model.forward_logits(tokens)
    tape.record("features", features)
    tape.record("logits", logits)
    if keep_graph:
        tape.tensors["input"] = images
    return Trace(
        tensors=tape.tensors,
        lazy=tape.lazy,
        grids=tape.grids,
        family=model.family,
        image_size=tuple(images.shape[-2:]),
        num_blocks=len(model.blocks),
    )


# --- receptive fields ------------------------------------------------------------------

_T2T_STAGES = {  # stage name -> how many soft splits lie between it and the image
    "t2t.split0": 1, "t2t.attn1": 1, "t2t.attn1_map": 1,
    "t2t.split1": 2, "t2t.attn2": 2, "t2t.attn2_map": 2,
    "t2t.split2": 3, "t2t.project": 3,
}


def stage_geometry(model: nn.Module, stage: str) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of each split between the image and `stage`, first split first.

    Only the splits count: attention mixes all tokens, so this is the window a token is *made
    of*, the part of the image the soft splits alone connect it to.
    """
    if model.family == "t2t":
        if stage.startswith("blocks") or stage in ("backbone", "features"):
            n = 3
        elif stage in _T2T_STAGES:
            n = _T2T_STAGES[stage]
        else:
            raise KeyError(f"unknown stage {stage!r}; T2T-ViT stages: {', '.join(_T2T_STAGES)}, blocks.{{i}}")
        return list(SOFT_SPLITS[:n])
    if stage.startswith("blocks") or stage in ("patch_embed", "backbone", "features"):
        p = model.patch_embed.patch_size
        return [(p, p, 0)]
    raise KeyError(f"unknown stage {stage!r}; ViT stages: patch_embed, blocks.{{i}}")


def grid_of(geometry: list[tuple[int, int, int]], image_hw: tuple[int, int]) -> tuple[int, int]:
    """Token grid after the splits of `geometry` applied to an (h, w) image."""
    h, w = image_hw
    for k, s, p in geometry:
        h, w = grid_after(h, k, s, p), grid_after(w, k, s, p)
    return h, w


def window_box(geometry: list[tuple[int, int, int]], token: int | tuple[int, int],
               image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixels a token sees through the splits of `geometry`: (top, left, bottom, right), exclusive, clipped.

    Composes the splits backwards: rows [a, b] of a split's output come from rows
    [a*stride - padding, b*stride - padding + kernel - 1] of its input.
    """
    grid_h, grid_w = grid_of(geometry, image_hw)
    row, col = divmod(token, grid_w) if isinstance(token, int) else token
    if not (0 <= row < grid_h and 0 <= col < grid_w):
        raise IndexError(f"token {token} is outside the {grid_h}x{grid_w} grid")
    r0 = r1 = row
    c0 = c1 = col
    for k, s, p in reversed(geometry):
        r0, r1 = r0 * s - p, r1 * s - p + k - 1
        c0, c1 = c0 * s - p, c1 * s - p + k - 1
    return max(r0, 0), max(c0, 0), min(r1 + 1, image_hw[0]), min(c1 + 1, image_hw[1])


def _image_hw(model: nn.Module, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    size = image_size or model.img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def receptive_field(model: nn.Module, stage: str, token: int | tuple[int, int],
                    image_size: int | tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """Pixels a token of `stage` sees: (top, left, bottom, right), bottom/right exclusive, clipped.

    `token` is a flat index into the stage's grid (row-major, no class token) or (row, col).
    """
    try:
        return window_box(stage_geometry(model, stage), token, _image_hw(model, image_size))
    except IndexError as err:
        raise IndexError(f"{err} of {stage!r}") from None


def receptive_fields(model: nn.Module, stage: str,
                     image_size: int | tuple[int, int] | None = None) -> Tensor:
    """Boxes of every token of a stage: (h, w, 4) int tensor of (top, left, bottom, right)."""
    hw = _image_hw(model, image_size)
    geometry = stage_geometry(model, stage)
    gh, gw = grid_of(geometry, hw)
    boxes = [window_box(geometry, (r, c), hw) for r in range(gh) for c in range(gw)]
    return torch.tensor(boxes).reshape(gh, gw, 4)


def default_device(override: str | torch.device | None = None) -> torch.device:
    """`override` if given, else CUDA when available, then Apple's MPS, then the CPU."""
    if override is not None:
        return torch.device(override)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
