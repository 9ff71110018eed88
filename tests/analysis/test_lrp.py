"""AttnLRP / CP-LRP (`analysis.lrp`) against references written here.

- ViT / DeiT: a forward built in this file from LXT 2.1's own rule functions (`lxt/efficient/rules.py`
  and `patches.py`, loaded by path: `import lxt` would import transformers and torchvision), and,
  for `gamma`, zennit's Gamma rule in LXT's gradient x input form, done as zennit does it (autograd
  through modified copies of the layer); relevance = input x gradient.
- T2T-ViT (transformer and Performer T2T layers): an explicit layer-by-layer LRP written here from
  the paper's equations (epsilon rule with epsilon -> 0 on linear maps and sums, identity rule on
  element-wise non-linearities and normalisation, uniform rule on products, AttnLRP's softmax rule,
  unfold relevance folded back), and the Performer rules derived in `analysis.lrp`'s docstring.
- Conservation under CP-LRP (float64), batching, the model left bit-identical, explain(), bad input.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from analysis.explain import EXPLAINERS, explain
from analysis.lrp import DEFAULT_GAMMA, Relevance, attnlrp_map, lrp

t2t = pytest.importorskip("t2t")


# --- LXT's rules, loaded by path --------------------------------------------------------------------


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lxt() -> types.SimpleNamespace:
    """LXT 2.1's `efficient/rules.py` and `efficient/patches.py`, executed without importing the package.

    find_spec locates the installed package without running its __init__ (which imports
    transformers). patches.py does `from lxt.efficient.rules import ...`: while it loads, that name
    (and its parents) resolve to the rules module loaded by path, then sys.modules is restored.
    """
    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("LXT is not installed (pip install --no-deps lxt==2.1)")
    root = Path(spec.submodule_search_locations[0]) / "efficient"
    rules = _load(root / "rules.py", "_lxt_efficient_rules")
    names = ("lxt", "lxt.efficient", "lxt.efficient.rules")
    saved = {n: sys.modules.get(n) for n in names}
    try:
        sys.modules["lxt"] = types.ModuleType("lxt")
        sys.modules["lxt.efficient"] = types.ModuleType("lxt.efficient")
        sys.modules["lxt.efficient.rules"] = rules
        patches = _load(root / "patches.py", "_lxt_efficient_patches")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return types.SimpleNamespace(rules=rules, patches=patches)


# --- zennit's Gamma rule as LXT runs it (lxt/efficient/zennit_patches.py + zennit.rules.Gamma) ----------


def _zennit_stabilize(x, epsilon=1e-6):
    return x + ((x == 0).to(x) + x.sign()) * epsilon


class ZennitGamma(torch.autograd.Function):
    """layer(x) forward; backward as zennit's BasicHook with the Gamma rule, patched by LXT: output relevance
    = gradient x output; five modified copies of the layer (input and parameter modifiers), autograd
    through them with zennit's gradient mapper, the reducer, then relevance / stabilize(input, 1e-10)."""

    @staticmethod
    def forward(ctx, x, fn, weight, bias, gamma):
        ctx.fn, ctx.gamma = fn, gamma
        ctx.save_for_backward(x, weight, bias)
        return fn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        fn, gamma = ctx.fn, ctx.gamma
        relevance = grad * fn(x, weight, bias)

        def gmod(p, lo=None, hi=None):  # zennit's GammaMod: param + gamma * param.clamp(min, max)
            return p + gamma * p.clamp(min=lo, max=hi)

        zero = torch.zeros_like(bias)
        params = [(gmod(weight, lo=0.0), gmod(bias, lo=0.0)), (gmod(weight, hi=0.0), zero),
                  (gmod(weight, hi=0.0), gmod(bias, hi=0.0)), (gmod(weight, lo=0.0), zero), (weight, bias)]
        with torch.enable_grad():
            inputs = [m(x).detach().requires_grad_() for m in
                      (lambda t: t.clamp(min=0), lambda t: t.clamp(max=0), lambda t: t.clamp(min=0),
                       lambda t: t.clamp(max=0), lambda t: t)]
            outputs = [fn(i, w, b) for i, (w, b) in zip(inputs, params, strict=True)]
            grad_outputs = [(outputs[4] > 0) * relevance / _zennit_stabilize(outputs[0] + outputs[1])] * 2 + [
                (outputs[4] < 0) * relevance / _zennit_stabilize(outputs[2] + outputs[3])] * 2 + [
                torch.zeros_like(relevance)]
            grads = torch.autograd.grad(outputs, inputs, grad_outputs)
        r = sum(i * g for i, g in zip(inputs[:4], grads[:4]))
        return r / _zennit_stabilize(x, 1e-10), None, None, None, None


