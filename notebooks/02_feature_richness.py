# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Feature richness: T2T-ViT vs ViT
#
# Fig. 2 of the T2T-ViT paper shows feature maps of ViT and T2T-ViT blocks side by side: in ViT many
# channels are blank or nearly constant (*invalid*) and few show local detail such as edges and lines,
# while T2T-ViT's channels carry more varied local structure. The paper argues that this redundancy is
# why ViT needs so much data, and that the T2T module's overlapping soft splits cure it.
#
# A picture of one image can be chosen to make any point, so this notebook measures the claim over
# **many images** (`N_SYNTH` synthetic test images plus the bundled photos) with the metrics of
# `analysis.redundancy`, computed on the patch tokens of every block, each channel laid out as a
# 14 x 14 map:
#
# | metric | what it measures | the paper expects T2T-ViT to be |
# |---|---|---|
# | `invalid_fraction` | share of channels whose map is (nearly) flat: spatial std < 0.1 x the layer's RMS | lower |
# | `mean_abs_corr` | mean \|Pearson correlation\| between the valid channel maps: redundancy | lower |
# | `effective_rank_frac` | effective rank of the token x channel matrix / width: share of directions used | higher |
# | `high_freq_fraction` | share of a map's spectral energy above half the Nyquist frequency: local detail | higher |
#
# Every number comes with a 95% bootstrap confidence interval over images; differences between the models
# are paired (the same images go through both).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

import t2t
from analysis import notebook, paper_fig2, redundancy
from analysis.notebook import denormalize, photo_batch, synthetic_batch
from analysis.stats import bootstrap_mean
from t2t.data import CLASS_NAMES
from t2t.images import open_image, sample_images
from t2t.loading import load_model

START = time.perf_counter()
notebook.use_style()  # figures whose text is at least 10 pt as shown in Jupyter and on GitHub
torch.manual_seed(0)

# The two models: the embedded T2T-ViT-7 and DeiT-tiny (trained from scratch on the synthetic dataset), unless
# the environment names others: T2T_LENS_WEIGHTS=imagenet for the released ImageNet weights, or a checkpoint
# (analysis/notebook.py lists the variables).
MODELS = notebook.load_models()
t2t_model, vit_model = MODELS["T2T-ViT"], MODELS["ViT"]
TRAINED = all(notebook.is_trained(m) for m in MODELS.values())
print(notebook.describe(MODELS))


# %%
N_SYNTH = 96           # synthetic test images; the 3 bundled photos come on top
BATCH = 32
METRICS = ["invalid_fraction", "mean_abs_corr", "effective_rank_frac", "high_freq_fraction"]
EXPECTED = {"invalid_fraction": -1, "mean_abs_corr": -1, "effective_rank_frac": +1, "high_freq_fraction": +1}


def embedding_name(model):
    return "t2t.project" if model.default_cfg["family"] == "t2t" else "patch_embed"


def profile(model, keep=None):
    """Metrics per image (rows) and stage (columns: tokens entering the backbone, then each block).

    Returns {metric: (n_images, 1 + L) array, "spread": (n_images, L, D) channel spread relative to the
    layer's RMS spread (what `invalid_channels` thresholds)} and, for image `keep`, its tokens per stage.
    """
    x = torch.cat([synthetic_batch(model, N_SYNTH)[0], photo_batch(model)[0]])
    out, kept = {m: [] for m in [*METRICS, "spread"]}, None
    with torch.no_grad():
        for start in range(0, len(x), BATCH):
            tr = t2t.trace(model, x[start:start + BATCH], attention=False)
            grid = tr.grid("blocks.0")
            embed = redundancy.block_metrics(tr[embedding_name(model)], grid, num_prefix_tokens=0)
            blocks = redundancy.stacked_block_metrics(tr.block_tokens(), grid)
            width = tr["blocks.0"].shape[-1]
            for m in METRICS:
                key = "effective_rank" if m == "effective_rank_frac" else m
                scale = width if m == "effective_rank_frac" else 1
                out[m].append(torch.cat([embed[key][:, None], blocks[key]], dim=1).numpy() / scale)
            spread = torch.stack([redundancy.channel_spread(redundancy.feature_maps(t, grid))
                                  for t in tr.block_tokens()], dim=1)                  # (B, L, D)
            out["spread"].append((spread / spread.square().mean(-1, keepdim=True).sqrt()).numpy())
            if keep is not None and start <= keep < start + BATCH:
                i = keep - start
                kept = [tr[embedding_name(model)][i:i + 1]] + [t[i:i + 1, 1:] for t in tr.block_tokens()]
    return {m: np.concatenate(v) for m, v in out.items()}, kept


