"""Mechanisms: at which depth the answer becomes readable, which heads write it, where the difference
between two inputs lives, and which tokens soak up attention. Pure functions on models and tensors, batched.

    cache = run_with_cache(model, images)                  # residual stream, head outputs, MLP outputs
    lens = logit_lens(model, cache)                        # (B, L + 1, C) the class token read at each depth
    maps = patch_lens(model, cache, target)                # (B, L + 1, h, w) every patch token read the same way
    dla = direct_logit_attribution(model, cache, target)   # heads (B, L, H), mlps (B, L), embed, bias (B,)
    p = activation_patching(model, clean, corrupted, target, site="heads")  # (B, L, H) recovered fraction
    p = activation_patching(model, clean, corrupted, target, site="resid", method="attribution")  # (B, L + 1, T)
    sinks = attention_sinks(model, images)                 # high-norm tokens and attention sinks, per block

Shapes: B batch, L blocks, H heads per block, D width, d = D / H, T = 1 + N tokens (class token first),
C classes, (h, w) the backbone's token grid (N = h w).

The residual stream. Index 0 is the input of block 0 (class token and embedded tokens plus the position
embedding), index l + 1 the output of block l, index L the input of the final norm. Block l adds
`attn.proj(z_l)` and `mlp(norm2(.))`, where z_l (B, T, D) is `attn @ v` with the heads concatenated (head h
owns channels [h d, (h + 1) d), the input of the output projection), so that, exactly,

    x_L = x_0 + sum_l sum_h z_l[:, :, h d:(h + 1) d] @ W_l[:, h d:(h + 1) d]^T + sum_l b_l + sum_l mlp_l.

References. The logit lens (nostalgebraist, 2020) reads each x_l through the final norm, recomputing its
statistics per depth, and the head: TransformerLens's `accumulated_resid(apply_ln=True)` (`recompute_ln` at
the unembedding). Direct logit attribution is TransformerLens's `decompose_resid` / `stack_head_results` with
`apply_ln_to_stack` (each component centred and divided by the final LayerNorm's *cached* scale, that of this
image's x_L): the scale is held fixed, which is what makes the decomposition exact and linear; the norm's
weight and bias, which TransformerLens folds into the unembedding, are applied explicitly here. Activation
patching is TransformerLens's `get_act_patch_attn_head_out_all_pos` (site "heads": z of one head at every
token) and `get_act_patch_resid_pre` (site "resid": one token of x_l), with the normalised metric
(patched - corrupted) / (clean - corrupted); attribution patching (Nanda, 2023) is its first-order estimate,
grad_corrupted . (clean - corrupted). High-norm tokens: Darcet et al., "Vision Transformers Need Registers",
ICLR 2024.

Interventions use the knock-outs' mechanism (`analysis.knockout`): forward (pre-)hooks registered for one call
and removed on exit, exception or not, acting only in the calling thread; no parameter, buffer or mode is
written, so the model stays bit-identical and another thread (another app session) running it at the same
time computes as if nothing were patched. Gradients are taken with `torch.autograd.grad`, so no `.grad`
accumulates on the parameters. The model must be in eval mode (stochastic depth and dropout off), as for
any explanation.

TokenLabeling's model (`t2t_vit_24_token_labeling` with its auxiliary head, `default_cfg["token_labeling"]
== "cls+aux"`, see `t2t.weights.HEAD_FORMS`): its logits are the class-token head plus 0.5 x the max over
patch tokens of `aux_head(token)`. The logit lens adds that term at every depth (from the patch tokens at that
depth) unless `aux=False`; DLA decomposes the class-token head and reports the auxiliary term apart (`DLA.aux`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from analysis.knockout import _Hooks, _run_from, num_heads
from analysis.modelio import resolve_target

SITES = ("heads", "resid")
METHODS = ("exact", "attribution")


# --- one run, everything recorded ---------------------------------------------------------------------

@dataclass
class Cache:
    """What one forward pass computed, for the lens, DLA and patching.

    resid: L + 1 tensors (B, T, D), the residual stream (index 0: input of block 0; l + 1: output of block l);
    z: L tensors (B, T, D), each block's `attn @ v`, heads concatenated (the input of `attn.proj`);
    mlp: L tensors (B, T, D), each block's MLP output (its fc2 bias included);
    logits: (B, C) the model's output; grid: (h, w) of the patch tokens.
    """

    resid: list[Tensor]
    z: list[Tensor]
    mlp: list[Tensor]
    logits: Tensor
    grid: tuple[int, int]

    @property
    def num_blocks(self) -> int:
        return len(self.z)


def _prefix(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1))


def run_with_cache(model: nn.Module, images: Tensor) -> Cache:
    """One forward of (B, 3, S, S) `images` (no gradients) recording the residual stream, every block's
    head outputs z and MLP outputs (hooks that only read, removed on return)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, S, S), got shape {tuple(images.shape)}")
    resid: list[Tensor] = []
    z: list[Tensor] = []
    mlp: list[Tensor] = []
    hooks = _Hooks()
    try:
        for block in model.blocks:
            hooks.watch(block, resid.append)
            hooks.watch(block.attn.proj, z.append)
            hooks.post(block.mlp, lambda y: (mlp.append(y), y)[1])
        hooks.watch(model.norm, resid.append)  # x_L, the input of the final norm
        with torch.no_grad():
            logits = model(images)
    finally:
        hooks.remove()
    return Cache(resid, z, mlp, logits, tuple(model.grid(*images.shape[-2:])))