def ref_linear(x, layer, gamma):
    if gamma is None:
        return F.linear(x, layer.weight, layer.bias)
    return ZennitGamma.apply(x, F.linear, layer.weight, layer.bias, gamma)


def lxt_vit_logits(lxt, model, x, variant, gamma=None):
    """ViT / DeiT forward from LXT's patches: LayerNorm `layer_norm_forward`, GELU `non_linear_forward`,
    attention through `wrap_attention_forward` (AttnLRP) or `cp_wrap_attention_forward` (CP-LRP) around
    an eager softmax attention; zennit-Gamma on the convolution and every linear layer when gamma is set."""
    p = lxt.patches

    def eager(module, q, k, v):
        return (q @ k.transpose(-2, -1) * module.scale).softmax(-1) @ v

    wrap = p.wrap_attention_forward if variant == "attnlrp" else p.cp_wrap_attention_forward
    conv = model.patch_embed.proj
    if gamma is None:
        t = F.conv2d(x, conv.weight, conv.bias, conv.stride)
    else:
        t = ZennitGamma.apply(x, lambda i, w, b: F.conv2d(i, w, b, conv.stride), conv.weight, conv.bias, gamma)
    t = rearrange(t, "b d h w -> b (h w) d")
    h = torch.cat([model.cls_token.expand(len(x), -1, -1), t], dim=1) + model.pos_embed
    for blk in model.blocks:
        a = p.layer_norm_forward(blk.norm1, h)
        q, k, v = rearrange(ref_linear(a, blk.attn.qkv, gamma), "b n (s h d) -> s b h n d", s=3, h=blk.attn.num_heads)
        o = wrap(eager)(blk.attn, q, k, v)
        h = h + ref_linear(rearrange(o, "b h n d -> b n (h d)"), blk.attn.proj, gamma)
        a = p.layer_norm_forward(blk.norm2, h)
        act = types.SimpleNamespace(original_forward=blk.mlp.act)
        h = h + ref_linear(p.non_linear_forward(act, ref_linear(a, blk.mlp.fc1, gamma)), blk.mlp.fc2, gamma)
    return ref_linear(p.layer_norm_forward(model.norm, h)[:, 0], model.head, gamma)


def lxt_vit_pixels(lxt, model, images, target, variant, gamma=None):
    model = copy.deepcopy(model)  # the reference may touch parameters' gradients; never the model under test
    for prm in model.parameters():
        prm.requires_grad_(False)
    x = images.clone().requires_grad_(True)
    logit = lxt_vit_logits(lxt, model, x, variant, gamma).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(logit, x)
    return (x * g).detach()


def assert_close_scaled(got, expected, tol=1e-5):
    """max |got - expected| <= tol * max |expected|: relevance maps hold many near-zero entries."""
    scale = expected.abs().max()
    assert scale > 0
    err = (got - expected).abs().max() / scale
    assert err <= tol, f"relative error {err:.3g} > {tol}"


def small(name, img_size=32, depth=2, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    model = t2t.create_model(name, img_size=img_size, num_classes=5, depth=depth, **kw).eval().to(dtype)
    # random models with the trained models' spread of weights: biases and LayerNorm parameters away from 0 / 1
    with torch.no_grad():
        for name_, prm in model.named_parameters():
            if name_.endswith("bias"):
                prm.normal_(0, 0.1)
            elif "norm" in name_ and name_.endswith("weight"):
                prm.uniform_(0.5, 1.5)
            elif name_ in ("cls_token", "pos_embed") and prm.requires_grad:
                prm.normal_(0, 0.5)
    return model


def images_for(model, n=2, seed=1):
    s = model.img_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed)).to(model.cls_token.dtype)


@pytest.fixture(scope="module")
def deit_embedded():
    return t2t.create_model("deit_tiny_patch16_224", pretrained="embedded").eval()


