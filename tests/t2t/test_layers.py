"""t2t.layers.softmax_attention: the weights and output of the traced attention, in pieces or whole."""

import pytest
import torch

from t2t.layers import softmax_attention


def reference(q, k, v):
    attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return attn, attn @ v


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 11 * 11 * 4 * 2, 2**30])  # one sample, two, all at once
def test_pieces_equal_the_whole(chunk_bytes):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 3, 11, 8, generator=g) for _ in range(3))
    attn, out = softmax_attention(q, k, v, chunk_bytes=chunk_bytes)
    want_attn, want_out = reference(q, k, v)
    assert attn.shape == (5, 3, 11, 11) and out.shape == (5, 3, 11, 8)
    torch.testing.assert_close(attn, want_attn, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, want_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(5, 3, 11))


def test_gradients_flow_through_the_returned_weights():
    # gradient methods differentiate the output with respect to the recorded weights: they must
    # be the tensor the output was computed from, even when pieces are asked for
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 2, 6, 5, generator=g, requires_grad=True) for _ in range(3))
    attn, out = softmax_attention(q, k, v, chunk_bytes=1)
    (grad,) = torch.autograd.grad(out.sum(), attn)
    want = v.detach().sum(-1)[:, :, None, :].expand(4, 2, 6, 6)  # d(sum out)/d attn_ij = sum_d v_jd
    torch.testing.assert_close(grad, want)
