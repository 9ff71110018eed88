"""Building blocks shared by T2T-ViT and ViT.

Every module takes an optional `tape` (see `t2t.tokens.Tape`). Without one the
module runs its fastest path (fused `scaled_dot_product_attention`, no attention
matrix is formed); with one it records what it computes under short names.
State-dict names follow the official T2T-ViT and timm code exactly, so released
checkpoints load with `strict=True`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

if TYPE_CHECKING:
    from t2t.tokens import Tape


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """Fixed sinusoid position table of "Attention is all you need", (1, n_position, dim)."""
    position = torch.arange(n_position, dtype=torch.float64)[:, None]
    # channels 2i and 2i+1 share the frequency 1 / 10000^(2i / dim)
    exponent = 2 * (torch.arange(dim) // 2) / dim
    angle = position / torch.pow(10000.0, exponent.double())[None, :]
    table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())
    return table.float()[None]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2, (B, N, dim) -> (B, N, out_dim)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention of the backbone, (B, N, dim) -> (B, N, dim).

    Records `attn`: the softmax attention (B, heads, N, N).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
        if tape is None or not tape.attention:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn, out = softmax_attention(q * self.scale, k, v)
            tape.record("attn", attn)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, chunk_bytes: int = 2**21) -> tuple[Tensor, Tensor]:
    """Attention weights softmax(q k^T) (B, h, N, N) and output (B, h, N, d), from (B, h, N, d) inputs.

    q comes scaled: scaling q (N x d) rather than the scores (N x N) is one pass less over the
    larger tensor. On the CPU a few samples are done at a time, so that their scores stay in
    cache between the product, the softmax and the product with v: for DeiT-Tiny at 224 px
    (16 x 3 x 197 x 197) this took 9.1 ms instead of 10.7 ms on one core, against 8.0 ms for the
    fused kernel that forms no weights. With autograd recording, the weights returned must be the
    ones the output is computed from (gradients are taken with respect to them): one piece then.
    """
    b, h, n, _ = q.shape
    per_sample = h * n * k.shape[-2] * q.element_size()
    step = b if q.device.type != "cpu" else max(1, chunk_bytes // max(per_sample, 1))
    if step >= b or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return attn, attn @ v
    attn = q.new_empty(b, h, n, k.shape[-2])
    out = q.new_empty(b, h, n, v.shape[-1])
    for i in range(0, b, step):
        part = (q[i:i + step] @ k[i:i + step].transpose(-2, -1)).softmax(dim=-1)
        attn[i:i + step] = part
        torch.matmul(part, v[i:i + step], out=out[i:i + step])
    return attn, out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), tape))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# --- the two token transformers of the T2T module ---------------------------------


class TokenAttention(nn.Module):
    """Single-head softmax attention that also changes the width, (B, N, dim) -> (B, N, out_dim).

    As in the official code, the scale is `dim ** -0.5` of the *input* width and the
    residual adds `v` (the input width differs from the output width, so `x` cannot be added).
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.scale = dim**-0.5
        self.qkv = nn.Linear(dim, out_dim * 3, bias=False)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, out_dim) each
        if tape is None:
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=self.scale)[:, 0]
        else:
            # The 3136 x 3136 map of the first T2T layer is 39 MB per image: keep q and k
            # and let the trace form the map (or some of its rows) only when asked.
            tape.record_softmax_map("map", q * self.scale, k)
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=self.scale)[:, 0]
        return v + self.proj(out)


class TokenTransformer(nn.Module):
    """T2T transformer layer (softmax attention), (B, N, dim) -> (B, N, out_dim)."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        x = self.attn(self.norm1(x), tape)
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Module):
    """T2T transformer layer with Performer (linear) attention, (B, N, dim) -> (B, N, out_dim).

    Softmax attention is approximated with positive random features
    phi(x) = exp(w x - |x|^2 / 2) / sqrt(m), so that
    y_i = sum_j phi(q_i).phi(k_j) v_j / (phi(q_i) . sum_j phi(k_j)) costs O(N m), never O(N^2).
    The random features `w` (m, out_dim) are a frozen state-dict entry.
    """

    def __init__(self, dim: int, out_dim: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.emb = out_dim
        self.kqv = nn.Linear(dim, 3 * out_dim)
        self.dp = nn.Dropout(0.0)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.epsilon = 1e-8  # keeps the row normaliser away from zero
        self.mlp = nn.Sequential(nn.Linear(out_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim), nn.Dropout(0.0))
        self.m = int(out_dim * kernel_ratio)
        w = nn.init.orthogonal_(torch.empty(self.m, out_dim)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def random_features(self, x: Tensor) -> Tensor:
        """phi(x): (B, N, out_dim) -> (B, N, m), computed in float32 as the official code does."""
        x = x.float()
        return torch.exp(x @ self.w.float().t() - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(self.m)

    def attend(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        k, q, v = self.kqv(x).split(self.emb, dim=-1)  # the official order is k, q, v
        kp, qp = self.random_features(k), self.random_features(q)  # (B, N, m)
        if tape is not None:
            tape.record_performer_map("map", qp, kp, self.epsilon)
        normaliser = qp @ kp.sum(dim=1)[:, :, None]  # (B, N, 1)
        y = qp @ (kp.transpose(1, 2) @ v.float()) / (normaliser + self.epsilon)  # (B, N, out_dim)
        return v + self.dp(self.proj(y.type_as(v)))

    def forward(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        x = self.attend(self.norm1(x), tape)
        return x + self.mlp(self.norm2(x))


AUX_WEIGHT = 0.5  # TokenLabeling's weight of the auxiliary token head at evaluation


class ClassTokenBackbone(nn.Module):
    """What T2T-ViT and ViT share after their stems: class token, position embedding, blocks, head.

    Subclasses define `stem(x, tape) -> (B, N, D)` tokens and `grid(h, w)` of those tokens.
    """

    num_prefix_tokens = 1

    def stem(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        raise NotImplementedError

    def grid(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def forward_tokens(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        """Image (B, 3, H, W) -> normed tokens (B, 1 + N, D), class token first."""
        grid = self.grid(*x.shape[-2:])
        x = self.stem(x, tape)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for i, block in enumerate(self.blocks):
            x = block(x, tape and tape.scope(f"blocks.{i}.", grid))
            if tape is not None:
                tape.record(f"blocks.{i}", x, grid)
        return self.norm(x)

    def forward_features(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        """Image -> the normed class token (B, D)."""
        return self.forward_tokens(x, tape)[:, 0]

    def forward_head(self, features: Tensor) -> Tensor:
        """The class-token head alone: normed class token (B, D) -> (B, classes)."""
        return self.head(features)

    def forward_logits(self, tokens: Tensor) -> Tensor:
        """Normed tokens (B, 1 + N, D) -> logits (B, classes): the class-token head, plus, for a model
        with TokenLabeling's auxiliary head, `0.5 * max over patch tokens of aux_head(token)`, as
        TokenLabeling's LV-ViT evaluates (`x_cls + 0.5 * x_aux.max(1)[0]`, tlt/models/lvvit.py)."""
        logits = self.forward_head(tokens[:, 0])
        aux = getattr(self, "aux_head", None)
        if aux is not None:
            logits = logits + AUX_WEIGHT * aux(tokens[:, self.num_prefix_tokens:]).amax(dim=1)
        return logits

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_logits(self.forward_tokens(x))


def init_weights(m: nn.Module) -> None:
    """timm's ViT initialisation: truncated normal linear weights, zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
