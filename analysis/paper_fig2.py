"""Fig. 2 of the T2T-ViT paper as the official notebook draws it, for ViT and (the same steps) T2T-ViT.

The paper's Fig. 2 shows channels of ViT-L/16 and T2T-ViT-24 tokens laid out on the token grid. The only
code the authors released for it is `visualization_vit.ipynb` in yitu-opensource/T2T-ViT (commit
0f63dc9; there is no T2T-ViT counterpart). Its steps, by cell (cells counted from 0; `In [n]` is the
saved execution count):

- cell 1 (`In [2]`): `timm.create_model('vit_large_patch16_384', pretrained=True)`: ViT-L/16 at 384 px,
  trained with mean = std = 0.5, which the notebook never applies. The model is never put in eval mode;
  every drop rate of that model is 0, so training and eval mode compute the same.
- cell 3 (`In [4]`): `all_block`: the model's children in order, the ModuleList of blocks flattened.
  With the README's timm 0.3.4 that is [patch_embed, pos_drop, blocks 0..23, norm, head]; the class
  token and the position embedding are Parameters, not children, so they are never used.
- cell 5 (`In [6]`): `cv2.imread` + BGR -> RGB, then torchvision `ToPILImage`, `Resize((512, 512))`
  (PIL bilinear, the default; the aspect ratio is not kept, nothing is cropped), `ToTensor` ([0, 1],
  no normalisation), `unsqueeze(0)`: (1, 3, 512, 512). Its comment suggests 1024 or 2048 px for
  sharper maps (the paper's caption: 1024 or 2048).
- cell 6 (`In [9]`): `results = [all_block[0](img)]`, then `all_block[i](results[-1])` for
  i in range(1, len(all_block) - 2): outputs = [patch_embed(x), pos_drop(patch_embed(x)), block 0's
  output, ..., block 23's output] (with timm 0.3.4 the final norm and the head are never run).
- cell 8 (`In [14]`): for num_layer in 0..4: `outputs[num_layer].squeeze(0).transpose(0, 1)
  .reshape(1024, 32, 32)` (channels x grid: channel c's map has token n at row n // 32, column
  n % 32), the first 36 channels in a 6 x 6 grid of `plt.imshow(map, cmap='gray')` (each map scaled
  by its own minimum and maximum), axis off, saved as `layer_{num_layer}.png`. So layer_0 and
  layer_1 are both the patch embedding (pos_drop is the identity), layer_2 .. layer_4 blocks 1..3.

Note: timm 0.3.4's `PatchEmbed.forward` asserts the input is 384 x 384, so cell 6 fails there at
512 px; the saved outputs show that the authors ran it with a timm without that check. Our models'
patch embedding takes any size, as the notebook needs.

Here `depth` counts backbone blocks applied: depth 0 is the stem's output (ViT's patch embedding,
T2T-ViT's whole T2T module), depth k the output of block k (1-based, `trace`'s `blocks.{k-1}`). The
notebook's layer_n.png is depth max(n - 1, 0) (`notebook_layer_depth`).

What is ours, beyond the notebook:
- the same steps for T2T-ViT: its children are [tokens_to_token, pos_drop, blocks..., norm, head],
  so the notebook's loop runs the T2T module (soft splits and T2T transformers) in place of the patch
  embedding, then the blocks, again with no class token and no position embedding;
- `pos_embed`: "none" (the notebook), "interpolated" (the model's own table resized bicubically to
  the grid, as timm and the official `load_for_transfer_learning` do; the table itself at the model's
  size), "sinusoid" (T2T-ViT only: the fixed sinusoid table a T2T-ViT built for this input size computes);
  `class_token=True` puts the class token back. With both, at the model's own size, this is the
  model's normal forward (tested);
- sizes: any height and width that are multiples of 16 (T2T-ViT's three soft splits, stride 4 x 2 x
  2, then give exactly size / 16 tokens a side, as ViT's 16 px patches do);
- the invalid-channel numbers of `analysis.redundancy` computed on these maps (`invalid_summary`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from analysis.redundancy import feature_maps, invalid_channels
from t2t.layers import sinusoid_table
from t2t.weights import resize_pos_embed

PATCH = 16  # both families reduce the image 16-fold: ViT's patches, T2T-ViT's soft splits (4 x 2 x 2)
NOTEBOOK_SIZE = 512  # cell 5's Resize((512, 512))
NOTEBOOK_CHANNELS = 36  # cell 8: `if i == 36: break`, a 6 x 6 grid
NOTEBOOK_LAYERS = 5  # cell 8: all_layers_num = 5 (layer_0 .. layer_4)
POS_EMBED = ("none", "interpolated", "sinusoid")


def notebook_image(image: Image.Image, size: int | tuple[int, int] = NOTEBOOK_SIZE) -> Tensor:
    """An RGB PIL image -> (1, 3, H, W) float32 in [0, 1], as the notebook's cell 5 prepares it.

    torchvision's `Resize((h, w))` on a PIL image is `image.resize((w, h), BILINEAR)` (PIL's filter,
    which averages over the source pixels a target pixel covers when shrinking); `ToTensor` is the
    uint8 array as (C, H, W) float32 divided by 255. No mean / std, no crop; the aspect ratio is not kept.
    The notebook decodes with OpenCV (`cv2.imread`, which drops an alpha channel); pass an image decoded
    by PIL (`t2t.images.open_image` composites transparency onto white): for a PNG without alpha the
    pixels are the same, for a JPEG the two decoders may differ by a grey level in some pixels.
    """
    h, w = (size, size) if isinstance(size, int) else size
    pixels = np.array(image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    return rearrange(torch.from_numpy(pixels), "h w c -> 1 c h w").float().div(255)


def notebook_layer_depth(num_layer: int) -> int:
    """The notebook's `outputs[num_layer]` (its layer_{num_layer}.png) as a depth here: 0, 0, 1, 2, 3, ..."""
    if num_layer < 0:
        raise ValueError(f"num_layer must be >= 0, got {num_layer}")
    return max(num_layer - 1, 0)


