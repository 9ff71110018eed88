"""Tokens-to-Token ViT (Yuan et al., ICCV 2021), state-dict compatible with the official code.

The T2T module, at 224 px:

    image (3, 224, 224)
      -> soft split 0: overlapping 7x7 windows, stride 4     -> 56x56 = 3136 tokens of 3*7*7 = 147
      -> T2T transformer 1 (re-structure)                     -> 3136 tokens of 64
      -> reshape to a 2-D map, soft split 1: 3x3, stride 2   -> 28x28 = 784 tokens of 64*9 = 576
      -> T2T transformer 2                                    -> 784 tokens of 64
      -> reshape, soft split 2: 3x3, stride 2                 -> 14x14 = 196 tokens of 576
      -> linear projection                                    -> 196 tokens of embed_dim
then a class token, a fixed sinusoid position table and a deep-narrow backbone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor, nn

from t2t.layers import Block, ClassTokenBackbone, TokenPerformer, TokenTransformer, init_weights, sinusoid_table

# the soft-split geometry lives in t2t.tokens (receptive fields use it too); still importable from here
from t2t.tokens import SOFT_SPLITS, grid_after

if TYPE_CHECKING:
    from t2t.tokens import Tape


class SoftSplit(nn.Module):
    """Overlapping unfold of a (B, C, H, W) map into (B, h*w, C*k*k) tokens.

    Each token concatenates a k x k neighbourhood, channel-major (c, ki, kj), as nn.Unfold does.
    """

    def __init__(self, kernel: int, stride: int, padding: int):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.unfold = nn.Unfold(kernel_size=kernel, stride=stride, padding=padding)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.kernel, self.stride, self.padding
        return grid_after(h, k, s, p), grid_after(w, k, s, p)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.unfold(x), "b c n -> b n c")


class T2TModule(nn.Module):
    """Image (B, 3, H, W) -> tokens (B, H/16 * W/16, embed_dim)."""

    def __init__(self, img_size: int = 224, tokens_type: str = "performer", in_chans: int = 3,
                 embed_dim: int = 768, token_dim: int = 64):
        super().__init__()
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = SOFT_SPLITS
        self.soft_split0 = SoftSplit(k0, s0, p0)
        self.soft_split1 = SoftSplit(k1, s1, p1)
        self.soft_split2 = SoftSplit(k2, s2, p2)
        if tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * k0 * k0, token_dim, mlp_ratio=1.0)
            self.attention2 = TokenTransformer(token_dim * k1 * k1, token_dim, mlp_ratio=1.0)
        elif tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * k0 * k0, token_dim, kernel_ratio=0.5)
            self.attention2 = TokenPerformer(token_dim * k1 * k1, token_dim, kernel_ratio=0.5)
        else:
            raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {tokens_type!r}")
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)
        self.num_patches = self.grid(img_size, img_size)[0] * self.grid(img_size, img_size)[1]

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Token grid that enters the backbone for an (h, w) image."""
        for split in (self.soft_split0, self.soft_split1, self.soft_split2):
            h, w = split.grid(h, w)
        return h, w

    def forward(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        def record(name: str, tokens: Tensor, grid: tuple[int, int]) -> None:
            if tape is not None:
                tape.record(name, tokens, grid)

        grid = self.soft_split0.grid(*x.shape[-2:])
        x = self.soft_split0(x)
        record("t2t.split0", x, grid)
        x = self.attention1(x, tape and tape.scope("t2t.attn1_", grid))  # re-structure
        record("t2t.attn1", x, grid)

        x = rearrange(x, "b (h w) c -> b c h w", h=grid[0])  # tokens back to a 2-D map
        grid = self.soft_split1.grid(*grid)
        x = self.soft_split1(x)
        record("t2t.split1", x, grid)
        x = self.attention2(x, tape and tape.scope("t2t.attn2_", grid))
        record("t2t.attn2", x, grid)

        x = rearrange(x, "b (h w) c -> b c h w", h=grid[0])
        grid = self.soft_split2.grid(*grid)
        x = self.soft_split2(x)
        record("t2t.split2", x, grid)
        x = self.project(x)
        record("t2t.project", x, grid)
        return x


class T2TViT(ClassTokenBackbone):
    """T2T module, class token, sinusoid position table, backbone of `depth` blocks, head.

    aux_head: also TokenLabeling's auxiliary token head (`aux_head`, embed_dim -> num_classes on
    every patch token), used at evaluation as TokenLabeling's models do (`forward_logits`).
    """

    family = "t2t"

    def __init__(self, img_size: int = 224, tokens_type: str = "performer", in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, qk_scale: float | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, token_dim: int = 64,
                 aux_head: bool = False):
        super().__init__()
        self.img_size = img_size
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # A fixed table, but a state-dict entry: released checkpoints carry it.
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(embed_dim, num_classes) if aux_head and num_classes > 0 else None
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return self.tokens_to_token.grid(h, w)

    def stem(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        return self.tokens_to_token(x, tape)
