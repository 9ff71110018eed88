# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explanations: where do T2T-ViT and ViT look, and which map can we trust?
#
# Every explanation method of `analysis.explain.EXPLAINERS` turns a prediction into a map over the 14 x 14
# token grid, run on both models:
#
# | method | idea | cost per image |
# |---|---|---|
# | attention rollout (Abnar & Zuidema 2020) | product of the blocks' mean attention + identity (residual) | 1 forward |
# | gradient rollout (vit-explain) | rollout of attention x its gradient, negatives clipped | 1 fwd + bwd |
# | Chefer relevance (Chefer et al. 2021) | gradient-weighted attention, R += A_bar R, block by block | 1 fwd + bwd |
# | integrated gradients (Sundararajan et al. 2017) | gradients on a path from a blank image | >= `IG_STEPS` fwd + bwd |
# | occlusion (Zeiler & Fergus 2014) | drop in the class score when a square is blanked out | 1 fwd per position |
# | Grad-CAM (Selvaraju et al. 2017) | last block's norm1 features weighted by their mean gradient | 1 fwd + bwd |
# | AttnLRP (Achtibat et al. 2024) | relevance propagated with LXT's attention rules, input x gradient | 1 fwd + bwd |
# | CP-LRP (Ali et al. 2022) | the same with the queries and keys held constant | 1 fwd + bwd |
#
# (AttnLRP and CP-LRP appear when `analysis.explain.EXPLAINERS` registers them; token ablation, occlusion one
# token at a time, is left out here: 196 forwards per image, and the scorecard runs each method three times.)
# Gradient rollout is vit-explain's method except that each block's attention is paired with that block's own
# gradient (vit-explain pairs block l with block L-1-l, a bug) and rows are re-normalised, not columns.
# Integrated gradients integrates the straight path with the library's adaptive rule (`analysis.attributions`):
# a 33-point forward sweep of the path puts `IG_STEPS` gradients where the class score changes. The rule can
# add up to 4 x `IG_STEPS` more while the attributions miss more than 2.5% of the score change; here that
# refinement is off (`max_steps=IG_STEPS`), because the scorecard runs every method three times and IG with
# refinement took 70% of this notebook's time (T2T-ViT's IG spent 18 and 32 of its 32 gradients on two test
# images; on the randomised model of the sanity check, 32 on both).
#
# Which map to trust is then measured, not assumed, by a **scorecard** (`analysis.scorecard`), every method x
# every metric, per image:
#
# - **deletion / insertion** (Petsiuk et al. 2018): blur away the pixels the map ranks highest first and follow
#   the predicted class's probability (a faithful map makes it fall fast: low deletion AUC), or start from the
#   blurred image and put them back (rises fast: high insertion AUC);
# - **ROAD** (Rong et al., ICML 2022): a blurred or constant hole is out of distribution and its shape tells
#   the model where the map pointed (Hooker et al. 2019). ROAD fills the removed pixels by *noisy linear
#   imputation* from their neighbours instead, most relevant first (MoRF, low is good) or least relevant first
#   (LeRF, high is good); scored here as the mean probability over `ROAD_PERCENTAGES` of pixels removed;
# - **random logit** (Sixt et al. 2020, as Quantus computes it): SSIM between the map of the predicted class
#   and of a random other class; a map that does not change with the class explains the image, not the decision
#   (low is good);
# - **sanity check** (Adebayo et al. 2018, `analysis.sanity`): |Spearman| between the map of the model and of
#   the model with every weight re-initialised (low is good: the map depends on what was learned).
#
# A random map (fixed per image, ignoring model and class) is the floor every method has to beat. Intervals
# are 95% percentile bootstraps over the images, and every verdict below is computed from them. All settings
# are in the next cell; they are kept small so the notebook runs in a few minutes on two CPU cores.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