def token_grid(model: nn.Module, hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) token grid of an (H, W) input, which must be a multiple of 16 on each side."""
    height, width = hw
    if height % PATCH or width % PATCH or height < PATCH or width < PATCH:
        raise ValueError(f"the input is {height} x {width} px; this protocol needs a height and width that are "
                         f"positive multiples of {PATCH} (e.g. 224, 512, 1024), so that the tokens tile the image "
                         f"({PATCH} px a token) for ViT and T2T-ViT alike")
    grid = tuple(model.grid(height, width))
    if grid != (height // PATCH, width // PATCH):  # a model whose stem does not reduce 16-fold
        raise ValueError(f"{type(model).__name__} makes a {grid} grid of a {height} x {width} input, "
                         f"not {(height // PATCH, width // PATCH)}: this protocol is for 16 px tokens")
    return grid


def position_table(model: nn.Module, grid: tuple[int, int], pos_embed: str) -> Tensor | None:
    """The (1, 1 + h*w, D) position table to add for `pos_embed` on an (h, w) grid; None for "none".

    "interpolated": the model's own table with its patch part resized bicubically (`resize_pos_embed`,
    as timm, and as `t2t.create_model(img_size=...)` and the official `load_for_transfer_learning`
    load a checkpoint at another size); the table unchanged on the model's own grid, so that with the
    class token this is the model's own forward. "sinusoid": `sinusoid_table(1 + h*w, D)`, the fixed
    table a T2T-ViT built for this size computes (refused for ViT, whose table is learned). A loaded
    checkpoint's stored table can differ from it by its rounding: the embedded T2T-ViT-7 keeps it in
    float16 (within 5e-4 relative).
    """
    if pos_embed not in POS_EMBED:
        raise ValueError(f"pos_embed must be one of {POS_EMBED}, got {pos_embed!r}")
    if pos_embed == "none":
        return None
    table = model.pos_embed.detach()
    if pos_embed == "sinusoid":
        if model.family != "t2t":
            raise ValueError("pos_embed='sinusoid' is T2T-ViT's fixed table; ViT's table is learned: "
                             "use 'interpolated' or 'none'")
        return sinusoid_table(1 + grid[0] * grid[1], table.shape[-1]).to(table)
    if tuple(model.grid(model.img_size, model.img_size)) == grid:  # the model's own grid: its table as it is
        return table
    return resize_pos_embed(table, grid, model.num_prefix_tokens)


def paper_tokens(model: nn.Module, image_01: Tensor, depths: Sequence[int] = (1,), pos_embed: str = "none",
                 class_token: bool = False) -> list[Tensor]:
    """The tokens after `d` backbone blocks for each d in `depths`, each (B, [1 +] h*w, D).

    image_01: (B, 3, H, W) in [0, 1] (`notebook_image`), H and W multiples of 16. The notebook's
    protocol is the default: stem (patch embedding / T2T module), pos_drop, then the blocks, with no
    class token and no position embedding. `pos_embed` / `class_token` put those back (module
    docstring). The model is only read: its modules are called in the mode it is in (use eval mode;
    the notebook's training-mode model had no dropout), without hooks and without gradients.
    """
    if image_01.ndim != 4 or image_01.shape[1] != 3:
        raise ValueError(f"image_01 must be (B, 3, H, W), got shape {tuple(image_01.shape)}")
    depths = [int(d) for d in depths]
    if not depths or min(depths) < 0 or max(depths) > len(model.blocks):
        raise ValueError(f"depths must be within 0..{len(model.blocks)} (blocks of {type(model).__name__}), "
                         f"got {depths}")
    grid = token_grid(model, tuple(image_01.shape[-2:]))
    table = position_table(model, grid, pos_embed)
    out: dict[int, Tensor] = {}
    with torch.no_grad():
        x = model.stem(image_01)  # (B, h*w, D): patch embedding, or the whole T2T module
        if class_token:
            x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if table is not None:
            x = x + (table if class_token else table[:, model.num_prefix_tokens:])
        x = model.pos_drop(x)  # the notebook's all_block[1]: the identity in eval mode, as in the model
        out[0] = x
        for k in range(1, max(depths) + 1):
            x = model.blocks[k - 1](x)
            out[k] = x
    return [out[d] for d in depths]


def paper_feature_maps(model: nn.Module, image_01: Tensor, depth: int = 1, pos_embed: str = "none",
                       class_token: bool = False) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, D, H/16, W/16): every channel of the tokens after `depth` blocks
    on the token grid (the notebook's `transpose(0, 1).reshape(D, h, w)`; a class token is left out).
    The notebook draws the first 36 channels of this at depths 0, 0, 1, 2, 3 (its layer_0 .. layer_4).
    """
    tokens = paper_tokens(model, image_01, (depth,), pos_embed, class_token)[0]
    grid = (image_01.shape[-2] // PATCH, image_01.shape[-1] // PATCH)
    return feature_maps(tokens, grid, num_prefix_tokens=model.num_prefix_tokens if class_token else 0)


def notebook_outputs(model: nn.Module, image_01: Tensor, count: int = NOTEBOOK_LAYERS) -> list[Tensor]:
    """The notebook's `outputs[:count]` (cell 6): [stem, pos_drop(stem), block 1, block 2, ...], each (B, N, D)."""
    depths = [notebook_layer_depth(n) for n in range(count)]
    return paper_tokens(model, image_01, depths)


def invalid_summary(maps: Tensor, shown: int = NOTEBOOK_CHANNELS, rel_threshold: float = 0.1) -> dict[str, Tensor]:
    """`invalid_channels` on (B, D, h, w) maps: {"invalid": (B, D) bool, "count": (B,), "fraction": (B,),
    "shown_count": (B,) among the first `shown` channels (the ones drawn), "shown": the number drawn}.

    The threshold is relative to the RMS spread of all D channels of the image (`invalid_channels`),
    so the first `shown` are judged against the whole layer, as in the page's other channel grids.
    """
    invalid = invalid_channels(maps, rel_threshold)
    n = min(shown, maps.shape[1])
    return {"invalid": invalid, "count": invalid.sum(dim=-1), "fraction": invalid.float().mean(dim=-1),
            "shown_count": invalid[:, :n].sum(dim=-1), "shown": torch.tensor(n)}
