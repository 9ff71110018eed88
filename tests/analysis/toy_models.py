"""A tiny token model whose explanations can be computed by hand (no dependency on `t2t`)."""

import torch
from einops import rearrange
from torch import nn


class ToyBlock(nn.Module):
    """The class token gathers a fixed weighted sum of norm1(patch tokens): w_t = t / N, t = 1..N."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if norm else nn.Identity()

    def token_weights(self, n: int) -> torch.Tensor:
        return torch.arange(1, n + 1, dtype=torch.float32) / n

    def forward(self, x):
        y = self.norm1(x)
        n = x.shape[1] - 1
        cls = x[:, 0] + (y[:, 1:] * self.token_weights(n)[None, :, None]).sum(dim=1)
        return torch.cat([cls[:, None], x[:, 1:]], dim=1)


class ToyTokenNet(nn.Module):
    """p x p patch embedding, class token, one ToyBlock, linear head on the class token.

    With norm=False the logits are an affine function of the pixels.
    """

    num_prefix_tokens = 1

    def __init__(self, patch: int = 8, dim: int = 6, classes: int = 3, norm: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList([ToyBlock(dim, norm)])
        self.head = nn.Linear(dim, classes)

    def patch_tokens(self, x):
        return rearrange(self.embed(x), "b d h w -> b (h w) d")

    def forward(self, x):
        t = self.patch_tokens(x)
        x = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])