import t2t
from analysis import notebook, t2t_backproject
from analysis.explain import EXPLAINERS, explain
from analysis.maps import normalize_map, upsample_map
from analysis.notebook import class_name, denormalize, synthetic_batch
from analysis.scorecard import METRICS, RANDOM, Settings, merge_scorecards, random_map, scorecard
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
ROAD_PERCENTAGES = (20, 50, 80)  # ROAD: % of pixels removed (a sparse solve each, per image and order)
METHODS = [m for m in EXPLAINERS if m != "token_ablation"]  # every registered method but the 196-forward one
KWARGS = {"integrated_gradients": {"n_steps": IG_STEPS, "max_steps": IG_STEPS}, "occlusion": OCCLUSION}

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
    maps[label][RANDOM] = random_map(maps[label]["rollout"].shape, seed=0)
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
TITLES = {"rollout": "rollout", "grad_rollout": "grad.\nrollout", "chefer": "Chefer",
          "integrated_gradients": "integr.\ngradients", "occlusion": "occlusion", "gradcam": "Grad-CAM",
          "attnlrp": "AttnLRP", "cp_lrp": "CP-LRP", "token_ablation": "token\nablation"}
for label, model in MODELS.items():
    fig, axes = plt.subplots(len(SHOWN), len(METHODS) + 1, figsize=(8.4, 1.05 * len(SHOWN) + 1.0),
                             layout="constrained")
    for r, i in enumerate(SHOWN):
        axes[r, 0].imshow(denormalize(inputs[label][i], model))
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(f"{CLASS_NAMES[labels[i]]}\n-> {class_name(model, int(preds[label][i]))}")
        for c, method in enumerate(METHODS, start=1):
            overlay(axes[r, c], inputs[label][i], model, maps[label][method][i])
            if r == 0:
                axes[r, c].set_title(TITLES.get(method, method.replace("_", "\n")))
    axes[0, 0].set_title("true ->\npredicted")
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
# ## The scorecard: every method x every metric
#
# Every map above (and the random map) scored by the six metrics, one model per cell (`merge_scorecards` puts
# the two cards side by side). The sanity check re-initialises every weight at once (the cascade of
# `analysis.sanity` in one step: the score is the similarity once all weights are random, which is the cascade's
# last step); random logit and the sanity check run each method once more, so the slow methods cost three times.

# %%
SETTINGS = Settings(deletion_steps=DELETION_STEPS, road_percentages=ROAD_PERCENTAGES, method_kwargs=KWARGS)
cards = {}


def score_model(label):
    """The scorecard of one model's maps, and a line on its cost."""
    t0 = time.perf_counter()
    cards[label] = scorecard({label: MODELS[label]}, inputs, targets=preds, methods=METHODS, settings=SETTINGS,
                             maps=maps)
    seconds = cards[label].seconds
    print(f"{label}: {len(METHODS)} methods + the random map x {len(cards[label].metrics)} metrics in "
          f"{time.perf_counter() - t0:.0f} s; per method (maps not included): "
          + ", ".join(f"{m} {seconds.get((label, m), 0):.0f} s" for m in cards[label].methods))


score_model("T2T-ViT")

# %%
score_model("ViT")
card = merge_scorecards([cards[label] for label in MODELS])
display(Markdown(card.markdown()))

# %% [markdown]
# ### The curves behind the numbers
#
# Deletion / insertion (left) and ROAD (right), mean over the images: the probability of the predicted class as
# pixels are removed (deletion: blurred away; ROAD MoRF: imputed from their neighbours, most relevant first) or
# kept (insertion: put back into the blurred image; ROAD LeRF: the least relevant imputed first).

