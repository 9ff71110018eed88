"""Bare forward vs full trace of t2t_vit_14 at 224 on the CPU, and our forward vs a plain one.

    python benchmarks/bench_trace.py [--model t2t_vit_14] [--batches 1 16] [--repeats 5]

"full trace" records every tensor and every attention map, except the 3136 x 3136 first T2T
map, which stays factored until asked for. "plain" is a straight functional forward of the same
weights with torch ops and scaled_dot_product_attention: the floor for our bare forward.
Timings are interleaved (bare, trace, plain, bare, ...) and the median is reported, so that
load from other processes hits all three alike. Ratios are measured in this one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import t2t


def plain_forward(model, x):
    """The T2T-ViT forward written out with torch ops only: no tape, no einops."""
    t = model.tokens_to_token

    def performer(layer, h):
        h = F.layer_norm(h, h.shape[-1:], layer.norm1.weight, layer.norm1.bias)
        k, q, v = layer.kqv(h).split(layer.emb, dim=-1)
        w = layer.w

        def phi(z):
            return torch.exp(z @ w.t() - (z * z).sum(-1, keepdim=True) / 2) / layer.m**0.5

        kp, qp = phi(k), phi(q)
        y = qp @ (kp.transpose(1, 2) @ v) / (qp @ kp.sum(1)[:, :, None] + 1e-8)
        h = v + layer.proj(y)
        return h + layer.mlp(F.layer_norm(h, h.shape[-1:], layer.norm2.weight, layer.norm2.bias))

    b = x.shape[0]
    h = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)
    h = performer(t.attention1, h)
    s = int(h.shape[1] ** 0.5)
    h = F.unfold(h.transpose(1, 2).reshape(b, -1, s, s), 3, stride=2, padding=1).transpose(1, 2)
    h = performer(t.attention2, h)
    s = int(h.shape[1] ** 0.5)
    h = F.unfold(h.transpose(1, 2).reshape(b, -1, s, s), 3, stride=2, padding=1).transpose(1, 2)
    h = t.project(h)
    h = torch.cat([model.cls_token.expand(b, -1, -1), h], 1) + model.pos_embed
    for blk in model.blocks:
        a = blk.attn
        n, d = h.shape[1], h.shape[2]
        qkv = a.qkv(blk.norm1(h)).reshape(b, n, 3, a.num_heads, d // a.num_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=a.scale)
        h = h + a.proj(o.transpose(1, 2).reshape(b, n, d))
        h = h + blk.mlp(blk.norm2(h))
    return model.head(model.norm(h)[:, 0])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="t2t_vit_14")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = t2t.create_model(args.model).eval()
    print(f"{args.model} at 224 on CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'batch':>5s} {'bare ms':>9s} {'trace ms':>9s} {'plain ms':>9s} {'trace/bare':>10s} {'bare/plain':>10s}")
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            want = plain_forward(model, x)
            assert torch.allclose(model(x), want, atol=1e-4), "plain forward disagrees with the model"
            runs = {
                "bare": lambda x=x: model(x),
                "trace": lambda x=x: t2t.trace(model, x, attention=True),
                "plain": lambda x=x: plain_forward(model, x),
            }
            for fn in runs.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    times[name].append(timed(fn))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{batch:5d} {med['bare']:9.1f} {med['trace']:9.1f} {med['plain']:9.1f} "
              f"{med['trace'] / med['bare']:10.2f} {med['bare'] / med['plain']:10.2f}")


if __name__ == "__main__":
    main()
