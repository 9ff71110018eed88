# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How the answer is built: logit lens, direct logit attribution, patching and attention sinks
#
# The knock-outs (notebook 05) showed *that* a head matters. This notebook asks *how* each model builds its
# answer (`analysis.mechanisms`, the reference definitions of TransformerLens carried over to class-token
# ViTs and T2T-ViTs):
#
# 1. **Logit lens.** The class token read through the final norm and head after the embedding and after
#    every block: at which depth does the final answer become readable?
# 2. **Direct logit attribution (DLA).** The final class token is a sum of what the embedding, every head
#    and every MLP wrote into it; with the final LayerNorm's scale held at each image's own value, the logit
#    is exactly the sum of their contributions. How concentrated is the answer across heads?
# 3. **Activation patching.** Run the model on a *corrupted* image (the same synthetic image with its shape
#    removed: the generator's background alone) with one site taken from the run on the clean image, and
#    measure the share of the class's logit that site brings back. Which heads carry the difference, and in
#    how many, how local, tokens of the backbone's input does the decision live?
# 4. **Attention sinks.** Which tokens soak up attention or stand out by their norm (Darcet et al., ICLR
#    2024), in the backbone and in the T2T attention layers, do they carry content, and what do they do to
#    an attention rollout?
#
# Every verdict below is computed from the data in this run: where the T2T-ViT paper (Yuan et al., ICCV 2021)
# makes a claim, *supports* / *contradicts* when a 95% bootstrap interval over images excludes the other
# outcome, *inconclusive* otherwise. The paper does not test these mechanisms itself: each claim is quoted
# as the paper states it, and what it predicts for these measurements is our reading, marked as such.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import t2t
from analysis import mechanisms as mech
from analysis import notebook
from analysis.notebook import denormalize
from analysis.stats import bootstrap_mean, wilson_interval

START = time.perf_counter()
notebook.use_style()  # figures whose text is at least 10 pt as shown in Jupyter and on GitHub
torch.manual_seed(0)

# The two models: the embedded T2T-ViT-7 and DeiT-tiny (trained from scratch on the synthetic dataset), unless
# the environment names others (analysis/notebook.py lists the variables).
MODELS = notebook.load_models()
t2t_model, vit_model = MODELS["T2T-ViT"], MODELS["ViT"]
TRAINED = all(notebook.is_trained(m) for m in MODELS.values())
print(notebook.describe(MODELS))

# %%
N_LENS = 48      # synthetic test images of the logit lens and the DLA (one forward each: cheap)
N_HEADS = 8      # image pairs of the heads patching grid (one run per head and image)
N_RESID = 8      # image pairs of the residual patching (one run of the whole backbone per token and image)
N_SINKS = 8      # images of the attention-sink census
N_BOOT = 2000
RNG = np.random.default_rng(0)


def verdict(lo, hi, expected_sign):
    """supports / contradicts / inconclusive from a 95% interval of a difference the paper's claim (as we read
    it) expects to be of sign `expected_sign`."""
    if (lo > 0 and expected_sign > 0) or (hi < 0 and expected_sign < 0):
        return "supports"
    if (hi < 0 and expected_sign > 0) or (lo > 0 and expected_sign < 0):
        return "contradicts"
    return "inconclusive"


def about(v):
    return f"{v}{' about' if v == 'inconclusive' else ''}"


def paired(a, b):
    """Mean of a - b over images and its 95% percentile-bootstrap interval (the same resampled images)."""
    mean, lo, hi = bootstrap_mean(np.asarray(a, float) - np.asarray(b, float), n_boot=N_BOOT, rng=RNG)
    return float(mean), float(lo), float(hi)


def interval(values):
    mean, lo, hi = bootstrap_mean(np.asarray(values, float), n_boot=N_BOOT, rng=RNG)
    return f"{float(mean):.2f} [{float(lo):.2f}, {float(hi):.2f}]"