def synthetic(model, n):
    from analysis.notebook import synthetic_batch

    return synthetic_batch(model, n)[0]


# --- ViT / DeiT: equal to LXT --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("gamma", [None, 0.25])
def test_vit_equals_lxt_reference(lxt, variant, gamma):
    model = small("deit_tiny_patch16_224", img_size=64, embed_dim=48)
    x = images_for(model, 3)
    target = torch.tensor([0, 3, 4])
    rel = lrp(model, x, target, variant=variant, gamma=gamma)
    expected = lxt_vit_pixels(lxt, model, x, target, variant, gamma)
    assert_close_scaled(rel.pixels, expected, 1e-10)
    with torch.no_grad():
        torch.testing.assert_close(rel.logit, model(x)[torch.arange(3), target])


@pytest.mark.parametrize("variant,gamma", [("attnlrp", None), ("cp", 0.25)])  # cp + gamma: LXT's own ViT recipe
def test_embedded_deit_equals_lxt_reference_float32(lxt, deit_embedded, variant, gamma):
    x = synthetic(deit_embedded, 1)
    rel = lrp(deit_embedded, x, variant=variant, gamma=gamma)
    expected = lxt_vit_pixels(lxt, deit_embedded, x, rel.target, variant, gamma)
    assert_close_scaled(rel.pixels, expected, 1e-5)
    assert rel.pixels.dtype == torch.float32


def test_the_variants_and_gamma_change_the_map():
    # guards the references above against comparing two implementations of the same wrong thing
    model = small("deit_tiny_patch16_224", img_size=64, embed_dim=48)
    x = images_for(model, 1)
    maps = [lrp(model, x, 1, variant=v, gamma=g).pixels for v, g in [("attnlrp", None), ("cp", None),
                                                                     ("attnlrp", 0.25)]]
    (g,) = torch.autograd.grad(model(x.requires_grad_())[0, 1], x)
    maps.append(x.detach() * g)  # plain gradient x input
    for i in range(len(maps)):
        for j in range(i):
            assert (maps[i] - maps[j]).abs().max() > 1e-3 * maps[j].abs().max()


# --- T2T-ViT: an explicit layer-by-layer LRP ----------------------------------------------------------------


