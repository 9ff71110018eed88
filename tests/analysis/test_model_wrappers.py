"""The model-level wrappers on real (randomly initialised) models at 64 px: 4 x 4 backbone grid."""

import pytest
import torch

from analysis.attention_stats import model_attention_profile
from analysis.cka import model_cka
from analysis.faithfulness import faithfulness
from analysis.modelio import attention_and_grads
from analysis.redundancy import METRICS, redundancy_profile
from analysis.relevance import cls_relevance, relevance_map
from analysis.rollout import cls_rollout, grad_rollout, grad_rollout_map, rollout_map
from analysis.t2t_backproject import backproject_map, receptive_field_box

t2t = pytest.importorskip("t2t")

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def t2t_model():
    torch.manual_seed(0)
    return t2t.create_model("t2t_vit_7", img_size=64, num_classes=10).eval()


@pytest.fixture(scope="module")
def vit_model():
    torch.manual_seed(0)
    return t2t.create_model("deit_tiny_patch16_224", img_size=64, num_classes=10).eval()


def test_gradients_come_back_in_block_order(t2t_model):
    attentions, gradients, grid = attention_and_grads(t2t_model, IMAGES, target=3)
    assert grid == (4, 4) and len(gradients) == len(t2t_model.blocks) == 7
    # only the class token's row of the LAST block reaches the logits; earlier blocks' patch rows do
    assert gradients[-1][:, :, 1:].abs().max() == 0
    assert gradients[-1][:, :, 0].abs().max() > 0
    assert gradients[0][:, :, 1:].abs().max() > 0
    # the maps are those of the trace, and the wrappers combine them as the tensor functions do
    trace = t2t.trace(t2t_model, IMAGES)
    torch.testing.assert_close(attentions[2], trace["blocks.2.attn"])
    torch.testing.assert_close(rollout_map(t2t_model, IMAGES, discard_ratio=0.5),
                               cls_rollout(trace.attentions(), discard_ratio=0.5).view(2, 4, 4))
    torch.testing.assert_close(grad_rollout_map(t2t_model, IMAGES, target=3),
                               grad_rollout(attentions, gradients, 0.9).view(2, 4, 4))
    torch.testing.assert_close(relevance_map(t2t_model, IMAGES, target=3),
                               cls_relevance(attentions, gradients).view(2, 4, 4))


def test_gradient_of_each_image_is_its_own_target(vit_model):
    _, grads_pair, _ = attention_and_grads(vit_model, IMAGES, target=torch.tensor([1, 4]))
    _, grads_one, _ = attention_and_grads(vit_model, IMAGES[1:], target=4)
    torch.testing.assert_close(grads_pair[5][1:], grads_one[5], rtol=1e-4, atol=1e-7)


def test_attention_profile_in_pixels(vit_model, t2t_model):
    for model in (vit_model, t2t_model):
        prof = model_attention_profile(model, IMAGES)
        heads = model.blocks[0].attn.num_heads
        assert prof["distance"].shape == prof["entropy"].shape == (2, len(model.blocks), heads)
        # tokens 16 px apart on a 4x4 grid: distances between 0 and the diagonal 3 * 16 * sqrt(2)
        assert (prof["distance"] > 0).all() and (prof["distance"] < 48 * 2**0.5).all()
        assert (prof["entropy"] <= torch.log(torch.tensor(17.0)) + 1e-5).all()


def test_redundancy_profile_shapes(vit_model, t2t_model):
    for model in (vit_model, t2t_model):
        prof = redundancy_profile(model, IMAGES)
        assert set(prof) == set(METRICS)
        for values in prof.values():
            assert values.shape == (2, len(model.blocks)) and torch.isfinite(values).all()
        assert (prof["effective_rank"] >= 1).all() and (prof["effective_rank"] <= 16 + 1e-4).all()


def test_backprojection_on_t2t_conserves_mass_and_refuses_vit(t2t_model, vit_model):
    heat = rollout_map(t2t_model, IMAGES)
    for use_attention in (True, False):
        pixels = backproject_map(t2t_model, IMAGES, heat, use_attention=use_attention)
        assert pixels.shape == (2, 64, 64)
        torch.testing.assert_close(pixels.sum(dim=(1, 2)), heat.sum(dim=(1, 2)), rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError):
        backproject_map(vit_model, IMAGES, heat)


def test_receptive_field_box_agrees_with_model_library(t2t_model):
    for row in range(4):
        for col in range(4):
            (y0, y1), (x0, x1) = receptive_field_box(row, col, 64)
            assert t2t.receptive_field(t2t_model, "blocks.0", (row, col), 64) == (y0, x0, y1 + 1, x1 + 1)


def test_model_cka_of_a_model_with_itself_has_unit_diagonal(t2t_model, vit_model):
    batches = [torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    same = model_cka(t2t_model, t2t_model, batches)
    torch.testing.assert_close(torch.diagonal(same), torch.ones(7, dtype=same.dtype))
    cross = model_cka(t2t_model, vit_model, batches, reduce="mean")
    assert cross.shape == (7, 12) and torch.isfinite(cross).all()


def test_faithfulness_on_a_real_model(vit_model):
    heat = rollout_map(vit_model, IMAGES)
    curves = faithfulness(vit_model, IMAGES, heat, steps=4, batch_size=8)
    assert curves.deletion.shape == (2, 5) and curves.insertion_auc.shape == (2,)
    torch.testing.assert_close(curves.deletion[:, 0], curves.insertion[:, -1])  # both the intact image
