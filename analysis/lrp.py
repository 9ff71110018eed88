"""AttnLRP and CP-LRP for T2T-ViT and ViT / DeiT, in one backward pass: `lrp(model, images) -> Relevance`.

AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024) as its library LXT computes it efficiently (`lxt/efficient/rules.py` and
`patches.py`, LXT 2.1): every LRP rule used is written as a modified gradient, so that one
backward pass gives relevance = input x gradient (Arras et al. 2025). The rules, per operation:

- linear layers, convolutions, unfolds, sums, concatenations, residual additions: the plain
  gradient (the epsilon rule with epsilon -> 0: x * W^T (R / z) = x * W^T g since R = z * g);
- LayerNorm: the standard deviation detached (`layer_norm_forward`: the identity rule on the
  normalisation, the centring and the affine map are linear);
- GELU: the identity rule (`identity_rule_implicit`: backward multiplies by GELU(x) / (x + 1e-10));
- softmax attention softmax(q k^T s) v: the gradients reaching q and k divided by 4, that reaching
  v by 2 (`divide_gradient`, as `wrap_attention_forward`), softmax's own gradient kept. The
  uniform rule gives half of the relevance of a bilinear product to each factor: A v halves
  between A and v, and q k^T halves again between q and k; softmax's gradient times its input is
  AttnLRP's softmax rule R_s = s * (R_A - A sum(R_A)).
- variant "cp" (CP-LRP, Ali et al. 2022, LXT's `cp_wrap_attention_forward`): q and k detached
  instead, so the attention weights are constants and the network is linear in its pixels and
  its additive constants (biases, LayerNorm shifts, class token, position embedding): relevance
  at the pixels plus the constants' relevance equals the logit (`conservation`, and
  `lrp(..., constants=True).constants`).
- `gamma`: LXT's recommendation for ViTs (its `examples/vit_torch.py`), zennit's generalised LRP
  Gamma rule (`zennit.rules.Gamma`, with LXT's `monkey_patch_zennit`: output relevance = gradient
  x output, input gradient = relevance / stabilize(input, 1e-10)) on every linear map with
  weights: the patch embedding (ViT's convolution, T2T-ViT's `project`), qkv / kqv, the
  attention projections, the MLPs and the head (zennit's per-module rule reaches every nn.Linear of
  these models, whose attention calls qkv and proj as modules; on torchvision's ViT, whose attention
  uses its projections' weights functionally, LXT's recipe reaches only the MLPs, the head and the
  convolution). LXT's ViT recipe (`efficient/models/vit_torch.py`) is CP-LRP inside the attention
  with the Gamma rule: variant="cp" with a gamma. None: the plain gradient. The default,
  `DEFAULT_GAMMA` = 0.25, scored best on deletion / insertion on both embedded models (measured,
  see `DEFAULT_GAMMA`).

The T2T module (every rule above, and):
- the soft splits are unfolds: each token is a copy of pixels (or of tokens of the previous
  2-D map), so a pixel's relevance is the sum over the overlapping windows it falls in of its
  copies' relevance, exactly (the unfold's gradient is the fold, a sum; padding adds zeros,
  which hold no relevance);
- T2T transformer layers (T2T-ViT-t): the backbone's rules; their attention is single-head with
  the residual on v, `v + proj(softmax(q k^T / sqrt(dim)) v)`: only the v entering the
  attention has its gradient halved, the residual v is a plain sum.
- T2T Performer layers (T2T-ViT-7 ... -24 and every model without `_t`), rules derived in the
  same spirit. The layer computes y = phi(q) (phi(k)^T v) / D, with the kernel features
  phi(x) = exp(x w^T - |x|^2 / 2) / sqrt(m) and the row normaliser D = phi(q) . sum_j phi(k_j) + eps.
  Read as attention, y = A v with implicit weights A_ij = phi(q_i) . phi(k_j) / D_i, so:
  * the normaliser D is treated as a constant (detached), like LayerNorm's standard deviation:
    it only rescales each row of A, as the standard deviation rescales each token;
  * A v is a bilinear product: v's gradient halved (uniform rule), as in softmax attention;
  * A_ij (D constant) is a bilinear product of the kernel features phi(q_i) and phi(k_j), the
    attention weights' inputs as q and k are softmax attention's: each gets half of A's half,
    so their gradients are divided by 4. By associativity the gradients of phi(q) (phi(k)^T v)
    equal those of (phi(q) phi(k)^T) v, so A (N x N) is never formed;
  * exp is an element-wise non-linearity: the identity rule (backward times exp(u) / (u + 1e-10)),
    and 1 / sqrt(m) a constant factor (relevance passes through unchanged);
  * u = x w^T - (x * x).sum / 2 is a sum (the epsilon rule, the plain gradient) of linear terms
    and of the squares x_d * x_d: a product of two factors, the uniform rule gives each half,
    so the gradient through x * x is halved (its plain gradient 2 x g would count x_d^2 twice).
  The relevance reaching q (or k) is then sum_m (x_d w_md - x_d^2 / 2) / u_m * R_u_m per
  dimension d: conservative over u (tests/analysis/test_lrp.py checks an explicit
  layer-by-layer implementation of these equations). With "cp", phi(q) and phi(k) (hence D)
  are detached: y is linear in v, and conservation holds as for the softmax layers.
  The features and the product phi(q) (phi(k)^T v) are computed in float32, as the model does.

What is explained is the model as evaluated: dropout and stochastic depth off. The forward pass
is functional: it reads the model's weights (detached) and computes what its modules compute,
with the rules above in its backward; no hook is installed, nothing of the model is changed,
so other threads using the same model (the app's sessions share cached models) are unaffected.

Shapes: B batch, S image side, h x w backbone token grid, L blocks, H heads, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd import Function

from analysis.maps import tokens_to_grid
from analysis.modelio import resolve_target

VARIANTS = ("attnlrp", "cp")
IDENTITY_EPS = 1e-10  # LXT's identity_rule_implicit: backward multiplies by fn(x) / (x + 1e-10)
GAMMA_STABILIZER = 1e-6  # zennit's stabilize() default, on the Gamma rule's denominators
INPUT_STABILIZER = 1e-10  # LXT's monkey_patch_zennit: relevance / stabilize(input, 1e-10) -> gradient
#: gamma of the linear layers' Gamma rule by default. Measured with `python benchmarks/bench_lrp.py
#: --faithfulness --images 48 --steps 10 --gammas None 0.25` (AttnLRP token maps of the embedded models on 48
#: synthetic test images, deletion / insertion AUC of the predicted class's probability, blur baseline;
#: differences paired per image against gamma None, mean (standard error)):
#:   T2T-ViT-7:  deletion -0.067 (0.021), insertion +0.057 (0.026): gamma 0.25 better on both;
#:   DeiT-Tiny:  deletion -0.008 (0.026), insertion +0.009 (0.018): better on both, within the noise.
#: A first pass on 16 images with gamma 0.05 / 0.25 / 1 had 0.25 and 1 close, 0.05 near None (T2T-ViT-7).
DEFAULT_GAMMA: float | None = 0.25


# --- the rules as autograd functions (LXT's efficient rules, and zennit's Gamma rule) ----------------


class _DivideGradient(Function):
    """Identity forward, gradient divided by `factor` (LXT's `divide_gradient`: the uniform rule)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad / ctx.factor, None


class _IdentityRule(Function):
    """fn(x) forward, gradient times fn(x) / (x + 1e-10) (LXT's `identity_rule_implicit`): relevance
    x * gradient then equals the output's relevance, the identity rule for element-wise non-linearities."""

    @staticmethod
    def forward(ctx, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        out = fn(x)
        ctx.save_for_backward(out / (x + IDENTITY_EPS))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, ctx.saved_tensors[0] * grad


class _LayerNormDetachedStd(Function):
    """LayerNorm forward (the fused kernel, bit-identical to nn.LayerNorm), backward with the standard
    deviation held constant: (g w - mean(g w)) / std, LXT's `layer_norm_forward` gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        out, _, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        weight, rstd = ctx.saved_tensors
        gw = grad * weight if weight is not None else grad
        return (gw - gw.mean(dim=-1, keepdim=True)) * rstd, None, None, None


class _GammaLinear(Function):
    """F.linear forward; backward zennit's generalised Gamma rule in LXT's gradient x input form.

    With x+ / x- the positive / negative inputs, W+ / W- (b+ / b-) the clamped weights (bias),
    z = W x + b the output and R = z * g the output relevance (g the incoming gradient), zennit's
    `Gamma(gamma)` computes
        zp = (W + gW+) x+ + b + gb+ + (W + gW-) x-      (the denominator of positive outputs)
        zn = (W + gW-) x+ + b + gb- + (W + gW+) x-      (of negative outputs)
        sp = [z > 0] R / stabilize(zp),  sn = [z < 0] R / stabilize(zn)   (stabilize: +-1e-6)
        R_x = x+ * [(W + gW+)^T sp + (W + gW-)^T sn] + x- * [(W + gW-)^T sp + (W + gW+)^T sn],
    and LXT's patch returns the gradient R_x / stabilize(x, 1e-10), so that x * gradient = R_x.
    The same with three products instead of eight: W+ x+ + W- x- = (W x + |W| |x|) / 2 and
    W- x+ + W+ x- = (W x - |W| |x|) / 2, and 2 b+ - b = |b| = b - 2 b-, so with a = |W| |x| + |b|
        zp = (1 + g/2) z + (g/2) a  (> 0 where z > 0),   zn = (1 + g/2) z - (g/2) a  (< 0 where z < 0),
    and sp + sn = q, sp - sn = sign(z) q with q = g |z| / ((1 + g/2) |z| + (g/2) a + 1e-6) (0 where z = 0):
        R_x = (1 + g/2) x * (W^T q) + (g/2) |x| * (|W|^T (sign(z) q)).
    x (..., in), weight (out, in), bias (out,) or None.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, gamma: float) -> Tensor:
        z = F.linear(x, weight, bias)
        ctx.gamma = gamma
        ctx.save_for_backward(x, weight, bias, z)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        x, weight, bias, z = ctx.saved_tensors
        half = ctx.gamma / 2
        # in place on fresh tensors where possible: beside its two extra products the rule's cost is
        # memory traffic (with q s = g z / denom for sign(z) q, and x / stabilize(x) = |x| / (|x| + 1e-10))
        w_abs, x_abs, z_abs = weight.abs(), x.abs(), z.abs()
        shift = None if bias is None else bias.abs() * half + GAMMA_STABILIZER
        denom = F.linear(x_abs, w_abs * half, shift)  # (g/2) (|W| |x| + |b|) + 1e-6
        if bias is None:
            denom.add_(GAMMA_STABILIZER)
        gd = grad / denom.add_(z_abs, alpha=1 + half)  # grad / ((1 + g/2) |z| + (g/2) a + 1e-6)
        grad_x = ((gd * z_abs) @ weight).mul_(1 + half)  # (1 + g/2) W^T q
        grad_x.addcmul_(gd.mul_(z) @ w_abs, x.sign(), value=half)  # + (g/2) sign(x) |W|^T (sign(z) q)
        # R_x / stabilize(x, 1e-10) = grad_x * x / stabilize(x, 1e-10)
        return grad_x.mul_(x_abs.div_(x_abs + INPUT_STABILIZER)), None, None, None


def _divide(x: Tensor, factor: float) -> Tensor:
    return _DivideGradient.apply(x, factor)


# --- the result ----------------------------------------------------------------------------------------


@dataclass
class Relevance:
    """Relevance of one class logit per image, from one backward pass (all detached, on the images' device).

    pixels: (B, 3, S, S) relevance at the normalised input (input x gradient).
    tokens: (B, h, w) relevance of the backbone's patch tokens (the patch embedding's / the T2T
        module's output, before the position embedding), summed over channels.
    stages: T2T-ViT: trace name -> (B, h_s, w_s) relevance of the tokens at each T2T step,
        "t2t.split0" (56 x 56 at 224 px), "t2t.attn1", "t2t.split1" (28 x 28), "t2t.attn2",
        "t2t.split2" (14 x 14); empty for ViT.
    heads: (B, L, H) relevance that passed through each backbone head (its attention output's
        slice entering the output projection).
    logit: (B,) the explained logit; target: (B,) its class.
    constants: (B,) relevance of the additive constants (every bias and LayerNorm shift, class
        token, position embedding), with `lrp(..., constants=True)`, else None. With variant
        "cp" and no gamma, pixels.sum() + constants == logit.
    """

    pixels: Tensor
    tokens: Tensor
    heads: Tensor
    logit: Tensor
    target: Tensor
    variant: str
    gamma: float | None
    stages: dict[str, Tensor] = field(default_factory=dict)
    constants: Tensor | None = None

    @property
    def conservation(self) -> Tensor:
        """(B,) the pixels' share of the logit: sum of pixel relevance / logit (1 = fully conserved)."""
        return self.pixels.sum(dim=(1, 2, 3)) / self.logit

    @property
    def pixel_map(self) -> Tensor:
        """(B, S, S) pixel relevance summed over colour channels (signed), for display at pixel resolution."""
        return self.pixels.sum(dim=1)


# --- the functional forward -------------------------------------------------------------------------------


class _Forward:
    """One forward pass of a T2T-ViT / ViT with the rules of `variant` in its backward.

    Reads the model's parameters detached; records the tensors whose relevance is reported
    (patch tokens, T2T stages, per-head attention outputs and, if asked, per-image copies of the
    additive constants).
    """

    def __init__(self, model: nn.Module, variant: str, gamma: float | None, track_constants: bool):
        self.model = model
        self.variant = variant
        self.gamma = gamma
        self.track = track_constants
        self.batch = 0
        self.constants: list[Tensor] = []
        self.heads: list[Tensor] = []  # per block (B, H, T, d)
        self.stages: dict[str, tuple[Tensor, tuple[int, int]]] = {}

    # additive constants: per-image leaves when their relevance is wanted
    def constant(self, value: Tensor, shape: tuple[int, ...]) -> Tensor:
        """`value` viewed as `shape` (leading 1 for the batch); a per-image copy (B, ...) when tracking."""
        value = value.detach().reshape(shape)
        if not self.track:
            return value
        copy = value.expand(self.batch, *shape[1:]).clone().requires_grad_(True)
        self.constants.append(copy)
        return copy

    def linear(self, x: Tensor, layer: nn.Module) -> Tensor:
        """layer(x) for an nn.Linear, (..., in) -> (..., out)."""
        w = layer.weight.detach()
        b = None if layer.bias is None else layer.bias.detach()
        if self.gamma is not None:
            return _GammaLinear.apply(x, w, b, self.gamma)
        if self.track and b is not None:
            return F.linear(x, w) + self.constant(b, (1,) * (x.ndim - 1) + (len(b),))
        return F.linear(x, w, b)

    def layer_norm(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        w = None if norm.weight is None else norm.weight.detach()
        b = None if norm.bias is None else norm.bias.detach()
        if self.track and b is not None:
            return _LayerNormDetachedStd.apply(x, w, None, norm.eps) + self.constant(b, (1,) * (x.ndim - 1) + (len(b),))
        return _LayerNormDetachedStd.apply(x, w, b, norm.eps)

    def gelu(self, x: Tensor, act: nn.Module) -> Tensor:
        approximate = getattr(act, "approximate", "none")
        return _IdentityRule.apply(lambda t: F.gelu(t, approximate=approximate), x)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """softmax(q k^T scale) v, (B, H, T, d) each -> (B, H, T, d), with the variant's rule."""
        if self.variant == "attnlrp":
            q, k, v = _divide(q, 4), _divide(k, 4), _divide(v, 2)
        else:
            q, k = q.detach(), k.detach()
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    # --- the backbone ---------------------------------------------------------------------------
    def block(self, x: Tensor, block: nn.Module) -> Tensor:
        attn = block.attn
        h = self.layer_norm(x, block.norm1)
        q, k, v = rearrange(self.linear(h, attn.qkv), "b n (qkv h d) -> qkv b h n d", qkv=3, h=attn.num_heads)
        out = self.attention(q, k, v, attn.scale)
        self.heads.append(out)
        x = x + self.linear(rearrange(out, "b h n d -> b n (h d)"), attn.proj)
        h = self.layer_norm(x, block.norm2)
        return x + self.linear(self.gelu(self.linear(h, block.mlp.fc1), block.mlp.act), block.mlp.fc2)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int], Tensor]:
        """Images (B, 3, S, S) -> logits (B, C), backbone grid, patch tokens (B, N, D)."""
        model = self.model
        self.batch = images.shape[0]
        grid = tuple(model.grid(*images.shape[-2:]))
        tokens = self.t2t(images) if hasattr(model, "tokens_to_token") else self.patch_embed(images)
        cls = self.constant(model.cls_token, (1, 1, model.cls_token.shape[-1]))
        x = torch.cat([cls.expand(self.batch, -1, -1), tokens], dim=1)
        x = x + self.constant(model.pos_embed, tuple(model.pos_embed.shape))
        for block in model.blocks:
            x = self.block(x, block)
        x = self.layer_norm(x, model.norm)
        logits = self.linear(x[:, 0], model.head)
        aux = getattr(model, "aux_head", None)
        if aux is not None:  # TokenLabeling: + 0.5 max over patch tokens (t2t.layers.ClassTokenBackbone.forward_logits)
            from t2t.layers import AUX_WEIGHT

            logits = logits + AUX_WEIGHT * self.linear(x[:, model.num_prefix_tokens:], aux).amax(dim=1)
        return logits, grid, tokens

    def patch_embed(self, images: Tensor) -> Tensor:
        """ViT's hard split: (B, 3, S, S) -> (B, N, D), the strided convolution as a linear map of patches."""
        conv = self.model.patch_embed.proj
        w = conv.weight.detach()
        if self.gamma is not None:
            p, q = conv.kernel_size
            h, w_ = images.shape[-2] // p, images.shape[-1] // q
            patches = rearrange(images[..., : h * p, : w_ * q], "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=q)
            b = None if conv.bias is None else conv.bias.detach()
            return _GammaLinear.apply(patches, w.flatten(1), b, self.gamma)
        b = None if conv.bias is None else conv.bias.detach()
        if self.track and b is not None:
            out = rearrange(F.conv2d(images, w, None, conv.stride), "b d h w -> b (h w) d")
            return out + self.constant(b, (1, 1, len(b)))
        return rearrange(F.conv2d(images, w, b, conv.stride), "b d h w -> b (h w) d")

    # --- the T2T module ---------------------------------------------------------------------------
    def t2t(self, images: Tensor) -> Tensor:
        t2t = self.model.tokens_to_token
        grid = t2t.soft_split0.grid(*images.shape[-2:])
        x = self.soft_split(images, t2t.soft_split0, "t2t.split0", grid)
        x = self.stage(self.token_layer(x, t2t.attention1), "t2t.attn1", grid)
        for i, (split, layer) in enumerate([(t2t.soft_split1, t2t.attention2), (t2t.soft_split2, None)], start=1):
            x = rearrange(x, "b (h w) c -> b c h w", h=grid[0])  # tokens back to a 2-D map
            grid = split.grid(*grid)
            x = self.soft_split(x, split, f"t2t.split{i}", grid)
            if layer is not None:
                x = self.stage(self.token_layer(x, layer), f"t2t.attn{i + 1}", grid)
        return self.linear(x, t2t.project)

    def stage(self, x: Tensor, name: str, grid: tuple[int, int]) -> Tensor:
        self.stages[name] = (x, grid)
        return x

    def soft_split(self, x: Tensor, split: nn.Module, name: str, grid: tuple[int, int]) -> Tensor:
        """Unfold (B, C, H, W) -> (B, h*w, C*k*k): copies, whose gradient (the fold) sums the windows."""
        tokens = rearrange(F.unfold(x, split.kernel, stride=split.stride, padding=split.padding), "b c n -> b n c")
        return self.stage(tokens, name, grid)

    def token_layer(self, x: Tensor, layer: nn.Module) -> Tensor:
        if hasattr(layer, "kqv"):
            x = self.performer(self.layer_norm(x, layer.norm1), layer)
            mlp = layer.mlp  # Sequential(Linear, GELU, Linear, Dropout)
            return x + self.linear(self.gelu(self.linear(self.layer_norm(x, layer.norm2), mlp[0]), mlp[1]), mlp[2])
        attn = layer.attn  # TokenTransformer: single head, residual on v
        q, k, v = self.linear(self.layer_norm(x, layer.norm1), attn.qkv).chunk(3, dim=-1)
        out = self.attention(q[:, None], k[:, None], v[:, None], attn.scale)[:, 0]
        x = v + self.linear(out, attn.proj)
        h = self.layer_norm(x, layer.norm2)
        return x + self.linear(self.gelu(self.linear(h, layer.mlp.fc1), layer.mlp.act), layer.mlp.fc2)

    def features(self, x: Tensor, layer: nn.Module) -> Tensor:
        """phi(x) = exp(x w^T - |x|^2 / 2) / sqrt(m), (B, N, out_dim) -> (B, N, m) in float32 (as the model):
        the identity rule on exp, the gradient through x * x halved (uniform rule)."""
        x = x.float()
        square = (x * x) if self.variant == "cp" else _divide(x * x, 2)
        u = x @ layer.w.detach().float().t() - square.sum(-1, keepdim=True) / 2
        return _IdentityRule.apply(torch.exp, u) / math.sqrt(layer.m)

    def performer(self, x: Tensor, layer: nn.Module) -> Tensor:
        """TokenPerformer.attend with the rules of the module docstring, (B, N, dim) -> (B, N, out_dim)."""
        k, q, v = self.linear(x, layer.kqv).split(layer.emb, dim=-1)  # the official order is k, q, v
        if self.variant == "cp":
            kp, qp, v_att = self.features(k.detach(), layer), self.features(q.detach(), layer), v
        else:
            kp, qp = _divide(self.features(k, layer), 4), _divide(self.features(q, layer), 4)
            v_att = _divide(v, 2)
        normaliser = (qp @ kp.sum(dim=1)[:, :, None]).detach()  # (B, N, 1), a constant like LayerNorm's std
        y = qp @ (kp.transpose(1, 2) @ v_att.float()) / (normaliser + layer.epsilon)
        return v + self.linear(y.type_as(v), layer.proj)


# --- entry points -----------------------------------------------------------------------------------------


def _check(model: nn.Module, images: Tensor, variant: str, gamma: float | None) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if gamma is not None and not (
        isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma >= 0
    ):
        raise ValueError(f"gamma must be None or a finite number >= 0, got {gamma!r}")
    if not all(hasattr(model, a) for a in ("blocks", "cls_token", "pos_embed", "norm", "head", "grid")) or not (
        hasattr(model, "tokens_to_token") or hasattr(model, "patch_embed")
    ):
        raise TypeError(f"lrp explains t2t-lens T2T-ViT and ViT / DeiT models, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    stem = model.tokens_to_token.soft_split0.kernel if hasattr(model, "tokens_to_token") else None
    channels = (model.tokens_to_token.attention1.norm1.normalized_shape[0] // stem**2 if stem
                else model.patch_embed.proj.in_channels)
    if images.shape[1] != channels:
        raise ValueError(f"the model takes {channels}-channel images, got {images.shape[1]} channels")
    h, w = model.grid(*images.shape[-2:])
    expected = model.pos_embed.shape[1] - 1
    if h * w != expected:
        raise ValueError(f"images of {tuple(images.shape[-2:])} px give {h} x {w} = {h * w} tokens, but the model's "
                         f"position embedding has {expected}: use the model's image size ({model.img_size} px)")


def lrp(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    variant: str = "attnlrp",
    gamma: float | None = DEFAULT_GAMMA,
    constants: bool = False,
) -> Relevance:
    """AttnLRP ("attnlrp") or CP-LRP ("cp") relevance of class `target` for (B, 3, S, S) images.

    target: int or (B,) classes (default: each image's predicted class, from the same forward).
    gamma: zennit's Gamma rule with this gamma on every linear layer (module docstring; default
        `DEFAULT_GAMMA`, what scored best on deletion / insertion), or None: plain gradients through
        them. constants: also return the relevance of the additive constants (needs gamma None),
        for checking conservation.
    One forward and one backward; the images of a batch do not interact (the score is the sum of
    each image's logit). Computed in the model's parameter dtype.
    """
    _check(model, images, variant, gamma)
    if constants and gamma is not None:
        raise ValueError(f"constants=True needs gamma=None (got {gamma}, the default is {DEFAULT_GAMMA}): the Gamma "
                         "rule does not give the biases their gradient x input relevance")
    dtype = next(model.parameters()).dtype
    run = _Forward(model, variant, gamma, constants)
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().to(dtype).requires_grad_(True)  # a clone: not an inference tensor
        logits, grid, tokens = run.forward(x)
        cls = resolve_target(logits, target)
        logit = logits.gather(1, cls[:, None])[:, 0]
        stages = list(run.stages.items())
        wrt = [x, tokens, *(t for _, (t, _) in stages), *run.heads, *run.constants]
        grads = torch.autograd.grad(logit.sum(), wrt)
    g_x, g_tokens = grads[0], grads[1]
    g_stages = grads[2 : 2 + len(stages)]
    g_heads = grads[2 + len(stages) : 2 + len(stages) + len(run.heads)]
    g_const = grads[2 + len(stages) + len(run.heads) :]
    with torch.no_grad():
        heads = torch.stack([(o * g).sum(dim=(2, 3)) for o, g in zip(run.heads, g_heads, strict=True)], dim=1)
        return Relevance(
            pixels=(x * g_x).detach(),
            tokens=tokens_to_grid((tokens * g_tokens).sum(-1), grid).detach(),
            heads=heads.detach(),
            logit=logit.detach(),
            target=cls,
            variant=variant,
            gamma=gamma,
            stages={name: tokens_to_grid((t * g).sum(-1), sgrid).detach()
                    for (name, (t, sgrid)), g in zip(stages, g_stages, strict=True)},
            constants=torch.stack([(c * g).flatten(1).sum(1) for c, g in zip(run.constants, g_const, strict=True)])
            .sum(0).detach() if constants else None,
        )


def lrp_map(
    model: nn.Module,
    images: Tensor,
    target: int | Tensor | None = None,
    variant: str = "attnlrp",
    gamma: float | None = DEFAULT_GAMMA,
    return_relevance: bool = False,
) -> Tensor | tuple[Tensor, Relevance]:
    """The token-grid map (B, h, w) of `lrp`: the relevance of the backbone's patch tokens (signed).

    return_relevance: also return the whole `Relevance` (pixel map, T2T stages, heads, and
    `conservation`, the pixels' share of the logit, to show beside the map).
    """
    rel = lrp(model, images, target, variant=variant, gamma=gamma)
    return (rel.tokens, rel) if return_relevance else rel.tokens


def attnlrp_map(
    model: nn.Module, images: Tensor, target: int | Tensor | None = None, gamma: float | None = DEFAULT_GAMMA,
    return_relevance: bool = False,
) -> Tensor | tuple[Tensor, Relevance]:
    """AttnLRP token map (B, h, w): `explain("attnlrp", ...)`."""
    return lrp_map(model, images, target, "attnlrp", gamma, return_relevance)


def cp_lrp_map(
    model: nn.Module, images: Tensor, target: int | Tensor | None = None, gamma: float | None = DEFAULT_GAMMA,
    return_relevance: bool = False,
) -> Tensor | tuple[Tensor, Relevance]:
    """CP-LRP token map (B, h, w): `explain("cp_lrp", ...)`."""
    return lrp_map(model, images, target, "cp", gamma, return_relevance)