class ExplicitLRP:
    """Relevance propagated layer by layer, R tensors shaped as the activations (relevance, not gradients).

    Rules (AttnLRP, Achtibat et al. 2024): linear maps z = W x + b and sums z = a + b: the epsilon rule
    with epsilon -> 0, R_x = x * W^T (R_z / z), R_a = a / z * R_z; element-wise non-linearities: identity,
    R_x = R_y; LayerNorm: centring is linear, the division by the standard deviation the identity;
    a product of two factors: the uniform rule (half each) after the epsilon rule over the sum of
    products; softmax: R_s = s * (R_A - A sum(R_A)); an unfold: the fold of the copies' relevance.
    Forward values are recomputed here in the model's dtype (the Performer's features in float32, as
    the model). gamma: zennit's Gamma rule on every linear layer, in relevance form.
    """

    def __init__(self, variant, gamma=None):
        self.variant, self.gamma = variant, gamma

    # -- linear maps
    def linear_fwd(self, x, layer):
        return F.linear(x, layer.weight, layer.bias)

    def linear(self, x, layer, r):
        w, b = layer.weight, layer.bias
        if self.gamma is None:
            z = F.linear(x, w, b)
            return x * ((r / z) @ w)
        g = self.gamma
        up, down = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        bias = torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = F.linear(x, w, b)
        zp = F.linear(xp, up, bias + g * bias.clamp(min=0)) + F.linear(xn, down)
        zn = F.linear(xp, down, bias + g * bias.clamp(max=0)) + F.linear(xn, up)
        sp = (z > 0) * r / _zennit_stabilize(zp)
        sn = (z < 0) * r / _zennit_stabilize(zn)
        return xp * (sp @ up) + xn * (sp @ down) + xp * (sn @ down) + xn * (sn @ up)

    @staticmethod
    def add(a, b, r):
        z = a + b
        return a / z * r, b / z * r

    # -- LayerNorm (std detached)
    @staticmethod
    def ln_fwd(x, norm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    @staticmethod
    def ln(x, norm, r):
        c = x - x.mean(-1, keepdim=True)
        n = c / (c.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        y = n * norm.weight + norm.bias
        r_n = n * norm.weight / y * r  # y = w n + b: epsilon rule, the shift b takes its share
        q = r_n / c  # identity through the division by std: R_c = R_n; centring: R_x = x * C^T (R_c / c)
        return x * (q - q.mean(-1, keepdim=True))

    # -- MLP with the identity rule on GELU
    def mlp(self, x, fc1, act, fc2, r):
        h = self.linear_fwd(x, fc1)
        r_a = self.linear(act(h), fc2, r)  # R at GELU's output = R at its input (identity rule)
        return self.linear(x, fc1, r_a)

    # -- a bilinear product O = A @ V (epsilon over the sum, uniform split): (..., n, j) @ (..., j, d)
    @staticmethod
    def matmul(a, v, r, share=0.5):
        out = a @ v
        s = r / out
        return share * a * (s @ v.transpose(-2, -1)), share * v * (a.transpose(-2, -1) @ s)

    def softmax_attention(self, q, k, v, scale, r_out):
        """O = softmax(q k^T scale) v, (B, H, N, d): relevance of q, k, v."""
        s = q @ k.transpose(-2, -1) * scale
        a = s.softmax(-1)
        if self.variant == "cp":
            _, r_v = self.matmul(a, v, r_out, share=1.0)  # A is a constant: v takes all
            return torch.zeros_like(q), torch.zeros_like(k), r_v
        r_a, r_v = self.matmul(a, v, r_out)
        r_s = s * (r_a - a * r_a.sum(-1, keepdim=True))  # AttnLRP's softmax rule
        r_q, r_kt = self.matmul(q * scale, k.transpose(-2, -1), r_s)
        return r_q, r_kt.transpose(-2, -1), r_v

    # -- the Performer (analysis.lrp's derived rules)
    @staticmethod
    def features(x, layer):
        x = x.float()
        u = x @ layer.w.float().t() - (x * x).sum(-1, keepdim=True) / 2
        return u, torch.exp(u) / math.sqrt(layer.m)

    def performer_attention(self, k, q, v, layer, r_y):
        """y = A v with A_ij = phi(q_i).phi(k_j) / (D_i + eps), D constant: relevance of k, q, v."""
        uq, qp = self.features(q, layer)
        uk, kp = self.features(k, layer)
        qp, kp = qp.to(v.dtype), kp.to(v.dtype)
        d = (qp @ kp.sum(1)[:, :, None]) + layer.epsilon
        a = (qp @ kp.transpose(1, 2)) / d  # (B, N, N): formed here, never in analysis.lrp
        if self.variant == "cp":
            _, r_v = self.matmul(a, v, r_y, share=1.0)
            return torch.zeros_like(k), torch.zeros_like(q), r_v
        r_a, r_v = self.matmul(a, v, r_y)
        # A_ij = sum_m (qp_im / D_i) kp_jm: epsilon over m, half to each factor
        r_qp, r_kpt = self.matmul(qp / d, kp.transpose(1, 2), r_a)
        r_kp = r_kpt.transpose(1, 2)

        def back(x, u, r_phi):  # 1/sqrt(m) and exp pass R unchanged; u = sum_d (x_d w_md - x_d^2 / 2)
            x, u, r_u = x.to(v.dtype), u.to(v.dtype), r_phi
            w = layer.w.to(v.dtype)
            q_ = r_u / u  # (B, N, m)
            return x * (q_ @ w) - x * x / 2 * q_.sum(-1, keepdim=True)

        return back(k, uk, r_kp), back(q, uq, r_qp), r_v

    # -- T2T layers
    def token_layer(self, x, layer, r):
        performer = hasattr(layer, "kqv")
        h = self.ln_fwd(x, layer.norm1)
        if performer:
            kqv = self.linear_fwd(h, layer.kqv)
            k, q, v = kqv.split(layer.emb, dim=-1)
            _, qp = self.features(q, layer)
            _, kp = self.features(k, layer)
            y = (qp @ (kp.transpose(1, 2) @ v.float()) / (qp @ kp.sum(1)[:, :, None] + layer.epsilon)).to(v.dtype)
            proj = layer.proj
            mlp = (layer.mlp[0], layer.mlp[1], layer.mlp[2])
        else:
            q, k, v = self.linear_fwd(h, layer.attn.qkv).chunk(3, dim=-1)
            scale = layer.attn.scale
            y = (q @ k.transpose(-2, -1) * scale).softmax(-1) @ v
            proj = layer.attn.proj
            mlp = (layer.mlp.fc1, layer.mlp.act, layer.mlp.fc2)
        p = self.linear_fwd(y, proj)
        x1 = v + p
        h2 = self.ln_fwd(x1, layer.norm2)
        m = self.linear_fwd(mlp[1](self.linear_fwd(h2, mlp[0])), mlp[2])
        # backwards
        r_x1, r_m = self.add(x1, m, r)
        r_x1 = r_x1 + self.ln(x1, layer.norm2, self.mlp(h2, *mlp, r_m))
        r_v_res, r_p = self.add(v, p, r_x1)
        r_y = self.linear(y, proj, r_p)
        if performer:
            r_k, r_q, r_v = self.performer_attention(k, q, v, layer, r_y)
            r_kqv = torch.cat([r_k, r_q, r_v + r_v_res], dim=-1)
            r_h = self.linear(h, layer.kqv, r_kqv)
        else:
            r_q, r_k, r_v = self.softmax_attention(q[:, None], k[:, None], v[:, None], scale, r_y[:, None])
            r_qkv = torch.cat([r_q[:, 0], r_k[:, 0], r_v[:, 0] + r_v_res], dim=-1)
            r_h = self.linear(h, layer.attn.qkv, r_qkv)
        return self.ln(x, layer.norm1, r_h)

    def token_layer_fwd(self, x, layer):
        return layer(x)  # the model's own module: plain forward values

    def block(self, x, blk, r):
        """Relevance at the input of a backbone block from R at its output; also (B, H) per-head relevance."""
        attn = blk.attn
        h = self.ln_fwd(x, blk.norm1)
        q, k, v = rearrange(self.linear_fwd(h, attn.qkv), "b n (s h d) -> s b h n d", s=3, h=attn.num_heads)
        o = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1) @ v
        of = rearrange(o, "b h n d -> b n (h d)")
        p = self.linear_fwd(of, attn.proj)
        x1 = x + p
        h2 = self.ln_fwd(x1, blk.norm2)
        m = self.linear_fwd(blk.mlp.act(self.linear_fwd(h2, blk.mlp.fc1)), blk.mlp.fc2)
        r_x1, r_m = self.add(x1, m, r)
        r_x1 = r_x1 + self.ln(x1, blk.norm2, self.mlp(h2, blk.mlp.fc1, blk.mlp.act, blk.mlp.fc2, r_m))
        r_x, r_p = self.add(x, p, r_x1)
        r_of = self.linear(of, attn.proj, r_p)
        heads = rearrange(r_of, "b n (h d) -> b h n d", h=attn.num_heads).sum(dim=(2, 3))
        r_q, r_k, r_v = self.softmax_attention(q, k, v, attn.scale, rearrange(r_of, "b n (h d) -> b h n d",
                                                                                h=attn.num_heads))
        r_qkv = rearrange(torch.stack([r_q, r_k, r_v]), "s b h n d -> b n (s h d)")
        return r_x + self.ln(x, blk.norm1, self.linear(h, attn.qkv, r_qkv)), heads

    def __call__(self, model, images, target):
        """Explicit LRP of a T2T-ViT: pixels (B, 3, S, S), stages {name: (B, h, w)}, tokens, heads (B, L, H)."""
        t2t_mod = model.tokens_to_token
        splits = [t2t_mod.soft_split0, t2t_mod.soft_split1, t2t_mod.soft_split2]
        layers = [t2t_mod.attention1, t2t_mod.attention2]
        # forward, keeping every input
        maps, tokens_in, grids, outs = [images], [], [], []
        x = images
        for i, split in enumerate(splits):
            grid = split.grid(*x.shape[-2:])
            t = rearrange(F.unfold(x, split.kernel, stride=split.stride, padding=split.padding), "b c n -> b n c")
            tokens_in.append(t)
            grids.append(grid)
            if i < 2:
                t = self.token_layer_fwd(t, layers[i])
                outs.append(t)
                x = rearrange(t, "b (h w) c -> b c h w", h=grid[0])
                maps.append(x)
        patch = self.linear_fwd(tokens_in[2], t2t_mod.project)
        x0 = torch.cat([model.cls_token.expand(len(images), -1, -1), patch], dim=1)
        z0 = x0 + model.pos_embed
        xs = [z0]
        for blk in model.blocks:
            xs.append(blk(xs[-1]))
        f = self.ln_fwd(xs[-1], model.norm)
        logits = self.linear_fwd(f[:, 0], model.head)
        # backward
        onehot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        r = torch.zeros_like(f)
        r[:, 0] = self.linear(f[:, 0], model.head, onehot * logits)
        r = self.ln(xs[-1], model.norm, r)
        heads = []
        for i in reversed(range(len(model.blocks))):
            r, h = self.block(xs[i], model.blocks[i], r)
            heads.insert(0, h)
        r_x0, _ = self.add(x0, model.pos_embed.expand_as(x0), r)
        r_patch = r_x0[:, 1:]
        stages = {}
        r_t = self.linear(tokens_in[2], t2t_mod.project, r_patch)
        stages["t2t.split2"] = r_t
        for i in (1, 0):
            r_map = F.fold(rearrange(r_t, "b n c -> b c n"), maps[i + 1].shape[-2:], splits[i + 1].kernel,
                           stride=splits[i + 1].stride, padding=splits[i + 1].padding)
            r_out = rearrange(r_map, "b c h w -> b (h w) c")
            stages[f"t2t.attn{i + 1}"] = r_out
            r_t = self.token_layer(tokens_in[i], layers[i], r_out)
            stages[f"t2t.split{i}"] = r_t
        pixels = F.fold(rearrange(r_t, "b n c -> b c n"), images.shape[-2:], splits[0].kernel,
                        stride=splits[0].stride, padding=splits[0].padding)
        grid_of = {"t2t.split0": grids[0], "t2t.attn1": grids[0], "t2t.split1": grids[1], "t2t.attn2": grids[1],
                   "t2t.split2": grids[2]}
        stages = {k: rearrange(v.sum(-1), "b (h w) -> b h w", h=grid_of[k][0]) for k, v in stages.items()}
        tokens = rearrange(r_patch.sum(-1), "b (h w) -> b h w", h=grids[2][0])
        return pixels, stages, tokens, torch.stack(heads, dim=1), logits


T2T_SMALL = {  # 32 px: soft splits 8 x 8 -> 4 x 4 -> 2 x 2
    "transformer": dict(name="t2t_vit_t_14", embed_dim=32, num_heads=2),
    "performer": dict(name="t2t_vit_7", embed_dim=32, num_heads=2),
}


@pytest.mark.parametrize("kind,variant,gamma", [
    (kind, variant, gamma) for kind in ("transformer", "performer") for variant in ("attnlrp", "cp")
    for gamma in (None, 0.25) if (kind, variant, gamma) != ("performer", "cp", 0.25)  # the other three cover it
])
def test_t2t_equals_explicit_layer_by_layer_lrp(kind, variant, gamma):
    cfg = dict(T2T_SMALL[kind])
    model = small(cfg.pop("name"), **cfg)
    x = images_for(model, 2)
    target = torch.tensor([1, 4])
    rel = lrp(model, x, target, variant=variant, gamma=gamma)
    with torch.no_grad():
        pixels, stages, tokens, heads, logits = ExplicitLRP(variant, gamma)(model, x, target)
    # the Performer's features and its attention product are float32 in the model (and in both
    # computations here): float32 precision; everything else float64, where the identity rule's x / (x + 1e-10)
    # (LXT's, in analysis.lrp) against the exact identity here leaves ~1e-9, and with gamma the stabilisers of
    # the gradient x input form (zennit's 1e-6, LXT's input / (x + 1e-10)) ~1e-7
    tol = 1e-5 if kind == "performer" else 1e-6
    assert_close_scaled(rel.pixels, pixels, tol)
    assert set(rel.stages) == set(stages)
    for name, expected in stages.items():
        assert_close_scaled(rel.stages[name], expected, tol)
    assert_close_scaled(rel.tokens, tokens, tol)
    assert_close_scaled(rel.heads, heads, tol)
    torch.testing.assert_close(rel.logit, logits[torch.arange(2), target])


def test_t2t_stage_grids_and_the_soft_split_sums_windows_exactly():
    model = small("t2t_vit_t_14", img_size=64, embed_dim=32, num_heads=2)
    rel = lrp(model, images_for(model, 2), variant="attnlrp")
    assert {k: tuple(v.shape[1:]) for k, v in rel.stages.items()} == {
        "t2t.split0": (16, 16), "t2t.attn1": (16, 16), "t2t.split1": (8, 8), "t2t.attn2": (8, 8),
        "t2t.split2": (4, 4)}
    assert rel.tokens.shape == (2, 4, 4) and rel.heads.shape == (2, 2, 2)
    # a pixel's relevance is the sum of its copies' in the overlapping 7 x 7 windows: totals agree
    torch.testing.assert_close(rel.pixels.sum(dim=(1, 2, 3)), rel.stages["t2t.split0"].sum(dim=(1, 2)),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rel.stages["t2t.attn1"].sum(dim=(1, 2)), rel.stages["t2t.split1"].sum(dim=(1, 2)),
                               rtol=1e-12, atol=1e-12)


# --- conservation under CP-LRP ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [
    ("deit_tiny_patch16_224", dict(img_size=64, embed_dim=48)),
    ("t2t_vit_t_14", dict(embed_dim=32, num_heads=2)),
    ("t2t_vit_7", dict(embed_dim=32, num_heads=2)),
])
def test_cp_lrp_conserves_the_logit(name, kw):
    model = small(name, **kw)
    x = images_for(model, 3)
    rel = lrp(model, x, variant="cp", gamma=None, constants=True)
    # pixels x gradient + constants x gradient = logit: the network is linear in them under CP-LRP. The
    # identity rule's x / (x + 1e-10) is the only departure from exact linearity (and, in the Performer,
    # its float32 product with v).
    total = rel.pixels.sum(dim=(1, 2, 3)) + rel.constants
    torch.testing.assert_close(total, rel.logit, rtol=1e-8, atol=1e-8)
    assert (rel.conservation - rel.pixels.sum(dim=(1, 2, 3)) / rel.logit).abs().max() == 0
    # AttnLRP is not conservative in this sense (the softmax rule): the same sum misses the logit
    att = lrp(model, x, variant="attnlrp", gamma=None, constants=True)
    assert (att.pixels.sum(dim=(1, 2, 3)) + att.constants - att.logit).abs().max() > 1e-6


