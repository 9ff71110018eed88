# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tokens-to-Token, explained
#
# ViT cuts an image into hard 16 x 16 patches: at 224 px that is 14 x 14 = 196 tokens, and a token knows
# nothing of the pixels just across its patch border. Yuan et al. (ICCV 2021) argue that this *simple
# tokenization* loses the local structure (edges, lines, textures) that a model needs to learn well
# from scratch, and replace it with a **Tokens-to-Token (T2T) module**: a few rounds of
#
# 1. **soft split**: unfold the image (or token map) into *overlapping* windows, one token per window,
#    each token the concatenation of its window's values;
# 2. **re-structurization**: a small transformer layer mixes the tokens, then they are laid out as an
#    image again for the next soft split.
#
# Each round shortens the sequence and widens the part of the image each token is made of. At 224 px:
# **3136 → 784 → 196 tokens**. This notebook walks through the module of a T2T-ViT step by step on a
# photo and on a synthetic image, with the token counts and the receptive field of each stage; it is a
# companion to the app's T2T page. Every number below is read from `t2t.trace`, one forward pass that
# records every step.

# %%
import time

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

import t2t
from analysis import notebook
from analysis.notebook import class_name, denormalize, photo_batch, synthetic_batch
from t2t.data import CLASS_NAMES

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


# %% [markdown]
# ## Two images
#
# A sample photo, preprocessed as the model expects (resize, centre crop, normalise), and an image of the
# synthetic dataset the embedded models were trained on: ten classes defined by local structure
# (stripes, rings, corners, zigzags, ...), each drawn at a random place, size and angle over clutter.

# %%
photos, photo_names = photo_batch(t2t_model)
synth, synth_labels = synthetic_batch(t2t_model, 1, start=0)   # test image 0 is a "stripes" image
images = torch.cat([photos[:1], synth])
titles = [f"photo: {photo_names[0]}", f"synthetic: {CLASS_NAMES[synth_labels[0]]}"]

fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, x, title in zip(axes, images, titles):
    ax.imshow(denormalize(x, t2t_model))
    ax.set_title(title)
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## One forward pass, every step
#
# `t2t.trace(model, images)` runs the model once and records every intermediate tensor under a name.
# The table follows an image through the T2T module: the grid of token positions, the number of tokens
# and the length of each token.

# %%
tr = t2t.trace(t2t_model, images)
S = images.shape[-1]
steps = [
    ("t2t.split0", "soft split 0: 7x7 windows, stride 4, padding 2; a token = 3 x 7 x 7 pixel values"),
    ("t2t.attn1", "T2T transformer 1 (re-structurization), tokens narrowed to 64"),
    ("t2t.split1", "reshape to a 56x56 map, soft split 1: 3x3 windows, stride 2; a token = 64 x 3 x 3"),
    ("t2t.attn2", "T2T transformer 2"),
    ("t2t.split2", "reshape to 28x28, soft split 2: 3x3, stride 2"),
    ("t2t.project", "linear projection to the backbone width"),
    ("blocks.0", "+ class token and position table, backbone block 1"),
]
print(f"input: {S}x{S} pixels, 3 channels\n")
print(f"{'step':12s} {'grid':>7s} {'tokens':>7s} {'length':>7s}   what happens")
for name, what in steps:
    b, n, d = tr.shape(name)
    h, w = tr.grid(name)
    print(f"{name:12s} {h:>3d}x{w:<3d} {n:>7d} {d:>7d}   {what}")

counts = [tr.shape(n)[1] for n in ("t2t.split0", "t2t.split1", "t2t.split2")]
print("\ntoken counts:", " -> ".join(map(str, counts)))
if S == 224:
    assert counts == [3136, 784, 196], counts
vit_tr = t2t.trace(vit_model, images)
print(f"ViT for comparison: one hard split into {vit_tr.grid('patch_embed')[0]}x{vit_tr.grid('patch_embed')[1]}"
      f" = {vit_tr.shape('patch_embed')[1]} patches of 16 x 16 x 3 = 768 values, "
      f"embedded to {vit_tr.shape('patch_embed')[2]}")

# %% [markdown]
# ## Soft split 0: overlapping windows
#
# The first soft split is `nn.Unfold(kernel_size=7, stride=4, padding=2)`: token (i, j) holds the 7 x 7
# pixels whose top-left corner is at (4i - 2, 4j - 2). Neighbouring windows share 3 of their 7 columns,
# so a line that crosses a window border still lies whole inside some token. The next cell checks that a
# token really is its window's pixels, and draws the windows of four neighbouring tokens: three in a row
# and the one below the middle one.