def _cache(model: nn.Module, images_or_cache: Tensor | Cache) -> Cache:
    return images_or_cache if isinstance(images_or_cache, Cache) else run_with_cache(model, images_or_cache)


def _split(cache: Cache, at: int) -> tuple[Cache, Cache]:
    """A cache of a batch cut in two along the batch axis (views, no copy)."""
    def part(s: slice) -> Cache:
        return Cache([r[s] for r in cache.resid], [z[s] for z in cache.z], [m[s] for m in cache.mlp],
                     cache.logits[s], cache.grid)
    return part(slice(0, at)), part(slice(at, None))


# --- logit lens ---------------------------------------------------------------------------------------

@torch.no_grad()
def logit_lens(model: nn.Module, images_or_cache: Tensor | Cache, aux: bool = True) -> Tensor:
    """The class token read at each depth: (B, L + 1, C) logits of `head(norm(x_l[:, 0]))`, l = 0..L.

    Index 0 reads the input of block 0 (the class token and position embedding: the same for every image),
    index l + 1 the output of block l. The norm is the model's final LayerNorm, applied with each depth's own
    statistics (the logit lens; TransformerLens's `accumulated_resid(apply_ln=True)`), so the last entry is
    exactly `model(images)`. For a model with TokenLabeling's auxiliary head, each depth also gets
    0.5 x max over its patch tokens of `aux_head(norm(token))` (what the model's evaluation adds), so the last
    entry is `model(images)` there too; `aux=False` reads the class token alone, whose last entry then falls
    short of `model(images)` by exactly that term.
    """
    cache = _cache(model, images_or_cache)
    if aux and getattr(model, "aux_head", None) is not None:
        x = torch.stack(cache.resid, dim=1)                                   # (B, L + 1, T, D)
        return model.forward_logits(model.norm(x.flatten(0, 1))).view(*x.shape[:2], -1)
    # the class token alone is read: norming the patch tokens would be work for nothing
    return model.head(model.norm(torch.stack([r[:, 0] for r in cache.resid], dim=1)))


def readable_depth(lens: Tensor, stay: bool = False) -> Tensor:
    """(B, L + 1, C) lens -> (B,) long: the first depth whose top-1 class is the final one (index L: at the
    end only). stay=True: the first depth from which the top-1 stays the final one through to the end."""
    top = lens.argmax(dim=-1)                 # (B, L + 1)
    same = top == top[:, -1:]
    if stay:
        # a depth qualifies when every depth from it on agrees: a suffix-AND, as a reversed cumulative product
        same = same.flip(1).long().cumprod(dim=1).flip(1).bool()
    return same.long().argmax(dim=1)          # first True; the last depth is always True


@torch.no_grad()
def patch_lens(model: nn.Module, images_or_cache: Tensor | Cache, target: int | Tensor | None = None,
               head: str = "cls") -> Tensor:
    """Every patch token read through the final norm and a head at every depth: (B, L + 1, h, w) logits of
    class `target` (default: the model's prediction).

    head: "cls" the class-token head (what the model's answer is read with), "aux" TokenLabeling's
    auxiliary token head (trained on patch tokens; models that have one), its logit as the head gives it (the
    model adds 0.5 x its max over the tokens).
    """
    cache = _cache(model, images_or_cache)
    target = resolve_target(cache.logits, target)
    if head == "cls":
        linear = model.head
    elif head == "aux":
        linear = getattr(model, "aux_head", None)
        if linear is None:
            raise ValueError("head='aux' needs TokenLabeling's auxiliary token head; this model has none")
    else:
        raise ValueError(f"head must be 'cls' or 'aux', got {head!r}")
    w, b = linear.weight[target], linear.bias[target]                          # (B, D), (B,)
    tokens = model.norm(torch.stack(cache.resid, dim=1)[:, :, _prefix(model):])  # (B, L + 1, N, D)
    logits = torch.einsum("blnd,bd->bln", tokens, w) + b[:, None, None]
    return rearrange(logits, "b l (h w) -> b l h w", h=cache.grid[0], w=cache.grid[1])


# --- direct logit attribution -------------------------------------------------------------------------

