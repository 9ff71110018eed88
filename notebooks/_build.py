"""Write the notebooks from the Python source below, and optionally execute them and save the outputs.

    python notebooks/_build.py                 # write every notebook (sources only, outputs cleared)
    python notebooks/_build.py --execute       # write, execute with the venv's "python3" kernel, save outputs
    python notebooks/_build.py --execute 02    # only notebooks whose name contains "02"
    python notebooks/_build.py --check         # exit 1 if a committed notebook's sources differ from this file

Edit the notebooks here, not in Jupyter: every cell is a string in `NOTEBOOKS`. Notebooks run with
the working directory notebooks/; the `t2t` and `analysis` packages come from the editable install
(scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(dedent(text).strip())


# ----------------------------------------------------------------------------- shared cells

SETUP = code(r'''
    import os
    import time
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    import t2t
    from analysis.report import load_model
    from t2t.data import CLASS_NAMES, LocalStructureDataset
    from t2t.images import open_image, preprocess, sample_images

    START = time.perf_counter()
    warnings.filterwarnings("ignore", message="IProgress not found")  # captum's progress bar, unused here
    plt.rcParams.update({"figure.dpi": 72, "font.size": 9, "axes.titlesize": 9})
    torch.manual_seed(0)

    # THE SWITCH. "embedded" (default): the project's models, trained from scratch on the synthetic dataset
    # and shipped in t2t/assets/embedded. "imagenet": the released ImageNet-1k weights of both (downloaded once).
    # Per model, T2T_LENS_WEIGHTS_T2T / T2T_LENS_WEIGHTS_VIT take "embedded", "imagenet" or a checkpoint path or
    # URL; the architecture is read off the checkpoint when it is not T2T_LENS_MODEL_T2T / T2T_LENS_MODEL_VIT.
    WEIGHTS = os.environ.get("T2T_LENS_WEIGHTS", "embedded")
    T2T_NAME = os.environ.get("T2T_LENS_MODEL_T2T", "t2t_vit_7")
    VIT_NAME = os.environ.get("T2T_LENS_MODEL_VIT", "deit_tiny_patch16_224")
    t2t_model = load_model(T2T_NAME, os.environ.get("T2T_LENS_WEIGHTS_T2T", WEIGHTS), fallback=True)
    vit_model = load_model(VIT_NAME, os.environ.get("T2T_LENS_WEIGHTS_VIT", WEIGHTS), fallback=True)
    MODELS = {"T2T-ViT": t2t_model, "ViT": vit_model}
    TRAINED = all(not str(m.default_cfg.get("weights", "random")).startswith("random") for m in MODELS.values())

    for label, m in MODELS.items():
        cfg = m.default_cfg
        acc = cfg.get("card", {}).get("test_acc")
        print(f"{label:8s} {cfg['name']:24s} weights: {cfg.get('weights', 'random')}, "
              f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M parameters, {len(m.blocks)} blocks, "
              f"{m.num_classes} classes" + (f", synthetic test accuracy {acc:.1%}" if acc is not None else ""))


    def synthetic_batch(model, n, start=0):
        """Test images start..start+n-1 of the synthetic dataset, normalised for `model`, and their labels."""
        cfg = model.default_cfg
        ds = LocalStructureDataset("test", size=start + n, img_size=cfg["img_size"], mean=cfg["mean"], std=cfg["std"])
        x = torch.stack([ds[i][0] for i in range(start, start + n)])
        return x, torch.tensor([ds.label(i) for i in range(start, start + n)])


    def photo_batch(model):
        """The bundled sample photos, preprocessed as `model` expects (timm's eval transform)."""
        cfg = model.default_cfg
        photos = sample_images()
        x = torch.cat([preprocess(open_image(p), cfg["mean"], cfg["std"], cfg["img_size"], cfg["crop_pct"])
                       for p in photos.values()])
        return x, list(photos)


    def show(x, model):
        """A normalised (3, S, S) input as an (S, S, 3) array in [0, 1] for imshow."""
        mean = torch.tensor(model.default_cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(model.default_cfg["std"]).view(3, 1, 1)
        return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


    def class_name(model, i):
        names = model.class_names
        return names[i] if names else str(i)
''')

FOOTER = code(r'''
    print(f"notebook ran in {time.perf_counter() - START:.0f} s")
''')

# ----------------------------------------------------------------------------- 01

NB01 = [
    md(r'''
    # Tokens-to-Token, explained

    ViT cuts an image into hard 16 x 16 patches: at 224 px that is 14 x 14 = 196 tokens, and a token knows
    nothing of the pixels just across its patch border. Yuan et al. (ICCV 2021) argue that this *simple
    tokenization* loses the local structure (edges, lines, textures) that a model needs to learn well
    from scratch, and replace it with a **Tokens-to-Token (T2T) module**: a few rounds of

    1. **soft split**: unfold the image (or token map) into *overlapping* windows, one token per window,
       each token the concatenation of its window's values;
    2. **re-structurization**: a small transformer layer mixes the tokens, then they are laid out as an
       image again for the next soft split.

    Each round shortens the sequence and widens the part of the image each token is made of. At 224 px:
    **3136 → 784 → 196 tokens**. This notebook walks through the module of a T2T-ViT step by step on a
    photo and on a synthetic image, with the token counts and the receptive field of each stage; it is a
    companion to the app's T2T page. Every number below is read from `t2t.trace`, one forward pass that
    records every step.
    '''),
    SETUP,
    md(r'''
    ## Two images

    A sample photo, preprocessed as the model expects (resize, centre crop, normalise), and an image of the
    synthetic dataset the embedded models were trained on: ten classes defined by local structure
    (stripes, rings, corners, zigzags, ...), each drawn at a random place, size and angle over clutter.
    '''),
    code(r'''
    photos, photo_names = photo_batch(t2t_model)
    synth, synth_labels = synthetic_batch(t2t_model, 1, start=0)   # test image 0 is a "stripes" image
    images = torch.cat([photos[:1], synth])
    titles = [f"photo: {photo_names[0]}", f"synthetic: {CLASS_NAMES[synth_labels[0]]}"]

    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, x, title in zip(axes, images, titles):
        ax.imshow(show(x, t2t_model))
        ax.set_title(title)
        ax.set_axis_off()
    plt.show()
    '''),
    md(r'''
    ## One forward pass, every step

    `t2t.trace(model, images)` runs the model once and records every intermediate tensor under a name.
    The table follows an image through the T2T module: the grid of token positions, the number of tokens
    and the length of each token.
    '''),
    code(r'''
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
    '''),
    md(r'''
    ## Soft split 0: overlapping windows

    The first soft split is `nn.Unfold(kernel_size=7, stride=4, padding=2)`: token (i, j) holds the 7 x 7
    pixels whose top-left corner is at (4i - 2, 4j - 2). Neighbouring windows share 3 of their 7 columns,
    so a line that crosses a window border still lies whole inside some token. The next cell checks that a
    token really is its window's pixels, and draws the windows of a 3 x 3 block of neighbouring tokens.
    '''),
    code(r'''
    from matplotlib.patches import Rectangle

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

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    img = show(x0, t2t_model)
    axes[0].imshow(img)
    cy, cx = i * s - p + 3, j * s - p + 3                   # window centre
    axes[0].add_patch(Rectangle((cx - 14.5, cy - 14.5), 29, 29, fill=False, color="w", lw=1.5))
    axes[0].set_title("the image; white box = zoomed region")
    axes[1].imshow(img, extent=(-0.5, S - 0.5, S - 0.5, -0.5))
    axes[1].set_xlim(cx - 14.5, cx + 14.5)
    axes[1].set_ylim(cy + 14.5, cy - 14.5)
    for n, (di, dj) in enumerate([(0, -1), (0, 0), (0, 1), (1, 0)]):
        top, left = (i + di) * s - p, (j + dj) * s - p
        axes[1].add_patch(Rectangle((left - 0.5, top - 0.5), k, k, color=f"C{n}", alpha=0.25))
        axes[1].add_patch(Rectangle((left - 0.5, top - 0.5), k, k, fill=False, color=f"C{n}", lw=2))
    axes[1].set_title("7x7 windows of neighbouring tokens, stride 4:\nthe darker bands are pixels two tokens share")
    for ax in axes:
        ax.set_axis_off()
    plt.show()
    '''),
    md(r'''
    ## Re-structurization: tokens become an image again

    T2T transformer 1 mixes the 3136 tokens (a Performer, i.e. linear attention, in T2T-ViT-7; a softmax
    transformer in the `_t_` variants) and narrows each to 64 values. Laid back on the 56 x 56 grid, each of
    the 64 channels is a feature map. Below: a few channels after each re-structurization and after the
    final projection, and the attention row of one token of the first T2T layer: which of the 3136 tokens
    it gathers from. The full 3136 x 3136 matrix (39 MB per image) is never formed; `attention_rows`
    computes only the rows asked for.
    '''),
    code(r'''
    def channel_maps(name, n=6, image=1):
        """First n channels of a T2T stage, each as an (h, w) map."""
        h, w = tr.grid(name)
        return tr[name][image, :, :n].T.reshape(n, h, w)

    stages = [("t2t.attn1", "after T2T layer 1"), ("t2t.attn2", "after T2T layer 2"), ("t2t.project", "projected")]
    fig, axes = plt.subplots(len(stages), 6, figsize=(9, 4.8))
    for row, (name, label) in enumerate(stages):
        maps = channel_maps(name)
        for c in range(6):
            axes[row, c].imshow(maps[c], cmap="viridis")
            axes[row, c].set_axis_off()
            axes[row, c].set_title(f"{label}, ch {c}" if c == 0 else f"ch {c}")
    fig.suptitle(f"feature maps of the synthetic image: 56x56, 28x28, 14x14")
    plt.tight_layout()
    plt.show()

    # where one token of the first T2T layer looks
    h, w = tr.grid("t2t.attn1_map")
    query = i * w + j
    row = tr.attention_rows("t2t.attn1_map", [query])[1, 0, 0].reshape(h, w)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    axes[0].imshow(show(x0, t2t_model))
    axes[0].scatter([j * s], [i * s], c="r", s=30)
    axes[0].set_title(f"query token ({i}, {j})")
    from matplotlib.colors import LogNorm

    axes[1].imshow(row.clamp_min(row.max() * 1e-4), cmap="inferno", norm=LogNorm())
    axes[1].scatter([j], [i], c="c", s=20, marker="x")
    top = row.flatten().topk(10).values.sum()
    axes[1].set_title(f"its attention over the 56x56 tokens, log scale\n(rows sum to {row.sum():.3f}; "
                      f"the top 10 of 3136 tokens get {top:.0%})")
    for ax in axes:
        ax.set_axis_off()
    plt.show()
    '''),
    md(r'''
    ## Receptive fields: what each token is made of

    Composing the soft splits backwards gives the pixel window behind a token of each stage
    (`t2t.receptive_field`): 7 px after split 0, 7 + 2 x 4 = 15 px after split 1, 15 + 2 x 8 = 31 px after
    split 2. The stride doubles each time (4, 8, 16 px), so neighbouring tokens always overlap by almost half
    their window. A ViT patch is 16 px with no overlap: every pixel belongs to exactly one token. (The
    attention layers can mix in more; this is the part the splits alone wire in.)
    '''),
    code(r'''
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
    '''),
    code(r'''
    def coverage(model, stage, size):
        """How many tokens of a stage have each pixel in their window."""
        cover = torch.zeros(size, size)
        for top, left, bottom, right in t2t.receptive_fields(model, stage).reshape(-1, 4).tolist():
            cover[top:bottom, left:right] += 1
        return cover

    fig, axes = plt.subplots(2, 2, figsize=(8, 7), layout="constrained")
    for col, (model, stage, title) in enumerate([(t2t_model, "t2t.split2", "T2T-ViT backbone tokens: 31 px windows"),
                                                 (vit_model, "patch_embed", "ViT patches: 16 px, no overlap")]):
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
        cov = coverage(model, stage, S)
        im = axes[1, col].imshow(cov, cmap="Blues", vmin=0, vmax=4)
        axes[1, col].set_title(f"{label}: tokens holding each pixel, {int(cov.min())} to {int(cov.max())}")
        axes[1, col].set_axis_off()
    fig.colorbar(im, ax=axes[1], shrink=0.7)
    plt.show()
    '''),
    md(r'''
    In the middle of the image every pixel lies in the windows of up to four T2T-ViT backbone tokens (two
    along each axis), so a stroke crossing a token border is seen whole by a neighbour; in ViT each pixel
    feeds exactly one patch. This overlap, and the attention between the splits, is what the paper credits
    for T2T-ViT's richer local features (notebook 02) and its better learning from scratch (notebook 04).

    ## What the models make of the two images

    (The embedded models know only the ten synthetic classes, so on the photo they can only name the shape
    it most resembles.)
    '''),
    code(r'''
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
    '''),
    FOOTER,
]


# ----------------------------------------------------------------------------- 02

NB02 = [
    md(r"""
    # Feature richness: T2T-ViT vs ViT

    Fig. 2 of the T2T-ViT paper shows feature maps of ViT and T2T-ViT blocks side by side: in ViT many
    channels are blank or nearly constant (*invalid*) and few show local detail such as edges and lines,
    while T2T-ViT's channels carry more varied local structure. The paper argues that this redundancy is
    why ViT needs so much data, and that the T2T module's overlapping soft splits cure it.

    A picture of one image can be chosen to make any point, so this notebook measures the claim over
    **many images** (`N_SYNTH` synthetic test images plus the bundled photos) with the metrics of
    `analysis.redundancy`, computed on the patch tokens of every block, each channel laid out as a
    14 x 14 map:

    | metric | what it measures | the paper expects T2T-ViT to be |
    |---|---|---|
    | `invalid_fraction` | share of channels whose map is (nearly) flat: spatial std < 0.1 x the layer's RMS | lower |
    | `mean_abs_corr` | mean \|Pearson correlation\| between the valid channel maps: redundancy | lower |
    | `effective_rank_frac` | effective rank of the token x channel matrix / width: share of directions used | higher |
    | `high_freq_fraction` | share of a map's spectral energy above half the Nyquist frequency: local detail | higher |

    Every number comes with a 95% bootstrap confidence interval over images; differences between the models
    are paired (the same images go through both).
    """),
    SETUP,
    code(r'''
    from analysis import redundancy

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
    '''),
    md(r"""
    ## The paper's Fig. 2 view

    The first 32 channels of the patch tokens of one image, each channel as a 14 x 14 map: the tokens that
    enter the backbone (after the T2T module, or ViT's patch embedding), after the first block and after the
    last. Maps are centred per channel and share one grey scale per panel, so a flat channel shows as a blank
    grey tile, as in the paper; **red frames mark the channels `invalid_channels` calls invalid**.
    """),
    code(r'''
    from matplotlib.patches import Rectangle


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
    fig, axes = plt.subplots(2, 4, figsize=(15, 5.2), gridspec_kw={"width_ratios": [0.55, 1, 1, 1]})
    for row, label in enumerate(MODELS):
        toks = example_tokens[label]
        stages = [("tokens entering the backbone", toks[0]), ("after block 1", toks[1]),
                  (f"after block {len(toks) - 1} (last)", toks[-1])]
        axes[row, 0].imshow(show(x_example, picture_model))
        axes[row, 0].set_title(f"{label}: the image")
        for col, (title, t) in enumerate(stages, start=1):
            tile, invalid, (h, w, cols) = mosaic(t)
            axes[row, col].imshow(tile, cmap="gray", vmin=-1, vmax=1)
            for c in np.flatnonzero(invalid):
                r, q = divmod(c, cols)
                axes[row, col].add_patch(Rectangle((q * (w + 2) + 0.5, r * (h + 2) + 0.5), w, h, fill=False,
                                                   color="r", lw=1.2))
            axes[row, col].set_title(f"{label}, {title}: {invalid.sum()} of 32 invalid")
        for ax in axes[row]:
            ax.set_axis_off()
    plt.tight_layout()
    plt.show()
    '''),
    md(r"""
    ## Across depth, over all images

    Each metric at every stage (0 = tokens entering the backbone, then the blocks, stretched to the same
    relative depth since T2T-ViT-7 has 7 blocks and DeiT-tiny 12), mean over images with its 95% bootstrap
    band. Dashed lines: the same architectures with untrained (random) weights, a control that separates
    what the architecture does by itself from what training taught it.
    """),
    code(r'''
    RNG = np.random.default_rng(0)


    def bootstrap(values, n_boot=2000):
        """Mean over axis 0 and its 95% percentile-bootstrap interval (resampling images)."""
        values = np.asarray(values, dtype=np.float64)
        idx = RNG.integers(0, len(values), (n_boot, len(values)))
        means = values[idx].mean(axis=1)
        return values.mean(axis=0), np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


    controls = {}
    if TRAINED:
        for label, model in MODELS.items():
            controls[label], _ = profile(load_model(model.default_cfg["name"], "random"))

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), layout="constrained")
    for ax, metric in zip(axes, METRICS):
        for n, label in enumerate(MODELS):
            mean, lo, hi = bootstrap(results[label][metric])
            depth = np.linspace(0, 1, len(mean))
            ax.plot(depth, mean, "o-", ms=3, color=f"C{n}", label=label)
            ax.fill_between(depth, lo, hi, color=f"C{n}", alpha=0.25)
            if label in controls:
                ax.plot(depth, controls[label][metric].mean(axis=0), "--", color=f"C{n}", alpha=0.7,
                        label=f"{label} untrained")
        ax.set_title(metric)
        ax.set_xlabel("relative depth (0 = backbone input)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    plt.show()
    '''),
    md(r"""
    ### How flat is flat?

    `invalid_fraction` counts the channels whose spatial spread is below 0.1 x the layer's RMS spread, a
    threshold someone had to pick. The distribution of that relative spread over all channels, blocks and
    images shows the whole picture: the curve at 0.1 is `invalid_fraction`, and a model with many
    near-dead channels would rise early.
    """),
    code(r'''
    fig, ax = plt.subplots(figsize=(6, 3.4))
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
    '''),
    md(r"""
    ## The numbers, and what they support

    For each metric: the mean over the backbone blocks per image, then over images, for each model; and the
    paired difference T2T-ViT − ViT with its 95% bootstrap interval. A metric *supports* the paper when the
    interval excludes 0 on the side the paper predicts, *contradicts* it when it excludes 0 on the other side,
    and is *inconclusive* otherwise. The same is shown for the tokens entering the backbone, where the two
    tokenizations differ directly.
    """),
    code(r'''
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
    print(f"\nTOKENS ENTERING THE BACKBONE\n")
    embed_verdicts = compare(slice(0, 1), results)
    if controls:
        print(f"\nCONTROL: the same architectures untrained (random weights), backbone blocks\n")
        control_verdicts = compare(slice(1, None), controls)
    '''),
    code(r'''
    counts = {v: sum(x[0] == v for x in verdicts.values()) for v in ("supports", "contradicts", "inconclusive")}
    print(f"Over {n_images} images, in the backbone blocks, {counts['supports']} of {len(METRICS)} metrics support "
          f"the paper's claim that T2T-ViT's features are richer / less redundant than ViT's, "
          f"{counts['contradicts']} contradict it and {counts['inconclusive']} are inconclusive at 95%:")
    for metric, (verdict, d, lo, hi) in verdicts.items():
        line = f"  - {metric}: {verdict} (T2T-ViT - ViT = {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])"
        if controls:
            cv = control_verdicts[metric]
            line += f"; untrained control: {cv[0]} ({cv[1]:+.3f})"
        print(line)
    if not TRAINED:
        print("\nThese models are UNTRAINED (no embedded weights in this checkout): the verdicts describe the "
              "architectures at initialisation, not what the paper is about. Re-run once the weights are there.")
    '''),
    md(r"""
    **Reading `high_freq_fraction`.** It is measured on the 14 x 14 token grid, not on pixels. Neighbouring
    T2T-ViT tokens are made of overlapping 31 px windows, so they share about half their pixels, and their
    channel maps are smoother from one token to the next than those of ViT's disjoint patches: the overlapping
    soft split acts as a low-pass filter at the scale of the token grid. A lower value for T2T-ViT (and the
    same sign for the untrained control) therefore says more about the tokenization's geometry than about
    how much edge and line detail each token carries.

    **How far this goes.** The intervals capture the variation over images only. Each architecture is one
    trained network (one seed, one recipe, a synthetic dataset), so a difference that is certain over images
    may still be partly a property of that run; the untrained control shows how much of it the architecture
    produces before any learning (where the control already shows the same difference, the overlapping soft
    splits, not training, are the likely cause). The two models also differ in width (256 vs 192 channels) and
    depth (7 vs 12 blocks): the effective rank is divided by the width, the other metrics are fractions or
    correlations, and depth is compared on a relative scale. With the released ImageNet weights
    (`T2T_LENS_WEIGHTS=imagenet`) the same cells test the claim on the networks the paper describes.
    """),
    FOOTER,
]

# ----------------------------------------------------------------------------- 03

NB03 = [
    md(r'''
    # Explanations: where do T2T-ViT and ViT look?

    Five ways to turn a prediction into a map over the 14 x 14 token grid, run on both models:

    | method | idea | cost per image |
    |---|---|---|
    | attention rollout (Abnar & Zuidema 2020) | multiply the blocks' head-averaged attention (plus identity for the residual) | one forward |
    | gradient rollout (vit-explain) | rollout of attention x its gradient for the predicted class, negatives clipped | forward + backward |
    | Chefer relevance (Chefer et al. 2021) | accumulate gradient-weighted attention, R += A_bar R, block by block | forward + backward |
    | integrated gradients (Sundararajan et al. 2017) | gradients along a path from a blank image, pooled onto the tokens | `IG_STEPS` x (forward + backward) |
    | occlusion (Zeiler & Fergus 2014) | drop in the class score when a square is blanked out | one forward per window position |

    Maps are then scored by **deletion / insertion** (Petsiuk et al. 2018): blur away the pixels the map
    ranks highest first and follow the predicted class's probability (a faithful map makes it fall fast:
    low deletion AUC), or start from the blurred image and put them back (rises fast: high insertion AUC).
    A random map is the floor every method has to beat. All settings are in the next cell; they are kept
    small so the notebook runs in a few minutes on two CPU cores; raise them for tighter intervals.
    '''),
    SETUP,
    code(r'''
    from analysis import faithfulness, t2t_backproject
    from analysis.explain import explain
    from analysis.maps import normalize_map, upsample_map

    N_IMAGES = 8                # synthetic test images (labels 0..7)
    IG_STEPS = 8                # integrated gradients: integration steps
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
    '''),
    md(r'''
    ## The maps

    Four of the images, every method, both models (the target is each model's own prediction; maps are
    upsampled bilinearly and min-max normalised for display).
    '''),
    code(r'''
    def overlay(ax, x, model, heat):
        ax.imshow(show(x, model))
        hm = normalize_map(upsample_map(heat[None], x.shape[-1]))[0]
        ax.imshow(hm, cmap="inferno", alpha=0.55)
        ax.set_axis_off()

    SHOWN = [0, 3, 5]
    for label, model in MODELS.items():
        fig, axes = plt.subplots(len(SHOWN), len(METHODS) + 1, figsize=(1.7 * (len(METHODS) + 1), 1.8 * len(SHOWN)),
                                 layout="constrained")
        for r, i in enumerate(SHOWN):
            axes[r, 0].imshow(show(inputs[label][i], model))
            axes[r, 0].set_title(f"{CLASS_NAMES[labels[i]]} -> {class_name(model, int(preds[label][i]))}")
            axes[r, 0].set_axis_off()
            for c, method in enumerate(METHODS, start=1):
                overlay(axes[r, c], inputs[label][i], model, maps[label][method][i])
                if r == 0:
                    axes[r, c].set_title(method)
        fig.suptitle(f"{label} ({model.default_cfg['name']}): true class -> predicted class")
        plt.show()
    '''),
    md(r'''
    ### T2T-ViT maps belong to overlapping windows

    A T2T-ViT token is made of a 31 x 31 pixel window (notebook 01) plus what the two T2T attention layers
    mixed in, so stretching the 14 x 14 map bilinearly over the image is only an approximation.
    `analysis.t2t_backproject` carries the map back through the module instead: through each soft split
    (each token's value spread over its window) and each T2T attention (spread over the tokens it attended).
    Where the T2T attention sends most of its weight to a few tokens, the last panel concentrates there.
    '''),
    code(r'''
    i = SHOWN[1]
    x1 = inputs["T2T-ViT"][i:i + 1]
    heat = maps["T2T-ViT"]["rollout"][i:i + 1]
    tr = t2t.trace(t2t_model, x1)
    # "coverage": each pixel gets the mean of the tokens whose windows hold it (right for attention-like maps)
    variants = {
        "bilinear upsampling": upsample_map(heat, x1.shape[-1]),
        "through the soft splits": t2t_backproject.backproject(heat, x1.shape[-1], mode="coverage"),
        "splits + T2T attention": t2t_backproject.backproject_trace(heat, tr, x1.shape[-1], mode="coverage",
                                                                    residual=True),
    }
    fig, axes = plt.subplots(1, 4, figsize=(12, 3), layout="constrained")
    axes[0].imshow(show(x1[0], t2t_model))
    axes[0].set_title("T2T-ViT rollout for this image")
    for ax, (title, m) in zip(axes[1:], variants.items()):
        ax.imshow(m[0], cmap="inferno", vmin=0, vmax=np.percentile(m[0].numpy(), 99.5))  # a few hot pixels clipped
        ax.set_title(title)
    for ax in axes:
        ax.set_axis_off()
    plt.show()
    '''),
    md(r'''
    ## Deletion and insertion
    '''),
    code(r'''
    t0 = time.perf_counter()
    curves = {}
    for label, model in MODELS.items():
        for method in [*METHODS, "random"]:
            curves[label, method] = faithfulness.faithfulness(model, inputs[label], maps[label][method],
                                                              target=preds[label], steps=DELETION_STEPS)
    print(f"{len(curves)} deletion + insertion curves per image in {time.perf_counter() - t0:.0f} s")

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.3), layout="constrained")
    for col, (label, kind) in enumerate([(l, k) for l in MODELS for k in ("deletion", "insertion")]):
        ax = axes[col]
        for n, method in enumerate([*METHODS, "random"]):
            c = curves[label, method]
            style = {"color": "k", "ls": "--"} if method == "random" else {"color": f"C{n}", "marker": "o", "ms": 3}
            ax.plot(c.fractions, getattr(c, kind).mean(dim=0), label=method, **style)
        ax.set_title(f"{label}: {kind} (mean over images)")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the predicted class")
    axes[-1].legend(fontsize=7)
    plt.show()
    '''),
    code(r'''
    RNG = np.random.default_rng(0)


    def bootstrap(values, n_boot=2000):
        values = np.asarray(values, dtype=np.float64)
        means = values[RNG.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
        return values.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


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
    '''),
    code(r'''
    for label in MODELS:
        ranked = sorted(METHODS, key=lambda m: -beats_random[label, m][2])
        both = [m for m in METHODS if beats_random[label, m][0] and beats_random[label, m][1]]
        print(f"{label}: ranked by insertion AUC - deletion AUC: " + " > ".join(
            f"{m} ({beats_random[label, m][2]:+.3f})" for m in ranked))
        score = lambda m: curves[label, m].insertion_auc - curves[label, m].deletion_auc
        d, lo, hi = bootstrap(score(ranked[0]) - score(ranked[1]))
        print(f"    {ranked[0]} vs {ranked[1]}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
              f"({'beyond' if lo > 0 or hi < 0 else 'within'} the noise of {N_IMAGES} images)")
        print(f"    better than a random map on both curves (95% CI of the paired difference excludes 0): "
              f"{', '.join(both) if both else 'none'}")
    if not TRAINED:
        print("\nUNTRAINED models (no embedded weights in this checkout): their predictions and maps are noise.")
    '''),
    md(r'''
    **Reading these numbers.** With `N_IMAGES` images the intervals are wide; the ranking of methods
    *within* a model is the robust comparison (same images, same classifier). Comparing AUCs *across* models
    mixes the explanation with the classifier: a more confident model starts its curves higher. Deletion
    with a blurred baseline rewards maps that find what the blur destroys (fine local structure, which is
    what defines the synthetic classes); insertion rewards maps whose top pixels alone restore the class.
    Gradient-based maps (gradient rollout, Chefer) explain the predicted class; plain rollout is
    class-agnostic and shows where information flows, whatever the class.
    '''),
    FOOTER,
]

# ----------------------------------------------------------------------------- 04

NB04 = [
    md(r'''
    # Learning from scratch: does T2T-ViT learn better than ViT?

    The paper's headline claim is that T2T-ViT, trained from scratch on ImageNet, beats ViT of similar size
    (T2T-ViT-14: 81.5% top-1 vs DeiT-small 79.8%, with fewer parameters and MACs), because the T2T module
    models local structure that ViT's hard split has to learn from data. This project tests the claim on a
    small scale: the two embedded models, T2T-ViT-7 and DeiT-tiny, were trained **from scratch with the same
    recipe** (`t2t.train`: same data, steps, batch, optimiser, schedule, seed) on the synthetic dataset, whose
    ten classes are defined by local structure only. Their model cards and training logs ship with the
    weights (`t2t/assets/embedded/`). This notebook reads them, checks the test accuracy on fresh test images,
    and says what the numbers support.
    '''),
    SETUP,
    code(r'''
    import json
    import math
    from pathlib import Path

    from t2t.__main__ import count_gmacs
    from t2t.weights import EMBEDDED

    EMBEDDED_DIR = Path(os.environ.get("T2T_LENS_EMBEDDED_DIR", EMBEDDED))  # where cards and logs are read
    NAMES = {"T2T-ViT": T2T_NAME, "ViT": VIT_NAME}


    def read_log(name):
        # The training log (one JSON record per evaluation) next to the card, under any of its usual names
        for candidate in (f"{name}_log.jsonl", f"{name}.log.jsonl", f"{name}/log.jsonl"):
            path = EMBEDDED_DIR / candidate
            if path.exists():
                return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return []


    cards, logs = {}, {}
    for label, name in NAMES.items():
        card = EMBEDDED_DIR / f"{name}.json"
        if card.exists():
            cards[label] = json.loads(card.read_text())
        logs[label] = read_log(name)
    print(f"model cards found for: {', '.join(cards) or 'none'}; training logs for: "
          f"{', '.join(k for k, v in logs.items() if v) or 'none'} (in {EMBEDDED_DIR})")
    if not cards:
        print("No embedded models in this checkout yet: the cells below show what they can without them.")


    def wilson(k, n, z=1.96):
        # 95% Wilson score interval of a proportion k / n
        if n == 0:
            return float("nan"), float("nan")
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half
    '''),
    md(r'''
    ## The two runs

    Size and cost of each architecture (parameters, multiply-accumulates per 224 px image) and what its card
    says about the run. The ImageNet column is the released weights' top-1 from the paper / DeiT, for scale.
    '''),
    code(r'''
    from t2t.registry import get_config

    print(f"{'':8s} {'model':24s} {'params':>8s} {'GMACs':>6s} {'ImageNet':>9s} {'steps':>6s} {'images':>10s} "
          f"{'wall time':>10s}  {'synthetic test accuracy [95% CI]':34s} hardware")
    for label, name in NAMES.items():
        model = MODELS[label]
        params = sum(p.numel() for p in model.parameters())
        top1 = get_config(name).top1
        row = f"{label:8s} {name:24s} {params / 1e6:7.2f}M {count_gmacs(name):6.2f} {top1 or float('nan'):8.1f}%"
        card = cards.get(label)
        if card:
            n = card.get("data", {}).get("test_size") or 0
            k = round(card["test_acc"] * n)
            lo, hi = wilson(k, n)
            row += (f" {card.get('steps', 0):>6} {card.get('images_seen', 0):>10,} "
                    f"{card.get('wall_time_s', 0) / 60:8.1f} m  {card['test_acc']:7.2%} [{lo:.2%}, {hi:.2%}] of {n:,}"
                    f"    {card.get('hardware', '')}")
        print(row)

    same = {}
    if len(cards) == 2:
        recipes = [{k: v for k, v in c.get("recipe", {}).items() if k != "model"} for c in cards.values()]
        same = {k for k in recipes[0] if recipes[0].get(k) == recipes[1].get(k)}
        differ = sorted((set(recipes[0]) | set(recipes[1])) - same)
        print(f"\nrecipes: {len(same)} settings identical" + (f"; differing: {', '.join(differ)}" if differ else ""))
    '''),
    md(r'''
    ## Training curves
    '''),
    code(r'''
    have = {label: log for label, log in logs.items() if log}
    if have:
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), layout="constrained")
        for n, (label, log) in enumerate(have.items()):
            step = [r["step"] for r in log]
            axes[0].plot(step, [r["val_acc"] for r in log], "o-", ms=3, color=f"C{n}", label=f"{label} val")
            axes[0].plot(step, [r["train_acc"] for r in log], ":", color=f"C{n}", label=f"{label} train")
            axes[1].plot(step, [r["val_loss"] for r in log], "o-", ms=3, color=f"C{n}", label=f"{label} val")
            axes[1].plot(step, [r["train_loss"] for r in log], ":", color=f"C{n}", label=f"{label} train")
            if all("wall_time" in r for r in log):
                axes[2].plot([r["wall_time"] / 60 for r in log], [r["val_acc"] for r in log], "o-", ms=3,
                             color=f"C{n}", label=label)
        axes[0].set(title="accuracy (train: running mean since the last evaluation)", xlabel="step")
        axes[1].set(title="cross-entropy (train loss has label smoothing)", xlabel="step", yscale="log")
        axes[2].set(title="validation accuracy against wall-clock time", xlabel="minutes")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        plt.show()
    else:
        print("no training logs to plot")
    '''),
    code(r'''
    THRESHOLDS = (0.5, 0.8, 0.9, 0.95)


    def first_step(log, threshold):
        return next((r["step"] for r in log if r["val_acc"] >= threshold), None)


    if have:
        print(f"{'':8s} " + " ".join(f"{'val >= ' + format(t, '.0%'):>12s}" for t in THRESHOLDS)
              + f" {'mean val acc':>13s} {'final val':>10s}")
        for label, log in have.items():
            cells = [first_step(log, t) for t in THRESHOLDS]
            # mean validation accuracy over training: the area under the curve, per step
            steps = np.array([0] + [r["step"] for r in log], dtype=float)
            accs = np.array([0.1] + [r["val_acc"] for r in log])         # chance level at step 0
            area = np.trapezoid(accs, steps) / steps[-1] if steps[-1] else float("nan")
            print(f"{label:8s} " + " ".join(f"{'step ' + str(c) if c is not None else 'never':>12s}" for c in cells)
                  + f" {area:13.2%} {log[-1]['val_acc']:10.2%}")
    '''),
    md(r'''
    ## A fresh check on test images

    The cards' accuracies were measured by the training script; here both loaded models classify the same
    `N_EVAL` test images again. Because the images are shared, the comparison is paired: McNemar's exact test
    looks only at the images one model gets right and the other wrong.
    '''),
    code(r'''
    N_EVAL = 400
    correct = {}
    if all(m.num_classes == len(CLASS_NAMES) for m in MODELS.values()):
        t0 = time.perf_counter()
        for label, model in MODELS.items():
            hits = []
            with torch.no_grad():
                for start in range(0, N_EVAL, 50):
                    x, y = synthetic_batch(model, min(50, N_EVAL - start), start=start)
                    hits.append(model(x).argmax(dim=-1) == y)
            correct[label] = torch.cat(hits).numpy()
        for label, c in correct.items():
            lo, hi = wilson(int(c.sum()), len(c))
            card = cards.get(label, {}).get("test_acc")
            print(f"{label:8s} {c.mean():.2%} [{lo:.2%}, {hi:.2%}] on {len(c)} test images"
                  + (f"   (card: {card:.2%})" if card is not None else ""))
        t2t_only = int((correct["T2T-ViT"] & ~correct["ViT"]).sum())
        vit_only = int((correct["ViT"] & ~correct["T2T-ViT"]).sum())
        m = t2t_only + vit_only
        p = min(1.0, 2 * sum(math.comb(m, i) for i in range(min(t2t_only, vit_only) + 1)) / 2**m) if m else 1.0
        print(f"\nonly T2T-ViT right: {t2t_only} images, only ViT right: {vit_only}; McNemar exact p = {p:.3g}  "
              f"({time.perf_counter() - t0:.0f} s)")
    else:
        print("these are not the 10-class synthetic models (T2T_LENS_WEIGHTS is set): nothing to check here")
    '''),
    md(r'''
    ## What the numbers say
    '''),
    code(r'''
    if len(cards) == 2:
        a, b = cards["T2T-ViT"], cards["ViT"]
        na, nb = a["data"]["test_size"], b["data"]["test_size"]
        diff = a["test_acc"] - b["test_acc"]
        se = math.sqrt(a["test_acc"] * (1 - a["test_acc"]) / na + b["test_acc"] * (1 - b["test_acc"]) / nb)
        lo, hi = diff - 1.96 * se, diff + 1.96 * se
        verdict = ("supports" if lo > 0 else "contradicts" if hi < 0 else "neither supports nor contradicts")
        print(f"Trained from scratch with the same recipe on the synthetic local-structure data, {NAMES['T2T-ViT']} "
              f"reaches {a['test_acc']:.2%} test accuracy and {NAMES['ViT']} {b['test_acc']:.2%}: a difference of "
              f"{diff:+.2%} (95% CI [{lo:+.2%}, {hi:+.2%}], {na:,} and {nb:,} test images, treated as independent).")
        if have and len(have) == 2:
            when = lambda log, t: f"step {first_step(log, t)}" if first_step(log, t) is not None else "never"
            for t in (0.8, 0.9):
                print(f"Validation accuracy {t:.0%} is first reached at: T2T-ViT {when(have['T2T-ViT'], t)}, "
                      f"ViT {when(have['ViT'], t)} (of the logged evaluations, every "
                      f"{have['T2T-ViT'][0]['step']} steps).")
            la, lb = have["T2T-ViT"], have["ViT"]
            if all("wall_time" in r for r in la + lb):
                budget = min(la[-1]["wall_time"], lb[-1]["wall_time"])
                at = lambda log: np.interp(budget, [r["wall_time"] for r in log], [r["val_acc"] for r in log])
                print(f"At equal training time ({budget / 60:.1f} min, the shorter run), validation accuracy is "
                      f"{at(la):.1%} (T2T-ViT) vs {at(lb):.1%} (ViT), interpolated between evaluations: "
                      f"T2T-ViT costs more per step ({la[-1]['wall_time'] / la[-1]['step']:.3f} vs "
                      f"{lb[-1]['wall_time'] / lb[-1]['step']:.3f} s on {cards['T2T-ViT'].get('hardware', '?')}).")
        print(f"This {verdict} the claim that T2T-ViT learns better from scratch than a ViT of similar size "
              f"({sum(p.numel() for p in t2t_model.parameters()) / 1e6:.1f}M vs "
              f"{sum(p.numel() for p in vit_model.parameters()) / 1e6:.1f}M parameters), on this data and recipe.")
        if correct:
            print(f"The fresh check above ({N_EVAL} shared test images, McNemar p = {p:.3g}) agrees in direction: "
                  f"{'yes' if np.sign(correct['T2T-ViT'].mean() - correct['ViT'].mean()) == np.sign(diff) else 'no'}.")
    else:
        print("No model cards for both models in this checkout, so no conclusion yet. Once the embedded weights "
              "land (t2t/assets/embedded/), re-run this notebook.")
    '''),
    md(r'''
    **How far this goes.** One run per architecture (one seed): the interval covers test-set sampling, not
    run-to-run variation, which for small transformers trained from scratch can be a point or more. The
    synthetic classes are defined by local structure by design, the setting where the paper's argument is
    strongest, so a win here shows the mechanism can help, not that it explains the ImageNet results. The
    recipe is shared rather than tuned for either model, and the models are the smallest of each family
    (T2T-ViT-7 vs DeiT-tiny); the paper's ImageNet comparison at this size is 71.7% vs 72.2%, i.e. no win.
    '''),
    FOOTER,
]


NOTEBOOKS: dict[str, list[nbformat.NotebookNode]] = {
    "01_tokens_to_token.ipynb": NB01,
    "02_feature_richness.ipynb": NB02,
    "03_explanations.ipynb": NB03,
    "04_learning_from_scratch.ipynb": NB04,
}


# ----------------------------------------------------------------------------- build / execute


def build(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.from_dict(c) for c in NOTEBOOKS[name]]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"  # stable ids: rebuilding does not change the file
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path = HERE, timeout: int = 600,
            kernel_name: str = "python3") -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel (working directory `cwd`); raises on the first failing cell."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="substrings of notebook names (default: all)")
    p.add_argument("--execute", action="store_true", help="run the notebooks and save their outputs")
    p.add_argument("--check", action="store_true", help="compare the committed notebooks' sources with this file")
    args = p.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.names or any(s in n for s in args.names)]
    stale = []
    for name in names:
        path = HERE / name
        nb = build(name)
        if args.check:
            if not path.exists() or sources(nbformat.read(path, as_version=4)) != sources(nb):
                stale.append(name)
            continue
        if args.execute:
            t0 = time.perf_counter()
            execute(nb)
            print(f"{name}: executed in {time.perf_counter() - t0:.0f} s")
        nbformat.write(nb, path)
    if stale:
        print("out of date (run python notebooks/_build.py --execute):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