EXAMPLE = 4 if t2t_model.num_classes == 10 else N_SYNTH    # a synthetic image, or the first photo
t0 = time.perf_counter()
results, example_tokens = {}, {}
for label, model in MODELS.items():
    results[label], example_tokens[label] = profile(model, keep=EXAMPLE)
n_images = len(results["T2T-ViT"]["invalid_fraction"])
print(f"{n_images} images x {len(MODELS)} models traced and measured in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## The paper's Fig. 2 view
#
# One image, then the first 32 channels of its patch tokens in each model (T2T-ViT left, ViT right), each
# channel as a 14 x 14 map: the tokens that enter the backbone (after the T2T module, or ViT's patch
# embedding), after the first block and after the last. Maps are centred per channel and share one grey
# scale per panel, so a flat channel shows as a blank grey tile, as in the paper; **red frames mark the
# channels `invalid_channels` calls invalid**.

# %%
def mosaic(tokens, grid=(14, 14), n=32, cols=8):
    """(1, N, D) tokens -> a tiled image of the first n channel maps, and which of them are invalid."""
    maps = redundancy.feature_maps(tokens, grid, num_prefix_tokens=0)[0, :n]    # (n, h, w)
    invalid = redundancy.invalid_channels(maps[None])[0]
    centred = maps - maps.mean(dim=(1, 2), keepdim=True)
    scale = 3 * centred.flatten(1).std(dim=1).square().mean().sqrt()
    h, w = grid
    rows = n // cols
    tile = np.full((rows * (h + 2), cols * (w + 2)), np.nan)
    for c in range(n):
        r, q = divmod(c, cols)
        top, left = r * (h + 2) + 1, q * (w + 2) + 1
        tile[top:top + h, left:left + w] = (centred[c] / scale).clamp(-1, 1)
    return tile, invalid.numpy(), (h, w, cols)


picture_model = MODELS["T2T-ViT"]
x_example = torch.cat([synthetic_batch(picture_model, N_SYNTH)[0], photo_batch(picture_model)[0]])[EXAMPLE]
if EXAMPLE < N_SYNTH:
    example_title = f"synthetic test image {EXAMPLE}: {CLASS_NAMES[synthetic_batch(picture_model, 1, EXAMPLE)[1][0]]}"
else:
    example_title = f"photo: {photo_batch(picture_model)[1][0]}"
fig, ax = plt.subplots(figsize=(2.6, 2.8))
ax.imshow(denormalize(x_example, picture_model))
ax.set_title(example_title)
ax.set_axis_off()
plt.show()

fig, axes = plt.subplots(3, 2, figsize=(8.4, 7.2), layout="constrained")
for col, label in enumerate(MODELS):
    toks = example_tokens[label]
    stages = [("tokens entering the backbone", toks[0]), ("after block 1", toks[1]),
              (f"after block {len(toks) - 1} (the last)", toks[-1])]
    for row, (title, t) in enumerate(stages):
        tile, invalid, (h, w, cols) = mosaic(t)
        ax = axes[row, col]
        ax.imshow(tile, cmap="gray", vmin=-1, vmax=1)
        for c in np.flatnonzero(invalid):
            r, q = divmod(c, cols)
            ax.add_patch(Rectangle((q * (w + 2) + 0.5, r * (h + 2) + 0.5), w, h, fill=False, color="r", lw=1.2))
        ax.set_title(f"{label}, {title}:\n{invalid.sum()} of 32 channels invalid")
        ax.set_axis_off()
plt.show()

# %% [markdown]
# ## Fig. 2 as the official notebook draws it
#
# The cells above are **ours**: the model's own input (its crop and mean / std), its normal forward, maps
# centred per channel. The authors' only code for the paper's Fig. 2 is `visualization_vit.ipynb` in the
# official repository (yitu-opensource/T2T-ViT, commit 0f63dc9), for ViT only. `analysis.paper_fig2` follows
# it step by step; **the notebook's steps**, by its cell (counted from 0):
#
# - cell 1: `create_model('vit_large_patch16_384', pretrained=True)`, never put in eval mode (its drop
#   rates are 0, so that changes nothing). Here: the two models of this notebook.
# - cell 3: `all_block`, the model's children in order with the blocks flattened: patch_embed, pos_drop,
#   the blocks, norm, head (timm 0.3.4). Our models' children come in the same order (T2T-ViT's with
#   tokens_to_token first), so the same list is built below.
# - cell 5: `cv2.imread`, RGB, `Resize((512, 512))` (PIL bilinear, the aspect ratio not kept, no crop),
#   `ToTensor`: pixels in [0, 1], **no mean / std**. Here: `paper_fig2.notebook_image(photo, SIZE)`.
# - cell 6: `outputs` = patch_embed(x), pos_drop of that, then each block's output: **no class token and no
#   position embedding** ever enter (they are Parameters, not children). Here: `paper_fig2.paper_tokens`.
# - cell 8: for layers 0 to 4, `squeeze(0).transpose(0, 1).reshape(1024, 32, 32)` (each channel on the
#   token grid), the first 36 channels in a 6 x 6 grid of `imshow(cmap='gray')`, axis off. Here:
#   `paper_fig2.paper_feature_maps`, drawn below the same way.
#
# So its layer_0 and layer_1 are both the patch embedding, and layer_2 to layer_4 are blocks 1 to 3. Its
# comment suggests 1024 or 2048 px for sharper maps. **Ours**: the same steps for T2T-ViT (its T2T module in
# place of the patch embedding: the notebook has none for T2T-ViT), the photo (the notebook used a dog photo
# we do not ship), the red frames and the numbers of invalid channels (`analysis.redundancy.invalid_channels`,
# threshold 0.1; the notebook marks none), and, as a control, the same maps with the class token and the
# position table put back (T2T-ViT: the sinusoid table made for the size; ViT: its table resized bicubically).

# %%
SIZE = paper_fig2.NOTEBOOK_SIZE  # 512, the notebook's; any multiple of 16 works (1024 px: several times slower)
photo = open_image(sample_images()["cat"])
x01 = paper_fig2.notebook_image(photo, SIZE)  # (1, 3, 512, 512) in [0, 1]

# the notebook's cells 3 and 6, as written there, on our models: the same tensors as paper_fig2's
for label, model in MODELS.items():
    all_block = []
    for model_child in list(model.children()):
        if type(model_child) != torch.nn.modules.container.ModuleList:  # noqa: E721 (the notebook's test)
            all_block.append(model_child)
        else:
            for sub_child in list(model_child.children()):
                all_block.append(sub_child)
    with torch.no_grad():
        outputs = [all_block[0](x01)]  # the notebook calls this list `results`, then `outputs`
        for i in range(1, len(all_block) - 2):
            outputs.append(all_block[i](outputs[-1]))
    ours = paper_fig2.notebook_outputs(model, x01, paper_fig2.NOTEBOOK_LAYERS)
    same = all(torch.equal(a, b) for a, b in zip(outputs, ours))
    print(f"{label:8s} notebook loop: {len(outputs)} outputs of shape {tuple(outputs[0].shape)}; "
          f"layer_0 .. layer_4 identical to analysis.paper_fig2: {same}")

DEPTHS = [0, 1, 2, 3]  # the stem (layer_0, layer_1), blocks 1 to 3 (layer_2 .. layer_4)
fig2_maps, fig2_invalid = {}, {}
t0 = time.perf_counter()
for label, model in MODELS.items():
    table = "sinusoid" if model.default_cfg["family"] == "t2t" else "interpolated"
    fig2_grid = (SIZE // 16, SIZE // 16)
    for inputs, kwargs in (("notebook", {}), ("with cls + table", {"pos_embed": table, "class_token": True})):
        tokens = paper_fig2.paper_tokens(model, x01, DEPTHS, **kwargs)
        for d, t in zip(DEPTHS, tokens):
            maps = redundancy.feature_maps(t, fig2_grid, num_prefix_tokens=1 if kwargs else 0)  # (1, D, h, w)
            fig2_maps[label, inputs, d] = maps[0]
            fig2_invalid[label, inputs, d] = paper_fig2.invalid_summary(maps)
print(f"both models, {len(DEPTHS)} depths, 2 protocols at {SIZE} px in {time.perf_counter() - t0:.1f} s\n")

print(f"invalid channels (threshold 0.1) at {SIZE} px: all channels (first 36, the ones drawn)")
print(f"{'model':8s} {'protocol':18s} " + " ".join(f"{'stem' if d == 0 else f'block {d}':>15s}" for d in DEPTHS))
for label in MODELS:
    for inputs in ("notebook", "with cls + table"):
        cells = []
        for d in DEPTHS:
            s = fig2_invalid[label, inputs, d]
            cells.append(f"{int(s['count'][0])}/{fig2_maps[label, inputs, d].shape[0]} ({int(s['shown_count'][0])})")
        print(f"{label:8s} {inputs:18s} " + " ".join(f"{c:>15s}" for c in cells))

# %% [markdown]
# The notebook's figure for block 1 (its layer_2.png), for both models: the first 36 channels, each drawn
# with `imshow(cmap='gray')` (scaled to its own minimum and maximum, as the notebook's cell 8 does); a red
# frame (ours) marks a channel `invalid_channels` calls invalid.

# %%
fig = plt.figure(figsize=(8.4, 4.6), layout="constrained")
for sub, label in zip(fig.subfigures(1, 2, wspace=0.04), MODELS):
    maps = fig2_maps[label, "notebook", 1]
    invalid = fig2_invalid[label, "notebook", 1]["invalid"][0]
    axes = sub.subplots(6, 6)
    for i, ax in enumerate(axes.flat):
        ax.imshow(maps[i].numpy(), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # no frame (the notebook's axis off) unless invalid
            spine.set_visible(bool(invalid[i]))
            spine.set(color="r", linewidth=2)
    sub.suptitle(f"{label}, block 1 (layer_2), {SIZE} px: {int(invalid[:36].sum())} of 36 invalid")
plt.show()

# %% [markdown]
# **The paper's claim** (its Fig. 2, ViT-L/16 and T2T-ViT-24 trained on ImageNet; not these models): many of
# ViT's feature maps are invalid (blank or stuck), fewer of T2T-ViT's, and T2T-ViT's show more edges and
# lines. What the cell below prints is what the notebook's protocol gives for the models of this notebook on
# one photo; the many-image test of the claim is in the sections below.

# %%
share = {label: np.mean([float(fig2_invalid[label, "notebook", d]["fraction"][0]) for d in DEPTHS])
         for label in MODELS}
print(f"By the notebook's protocol at {SIZE} px (stem and blocks 1-3, mean share of invalid channels): "
      f"T2T-ViT {share['T2T-ViT']:.1%}, ViT {share['ViT']:.1%}: "
      + ("T2T-ViT has the smaller share, as the paper claims." if share["T2T-ViT"] < share["ViT"] else
         "neither has invalid channels, so the paper's claim cannot show here." if max(share.values()) == 0 else
         "T2T-ViT does not have the smaller share, unlike the paper's claim."))

# %% [markdown]
# ## Across depth, over all images
#
# Each metric at every stage (0 = tokens entering the backbone, then the blocks, stretched to the same
# relative depth since T2T-ViT-7 has 7 blocks and DeiT-tiny 12), mean over images with its 95% bootstrap
# band. Dashed lines: the same architectures with untrained (random) weights, a control that separates
# what the architecture does by itself from what training taught it.

# %%
RNG = np.random.default_rng(0)  # one stream for every bootstrap below: re-running gives the same intervals


def bootstrap(values):
    """Mean over images (axis 0) and its 95% percentile-bootstrap interval."""
    return bootstrap_mean(values, n_boot=2000, rng=RNG)


controls = {}
if TRAINED:
    for label, model in MODELS.items():
        controls[label], _ = profile(load_model(model.default_cfg["name"], "random"))

fig, axes = plt.subplots(2, 2, figsize=(8.4, 6.4), layout="constrained", sharex=True)
for ax, metric in zip(axes.flat, METRICS):
    for n, label in enumerate(MODELS):
        mean, lo, hi = bootstrap(results[label][metric])
        depth = np.linspace(0, 1, len(mean))
        ax.plot(depth, mean, "o-", ms=3, color=f"C{n}", label=label)
        ax.fill_between(depth, lo, hi, color=f"C{n}", alpha=0.25)
        if label in controls:
            ax.plot(depth, controls[label][metric].mean(axis=0), "--", color=f"C{n}", alpha=0.7,
                    label=f"{label} untrained")
    ax.set_title(metric)
    ax.grid(alpha=0.3)
for ax in axes[1]:
    ax.set_xlabel("relative depth (0 = backbone input)")
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=4)
plt.show()

# %% [markdown]
# ### How flat is flat?
#
# `invalid_fraction` counts the channels whose spatial spread is below 0.1 x the layer's RMS spread, a
# threshold someone had to pick. The distribution of that relative spread over all channels, blocks and
# images shows the whole picture: the curve at 0.1 is `invalid_fraction`, and a model with many
# near-dead channels would rise early.

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
grid_t = np.linspace(0, 1.5, 151)
for n, label in enumerate(MODELS):
    rel = np.sort(results[label]["spread"].ravel())
    ax.plot(grid_t, np.searchsorted(rel, grid_t) / rel.size, color=f"C{n}", label=label)
    print(f"{label:8s} share of channels with relative spread below 0.1 / 0.25 / 0.5: "
          + " / ".join(f"{(rel < t).mean():.2%}" for t in (0.1, 0.25, 0.5)))
ax.axvline(0.1, color="k", ls=":", label="invalid threshold")
ax.set(xlabel="channel spatial spread / layer RMS spread", ylabel="share of channels (cumulative)",
       title="all backbone blocks, all images")
ax.grid(alpha=0.3)
ax.legend()
plt.show()


# %% [markdown]
# ## The numbers, and what they support
#
# For each metric: the mean over the backbone blocks per image, then over images, for each model; and the
# paired difference T2T-ViT − ViT with its 95% bootstrap interval. A metric *supports* the paper when the
# interval excludes 0 on the side the paper predicts, *contradicts* it when it excludes 0 on the other side,
# and is *inconclusive* otherwise. The same is shown for the tokens entering the backbone, where the two
# tokenizations differ directly.

# %%
def compare(stage_slice, table):
    verdicts = {}
    print(f"{'metric':22s} {'T2T-ViT':>24s} {'ViT':>24s} {'T2T-ViT - ViT':>28s}  paper  verdict")
    for metric in METRICS:
        per_image = {label: table[label][metric][:, stage_slice].mean(axis=1) for label in MODELS}
        cells = []
        for label in MODELS:
            m, lo, hi = bootstrap(per_image[label])
            cells.append(f"{m:8.3f} [{lo:7.3f}, {hi:7.3f}]")
        d, lo, hi = bootstrap(per_image["T2T-ViT"] - per_image["ViT"])
        sign = EXPECTED[metric]
        verdict = ("supports" if (lo > 0 if sign > 0 else hi < 0)
                   else "contradicts" if (hi < 0 if sign > 0 else lo > 0) else "inconclusive")
        verdicts[metric] = (verdict, d, lo, hi)
        print(f"{metric:22s} {cells[0]:>24s} {cells[1]:>24s} {d:+9.3f} [{lo:+8.3f}, {hi:+8.3f}]  "
              f"{'higher' if sign > 0 else 'lower':6s} {verdict}")
    return verdicts


print(f"BACKBONE BLOCKS (mean over blocks), {n_images} images, 95% bootstrap CIs\n")
verdicts = compare(slice(1, None), results)
print("\nTOKENS ENTERING THE BACKBONE\n")
embed_verdicts = compare(slice(0, 1), results)
if controls:
    print("\nCONTROL: the same architectures untrained (random weights), backbone blocks\n")
    control_verdicts = compare(slice(1, None), controls)

# %%
counts = {v: sum(x[0] == v for x in verdicts.values()) for v in ("supports", "contradicts", "inconclusive")}
print(f"Over {n_images} images, in the backbone blocks, {counts['supports']} of {len(METRICS)} metrics "
      f"{'supports' if counts['supports'] == 1 else 'support'} the paper's claim that T2T-ViT's features are "
      f"richer / less redundant than ViT's, {counts['contradicts']} "
      f"{'contradicts' if counts['contradicts'] == 1 else 'contradict'} it and {counts['inconclusive']} "
      f"{'is' if counts['inconclusive'] == 1 else 'are'} inconclusive at 95%:")
for metric, (verdict, d, lo, hi) in verdicts.items():
    line = f"  - {metric}: {verdict} (T2T-ViT - ViT = {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])"
    if controls:
        cv = control_verdicts[metric]
        line += f"; untrained control: {cv[0]} ({cv[1]:+.3f})"
    print(line)
if not TRAINED:
    print("\nThese models are UNTRAINED (no embedded weights in this checkout): the verdicts describe the "
          "architectures at initialisation, not what the paper is about. Re-run once the weights are there.")

# %% [markdown]
# **Reading `high_freq_fraction`.** It is measured on the 14 x 14 token grid, not on pixels. Neighbouring
# T2T-ViT tokens are made of overlapping 31 px windows, so they share about half their pixels, and their
# channel maps are smoother from one token to the next than those of ViT's disjoint patches: the overlapping
# soft split acts as a low-pass filter at the scale of the token grid. A lower value for T2T-ViT (and the
# same sign for the untrained control) therefore says more about the tokenization's geometry than about
# how much edge and line detail each token carries.
#
# **How far this goes.** The intervals capture the variation over images only. Each architecture is one
# trained network (one seed, one recipe, a synthetic dataset), so a difference that is certain over images
# may still be partly a property of that run; the untrained control shows how much of it the architecture
# produces before any learning (where the control already shows the same difference, the overlapping soft
# splits, not training, are the likely cause). The two models also differ in width (256 vs 192 channels) and
# depth (7 vs 12 blocks): the effective rank is divided by the width, the other metrics are fractions or
# correlations, and depth is compared on a relative scale. With the released ImageNet weights
# (`T2T_LENS_WEIGHTS=imagenet`) the same cells test the claim on the networks the paper describes.

# %%
print(f"notebook ran in {time.perf_counter() - START:.0f} s")