@dataclass
class DLA:
    """Direct logit attribution of class `target` (B,): what each component of the final class token adds.

    heads (B, L, H): head h of block l, its slice of `attn @ v` through its columns of `attn.proj`;
    mlps (B, L): each block's MLP output (fc2 bias included); embed (B,): the input of block 0 (class token
    and position embedding); bias (B,): the output projections' biases, the final LayerNorm's bias and the
    head's bias. Each is `W_head[target] . (w_norm * (c - mean(c)) / sigma)` with sigma (B,) the final
    LayerNorm's actual sigma for this image's class token, held fixed. heads.sum + mlps.sum + embed + bias
    = logit (B,), the class-token head's target logit; aux (B,): what TokenLabeling's auxiliary head adds to
    it in the model's output (0 without one), so logit + aux is `model(images)[target]`.
    """

    heads: Tensor
    mlps: Tensor
    embed: Tensor
    bias: Tensor
    aux: Tensor
    sigma: Tensor
    logit: Tensor
    target: Tensor

    @property
    def total(self) -> Tensor:
        """(B,) the sum of every component: the class-token head's target logit."""
        return self.heads.sum(dim=(1, 2)) + self.mlps.sum(dim=1) + self.embed + self.bias


@torch.no_grad()
def direct_logit_attribution(model: nn.Module, images_or_cache: Tensor | Cache,
                             target: int | Tensor | None = None) -> DLA:
    """Decompose the target logit (default: the predicted class) over heads, MLPs, embedding and biases.

    The final class token x_L is the sum of its components (module docstring); the final LayerNorm with its
    sigma fixed at this image's value is affine in x_L, so the logit is the sum of each component's
    `W_head[target] . (w * (c - mean(c)) / sigma)` plus `W_head[target] . b_norm + b_head[target]`.
    Computed in float64 from the float32 activations.
    """
    cache = _cache(model, images_or_cache)
    target = resolve_target(cache.logits, target)
    per_block = num_heads(model)
    norm = model.norm
    w_read = (model.head.weight[target].double() * norm.weight.double())  # (B, D): W_head[t] * w_norm
    x_final = cache.resid[-1][:, 0].double()                                # (B, D)
    sigma = (x_final.var(dim=-1, unbiased=False) + norm.eps).sqrt()         # (B,) LayerNorm's own

    def read(c: Tensor) -> Tensor:
        """(B, ..., D) components -> (B, ...) their logit contributions."""
        c = c - c.mean(dim=-1, keepdim=True)
        shape = (c.shape[0],) + (1,) * (c.ndim - 2) + (c.shape[-1],)
        return (c * w_read.view(shape)).sum(dim=-1) / sigma.view(shape[:-1])

    heads, mlps, bias = [], [], torch.zeros_like(sigma)
    for i, block in enumerate(model.blocks):
        proj = block.attn.proj
        z = rearrange(cache.z[i][:, 0].double(), "b (h d) -> b h d", h=per_block)
        w = rearrange(proj.weight.double(), "o (h d) -> h o d", h=per_block)
        heads.append(read(torch.einsum("bhd,hod->bho", z, w)))             # (B, H)
        mlps.append(read(cache.mlp[i][:, 0].double()))
        if proj.bias is not None:
            bias = bias + read(proj.bias.double().expand(len(sigma), -1))
    # the LayerNorm's bias goes through the head unscaled, then the head's own bias
    bias = bias + (model.head.weight[target].double() * norm.bias.double()).sum(dim=-1) \
        + model.head.bias[target].double()
    embed = read(cache.resid[0][:, 0].double())
    logit = model.head(norm(cache.resid[-1][:, 0])).gather(1, target[:, None])[:, 0]
    aux = cache.logits.gather(1, target[:, None])[:, 0] - logit
    f = cache.logits.dtype
    return DLA(heads=torch.stack(heads, dim=1).to(f), mlps=torch.stack(mlps, dim=1).to(f), embed=embed.to(f),
               bias=bias.to(f), aux=aux if getattr(model, "aux_head", None) is not None else torch.zeros_like(aux),
               sigma=sigma.to(f), logit=logit, target=target)


def top_share(values: Tensor, fraction: float = 0.1) -> Tensor:
    """(B, ...) contributions -> (B,) share of their total |value| held by the top `fraction` of them
    (ceil(fraction * K) of K, ranked by |value|): how concentrated a DLA is across heads."""
    flat = values.flatten(1).abs()
    k = max(1, math.ceil(fraction * flat.shape[1] - 1e-9))
    return flat.topk(k, dim=1).values.sum(dim=1) / flat.sum(dim=1).clamp_min(torch.finfo(flat.dtype).tiny)


# --- activation patching ------------------------------------------------------------------------------