# %%
k, s, p = 7, 4, 2
x0 = images[1]                                          # the synthetic image
split0 = tr["t2t.split0"][1]                            # (3136, 147)
busy = split0.view(56, 56, 3, 49).std(dim=-1).mean(dim=-1)[4:-4, 4:-4]  # spatial spread, away from the padding
i, j = (int(v) + 4 for v in divmod(int(busy.argmax()), busy.shape[1]))  # the busiest window: on the object
padded = torch.nn.functional.pad(x0, (p, p, p, p))
window = padded[:, i * s:i * s + k, j * s:j * s + k]    # its 7x7 pixels (padding shifts rows by p)
assert torch.allclose(split0[i * 56 + j].view(3, k, k), window), "a soft-split token is its window's pixels"
print(f"token ({i}, {j}) of t2t.split0 == the 7x7 pixels at rows {i * s - p}..{i * s - p + k - 1}, "
      f"columns {j * s - p}..{j * s - p + k - 1} (channel-major: 3 x 7 x 7 = 147 values)")

fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.6), layout="constrained")
img = denormalize(x0, t2t_model)
axes[0].imshow(img)
cy, cx = i * s - p + 3, j * s - p + 3                   # window centre
axes[0].add_patch(Rectangle((cx - 14.5, cy - 14.5), 29, 29, fill=False, color="w", lw=1.5))
axes[0].set_title("the image; white box: zoomed at right")
axes[1].imshow(img, extent=(-0.5, S - 0.5, S - 0.5, -0.5))
axes[1].set_xlim(cx - 14.5, cx + 14.5)
axes[1].set_ylim(cy + 14.5, cy - 14.5)
for n, (di, dj) in enumerate([(0, -1), (0, 0), (0, 1), (1, 0)]):
    top, left = (i + di) * s - p, (j + dj) * s - p
    axes[1].add_patch(Rectangle((left - 0.5, top - 0.5), k, k, color=f"C{n}", alpha=0.25))
    axes[1].add_patch(Rectangle((left - 0.5, top - 0.5), k, k, fill=False, color=f"C{n}", lw=2))
axes[1].set_title("7x7 windows of neighbouring tokens,\nstride 4: darker bands are pixels\nthat two tokens share")
for ax in axes:
    ax.set_axis_off()
plt.show()


# %% [markdown]
# ## Re-structurization: tokens become an image again
#
# T2T transformer 1 mixes the 3136 tokens (a Performer, i.e. linear attention, in T2T-ViT-7; a softmax
# transformer in the `_t_` variants) and narrows each to 64 values. Laid back on the 56 x 56 grid, each of
# the 64 channels is a feature map. Below: a few channels after each re-structurization and after the
# final projection, and the attention row of one token of the first T2T layer: which of the 3136 tokens
# it gathers from. The full 3136 x 3136 matrix (39 MB per image) is never formed; `attention_rows`
# computes only the rows asked for.

# %%
def channel_maps(name, n=6, image=1):
    """First n channels of a T2T stage, each as an (h, w) map."""
    h, w = tr.grid(name)
    return tr[name][image, :, :n].T.reshape(n, h, w)


stages = [("t2t.attn1", "T2T layer 1"), ("t2t.attn2", "T2T layer 2"), ("t2t.project", "projected")]
fig, axes = plt.subplots(len(stages), 6, figsize=(8.4, 4.8), layout="constrained")
for row, (name, label) in enumerate(stages):
    maps = channel_maps(name)
    h, w = tr.grid(name)
    for c in range(6):
        axes[row, c].imshow(maps[c], cmap="viridis")
        axes[row, c].set_xticks([])
        axes[row, c].set_yticks([])
        if row == 0:
            axes[row, c].set_title(f"channel {c}")
    axes[row, 0].set_ylabel(f"{label}\n{h}x{w}")
fig.suptitle("feature maps of the synthetic image after each stage")
plt.show()

# where one token of the first T2T layer looks
h, w = tr.grid("t2t.attn1_map")
query = i * w + j
row = tr.attention_rows("t2t.attn1_map", [query])[1, 0, 0].reshape(h, w)
fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), layout="constrained")
axes[0].imshow(img)
axes[0].scatter([j * s], [i * s], c="r", s=30)
axes[0].set_title(f"query token ({i}, {j})")
axes[1].imshow(row.clamp_min(row.max() * 1e-4), cmap="inferno", norm=LogNorm())
axes[1].scatter([j], [i], c="c", s=20, marker="x")
top = row.flatten().topk(10).values.sum()
axes[1].set_title(f"its attention over the {h}x{w} tokens, log scale\n(the row sums to {row.sum():.3f};\n"
                  f"the top 10 of {h * w} tokens get {top:.0%})")
for ax in axes:
    ax.set_axis_off()
plt.show()


# %% [markdown]
# ## Receptive fields: what each token is made of
#
# Composing the soft splits backwards gives the pixel window behind a token of each stage
# (`t2t.receptive_field`): 7 px after split 0, 7 + 2 x 4 = 15 px after split 1, 15 + 2 x 8 = 31 px after
# split 2. The stride doubles each time (4, 8, 16 px), so neighbouring tokens always overlap by almost half
# their window. A ViT patch is 16 px with no overlap: every pixel belongs to exactly one token. (The
# attention layers can mix in more; this is the part the splits alone wire in.)