@pytest.mark.parametrize("name,tol", [("deit_tiny_patch16_224", 1e-8), ("t2t_vit_7", 1e-6)])
def test_cp_lrp_conserves_on_the_embedded_models_float64(name, tol):
    # the trained weights (at 64 px, position embedding resized, to keep float64 cheap). T2T-ViT-7's
    # Performer computes phi(q) (phi(k)^T v) in float32, as the model does: float32 precision there
    model = t2t.create_model(name, pretrained="embedded", img_size=64).eval().double()
    x = synthetic(model, 2).double()
    rel = lrp(model, x, variant="cp", gamma=None, constants=True)
    total = rel.pixels.sum(dim=(1, 2, 3)) + rel.constants
    torch.testing.assert_close(total, rel.logit, rtol=tol, atol=tol)


# --- batching, no side effects, explain() ----------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [("deit_tiny_patch16_224", dict(img_size=64, embed_dim=48)),
                                     ("t2t_vit_7", dict(embed_dim=32, num_heads=2))])
def test_batch_equals_per_image(name, kw):
    model = small(name, dtype=torch.float32, **kw)
    x = images_for(model, 3)
    batched = lrp(model, x, torch.tensor([0, 2, 4]))
    for i, c in enumerate([0, 2, 4]):
        single = lrp(model, x[i:i + 1], c)
        for a, b in [(batched.pixels[i], single.pixels[0]), (batched.tokens[i], single.tokens[0]),
                     (batched.heads[i], single.heads[0])]:
            assert_close_scaled(a, b, 1e-5)
        torch.testing.assert_close(batched.logit[i], single.logit[0])


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "t2t_vit_7"])
def test_model_is_bit_identical_afterwards(name):
    model = small(name, img_size=64, dtype=torch.float32, embed_dim=32, num_heads=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    forwards = {type(m): type(m).forward for m in model.modules()}
    x = images_for(model, 2)
    for variant in ("attnlrp", "cp"):
        lrp(model, x, variant=variant, gamma=0.1)
        lrp(model, x, variant=variant)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert _hooks(model) == 0 and model.training
    assert all(type(m).forward is forwards[type(m)] for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())  # no instance-level patch


def test_works_under_no_grad_and_inference_mode():
    model = small("deit_tiny_patch16_224", img_size=64, dtype=torch.float32, embed_dim=48)
    x = images_for(model, 2)
    expected = lrp(model, x).pixels
    with torch.no_grad():
        torch.testing.assert_close(lrp(model, x).pixels, expected)
    with torch.inference_mode():
        torch.testing.assert_close(lrp(model, x.clone()).pixels, expected)


@pytest.mark.parametrize("method,variant", [("attnlrp", "attnlrp"), ("cp_lrp", "cp")])
def test_explain_gives_the_token_map(method, variant):
    assert EXPLAINERS[method][1]  # takes a target
    model = small("t2t_vit_7", img_size=64, dtype=torch.float32, embed_dim=32, num_heads=2)
    x = images_for(model, 2)
    heat = explain(method, model, x, target=3)
    assert heat.shape == (2, 4, 4)
    torch.testing.assert_close(heat, lrp(model, x, 3, variant=variant).tokens)
    heat2, rel = explain(method, model, x, target=3, return_relevance=True)
    assert isinstance(rel, Relevance) and rel.variant == variant
    torch.testing.assert_close(heat2, heat)
    assert rel.pixel_map.shape == (2, 64, 64) and rel.conservation.shape == (2,)
    # the predicted class by default
    with torch.no_grad():
        pred = model(x).argmax(-1)
    assert torch.equal(attnlrp_map(model, x, return_relevance=True)[1].target, pred)


def test_default_gamma_is_the_measured_one():
    # what scored best on deletion / insertion (benchmarks/bench_lrp.py --faithfulness)
    assert DEFAULT_GAMMA == 0.25
    for name in ("t2t_vit_7", "t2t_vit_t_14", "deit_tiny_patch16_224"):
        model = small(name, dtype=torch.float32, embed_dim=32, num_heads=2, depth=1)
        x = images_for(model, 1)
        rel = lrp(model, x, 2)
        assert rel.gamma == 0.25
        torch.testing.assert_close(rel.pixels, lrp(model, x, 2, gamma=0.25).pixels, rtol=0, atol=0)
        torch.testing.assert_close(explain("attnlrp", model, x, target=2), rel.tokens, rtol=0, atol=0)
    with pytest.raises(ValueError, match="constants=True needs gamma=None"):
        lrp(model, x, constants=True)


def test_token_labeling_aux_head():
    model = small("t2t_vit_24_token_labeling", embed_dim=32, num_heads=2, depth=1)
    assert model.aux_head is not None
    x = images_for(model, 2)
    rel = lrp(model, x, variant="cp", gamma=None, constants=True)
    with torch.no_grad():
        torch.testing.assert_close(rel.logit, model(x).gather(1, rel.target[:, None])[:, 0])
    torch.testing.assert_close(rel.pixels.sum(dim=(1, 2, 3)) + rel.constants, rel.logit, rtol=1e-6, atol=1e-6)


def test_bad_input_gives_clear_errors():
    model = small("deit_tiny_patch16_224", img_size=64, dtype=torch.float32, embed_dim=48)
    x = images_for(model, 1)
    with pytest.raises(ValueError, match="variant must be one of"):
        lrp(model, x, variant="lrp")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        lrp(model, x[0])
    with pytest.raises(ValueError, match="3-channel"):
        lrp(model, x[:, :1])
    with pytest.raises(ValueError, match="position embedding"):
        lrp(model, torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match="gamma"):
        lrp(model, x, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        lrp(model, x, gamma="auto")
    with pytest.raises(ValueError, match="constants=True needs gamma=None"):
        lrp(model, x, gamma=0.25, constants=True)
    with pytest.raises(ValueError, match="target"):
        lrp(model, x, target=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="T2T-ViT and ViT"):
        lrp(torch.nn.Linear(3, 3), x)
    with pytest.raises(ValueError, match="unknown method"):
        explain("attn_lrp", model, x)
