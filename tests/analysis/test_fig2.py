"""analysis.paper_fig2: Fig. 2 as the official notebook (visualization_vit.ipynb) draws it.

The notebook's steps are written out here by hand, as its cells do them (its cell 3 `all_block`, cell 6
loop and cell 8 reshape, on our models, whose children are in timm 0.3.4's order), and the module must
give exactly the same tensors; with the class token and the position table put back it must give the
model's own forward. Embedded models at 224 and 512 px: the whole file runs in a few seconds.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import t2t
from analysis.paper_fig2 import (
    NOTEBOOK_CHANNELS,
    NOTEBOOK_LAYERS,
    invalid_summary,
    notebook_image,
    notebook_layer_depth,
    notebook_outputs,
    paper_feature_maps,
    paper_tokens,
    position_table,
    token_grid,
)
from analysis.redundancy import invalid_channels
from t2t.t2t_vit import T2TViT

NAMES = {"t2t": "t2t_vit_7", "vit": "deit_tiny_patch16_224"}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {family: t2t.create_model(name, pretrained="embedded") for family, name in NAMES.items()}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return t2t.images.open_image(t2t.sample_images()["coffee"])  # 512 x 341: not square, as dog.png is not


def notebook_cells(model: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    """The notebook's cells 3 and 6, as written there (only the model and the image are ours)."""
    all_block = []  # cell 3: put all sub block in the list
    for model_child in list(model.children()):
        if type(model_child) != torch.nn.modules.container.ModuleList:  # noqa: E721 (the notebook's test)
            all_block.append(model_child)
        else:
            for sub_child in list(model_child.children()):
                all_block.append(sub_child)
    results = [all_block[0](img)]  # cell 6: pass the image through all the layers
    for i in range(1, len(all_block) - 2):
        results.append(all_block[i](results[-1]))
    return results