# %%
def rf_row(model, stage):
    grid = t2t.receptive_fields(model, stage)
    gh, gw, _ = grid.shape
    mid = (gh // 2, gw // 2)
    top, left, bottom, right = t2t.receptive_field(model, stage, mid)
    _, left2, _, right2 = t2t.receptive_field(model, stage, (mid[0], mid[1] + 1))
    size, stride = right - left, left2 - left
    overlap = max(0, right - left2)
    return size, stride, overlap, gh * gw


print(f"{'model':8s} {'stage':12s} {'window':>7s} {'stride':>7s} {'overlap':>14s} {'tokens':>7s}")
for label, model, stage in [("T2T-ViT", t2t_model, "t2t.split0"), ("T2T-ViT", t2t_model, "t2t.split1"),
                            ("T2T-ViT", t2t_model, "t2t.split2"), ("ViT", vit_model, "patch_embed")]:
    size, stride, overlap, n = rf_row(model, stage)
    print(f"{label:8s} {stage:12s} {size:>5d}px {stride:>5d}px {overlap:>5d}px ({overlap / size:4.0%}) {n:>7d}")


# %%
def coverage(model, stage, size):
    """How many tokens of a stage have each pixel in their window."""
    cover = torch.zeros(size, size)
    for top, left, bottom, right in t2t.receptive_fields(model, stage).reshape(-1, 4).tolist():
        cover[top:bottom, left:right] += 1
    return cover


fig, axes = plt.subplots(2, 2, figsize=(8.4, 7.6), layout="constrained")
covers = {}
for col, (model, stage, title) in enumerate([(t2t_model, "t2t.split2", "T2T-ViT backbone tokens:\n31 px windows"),
                                             (vit_model, "patch_embed", "ViT patches:\n16 px, no overlap")]):
    label = title.split(" ")[0]
    ax = axes[0, col]
    ax.imshow(img, extent=(-0.5, S - 0.5, S - 0.5, -0.5))
    gi, gj = min(cy // 16, 13), min(max(cx // 16, 1), 12)  # the backbone token over the point chosen above
    for n, dj in enumerate([-1, 0, 1]):                  # three horizontally adjacent tokens
        top, left, bottom, right = t2t.receptive_field(model, stage, (gi, gj + dj))
        corner, size = (left - 0.5, top - 0.5), (right - left, bottom - top)
        ax.add_patch(Rectangle(corner, *size, color=f"C{n}", alpha=0.3))
        ax.add_patch(Rectangle(corner, *size, fill=False, color=f"C{n}", lw=2))
    ax.set_xlim(cx - 48, cx + 48)
    ax.set_ylim(cy + 40, cy - 40)
    ax.set_title(title)
    ax.set_axis_off()
    covers[label] = cov = coverage(model, stage, S)
    im = axes[1, col].imshow(cov, cmap="Blues", vmin=0, vmax=4)
    axes[1, col].set_title(f"{label}: tokens holding each pixel,\n{int(cov.min())} to {int(cov.max())}")
    axes[1, col].set_axis_off()
fig.colorbar(im, ax=axes[1], shrink=0.7, ticks=range(5))
plt.show()

inner = slice(S // 8, S - S // 8)  # away from the border, where the padded windows thin out
for label, cov in covers.items():
    values, n = cov[inner, inner].unique(return_counts=True)
    print(f"{label:8s} pixels of the central {S - 2 * (S // 8)}x{S - 2 * (S // 8)} px held by k tokens: "
          + ", ".join(f"k={int(v)}: {c / n.sum():.1%}" for v, c in zip(values, n)))

# %% [markdown]
# Away from the border most pixels lie in the windows of four T2T-ViT backbone tokens (two along each axis),
# the others in two or one (the shares are printed above), so a stroke crossing a token border is seen whole
# by a neighbour; in ViT each pixel feeds exactly one patch. This overlap, and the attention between the
# splits, is what the paper credits for T2T-ViT's richer local features (notebook 02) and its better
# learning from scratch (notebook 04).
#
# ## What the models make of the two images
#
# (The embedded models know only the ten synthetic classes, so on the photo they can only name the shape
# it most resembles.)

# %%
for label, model in MODELS.items():
    x = torch.cat([photo_batch(model)[0][:1], synthetic_batch(model, 1)[0]])
    with torch.no_grad():
        probs = model(x).softmax(-1)
    top = probs.topk(3, dim=-1)
    for title, p, idx in zip(titles, top.values, top.indices):
        guesses = ", ".join(f"{class_name(model, int(c))} {float(q):.0%}" for q, c in zip(p, idx))
        print(f"{label:8s} {title:28s} {guesses}")
if not TRAINED:
    print("\n(untrained weights: these guesses are noise)")

# %%
print(f"notebook ran in {time.perf_counter() - START:.0f} s")