# clean synthetic test images and their twins with the shape removed (the same background, clutter and noise)
pairs = {label: mech.synthetic_pairs(m, N_LENS, kind="background") for label, m in MODELS.items()}
print(f"{N_LENS} test images per model; the corrupted twin of each is its background alone")

# %% [markdown]
# ## 1. Logit lens: at which depth is the answer readable?
#
# For each image, the class token at depth 0 (after the embedding: the class token and its position, the same
# for every image) and after each block, through the final LayerNorm (its statistics recomputed at each depth,
# as in the logit lens) and the head. The last depth is the model's output, checked below. An answer is
# *readable* at the first depth whose top-1 class is the final one; since depth 0 is the same for every image
# it agrees by chance with a tenth of them, so the first depth from which the top-1 *stays* the final one is
# reported beside it. Depths are shown as a share of each model's blocks (T2T-ViT-7 has 7, DeiT-tiny 12).

# %%
t0 = time.perf_counter()
caches, lenses, dlas = {}, {}, {}
for label, model in MODELS.items():
    x = pairs[label][0]
    caches[label] = mech.run_with_cache(model, x)
    lenses[label] = mech.logit_lens(model, caches[label])
    dlas[label] = mech.direct_logit_attribution(model, caches[label])
    gap = (lenses[label][:, -1] - caches[label].logits).abs().max().item()
    print(f"{label:8s} lens: last depth - model output = {gap:.1e} (max over images and classes)")
print(f"lens + DLA of {N_LENS} images x 2 models in {time.perf_counter() - t0:.1f} s")

fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), layout="constrained")
depth_first, depth_stay = {}, {}
for n, (label, lens) in enumerate(lenses.items()):
    blocks = lens.shape[1] - 1
    share = np.arange(blocks + 1) / blocks
    agree = (lens.argmax(-1) == lens[:, -1:].argmax(-1)).numpy().astype(float)       # (B, L + 1)
    prob = lens.softmax(-1).gather(2, lens[:, -1].argmax(-1)[:, None, None].expand(-1, blocks + 1, 1))[..., 0]
    for ax, values in zip(axes, (agree, prob.numpy())):
        mean, lo, hi = bootstrap_mean(values, n_boot=N_BOOT, rng=RNG)
        ax.plot(share, mean, "o-", ms=3, color=f"C{n}", label=f"{label} ({blocks} blocks)")
        ax.fill_between(share, lo, hi, color=f"C{n}", alpha=0.2)
    depth_first[label] = mech.readable_depth(lens).numpy() / blocks
    depth_stay[label] = mech.readable_depth(lens, stay=True).numpy() / blocks
axes[0].set(xlabel="depth / blocks (0: after the embedding)", ylabel="share of images",
            title="lens top-1 = final top-1")
axes[1].set(xlabel="depth / blocks", ylabel="probability", title="lens probability of the final class")
for ax in axes:
    ax.grid(alpha=0.3)
axes[0].legend()
plt.show()

for label in MODELS:
    blocks = lenses[label].shape[1] - 1
    print(f"{label:8s} readable at depth {interval(depth_first[label] * blocks)} of {blocks} blocks "
          f"(share {interval(depth_first[label])}); stays readable from {interval(depth_stay[label] * blocks)} "
          f"(share {interval(depth_stay[label])})")
d, lo, hi = paired(depth_stay["T2T-ViT"], depth_stay["ViT"])
depth_word = "earlier" if hi < 0 else "later" if lo > 0 else "at a depth indistinguishable from"
print(f"\nShare of depth from which the answer stays readable, T2T-ViT - ViT = {d:+.2f} "
      f"(95% CI [{lo:+.2f}, {hi:+.2f}]): T2T-ViT's answer settles {depth_word}"
      f"{' than' if depth_word != 'at a depth indistinguishable from' else ''} ViT's, relative to depth.")

