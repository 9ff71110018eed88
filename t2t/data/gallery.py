"""Draw the class gallery of the synthetic dataset: `python -m t2t.data.gallery [out.png]`.

Writes docs/gallery.png by default: `per_class` test-split samples of every class, named.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from t2t.data.synthetic import CLASS_NAMES, NUM_CLASSES, LocalStructureDataset  # noqa: E402


def make_gallery(path: str | Path = "docs/gallery.png", per_class: int = 2, img_size: int = 224,
                 panel_inches: float = 1.25, dpi: int = 110) -> Path:
    """Save a (per_class rows x 10 classes) grid of samples with class names; returns the path.

    The PNG is quantised to a 256-colour palette: the pixel noise would otherwise make it
    several hundred KB.
    """
    ds = LocalStructureDataset("test", size=NUM_CLASSES * per_class, img_size=img_size)
    fig, axes = plt.subplots(per_class, NUM_CLASSES, squeeze=False,
                             figsize=(NUM_CLASSES * panel_inches, per_class * panel_inches + 0.3))
    for i in range(NUM_CLASSES * per_class):
        row, col = divmod(i, NUM_CLASSES)  # test index i has label i % 10 = col
        ax = axes[row][col]
        ax.imshow(ds.array(i), interpolation="lanczos")
        ax.set_axis_off()
        if row == 0:
            ax.set_title(CLASS_NAMES[col], fontsize=9)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    return path


if __name__ == "__main__":
    out = make_gallery(*sys.argv[1:2])
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