@dataclass
class Patching:
    """The model run on `corrupted` with one site taken from the run on `clean`, for class `target`.

    recovered: (patched - corrupted) / (clean - corrupted) of the metric, site "heads" (B, L, H), site "resid"
        (B, L + 1, T); NaN where a site was not measured (`layers`) or where the clean and corrupted metrics
        are within 1e-6 of each other (nothing to recover);
    patched: the metric of each patched run (method "attribution": its first-order estimate), same shape;
    clean, corrupted: (B,) the metric of the two runs as they are; target (B,); baseline (B,) or None:
        the metric is logit[target] - logit[baseline] when given, else logit[target].
    """

    recovered: Tensor
    patched: Tensor
    clean: Tensor
    corrupted: Tensor
    target: Tensor
    baseline: Tensor | None
    site: str
    method: str


def _metric(logits: Tensor, target: Tensor, baseline: Tensor | None) -> Tensor:
    """(..., B, C) logits -> (..., B) logit of `target`, minus that of `baseline` when given."""
    index = target.expand(*logits.shape[:-1])[..., None]
    m = logits.gather(-1, index)[..., 0]
    if baseline is not None:
        m = m - logits.gather(-1, baseline.expand(*logits.shape[:-1])[..., None])[..., 0]
    return m


def _recovered(patched: Tensor, clean: Tensor, corrupted: Tensor) -> Tensor:
    shape = (-1,) + (1,) * (patched.ndim - 1)
    diff = (clean - corrupted).view(shape)
    out = (patched - corrupted.view(shape)) / diff
    return out.masked_fill(diff.abs() < 1e-6, float("nan"))


def _heads_channels(width: int, per_block: int, device: torch.device) -> Tensor:
    """(H, D) bool: row h marks head h's channels [h d, (h + 1) d) of `attn @ v`."""
    head_of = torch.arange(width, device=device) // (width // per_block)
    return head_of[None, :] == torch.arange(per_block, device=device)[:, None]


@contextmanager
def patched(model: nn.Module, source: Cache, heads: Iterable[Sequence[int]] = (),
            resid: Iterable[tuple[int, int | None]] = ()) -> Iterator[nn.Module]:
    """Inside the block, `model(x)` runs with sites taken from `source` (`run_with_cache` of images of the
    same shape and batch size): heads [(block, head), ...], that head's slice of `attn @ v` at every token;
    resid [(index, token), ...], token `token` (None: every token) of the residual stream at `index`
    (0..L). Afterwards the model is exactly as before (hooks removed on exit, acting only in this thread)."""
    from analysis.knockout import check_heads

    heads = check_heads(model, heads)
    blocks, per_block = len(model.blocks), num_heads(model)
    by_block: dict[int, list[int]] = {}
    for b, h in heads:
        by_block.setdefault(b, []).append(h)
    by_index: dict[int, list[int | None]] = {}
    for index, token in resid:
        if not 0 <= int(index) <= blocks:
            raise ValueError(f"residual index {index} does not exist: 0..{blocks} (0: input of block 0)")
        by_index.setdefault(int(index), []).append(None if token is None else int(token))
    hooks = _Hooks()

    def check(x: Tensor, ref: Tensor) -> None:
        if x.shape != ref.shape:
            raise ValueError(f"the source run has activations {tuple(ref.shape)}, this run {tuple(x.shape)}: "
                             "patch between images of the same shape and batch size")

    def put_heads(z: Tensor, b: int, hs: list[int]) -> Tensor:
        check(z, source.z[b])
        mask = _heads_channels(z.shape[-1], per_block, z.device)[hs].any(dim=0)
        return torch.where(mask, source.z[b].to(z), z)

    def put_tokens(x: Tensor, index: int, tokens: list[int | None]) -> Tensor:
        check(x, source.resid[index])
        x = x.clone()
        if None in tokens:
            return source.resid[index].to(x).clone()
        x[:, tokens] = source.resid[index][:, tokens].to(x)
        return x

    try:
        for b, hs in by_block.items():
            hooks.pre(model.blocks[b].attn.proj, lambda z, b=b, hs=hs: put_heads(z, b, hs))
        for index, tokens in by_index.items():
            module = model.blocks[index] if index < blocks else model.norm
            hooks.pre(module, lambda x, index=index, tokens=tokens: put_tokens(x, index, tokens))
        yield model
    finally:
        hooks.remove()


def _wanted(layers: Iterable[int] | None, count: int, what: str) -> list[int]:
    if layers is None:
        return list(range(count))
    out = sorted({int(i) for i in layers})
    if any(not 0 <= i < count for i in out):
        raise ValueError(f"{what} must lie in 0..{count - 1}, got {out}")
    return out