# %%
fig, axes = plt.subplots(2, 4, figsize=(8.4, 5.6), layout="constrained", sharey=True)
kinds = [("deletion", "deletion"), ("insertion", "insertion"), ("ROAD MoRF", "morf"), ("ROAD LeRF", "lerf")]
for row, label in enumerate(MODELS):
    for col, (title, kind) in enumerate(kinds):
        ax = axes[row, col]
        for n, method in enumerate(card.methods):
            style = {"color": "k", "ls": "--"} if method == RANDOM else {"color": f"C{n}", "marker": "o", "ms": 3}
            if kind in ("deletion", "insertion"):
                c = card.curves[label, method]
                ax.plot(100 * c.fractions, getattr(c, kind).mean(dim=0), label=method, **style)
            else:
                r = card.road[label, method]
                ax.plot(r.percentages, getattr(r, kind).mean(dim=0), label=method, **style)
        ax.set_title(f"{label}\n{title}")
        ax.grid(alpha=0.3)
        if row == 1:
            ax.set_xlabel("% of pixels\nremoved" if kind != "insertion" else "% of pixels\nrestored")
    axes[row, 0].set_ylabel("probability of the\npredicted class")
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=5)
plt.show()

# %% [markdown]
# ### Do the metrics rank the methods the same way?
#
# Per model, each metric ranks the methods by their mean (the random map apart); Kendall's tau between two
# rankings is 1 when they agree, -1 when one reverses the other. The figure shows tau; the table below it adds
# its 95% bootstrap interval (the images resampled, every ranking recomputed).

# %%
short = {"deletion": "deletion", "insertion": "insertion", "road_morf": "ROAD\nMoRF", "road_lerf": "ROAD\nLeRF",
         "random_logit": "random\nlogit", "sanity": "sanity\ncheck"}
taus = {label: card.kendall(label) for label in MODELS}
fig, axes = plt.subplots(1, len(MODELS), figsize=(8.4, 4.2), layout="constrained")
for ax, label in zip(axes, MODELS):
    k = len(card.metrics)
    grid = np.eye(k)
    for (a, b), (tau, _, _) in taus[label].items():
        i, j = card.metrics.index(a), card.metrics.index(b)
        grid[i, j] = grid[j, i] = tau
        for p, q in ((i, j), (j, i)):
            ax.text(q, p, "n/a" if np.isnan(tau) else f"{tau:+.2f}", ha="center", va="center",
                    color="w" if abs(tau) > 0.6 else "k")
    ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(k), [short[m] for m in card.metrics], rotation=90)
    ax.set_yticks(range(k), [short[m] for m in card.metrics])
    ax.set_title(f"{label}: Kendall's tau")
plt.show()
for label in MODELS:
    print(f"{label}: Kendall's tau [95% bootstrap interval] between the rankings of {len(card.ranked_methods(label))} "
          "methods")
    for (a, b), (tau, lo, hi) in taus[label].items():
        print(f"    {METRICS[a][0]:>18s} vs {METRICS[b][0]:<18s} {tau:+.2f} [{lo:+.2f}, {hi:+.2f}]")

# %% [markdown]
# ## Verdicts
#
# Each line is computed from the numbers above: a method "ranks first" by its mean and leads "beyond the noise"
# only when the 95% interval of its paired difference with the runner-up excludes 0; "better than a random
# map" needs that on every pixel-removal metric; two metrics "rank the methods alike" when the interval of
# their Kendall's tau lies above 0.

# %%
for line in card.verdicts():
    print("-", line)
if not TRAINED:
    print("\nUNTRAINED models (no embedded weights in this checkout): their predictions and maps are noise.")

# %% [markdown]
# **Reading these numbers.** With `N_IMAGES` images the intervals are wide; the ranking of methods *within* a
# model is the robust comparison (same images, same classifier). Comparing scores *across* models mixes the
# explanation with the classifier: a more confident model starts its curves higher. Deletion with a blurred
# baseline rewards maps that find what the blur destroys (fine local structure, which is what defines the
# synthetic classes) but also leaves the shape of the hole in the image; ROAD's imputation removes that shape,
# so where deletion and ROAD MoRF disagree, the blurred hole, not the map, may be what deletion measured.
# Random logit and the sanity check ask a different question, whether the map depends on the class and on the
# learned weights at all: class-agnostic rollout scores 1 on random logit by construction, whatever its
# faithfulness. Gradient-based maps (gradient rollout, Chefer, the LRP variants) explain the predicted class;
# plain rollout shows where information flows, whatever the class.

# %%
print(f"notebook ran in {time.perf_counter() - START:.0f} s")