# %% [markdown]
# The T2T-ViT paper makes no claim about where in the backbone the answer forms; this is a description of
# these two models.
#
# ## 2. Direct logit attribution: who writes the answer into the class token?
#
# The logit of the predicted class, split over the embedding (the class token's input to block 0), each
# head (its slice of `attn @ v` through its columns of the output projection), each MLP and the biases.
# **The final LayerNorm's scale sigma is held at each image's actual value**: that makes the norm affine, so
# the contributions add up to the logit exactly (checked below); a component's contribution is what it adds
# *given* the others, not what the logit would be without it (that is the knock-out).
#
# **What the paper claims** (abstract): "the redundant attention backbone design of ViT leads to limited feature
# richness" (many channels of its features are blank, Fig. 2), which T2T-ViT's deep-narrow backbone reduces.
# **Our reading**: if ViT's heads are redundant, fewer of them should write its answer, so the top 10% of
# its heads should hold a *larger* share of the heads' |DLA| than T2T-ViT's.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8), layout="constrained",
                         gridspec_kw={"width_ratios": [1, 0.9]})
concentration = {}
for ax, (label, dla) in zip(axes, dlas.items()):
    err = (dla.total - dla.logit).abs().max().item()
    grid = dla.heads.mean(0).numpy()
    lim = np.abs(grid).max()
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set(title=f"{label}: mean DLA per head", xlabel="head", ylabel="block",
           xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))
    fig.colorbar(im, ax=ax, shrink=0.8)
    concentration[label] = mech.top_share(dla.heads, 0.1).numpy()
    k = int(np.ceil(0.1 * grid.size))
    parts = {"heads": dla.heads.sum((1, 2)), "MLPs": dla.mlps.sum(1), "embedding": dla.embed, "biases": dla.bias}
    print(f"{label:8s} logit {dla.logit.mean():.2f} on average = " + " + ".join(
        f"{name} {v.mean():.2f}" for name, v in parts.items()) + f" (sum - logit at most {err:.1e}); "
          f"last block's MLP {dla.mlps[:, -1].mean():.2f}; top {k} of {grid.size} heads hold "
          f"{interval(concentration[label])} of the heads' |DLA| (equal heads: {k / grid.size:.2f})")
plt.show()

d, lo, hi = paired(concentration["ViT"], concentration["T2T-ViT"])
dla_verdict = verdict(lo, hi, +1)
print(f"\nShare of |DLA| in the top 10% of heads, ViT - T2T-ViT = {d:+.2f} (95% CI [{lo:+.2f}, {hi:+.2f}]): "
      f"the data {about(dla_verdict)} our reading of the paper's redundancy claim.")

# %% [markdown]
# ## 3. Activation patching: where does the difference between the image and its background live?
#
# Clean: a test image; corrupted: the same image with its shape removed (`synthetic_pairs(kind="background")`:
# the same gradient, clutter, strokes and pixel noise). Each patched run is the corrupted one with one site
# from the clean run; the value is the share of the logit of the class predicted for the clean image it recovers,
# (patched - corrupted) / (clean - corrupted): 0 nothing, 1 all of it. Runs are batched: each starts at the
# patched block from the corrupted run's activations there.
#
# ### Heads
#
# One head's slice of `attn @ v` at every token. Beside the exact grid, *attribution patching* estimates it
# from one forward and backward (the gradient's linear approximation): how well does it agree?