def _exact_heads(model: nn.Module, clean: Cache, corrupted: Cache, target: Tensor, baseline: Tensor | None,
                 layers: list[int], max_batch: int, min_rows: int) -> Tensor:
    """(B, L, H) metric with each head patched alone, NaN outside `layers`. Batched as the knock-outs'
    grid: for a group of blocks l0..l1, one row per (head of those blocks, image) runs blocks l0..L-1 from
    the corrupted run's input of block l0, the head's channels of `attn @ v` replaced by the clean run's."""
    per_block, b = num_heads(model), target.shape[0]
    out = torch.full((b, len(model.blocks), per_block), float("nan"), dtype=corrupted.logits.dtype,
                     device=target.device)
    channels = _heads_channels(corrupted.z[0].shape[-1], per_block, target.device)
    step = max(1, max_batch // per_block)  # images per chunk
    for i in range(0, b, step):
        n = min(step, b - i)
        group = min(max(1, -(-min_rows // (per_block * n))), max(1, max_batch // (per_block * n)))
        for g in range(0, len(layers), group):
            chosen = layers[g:g + group]
            v = len(chosen) * per_block  # variants, block-major: row j * H + h patches head h of chosen[j]
            hooks = _Hooks()
            try:
                for j, layer in enumerate(chosen):
                    select = torch.zeros(v, channels.shape[1], dtype=torch.bool, device=target.device)
                    select[j * per_block:(j + 1) * per_block] = channels

                    def variants(z: Tensor, select: Tensor = select[:, None, None],
                                 fill: Tensor = clean.z[layer][i:i + n], n: int = n) -> Tensor:
                        z = z.view(len(select), n, *z.shape[1:])  # (V, n, T, D)
                        return torch.where(select, fill.to(z), z).flatten(0, 1)

                    hooks.pre(model.blocks[layer].attn.proj, variants)
                logits = _run_from(model, corrupted.resid[chosen[0]][i:i + n].repeat(v, 1, 1), chosen[0])
            finally:
                hooks.remove()
            m = _metric(logits.view(v, n, -1), target[i:i + n], None if baseline is None else baseline[i:i + n])
            out[i:i + n, chosen] = rearrange(m, "(l h) n -> n l h", h=per_block)
    return out


def _exact_resid(model: nn.Module, clean: Cache, corrupted: Cache, target: Tensor, baseline: Tensor | None,
                 indices: list[int], max_batch: int) -> Tensor:
    """(B, L + 1, T) metric with each token of the residual stream patched alone, NaN outside `indices`: for
    index l, one row per (token, image), the corrupted x_l with that token's row from the clean x_l, runs
    blocks l..L-1, the final norm and the head."""
    b, t = corrupted.resid[0].shape[:2]
    out = torch.full((b, len(corrupted.resid), t), float("nan"), dtype=corrupted.logits.dtype,
                     device=target.device)
    per_chunk = min(t, max_batch)             # tokens per chunk
    step = max(1, max_batch // per_chunk)     # images per chunk
    for index in indices:
        for i in range(0, b, step):
            n = min(step, b - i)
            cor, cle = corrupted.resid[index][i:i + n], clean.resid[index][i:i + n]
            for t0 in range(0, t, per_chunk):
                tokens = torch.arange(t0, min(t0 + per_chunk, t), device=cor.device)
                v = len(tokens)
                x = cor.repeat(v, 1, 1).view(v, n, *cor.shape[1:])            # (V, n, T, D) variant-major
                rows = torch.arange(v, device=cor.device)[:, None]
                x[rows, torch.arange(n, device=cor.device)[None, :], tokens[:, None]] = cle[:, tokens].transpose(0, 1)
                logits = _run_from(model, x.flatten(0, 1), index).view(v, n, -1)
                m = _metric(logits, target[i:i + n], None if baseline is None else baseline[i:i + n])
                out[i:i + n, index, t0:t0 + v] = m.T
    return out


def _attribution(model: nn.Module, clean: Cache, corrupted_images: Tensor, target: Tensor,
                 baseline: Tensor | None, site: str) -> tuple[Tensor, Tensor]:
    """First-order estimate of every site's patched metric from one forward and backward of the corrupted
    images: grad_corrupted(site) . (clean(site) - corrupted(site)), summed over the site's entries.
    Returns the corrupted metric (B,) and the estimated change, (B, L, H) or (B, L + 1, T)."""
    acts: list[Tensor] = []
    hooks = _Hooks()

    def leaf(x: Tensor) -> Tensor:
        # the graph starts at block 0's input: nothing upstream (the stem) is differentiated
        x = x.detach().requires_grad_(True)
        if site == "resid":
            acts.append(x)
        return x

    try:
        with torch.enable_grad():
            hooks.pre(model.blocks[0], leaf)
            for i, block in enumerate(model.blocks):
                if site == "heads":
                    hooks.watch(block.attn.proj, acts.append)
                elif i > 0:
                    hooks.watch(block, acts.append)
            if site == "resid":
                hooks.watch(model.norm, acts.append)
            logits = model(corrupted_images)
            m = _metric(logits, target, baseline)
            grads = torch.autograd.grad(m.sum(), acts)
    finally:
        hooks.remove()
    ref = clean.z if site == "heads" else clean.resid
    terms = [(g * (c - a.detach())) for g, c, a in zip(grads, ref, acts, strict=True)]  # L (+ 1) x (B, T, D)
    if site == "heads":
        per_block = num_heads(model)
        delta = torch.stack([rearrange(x, "b t (h d) -> b h (t d)", h=per_block).sum(-1) for x in terms], dim=1)
    else:
        delta = torch.stack([x.sum(-1) for x in terms], dim=1)
    return m.detach(), delta.detach()


def activation_patching(
    model: nn.Module,
    clean: Tensor,
    corrupted: Tensor | str,
    target: int | Tensor | None = None,
    site: str = "heads",
    baseline: int | Tensor | None = None,
    method: str = "exact",
    layers: Iterable[int] | None = None,
    max_batch: int = 256,
    min_rows: int = 32,
) -> Patching:
    """Run the model on `corrupted` with one site at a time taken from its run on `clean` (B, 3, S, S).

    corrupted: images of the same shape (any second image, or `blurred` / `synthetic_pairs` twins), or
        "blur": `blurred(clean)`.
    target: the class whose logit is the metric (default: the clean run's prediction); baseline: a second
        class, making the metric the logit difference logit[target] - logit[baseline] (TransformerLens's
        logit-difference metric).
    site: "heads", one head's slice of `attn @ v` (before the output projection) at every token,
        (B, L, H); "resid", one token of the residual stream after the embedding (index 0) or a block,
        (B, L + 1, T).
    method: "exact" runs every patched model, in batches of at most `max_batch` rows (each starts at the
        patched block, from the corrupted run's activations there: the stem and earlier blocks are never
        run again); "attribution" estimates all sites from one forward and backward of the corrupted images
        (plus the clean forward both need): patched ~ corrupted + grad . (clean - corrupted).
    layers: the blocks (heads) or residual indices (resid) to patch; default all. The others are NaN.
    """
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(corrupted, str):
        if corrupted != "blur":
            raise ValueError(f"a corrupted input named by a string must be 'blur', got {corrupted!r}")
        corrupted = blurred(clean)
    if clean.ndim != 4 or corrupted.shape != clean.shape:
        raise ValueError(f"clean and corrupted images must be (B, 3, S, S) of one shape, got "
                         f"{tuple(clean.shape)} and {tuple(corrupted.shape)}")
    blocks = len(model.blocks)
    chosen = _wanted(layers, blocks if site == "heads" else blocks + 1, "layers")
    if method == "exact":
        # both runs as one batch: a CPU runs a batch of 2B images faster than two of B
        clean_run, corr_run = _split(run_with_cache(model, torch.cat([clean, corrupted])), len(clean))
    else:
        clean_run = run_with_cache(model, clean)
    target = resolve_target(clean_run.logits, target)
    base = None if baseline is None else resolve_target(clean_run.logits, baseline)
    m_clean = _metric(clean_run.logits, target, base)
    if method == "attribution":
        m_corr, delta = _attribution(model, clean_run, corrupted, target, base, site)
        value = m_corr.view(-1, *([1] * (delta.ndim - 1))) + delta
        if layers is not None:
            keep = torch.zeros(value.shape[1], dtype=torch.bool, device=value.device)
            keep[chosen] = True
            value = value.masked_fill(~keep.view(1, -1, *([1] * (value.ndim - 2))), float("nan"))
    else:
        m_corr = _metric(corr_run.logits, target, base)
        with torch.no_grad():
            if site == "heads":
                value = _exact_heads(model, clean_run, corr_run, target, base, chosen, max_batch, min_rows)
            else:
                value = _exact_resid(model, clean_run, corr_run, target, base, chosen, max_batch)
    return Patching(recovered=_recovered(value, m_clean, m_corr), patched=value, clean=m_clean, corrupted=m_corr,
                    target=target, baseline=base, site=site, method=method)


# --- corrupted inputs ---------------------------------------------------------------------------------

def blurred(images: Tensor, sigma: float = 8.0) -> Tensor:
    """(B, C, S, S) images blurred by a Gaussian of `sigma` pixels (separable, truncated at 3 sigma, reflected
    at the borders). Blurring commutes with the per-channel normalisation, so normalised images may be passed."""
    if sigma <= 0:
        return images.clone()
    radius = min(math.ceil(3 * sigma), min(images.shape[-2:]) - 1)  # reflection needs radius < side
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    k = (k / k.sum()).to(images)
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                   groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


COUNTERFACTUALS = ("blur", "background", "other_class")


def render_variant(split: str, seed: int, index: int, img_size: int, draw: int | None) -> np.ndarray:
    """Synthetic image `index` of (split, seed) as `LocalStructureDataset` renders it, with its object
    replaced: draw=None the background alone (the same gradient, clutter, later strokes and noise), draw=k
    class k's shape at the same place, size, rotation and colour (draw = its own class: the image itself).
    (3, S, S) uint8.

    Rendered by `t2t.data.synthetic.render_chw` with the object replaced (every other random number is the
    same); tests/analysis/test_mechanisms.py checks that draw = own class reproduces the dataset's image exactly.
    """
    from t2t.data import synthetic as syn

    label = index % syn.NUM_CLASSES
    rng = np.random.default_rng((syn.SPLIT_SEEDS[split], seed, index))
    if draw == label:
        return syn.render_chw(label, rng, img_size)
    if draw is None:
        def replace(u, v, radius, k):
            return np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    else:
        other = np.random.default_rng((syn.SPLIT_SEEDS[split], seed, index, 1 + int(draw)))

        def replace(u, v, radius, k):
            return syn._CLASSES[draw](other, u, v, radius, k)
    return syn.render_chw(label, rng, img_size, replace_object=replace)


def synthetic_pairs(model: nn.Module, n: int, start: int = 0, kind: str = "background", split: str = "test",
                    seed: int = 0, sigma: float = 8.0, shift: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Synthetic images start..start+n-1 and their corrupted twins, normalised for `model`.

    kind: "blur" the same image `blurred` by `sigma` px; "background" its object removed (the generator's
    background alone); "other_class" the shape of class (label + shift) % 10 drawn in its place.
    Returns clean (n, 3, S, S), corrupted (n, 3, S, S), labels (n,), the corrupted images' labels (n,)
    (-1 where they have none: blur keeps the label, the background has no class).
    """
    from t2t.data import synthetic as syn

    if kind not in COUNTERFACTUALS:
        raise ValueError(f"kind must be one of {COUNTERFACTUALS}, got {kind!r}")
    cfg = model.default_cfg
    size = cfg["img_size"]
    indices = range(start, start + n)
    labels = torch.tensor([i % syn.NUM_CLASSES for i in indices])

    def norm(arrays: list[np.ndarray]) -> Tensor:
        return syn.normalize(torch.from_numpy(np.stack(arrays)), cfg["mean"], cfg["std"])

    clean = norm([render_variant(split, seed, i, size, i % syn.NUM_CLASSES) for i in indices])
    if kind == "blur":
        return clean, blurred(clean, sigma), labels, labels.clone()
    if kind == "background":
        background = norm([render_variant(split, seed, i, size, None) for i in indices])
        return clean, background, labels, -torch.ones_like(labels)
    other = (labels + shift) % syn.NUM_CLASSES
    corrupted = norm([render_variant(split, seed, i, size, int(o)) for i, o in zip(indices, other, strict=True)])
    return clean, corrupted, labels, other


# --- where the decision lives -------------------------------------------------------------------------

def tokens_for_share(scores: Tensor, share: float = 0.8) -> Tensor:
    """(B, N) per-token scores -> (B,) long: the fewest tokens whose positive scores hold `share` of the
    positive total (0 where no score is positive)."""
    pos = scores.clamp_min(0).nan_to_num(0.0)
    cum = pos.sort(dim=1, descending=True).values.cumsum(dim=1)
    total = cum[:, -1:]
    need = (cum < share * total - 1e-12 * total).sum(dim=1) + 1
    return torch.where(total[:, 0] > 0, need, torch.zeros_like(need))


def spatial_spread(scores: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N) per-token scores on an (h, w) grid -> (B,) mean distance, in token cells, of the positive
    scores' mass from its centroid (small: the mass sits in one place). NaN where no score is positive."""
    pos = scores.clamp_min(0).nan_to_num(0.0).double()
    total = pos.sum(dim=1, keepdim=True)
    w = pos / total
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64),
                                indexing="ij")
    yx = torch.stack([rows.flatten(), cols.flatten()], dim=-1).to(pos.device)  # (N, 2)
    centre = w @ yx                                                             # (B, 2)
    dist = (yx[None] - centre[:, None]).norm(dim=-1)                            # (B, N)
    out = (w * dist).sum(dim=1)
    return out.masked_fill(total[:, 0] <= 0, float("nan")).to(scores.dtype)


# --- attention sinks and high-norm tokens -------------------------------------------------------------

@dataclass
class SinkStage:
    """Tokens of one attention stage that stand out by their norm or soak up attention.

    name: "blocks" (the backbone: L blocks, T = 1 + N tokens, class token first) or "t2t.attn1" /
        "t2t.attn2" (one T2T attention layer: L = 1, T = its N0 or N1 tokens, no class token);
    norms (B, L, T): the backbone, each token of the residual stream entering block l (the tokens the
        block's attention reads); a T2T layer, each token it outputs (its input is a soft split of the
        previous stage, of another width: there is no residual stream to measure);
    received (B, L, T): each token's share of the layer's attention, the mean over heads and queries of its
        column (sums to 1 over T; for the Performer, column sums of the implicit map over their total, since
        the rows whose normaliser underflows sum to ~0, see `t2t.trace.LazyAttention.row_sums`);
    high_norm (B, L, T): norm > norm_factor x the median norm of that image's tokens at that layer (Darcet
        et al.'s high-norm tokens); sink (B, L, T): received > attention_factor / T (that many times the
        uniform share); grid (h, w) of the patch tokens; num_prefix_tokens 1 (backbone) or 0 (T2T).
    """

    name: str
    norms: Tensor
    received: Tensor
    high_norm: Tensor
    sink: Tensor
    grid: tuple[int, int]
    num_prefix_tokens: int

    @property
    def flagged(self) -> Tensor:
        """(B, L, T) bool: a high-norm token or an attention sink."""
        return self.high_norm | self.sink


@dataclass
class Sinks:
    """`attention_sinks` of a batch: blocks (the backbone), t2t ({"t2t.attn1": ..., "t2t.attn2": ...}, empty
    for ViT), final_norms (B, T) the norms of the last block's output tokens (the features Darcet et al.
    inspect), rollout (B, N) the class token's attention rollout and rollout_without_sinks (B, N) the same
    with the flagged patch tokens' columns removed from each block's attention (rows re-normalised)."""

    blocks: SinkStage
    t2t: dict[str, SinkStage]
    final_norms: Tensor
    rollout: Tensor
    rollout_without_sinks: Tensor
    norm_factor: float
    attention_factor: float


def _flags(norms: Tensor, received: Tensor, norm_factor: float, attention_factor: float) -> tuple[Tensor, Tensor]:
    median = norms.median(dim=-1, keepdim=True).values
    return norms > norm_factor * median, received > attention_factor / received.shape[-1]


@torch.no_grad()
def attention_sinks(model: nn.Module, images: Tensor, norm_factor: float = 3.0,
                    attention_factor: float = 10.0) -> Sinks:
    """Per block (and per T2T attention layer), each token's norm and the share of attention it receives;
    the high-norm tokens and attention sinks flagged (`SinkStage`); the class token's rollout with and without
    the flagged patch tokens. One traced forward of (B, 3, S, S) `images`.

    The class token is flagged like any token but never removed from the rollout: the rollout's class row is
    read over the patch tokens, and removing its own column only rescales the rows (rollout.py's `(A + I) / 2`).
    """
    import t2t
    from analysis.rollout import _chain_row, _mix_with_identity, cls_rollout

    names = ["blocks.*", "t2t.attn1", "t2t.attn2", "t2t.attn1_map", "t2t.attn2_map"]
    inputs: list[Tensor] = []
    hooks = _Hooks()
    try:
        for block in model.blocks:
            hooks.watch(block, inputs.append)
        tr = t2t.trace(model, images, attention=True, keep=names)
    finally:
        hooks.remove()
    attentions = tr.attentions()                                            # L x (B, H, T, T)
    received = torch.stack([a.mean(dim=(1, 2)) for a in attentions], dim=1)  # (B, L, T) column means
    norms = torch.stack([x.norm(dim=-1) for x in inputs], dim=1)
    high, sink = _flags(norms, received, norm_factor, attention_factor)
    grid = tuple(tr.grid("blocks.0"))
    blocks = SinkStage("blocks", norms, received, high, sink, grid, 1)

    stages = {}
    for name in ("t2t.attn1", "t2t.attn2"):
        if f"{name}_map" not in tr:
            continue
        out = tr[name]                                                      # (B, N, 64)
        cols = tr.attention_left_product(f"{name}_map", torch.ones(out.shape[:2], device=out.device))
        share = (cols / cols.sum(dim=-1, keepdim=True)).float()[:, None]
        n = out.norm(dim=-1)[:, None]
        h, s = _flags(n, share, norm_factor, attention_factor)
        stages[name] = SinkStage(name, n, share, h, s, tuple(tr.grid(name)), 0)

    plain = cls_rollout(attentions)
    drop = blocks.flagged.clone()
    drop[..., :blocks.num_prefix_tokens] = False
    mixed = [_mix_with_identity(a.mean(dim=1).masked_fill(drop[:, i, None, :], 0.0), True)
             for i, a in enumerate(attentions)]
    without = _chain_row(mixed)[:, 1:]
    return Sinks(blocks, stages, tr[f"blocks.{len(model.blocks) - 1}"].norm(dim=-1), plain, without,
                 norm_factor, attention_factor)
