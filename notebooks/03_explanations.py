# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explanations: where do T2T-ViT and ViT look?
#
# Five ways to turn a prediction into a map over the 14 x 14 token grid, run on both models:
#
# | method | idea | cost per image |
# |---|---|---|
# | attention rollout (Abnar & Zuidema 2020) | product of the blocks' mean attention + identity (residual) | 1 forward |
# | gradient rollout (vit-explain) | rollout of attention x its gradient, negatives clipped | 1 fwd + bwd |
# | Chefer relevance (Chefer et al. 2021) | gradient-weighted attention, R += A_bar R, block by block | 1 fwd + bwd |
# | integrated gradients (Sundararajan et al. 2017) | gradients on a path from a blank image | >= `IG_STEPS` fwd + bwd |
# | occlusion (Zeiler & Fergus 2014) | drop in the class score when a square is blanked out | 1 fwd per position |
#
# Gradient rollout is vit-explain's method except that each block's attention is paired with that block's own
# gradient (vit-explain pairs block l with block L-1-l, a bug) and rows are re-normalised, not columns.
# Integrated gradients integrates the straight path with the library's default adaptive rule
# (`analysis.attributions`): a 33-point forward sweep of the path, `IG_STEPS` gradients where the class
# score changes, and up to 4 x `IG_STEPS` while the attributions miss more than 2.5% of the score change.
#
# Maps are then scored by **deletion / insertion** (Petsiuk et al. 2018): blur away the pixels the map
# ranks highest first and follow the predicted class's probability (a faithful map makes it fall fast:
# low deletion AUC), or start from the blurred image and put them back (rises fast: high insertion AUC).
# A random map is the floor every method has to beat. All settings are in the next cell; they are kept
# small so the notebook runs in a few minutes on two CPU cores; raise them for tighter intervals.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import t2t
from analysis import faithfulness, notebook, t2t_backproject
from analysis.explain import explain
from analysis.maps import normalize_map, upsample_map
from analysis.notebook import class_name, denormalize, synthetic_batch
from analysis.stats import bootstrap_mean
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


# %%
N_IMAGES = 8                # synthetic test images (labels 0..7)
IG_STEPS = 8                # integrated gradients: gradients to start from (the adaptive rule adds more)
OCCLUSION = {"window": 56, "stride": 42}   # pixels: 5 x 5 = 25 occluded copies per image
DELETION_STEPS = 10         # deletion / insertion curves at 0, 1/10, ..., 1 of the pixels
METHODS = ["rollout", "grad_rollout", "chefer", "integrated_gradients", "occlusion"]
KWARGS = {"integrated_gradients": {"n_steps": IG_STEPS}, "occlusion": OCCLUSION}

inputs, maps, preds, seconds = {}, {}, {}, {}
for label, model in MODELS.items():
    x, y = synthetic_batch(model, N_IMAGES)
    with torch.no_grad():
        preds[label] = model(x).argmax(dim=-1)
    inputs[label] = x
    maps[label] = {}
    for method in METHODS:
        t0 = time.perf_counter()
        maps[label][method] = explain(method, model, x, target=preds[label], **KWARGS.get(method, {})).float()
        seconds[label, method] = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    maps[label]["random"] = torch.rand(maps[label]["rollout"].shape, generator=gen)
    acc = (preds[label] == y).float().mean()
    print(f"{label:8s} accuracy on these {N_IMAGES} images: {acc:.0%};  seconds per method: "
          + ", ".join(f"{m} {seconds[label, m]:.1f}" for m in METHODS))
labels = y


# %% [markdown]
# ## The maps
#
# The images in `SHOWN`, every method, both models (the target is each model's own prediction; maps are
# upsampled bilinearly and min-max normalised for display).

# %%
def overlay(ax, x, model, heat):
    ax.imshow(denormalize(x, model))
    hm = normalize_map(upsample_map(heat[None], x.shape[-1]))[0]
    ax.imshow(hm, cmap="inferno", alpha=0.55)
    ax.set_axis_off()


SHOWN = [0, 3, 5]
TITLES = {"rollout": "rollout", "grad_rollout": "grad. rollout", "chefer": "Chefer",
          "integrated_gradients": "integrated\ngradients", "occlusion": "occlusion"}
for label, model in MODELS.items():
    fig, axes = plt.subplots(len(SHOWN), len(METHODS) + 1, figsize=(8.4, 1.55 * len(SHOWN) + 0.9),
                             layout="constrained")
    for r, i in enumerate(SHOWN):
        axes[r, 0].imshow(denormalize(inputs[label][i], model))
        axes[r, 0].set_title(f"true: {CLASS_NAMES[labels[i]]}\npredicted: {class_name(model, int(preds[label][i]))}")
        axes[r, 0].set_axis_off()
        for c, method in enumerate(METHODS, start=1):
            overlay(axes[r, c], inputs[label][i], model, maps[label][method][i])
            if r == 0:
                axes[r, c].set_title(TITLES[method])
    fig.suptitle(f"{label} ({model.default_cfg['name']})")
    plt.show()

# %% [markdown]
# ### T2T-ViT maps belong to overlapping windows
#
# A T2T-ViT token is made of a 31 x 31 pixel window (notebook 01) plus what the two T2T attention layers
# mixed in, so stretching the 14 x 14 map bilinearly over the image is only an approximation.
# `analysis.t2t_backproject` carries the map back through the module instead: through each soft split
# (each token's value spread over its window) and each T2T attention (spread over the tokens it attended).
# Where the T2T attention sends most of its weight to a few tokens, the last panel concentrates there.