# %%
t0 = time.perf_counter()
head_patch, head_attr = {}, {}
fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8), layout="constrained")
for ax, (label, model) in zip(axes, MODELS.items()):
    clean, corrupted = pairs[label][0][:N_HEADS], pairs[label][1][:N_HEADS]
    head_patch[label] = mech.activation_patching(model, clean, corrupted, site="heads")
    head_attr[label] = mech.activation_patching(model, clean, corrupted, site="heads", method="attribution")
    grid = head_patch[label].recovered.nanmean(0).numpy()
    lim = np.abs(grid).max()
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set(title=f"{label}: recovered by one head", xlabel="head", ylabel="block",
           xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()
for label, p in head_patch.items():
    exact, approx = p.recovered.flatten().numpy(), head_attr[label].recovered.flatten().numpy()
    keep = ~(np.isnan(exact) | np.isnan(approx))
    best = np.unravel_index(np.nanargmax(p.recovered.nanmean(0).numpy()), p.recovered.shape[1:])
    print(f"{label:8s} clean logit {p.clean.mean():.2f}, background alone {p.corrupted.mean():.2f}; "
          f"best head: block {best[0]}, head {best[1]} recovers {p.recovered[:, best[0], best[1]].nanmean():.0%}; "
          f"attribution patching vs exact: r = {np.corrcoef(exact[keep], approx[keep])[0, 1]:.2f}")
print(f"heads patching of {N_HEADS} pairs x 2 models (exact and attribution) in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ### Tokens after the embedding
#
# One token of the residual stream before block 0 (after the T2T module or ViT's patch embedding, plus the
# position embedding): each token there stands for one place in the image (a 14 x 14 grid in both models),
# so this is where in the image the decision can be recovered from. Exact patching only: attribution
# patching's linear estimate is poor this far from the output (its correlation with the exact values is
# printed below).
#
# **What the paper claims** (abstract): in ViT "the simple tokenization of input images fails to model the
# important local structure such as edges and lines among neighboring pixels"; the T2T module models it.
# **Our reading**: T2T-ViT's decision should be recoverable from *fewer* tokens (the count holding 80% of the
# positive recovered fractions) that lie *closer together* (their mean distance from their centroid, in token
# cells) than ViT's.

# %%
t0 = time.perf_counter()
resid_patch, resid_attr, object_tokens = {}, {}, {}
for label, model in MODELS.items():
    clean, corrupted = pairs[label][0][:N_RESID], pairs[label][1][:N_RESID]
    resid_patch[label] = mech.activation_patching(model, clean, corrupted, site="resid", layers=[0])
    resid_attr[label] = mech.activation_patching(model, clean, corrupted, site="resid", method="attribution",
                                                 layers=[0])
    # the object's tokens: those whose 16 x 16 cell of the image changes when the shape is removed
    changed = (clean - corrupted).abs().amax(1)[:, None]                                   # (B, 1, S, S)
    grid = caches[label].grid
    object_tokens[label] = (torch.nn.functional.adaptive_max_pool2d(changed, grid)[:, 0] > 1e-3).flatten(1)
print(f"residual patching after the embedding, {N_RESID} pairs x 2 models, in {time.perf_counter() - t0:.0f} s")

EXAMPLE = 1
fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.0), layout="constrained")
axes[0].imshow(denormalize(pairs["T2T-ViT"][0][EXAMPLE], t2t_model))
axes[0].set_title(f"test image {EXAMPLE}: {notebook.class_name(t2t_model, int(pairs['T2T-ViT'][2][EXAMPLE]))}")
axes[0].set_axis_off()
for ax, (label, p) in zip(axes[1:], resid_patch.items()):
    grid = caches[label].grid
    m = p.recovered[EXAMPLE, 0, 1:].reshape(grid).numpy()
    lim = np.nanmax(np.abs(m))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"{label}: recovered by one token")
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

locality = {}
for label, p in resid_patch.items():
    scores = p.recovered[:, 0, 1:]                                   # (B, N) patch tokens
    pos = scores.clamp_min(0).nan_to_num(0.0)
    on_object = ((pos * object_tokens[label]).sum(1) / pos.sum(1)).numpy()
    locality[label] = {"tokens": mech.tokens_for_share(scores, 0.8).numpy(),
                       "spread": mech.spatial_spread(scores, caches[label].grid).numpy(), "object": on_object}
    exact, approx = scores.flatten().numpy(), resid_attr[label].recovered[:, 0, 1:].flatten().numpy()
    print(f"{label:8s} tokens holding 80% of the recovery: {interval(locality[label]['tokens'])}; their spread: "
          f"{interval(locality[label]['spread'])} cells; share on the object's tokens: "
          f"{interval(on_object)} (the object covers {object_tokens[label].float().mean():.0%} of the tokens); "
          f"best single token recovers {interval(scores.amax(1).numpy())}; attribution vs exact r = "
          f"{np.corrcoef(exact, approx)[0, 1]:.2f}")