def cell8_maps(output: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cell 8: `layer_viz.squeeze(0).transpose(0, 1).reshape(D, h, w)` (it writes reshape(1024, 32, 32))."""
    layer_viz = output.data.squeeze(0).transpose(0, 1)
    return layer_viz.reshape(layer_viz.shape[0], *grid)


def totensor(image: Image.Image, size: int) -> torch.Tensor:
    """Cell 5's Resize((size, size)) + ToTensor, as torchvision wrote them (PIL bilinear; bytes / 255)."""
    pic = image.resize((size, size), Image.BILINEAR)
    byte = torch.frombuffer(bytearray(pic.tobytes()), dtype=torch.uint8)
    return byte.view(pic.size[1], pic.size[0], 3).permute(2, 0, 1).contiguous().float().div(255).unsqueeze(0)


# --- the notebook's steps ------------------------------------------------------------------------


def test_image_is_resized_square_and_left_in_0_1(photo):
    x = notebook_image(photo, 512)
    assert x.shape == (1, 3, 512, 512) and x.dtype == torch.float32  # 512 x 341 squeezed, nothing cropped
    assert torch.equal(x, totensor(photo, 512))
    white = notebook_image(Image.new("RGB", (300, 200), (255, 255, 255)), 224)
    assert torch.equal(white, torch.ones(1, 3, 224, 224))  # no mean / std
    assert notebook_image(photo, (224, 512)).shape == (1, 3, 224, 512)


@pytest.mark.parametrize("family, size", [("vit", 512), ("t2t", 224)])  # the notebook's 512 px; T2T-ViT's is slower
def test_the_notebook_loop_gives_the_same_tensors(models, photo, family, size):
    model = models[family]
    x = notebook_image(photo, size)
    grid = (size // 16, size // 16)
    children = [type(c).__name__ for c in model.children()]
    assert children[1:] == ["Dropout", "ModuleList", "LayerNorm", "Linear"]  # timm 0.3.4's order: the loop fits
    with torch.no_grad():
        reference = notebook_cells(model, x)
    assert len(reference) == 2 + len(model.blocks)  # stem, pos_drop, every block; norm and head never run
    ours = notebook_outputs(model, x, len(reference))
    for n, (want, have) in enumerate(zip(reference, ours, strict=True)):
        assert torch.equal(have, want), n
    for n in range(NOTEBOOK_LAYERS):  # the five figures the notebook saves, as (D, h, w) maps
        maps = paper_feature_maps(model, x, notebook_layer_depth(n))
        assert torch.equal(maps[0], cell8_maps(reference[n], grid))
    assert reference[0].shape[1] == grid[0] * grid[1]  # no class token
    assert not torch.equal(reference[0], reference[2])


def test_notebook_layers_map_to_depths():
    assert [notebook_layer_depth(n) for n in range(NOTEBOOK_LAYERS)] == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError):
        notebook_layer_depth(-1)


# --- what is ours: the class token and the position table put back ------------------------------


@pytest.mark.parametrize("family, table", [("vit", "interpolated"), ("t2t", "interpolated")])
def test_with_class_token_and_table_it_is_the_models_forward(models, photo, family, table):
    model = models[family]
    x = notebook_image(photo, 224)
    with torch.no_grad():
        tr = t2t.trace(model, x, attention=False)
    depths = list(range(1, len(model.blocks) + 1))
    ours = paper_tokens(model, x, depths, pos_embed=table, class_token=True)
    for d, tokens in zip(depths, ours, strict=True):
        torch.testing.assert_close(tokens, tr[f"blocks.{d - 1}"], rtol=1e-5, atol=1e-6)
    maps = paper_feature_maps(model, x, 2, pos_embed=table, class_token=True)
    torch.testing.assert_close(maps, tr["blocks.1"][:, 1:].transpose(1, 2).reshape(maps.shape), rtol=1e-5, atol=1e-6)
    # the notebook's path differs from that forward only in the class token and the table
    bare = paper_tokens(model, x, [2])[0]
    assert bare.shape[1] == tr["blocks.1"].shape[1] - 1 and not torch.allclose(bare, tr["blocks.1"][:, 1:])


def test_class_token_alone_is_the_forward_of_a_model_without_position_table(models, photo):
    model = models["vit"]
    x = notebook_image(photo, 224)
    without = copy.deepcopy(model)
    with torch.no_grad():
        without.pos_embed.zero_()
        tr = t2t.trace(without, x, attention=False)
    tokens = paper_tokens(model, x, [3], pos_embed="none", class_token=True)[0]
    torch.testing.assert_close(tokens, tr["blocks.2"], rtol=1e-5, atol=1e-6)


def test_tables_for_another_size_are_what_a_model_built_for_it_carries(models, photo, tmp_path):
    x = notebook_image(photo, 288)  # 18 x 18 tokens instead of the models' 14 x 14
    for family, model in models.items():
        # the model's weights, as a float32 file, loaded at 288 px: the loader resizes the table (bicubic, as timm)
        path = tmp_path / f"{family}.pth"
        torch.save(model.state_dict(), path)
        resized = t2t.create_model(NAMES[family], img_size=288, pretrained=str(path),
                                   qk_scale=model.default_cfg["qk_scale"])
        assert torch.equal(position_table(model, (18, 18), "interpolated"), resized.pos_embed.detach())
        with torch.no_grad():
            tr = t2t.trace(resized, x, attention=False)
        tokens = paper_tokens(model, x, [2], pos_embed="interpolated", class_token=True)[0]
        torch.testing.assert_close(tokens, tr["blocks.1"], rtol=1e-5, atol=1e-6)

    t2t_model = models["t2t"]
    built = T2TViT(img_size=512, embed_dim=t2t_model.embed_dim, depth=1, num_heads=1)  # its own table, made for 512
    assert torch.equal(position_table(t2t_model, (32, 32), "sinusoid"), built.pos_embed.detach())
    own = T2TViT(img_size=224, embed_dim=t2t_model.embed_dim, depth=1, num_heads=1).pos_embed.detach()
    assert torch.equal(position_table(t2t_model, (14, 14), "sinusoid"), own)
    # the embedded file stores its table in float16: the same table, rounded
    torch.testing.assert_close(t2t_model.pos_embed.detach(), own, rtol=1e-3, atol=1e-4)
    assert torch.equal(position_table(t2t_model, (14, 14), "interpolated"), t2t_model.pos_embed.detach())
    assert position_table(t2t_model, (14, 14), "none") is None


# --- sizes, errors, and the model left as it was ----------------------------------------------------


@pytest.mark.parametrize("size", [224, 512, (224, 512)])
def test_sizes_that_are_multiples_of_16(models, photo, size):
    x = notebook_image(photo, size)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    for model in models.values():
        assert token_grid(model, tuple(x.shape[-2:])) == (h, w)
        maps = paper_feature_maps(model, x, 1)
        assert maps.shape == (1, model.embed_dim, h, w) and torch.isfinite(maps).all()


def test_bad_sizes_and_options_are_refused_clearly(models, photo):
    vit = models["vit"]
    for size in (500, 230, 8):
        with pytest.raises(ValueError, match="multiples of 16"):
            paper_feature_maps(vit, notebook_image(photo, size))
        with pytest.raises(ValueError, match="multiples of 16"):
            paper_feature_maps(models["t2t"], notebook_image(photo, size))
    x = notebook_image(photo, 224)
    with pytest.raises(ValueError, match="learned"):
        paper_feature_maps(vit, x, pos_embed="sinusoid")
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        paper_feature_maps(vit, x, pos_embed="learned")
    with pytest.raises(ValueError, match="depths must be within 0..12"):
        paper_feature_maps(vit, x, depth=13)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        paper_feature_maps(vit, x[0])


def test_the_model_is_bit_identical_afterwards(models, photo):
    x = notebook_image(photo, 288)
    for model in models.values():
        before = {k: v.clone() for k, v in model.state_dict().items()}
        grads = [p.requires_grad for p in model.parameters()]
        tables = ["none", "interpolated"] + (["sinusoid"] if model.family == "t2t" else [])
        for table in tables:
            for cls in (False, True):
                paper_tokens(model, x, [0, 1], pos_embed=table, class_token=cls)
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert [p.requires_grad for p in model.parameters()] == grads and not model.training
        assert all(p.grad is None for p in model.parameters())
        for m in model.modules():
            assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        assert model.pos_embed.shape[1] == 1 + 14 * 14  # the table was resized in a copy, not in place


# --- invalid channels on those maps -------------------------------------------------------------------


def test_invalid_summary_counts_all_channels_and_the_ones_drawn():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 64, 32, 32, generator=gen)
    flat = {0: [3, 40], 1: [5, 6, 7]}  # per image; channel 40 is not among the 36 drawn
    for b, channels in flat.items():
        maps[b, channels] = torch.tensor(7.0)  # stuck at a constant: no spatial information
    out = invalid_summary(maps)
    assert torch.equal(out["invalid"], invalid_channels(maps))
    assert out["count"].tolist() == [len(flat[0]), len(flat[1])]
    assert out["shown_count"].tolist() == [sum(c < NOTEBOOK_CHANNELS for c in flat[b]) for b in (0, 1)]
    np.testing.assert_allclose(out["fraction"].numpy(), [len(flat[0]) / 64, len(flat[1]) / 64])
    assert int(out["shown"]) == NOTEBOOK_CHANNELS
    assert int(invalid_summary(maps[:, :20])["shown"]) == 20

