"""Vision Transformer (Dosovitskiy et al. 2021) and DeiT (Touvron et al. 2021), timm's state-dict names.

ViT splits the image into hard, non-overlapping 16x16 patches (a strided convolution),
so local structure inside and across patch borders is only seen through attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor, nn

from t2t.layers import Block, ClassTokenBackbone, init_weights

if TYPE_CHECKING:
    from t2t.tokens import Tape


class PatchEmbed(nn.Module):
    """Hard split: (B, 3, H, W) -> (B, H/p * W/p, D), one linear map per p x p patch."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return h // self.patch_size, w // self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class VisionTransformer(ClassTokenBackbone):
    """Patch embedding, class token, learned position embedding, `depth` blocks, head."""

    family = "vit"

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.img_size = img_size
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        h, w = self.patch_embed.grid(img_size, img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_path=r, norm_eps=1e-6) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # timm's ViT uses 1e-6, T2T-ViT the default 1e-5
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return self.patch_embed.grid(h, w)

    def stem(self, x: Tensor, tape: Tape | None = None) -> Tensor:
        tokens = self.patch_embed(x)
        if tape is not None:
            tape.record("patch_embed", tokens, self.grid(*x.shape[-2:]))
        return tokens