resid_verdicts = {}
for key, words in (("tokens", "tokens holding 80%"), ("spread", "spread (cells)")):
    d, lo, hi = paired(locality["T2T-ViT"][key], locality["ViT"][key])
    resid_verdicts[key] = verdict(lo, hi, -1)
    print(f"{words}, T2T-ViT - ViT = {d:+.2f} (95% CI [{lo:+.2f}, {hi:+.2f}]) -> the data "
          f"{about(resid_verdicts[key])} our reading (fewer, closer tokens for T2T-ViT)")

# %% [markdown]
# ## 4. Attention sinks and high-norm tokens
#
# Per block, each token's norm (the residual stream entering the block) and the share of the block's
# attention it receives (mean over heads and queries). A token is **high-norm** when its norm exceeds 3x the
# block's median (our threshold: Darcet et al. see such tokens as a separate mode of the norm distribution, far
# above the rest), an **attention sink** when it receives more than 10x the uniform share 1/T. For T2T-ViT
# also the two T2T attention layers (56 x 56 and 28 x 28 tokens; the norm is that of the layer's output
# tokens). The Explanations page measures that T2T attention 1 puts a median 99.8% of a query's weight on 1%
# of the tokens: *which* tokens, and do they carry content? Content is measured here as (a) lying on the
# object (the tokens whose window changes when the shape is removed) and (b) the contrast of the pixels in
# their window (std over the window, all channels).
#
# **What Darcet et al. claim** (ICLR 2024): high-norm tokens appear in *large* ViTs trained *long* (ViT-L
# and up: DINOv2, OpenCLIP, DeiT-III), partway through the network, on low-information background patches;
# they hold global rather than local information and make attention maps noisy; smaller models do not have
# them. **Our reading**: the blocks of these two tiny models should make none (the embedding, block 0's
# input, is left out of this count: it is not made by the attention blocks). The verdict: *supports* when no
# image has one, *contradicts* when the 95% Wilson interval of the share of images with one lies above half,
# *inconclusive* otherwise.

# %%
t0 = time.perf_counter()
sinks = {label: mech.attention_sinks(model, pairs[label][0][:N_SINKS]) for label, model in MODELS.items()}
print(f"sink census of {N_SINKS} images x 2 models in {time.perf_counter() - t0:.1f} s")


def per_block(values, digits=1):
    """(B, L) -> the mean over images per block, as a short list."""
    return np.round(values.double().mean(0).numpy(), digits).tolist()


high_norm_images = {}
for label, s in sinks.items():
    b = s.blocks
    ratio = (b.norms / b.norms.median(-1, keepdim=True).values).amax(-1)          # (B, L)
    final = s.final_norms / s.final_norms.median(-1, keepdim=True).values          # (B, T) the last output
    print(f"{label:8s} backbone, per block: largest norm / median {per_block(ratio)}, after the last block "
          f"{final.amax(-1).mean():.1f}; high-norm tokens per image {per_block(b.high_norm.sum(-1))}; "
          f"most-attended token x uniform {per_block(b.received.amax(-1) * b.received.shape[-1], 0)}; sinks per "
          f"image {per_block(b.sink.sum(-1))}; the class token's share {per_block(b.received[..., 0], 3)}")
    # Darcet et al.'s outliers are made by the network (they appear mid-depth), so the embedding (block 0's
    # input) is left out: the images with a high-norm token among the blocks' outputs
    made = b.high_norm[:, 1:].flatten(1).any(1) | (final > s.norm_factor).any(1)
    high_norm_images[label] = made.float().numpy()
