"""trace(): names, shapes, lazy maps, threads, gradients, receptive fields, device choice."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import t2t
from t2t.trace import receptive_fields, stage_geometry


@pytest.fixture(scope="module")
def t2t_model():
    torch.manual_seed(0)
    return t2t.create_model("t2t_vit_7", img_size=64).eval()


@pytest.fixture(scope="module")
def vit_model():
    torch.manual_seed(0)
    return t2t.create_model("deit_tiny_patch16_224", img_size=64).eval()


def test_t2t_trace_names_and_shapes(t2t_model):
    x = torch.randn(2, 3, 64, 64)
    tr = t2t.trace(t2t_model, x)
    want = {"t2t.split0": (2, 256, 147), "t2t.attn1": (2, 256, 64), "t2t.split1": (2, 64, 576),
            "t2t.attn2": (2, 64, 64), "t2t.split2": (2, 16, 576), "t2t.project": (2, 16, 256),
            "t2t.attn1_map": (2, 1, 256, 256), "t2t.attn2_map": (2, 1, 64, 64),
            "blocks.0": (2, 17, 256), "blocks.6.attn": (2, 4, 17, 17), "logits": (2, 1000), "features": (2, 256)}
    for name, shape in want.items():
        assert tr[name].shape == shape, name
    assert tr.grid("t2t.attn1_map") == (16, 16)
    assert tr["blocks.last.attn"] is tr["blocks.6.attn"]
    assert len(tr.attentions()) == 7
    with pytest.raises(KeyError, match="not in this trace"):
        tr["patch_embed"]


def test_vit_trace_names(vit_model):
    tr = t2t.trace(vit_model, torch.randn(1, 3, 64, 64))
    assert tr["patch_embed"].shape == (1, 16, 192)
    assert tr.grid("patch_embed") == (4, 4) and tr.grid("blocks.3") == (4, 4)
    assert tr["blocks.11.attn"].shape == (1, 3, 17, 17)
    assert "t2t.split0" not in tr


def test_trace_without_attention_has_no_maps(t2t_model):
    tr = t2t.trace(t2t_model, torch.randn(1, 3, 64, 64), attention=False)
    assert "blocks.0.attn" not in tr and "t2t.attn1_map" not in tr
    assert "blocks.0" in tr and "t2t.split1" in tr


def test_keep_stores_only_the_names_asked_for(t2t_model):
    x = torch.randn(2, 3, 64, 64)
    full = t2t.trace(t2t_model, x)
    lean = t2t.trace(t2t_model, x, keep=("blocks.*.attn", "t2t.attn2_map"))
    want = {f"blocks.{i}.attn" for i in range(7)} | {"t2t.attn2_map", "features", "logits"}
    assert set(lean.names()) == want
    for name in want:
        torch.testing.assert_close(lean[name], full[name], rtol=0, atol=0)
    assert lean.grid("t2t.attn1") == full.grid("t2t.attn1") == (16, 16)  # grids of unkept stages
    assert lean.grid("blocks.0") == (4, 4)
    with pytest.raises(KeyError, match="not in this trace"):
        lean["blocks.0"]
    assert set(t2t.trace(t2t_model, x, keep=()).names()) == {"features", "logits"}
    assert set(t2t.trace(t2t_model, x, keep=["blocks.1"]).names()) == {"blocks.1", "features", "logits"}  # not .attn
    with pytest.raises(TypeError, match="sequence of name patterns"):
        t2t.trace(t2t_model, x, keep="blocks.*.attn")
    last = t2t.trace(t2t_model, x, keep=["blocks.last.attn"])  # the lookup alias works in keep too
    assert set(last.names()) == {"blocks.6.attn", "features", "logits"}
    torch.testing.assert_close(last["blocks.last.attn"], full["blocks.6.attn"], rtol=0, atol=0)


def test_block_tokens_are_the_stream_between_blocks(t2t_model):
    x = torch.randn(1, 3, 64, 64)
    tr = t2t.trace(t2t_model, x)
    with torch.no_grad():
        after_first = t2t_model.blocks[1](tr["blocks.0"])
    assert torch.allclose(after_first, tr["blocks.1"], atol=1e-5)
    assert torch.allclose(t2t_model.norm(tr["blocks.6"])[:, 0], tr["features"], atol=1e-5)


def test_performer_map_is_the_operator_it_applies(t2t_model):
    # y = A v, with A the implicit attention the trace exposes: check against the layer's own output
    x = torch.randn(1, 3, 64, 64)
    tr = t2t.trace(t2t_model, x)
    layer = t2t_model.tokens_to_token.attention1
    with torch.no_grad():
        h = layer.norm1(tr["t2t.split0"])
        k, q, v = layer.kqv(h).split(layer.emb, dim=-1)
        attended = v + layer.proj(tr["t2t.attn1_map"][:, 0] @ v)
        assert torch.allclose(attended, layer.attend(h), atol=1e-5)


def test_softmax_t2t_map_is_the_softmax_of_scaled_scores():
    torch.manual_seed(0)
    model = t2t.create_model("t2t_vit_t_14", img_size=64).eval()
    tr = t2t.trace(model, torch.randn(1, 3, 64, 64))
    attn = model.tokens_to_token.attention2.attn
    with torch.no_grad():
        h = model.tokens_to_token.attention2.norm1(tr["t2t.split1"])
        q, k, _ = attn.qkv(h).chunk(3, dim=-1)
        want = (q @ k.transpose(-2, -1) * 576**-0.5).softmax(-1)
    assert torch.allclose(tr["t2t.attn2_map"][:, 0], want, atol=1e-6)


def test_rows_on_demand_match_the_full_map(t2t_model):
    tr = t2t.trace(t2t_model, torch.randn(2, 3, 64, 64))
    rows = tr.attention_rows("t2t.attn1_map", [0, 17, 255])
    assert "t2t.attn1_map" not in tr._formed  # rows did not form the whole matrix
    assert rows.shape == (2, 1, 3, 256)
    assert torch.allclose(rows, tr["t2t.attn1_map"][:, :, [0, 17, 255]])
    assert torch.allclose(tr.attention_rows("blocks.2.attn", 5), tr["blocks.2.attn"][:, :, [5]])


def test_two_threads_tracing_one_model_get_their_own_results(t2t_model):
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    alone = [t2t.trace(t2t_model, x) for x in inputs]
    results: dict[int, t2t.Trace] = {}
    barrier = threading.Barrier(len(inputs))

    def work(i):
        barrier.wait()
        for _ in range(3):
            results[i] = t2t.trace(t2t_model, inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i, tr in enumerate(alone):
        for name in ("logits", "blocks.3.attn", "t2t.attn2_map", "t2t.split1"):
            assert torch.allclose(results[i][name], tr[name], atol=1e-6), (i, name)


def test_keep_graph_gives_gradients_of_attention_maps(t2t_model):
    x = torch.randn(1, 3, 64, 64)
    tr = t2t.trace(t2t_model, x, keep_graph=True)
    tr["logits"][:, 3].sum().backward()
    grads = [tr[f"blocks.{i}.attn"].grad for i in range(7)]
    assert all(g is not None and g.shape == (1, 4, 17, 17) for g in grads)
    assert tr["input"].grad is not None and tr["input"].grad.abs().sum() > 0
    # the default trace keeps no graph
    assert not t2t.trace(t2t_model, x)["blocks.0.attn"].requires_grad


def test_attention_grad_is_the_true_derivative(vit_model):
    # scale block 5's attention by (1 + eps) on one entry: the logit change matches the recorded grad
    x = torch.randn(1, 3, 64, 64)
    tr = t2t.trace(vit_model, x, keep_graph=True)
    tr["logits"][0, 7].backward()
    g = tr["blocks.5.attn"].grad[0, 1, 0, 3].item()
    blk = vit_model.blocks[5].attn
    eps = 1e-3
    original = blk.forward

    def bumped(h, tape=None):
        q, k, v = blk.qkv(h).reshape(1, 17, 3, 3, 64).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * blk.scale).softmax(-1)
        a = a.clone()
        a[0, 1, 0, 3] += eps
        return blk.proj((a @ v).transpose(1, 2).reshape(1, 17, 192))

    with torch.no_grad():
        base = vit_model(x)[0, 7].item()
        blk.forward = bumped
        try:
            moved = vit_model(x)[0, 7].item()
        finally:
            blk.forward = original
    assert (moved - base) / eps == pytest.approx(g, rel=2e-2, abs=1e-4)


# --- receptive fields ---------------------------------------------------------------


def _brute_force_box(model, stage, token, size):
    """Pixels whose value reaches `token` through the soft splits alone (unfold chain, ones as weights)."""
    img = torch.ones(1, 1, size, size, requires_grad=True)
    x = img
    for k, s, p in stage_geometry(model, stage):
        # each output cell sums its k x k window of the input map
        x = F.conv2d(x, torch.ones(1, 1, k, k), stride=s, padding=p)
    h, w = x.shape[-2:]
    x[0, 0, token // w, token % w].backward()
    rows, cols = torch.nonzero(img.grad[0, 0], as_tuple=True)
    return rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1


@pytest.mark.parametrize("stage", ["t2t.split0", "t2t.attn1", "t2t.split1", "t2t.attn2", "t2t.split2", "blocks.3"])
def test_t2t_receptive_fields_against_brute_force(stage):
    model = t2t.create_model("t2t_vit_7", img_size=64)
    boxes = receptive_fields(model, stage)
    gh, gw = boxes.shape[:2]
    for token in range(gh * gw):
        assert tuple(boxes.reshape(-1, 4)[token].tolist()) == _brute_force_box(model, stage, token, 64), token


def test_vit_receptive_field_is_its_patch():
    model = t2t.create_model("deit_tiny_patch16_224")
    assert t2t.receptive_field(model, "blocks.0", (2, 3)) == (32, 48, 48, 64)
    assert _brute_force_box(model, "blocks.0", 2 * 14 + 3, 224) == (32, 48, 48, 64)


def test_t2t_receptive_field_by_hand_at_224():
    model = t2t.create_model("t2t_vit_7")
    # a backbone token (r, c) covers 28-grid rows 2r-1 .. 2r+1, 56-grid rows 4r-3 .. 4r+3,
    # i.e. pixels 4(4r-3)-2 = 16r-14 .. 4(4r+3)-2+6 = 16r+16: 31 pixels for a 16-pixel stride
    assert t2t.receptive_field(model, "blocks.0", (5, 6)) == (16 * 5 - 14, 16 * 6 - 14, 16 * 5 + 17, 16 * 6 + 17)
    assert t2t.receptive_field(model, "t2t.split0", 0) == (0, 0, 5, 5)  # padding clipped away
    # neighbouring first-split windows overlap by 7 - 4 = 3 pixels
    a = t2t.receptive_field(model, "t2t.split0", (10, 10))
    b = t2t.receptive_field(model, "t2t.split0", (10, 11))
    assert a[3] - b[1] == 3
    with pytest.raises(IndexError):
        t2t.receptive_field(model, "blocks.0", 196)


def test_device_choice():
    assert t2t.default_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        want = "mps"
    assert t2t.default_device().type == want


def test_trace_rejects_wrong_rank(t2t_model):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t2t.trace(t2t_model, torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_left_product_and_row_sums_match_the_formed_map(name):
    torch.manual_seed(0)
    model = t2t.create_model(name, img_size=64).eval()
    tr = t2t.trace(model, torch.randn(2, 3, 64, 64))
    for stage in ("t2t.attn1_map", "t2t.attn2_map"):
        a = tr[stage][:, 0]
        r = torch.rand(a.shape[:2])
        want = torch.einsum("bi,bij->bj", r, a)
        assert torch.allclose(tr.attention_left_product(stage, r), want, atol=1e-5)
        assert torch.allclose(tr.lazy[stage].left_product(r, chunk=100), want, atol=1e-5)  # 3 uneven blocks
        assert torch.allclose(tr.attention_row_sums(stage), a.sum(-1), atol=1e-5)