# %%
i = SHOWN[1]
x1 = inputs["T2T-ViT"][i:i + 1]
heat = maps["T2T-ViT"]["rollout"][i:i + 1]
tr = t2t.trace(t2t_model, x1)
# "coverage": each pixel gets the mean of the tokens whose windows hold it (right for attention-like maps)
variants = {
    "rollout, bilinear\nupsampling": upsample_map(heat, x1.shape[-1]),
    "through the\nsoft splits": t2t_backproject.backproject(heat, x1.shape[-1], mode="coverage"),
    "splits + T2T\nattention": t2t_backproject.backproject_trace(heat, tr, x1.shape[-1], mode="coverage",
                                                                residual=True),
}
fig, axes = plt.subplots(1, 4, figsize=(8.4, 2.7), layout="constrained")
axes[0].imshow(denormalize(x1[0], t2t_model))
axes[0].set_title("the image")
for ax, (title, m) in zip(axes[1:], variants.items()):
    ax.imshow(m[0], cmap="inferno", vmin=0, vmax=np.percentile(m[0].numpy(), 99.5))  # a few hot pixels clipped
    ax.set_title(title)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## Deletion and insertion

# %%
t0 = time.perf_counter()
curves = {}
for label, model in MODELS.items():
    for method in [*METHODS, "random"]:
        curves[label, method] = faithfulness.faithfulness(model, inputs[label], maps[label][method],
                                                          target=preds[label], steps=DELETION_STEPS)
print(f"{len(curves)} deletion + insertion curves per image in {time.perf_counter() - t0:.0f} s")

fig, axes = plt.subplots(2, 2, figsize=(8.4, 6.6), layout="constrained", sharex=True, sharey=True)
for ax, (label, kind) in zip(axes.flat, [(lab, k) for lab in MODELS for k in ("deletion", "insertion")]):
    for n, method in enumerate([*METHODS, "random"]):
        c = curves[label, method]
        style = {"color": "k", "ls": "--"} if method == "random" else {"color": f"C{n}", "marker": "o", "ms": 3}
        ax.plot(c.fractions, getattr(c, kind).mean(dim=0), label=method, **style)
    ax.set_title(f"{label}: {kind} (mean over images)")
    ax.grid(alpha=0.3)
for ax, kind in zip(axes[1], ("deletion", "insertion")):
    ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}")
for ax in axes[:, 0]:
    ax.set_ylabel("probability of the\npredicted class")
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
plt.show()

# %%
RNG = np.random.default_rng(0)  # one stream for every bootstrap below: re-running gives the same intervals


def bootstrap(values):
    """Mean over images and its 95% percentile-bootstrap interval."""
    return bootstrap_mean(values, n_boot=2000, rng=RNG)


def score(label, method):
    """Insertion AUC - deletion AUC per image (N,): higher is a more faithful map."""
    return curves[label, method].insertion_auc - curves[label, method].deletion_auc


beats_random = {}
for label in MODELS:
    print(f"\n{label}: AUC mean [95% bootstrap CI] over {N_IMAGES} images; vs random = paired difference")
    print(f"{'method':22s} {'deletion (lower)':>24s} {'insertion (higher)':>24s} "
          f"{'deletion - random':>26s} {'insertion - random':>26s}")
    rnd = curves[label, "random"]
    for method in [*METHODS, "random"]:
        c = curves[label, method]
        d, i_ = bootstrap(c.deletion_auc), bootstrap(c.insertion_auc)
        dd = bootstrap(c.deletion_auc - rnd.deletion_auc)
        di = bootstrap(c.insertion_auc - rnd.insertion_auc)
        if method != "random":
            beats_random[label, method] = (dd[2] < 0, di[1] > 0, c.insertion_auc.mean() - c.deletion_auc.mean())
        fmt = lambda t: f"{t[0]:7.3f} [{t[1]:6.3f}, {t[2]:6.3f}]"
        fmtd = lambda t: f"{t[0]:+7.3f} [{t[1]:+6.3f}, {t[2]:+6.3f}]"
        print(f"{method:22s} {fmt(d):>24s} {fmt(i_):>24s} {fmtd(dd) if method != 'random' else '':>26s} "
              f"{fmtd(di) if method != 'random' else '':>26s}")

# %%
for label in MODELS:
    ranked = sorted(METHODS, key=lambda m: -beats_random[label, m][2])
    both = [m for m in METHODS if beats_random[label, m][0] and beats_random[label, m][1]]
    print(f"{label}: ranked by insertion AUC - deletion AUC: " + " > ".join(
        f"{m} ({beats_random[label, m][2]:+.3f})" for m in ranked))
    d, lo, hi = bootstrap(score(label, ranked[0]) - score(label, ranked[1]))
    print(f"    {ranked[0]} vs {ranked[1]}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
          f"({'beyond' if lo > 0 or hi < 0 else 'within'} the noise of {N_IMAGES} images)")
    print(f"    better than a random map on both curves (95% CI of the paired difference excludes 0): "
          f"{', '.join(both) if both else 'none'}")
if not TRAINED:
    print("\nUNTRAINED models (no embedded weights in this checkout): their predictions and maps are noise.")

# %% [markdown]
# **Reading these numbers.** With `N_IMAGES` images the intervals are wide; the ranking of methods
# *within* a model is the robust comparison (same images, same classifier). Comparing AUCs *across* models
# mixes the explanation with the classifier: a more confident model starts its curves higher. Deletion
# with a blurred baseline rewards maps that find what the blur destroys (fine local structure, which is
# what defines the synthetic classes); insertion rewards maps whose top pixels alone restore the class.
# Gradient-based maps (gradient rollout, Chefer) explain the predicted class; plain rollout is
# class-agnostic and shows where information flows, whatever the class.

# %%
print(f"notebook ran in {time.perf_counter() - START:.0f} s")