counts = {label: int(v.sum()) for label, v in high_norm_images.items()}
bounds = {label: wilson_interval(k, N_SINKS) for label, k in counts.items()}
darcet_verdict = ("supports" if not any(counts.values()) else
                  "contradicts" if any(lo > 0.5 for lo, _ in bounds.values()) else "inconclusive")
print("images with a high-norm token in a block's output: " + ", ".join(
    f"{label} {counts[label]} of {N_SINKS} (95% CI {lo:.0%}-{hi:.0%})" for label, (lo, hi) in bounds.items())
      + f" -> the data {about(darcet_verdict)} our reading of Darcet et al. (none in models this small)")

# %% [markdown]
# ### The T2T attention layers' sinks: where they are and what they hold

# %%
t2t_s = sinks["T2T-ViT"].t2t
x_sinks = pairs["T2T-ViT"][0][:N_SINKS]
changed = (x_sinks - pairs["T2T-ViT"][1][:N_SINKS]).abs().amax(1) > 1e-3              # (B, S, S) object pixels
raw = x_sinks * torch.tensor(t2t_model.default_cfg["std"]).view(3, 1, 1)               # contrast in [0, 1] units


def box_sums(maps, boxes):
    """(B, S, S) maps summed over each (top, left, bottom, right) box of (N, 4) boxes -> (B, N), through the
    summed-area table (exact, one pass)."""
    table = torch.nn.functional.pad(maps.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    top, left, bottom, right = boxes.unbind(-1)
    return table[:, bottom, right] - table[:, top, right] - table[:, bottom, left] + table[:, top, left]


content = {}
for name, s in t2t_s.items():
    boxes = t2t.receptive_fields(t2t_model, name).flatten(0, 1)                        # (N, 4) pixel windows
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * 3).double()
    on_object = box_sums(changed.float(), boxes) > 0                                    # (B, N)
    mean = box_sums(raw.sum(1), boxes) / area
    contrast = (box_sums(raw.square().sum(1), boxes) / area - mean.square()).clamp_min(0).sqrt()  # pixel std
    k = max(1, s.received.shape[-1] // 100)
    top1 = s.received[:, 0].topk(k, dim=-1)
    sink = s.sink[:, 0]
    border = torch.zeros(s.grid, dtype=torch.bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    border = border.flatten()
    content[name] = {"object_sink": [on_object[i][sink[i]].float().mean().item() for i in range(N_SINKS)],
                     "object_all": on_object.float().mean(1).numpy(),
                     "contrast_ratio": [(contrast[i][sink[i]].median() / contrast[i].median()).item()
                                        for i in range(N_SINKS)],
                     "border": [border[sink[i]].float().mean().item() for i in range(N_SINKS)]}
    print(f"{name}: {s.received.shape[-1]} tokens; the top 1% ({k}) receive {interval(top1.values.sum(-1).numpy())} "
          f"of all its attention; sinks (> 10x uniform) per image {interval(sink.sum(-1).float().numpy())}, "
          f"high-norm tokens {interval(s.high_norm[:, 0].sum(-1).float().numpy())}")
    print(f"   sinks on the object: {interval(content[name]['object_sink'])} (all tokens: "
          f"{interval(content[name]['object_all'])}); on the grid's border: {interval(content[name]['border'])} "
          f"(all tokens: {border.float().mean():.2f}); their pixel contrast / the median token's: "
          f"{interval(content[name]['contrast_ratio'])}")

fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.0), layout="constrained")
i = EXAMPLE
axes[0].imshow(denormalize(x_sinks[i], t2t_model))
axes[0].set_title(f"test image {i}")
for ax, (name, s) in zip(axes[1:], t2t_s.items()):
    ax.imshow(np.log10(s.received[i, 0].reshape(s.grid).numpy() + 1e-9), cmap="magma")
    ax.set_title(f"{name}: log10 share received")
    rows, cols = np.divmod(np.flatnonzero(s.sink[i, 0].numpy()), s.grid[1])
    ax.plot(cols, rows, "c+", ms=5)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ### Rollout with and without the flagged tokens
#
# Attention rollout (mean over heads, identity for the residual) of the class token, beside the same rollout
# with each block's flagged patch tokens' columns removed (rows re-normalised): where the sinks shape the map,
# the two differ. Rank correlation over the patch tokens, per image.

# %%
def ranks(a):
    return a.argsort(-1).argsort(-1).double()


for label, s in sinks.items():
    flagged = s.blocks.flagged[..., 1:].sum(-1).float().mean().item()
    rho = torch.stack([torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1]
                       for a, b in zip(s.rollout, s.rollout_without_sinks)]).numpy()
    print(f"{label:8s} {flagged:.1f} flagged patch tokens per block and image; rollout with vs without them: "
          f"Spearman {interval(rho)}")

# %% [markdown]
# ## What the data say

# %%
print("Claim (source) | what these models show | verdict")
print(f"- no claim (description) | the answer stays readable from {depth_stay['T2T-ViT'].mean():.0%} of "
      f"T2T-ViT's depth and {depth_stay['ViT'].mean():.0%} of ViT's | T2T-ViT settles {depth_word}"
      f"{' than' if depth_word != 'at a depth indistinguishable from' else ''} ViT")
print(f"- ViT's backbone is redundant (T2T-ViT paper; our reading: its answer is written by fewer heads) | top 10% "
      f"of heads hold {concentration['T2T-ViT'].mean():.0%} of T2T-ViT's |DLA|, {concentration['ViT'].mean():.0%} "
      f"of ViT's | {dla_verdict}")
print(f"- the T2T module models local structure (T2T-ViT paper; our reading: the decision lives in fewer, closer "
      f"input tokens) | 80% of the recovery in {locality['T2T-ViT']['tokens'].mean():.1f} vs "
      f"{locality['ViT']['tokens'].mean():.1f} tokens, spread {np.nanmean(locality['T2T-ViT']['spread']):.2f} vs "
      f"{np.nanmean(locality['ViT']['spread']):.2f} cells | fewer: {resid_verdicts['tokens']}; "
      f"closer: {resid_verdicts['spread']}")
print(f"- high-norm tokens need large, long-trained ViTs (Darcet et al.; our reading: none here) | images with a "
      f"high-norm token made by the backbone: T2T-ViT {counts['T2T-ViT']} of {N_SINKS}, ViT {counts['ViT']} of "
      f"{N_SINKS} | {darcet_verdict}")
for name, c in content.items():
    print(f"- {name} concentrates on few tokens (measured here and on the Explanations page) | its sinks lie on the "
          f"object {np.mean(c['object_sink']):.0%} of the time (all tokens: {np.mean(c['object_all']):.0%}), their "
          f"windows' pixel contrast is {np.mean(c['contrast_ratio']):.1f}x the median token's | description")
if not TRAINED:
    print("\nThese models are UNTRAINED (no embedded weights in this checkout): the verdicts describe random "
          "networks, not what the paper is about.")

# %% [markdown]
# **How far this goes.** Each architecture is one small network trained on a synthetic 10-class task, and the
# intervals capture only the variation over images (a few of them for the patching, which runs the backbone
# once per token). DLA and the lens read the class token *as if* the rest of the network were fixed (the
# LayerNorm's scale held, later blocks skipped); patching measures what one site can restore on its own, not
# what the model needs. With the released ImageNet weights (`T2T_LENS_WEIGHTS=imagenet`) the same cells run on
# the networks the paper describes (the synthetic twins then are out-of-distribution images for them).

# %%
print(f"notebook ran in {time.perf_counter() - START:.0f} s")
