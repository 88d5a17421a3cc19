"""Regenerate the pictures in docs/images: ``python docs/figures.py``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lovaszseg.data.synth import synth_salt

IMAGES = Path(__file__).resolve().parent / "images"


def synth_salt_grid(path: Path, columns: int = 8) -> None:
    """Synthetic salt images (top) with their masks outlined (bottom)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = synth_salt(Path(tmp) / "salt", n_train=columns * 2, n_test=1, seed=0)
        ids = sorted(p.stem for p in (root / "train" / "images").glob("*.png"))[:columns]
        figure, axes = plt.subplots(2, columns, figsize=(2 * columns, 4.2))
        for column, sample_id in enumerate(ids):
            image = cv2.imread(str(root / "train" / "images" / f"{sample_id}.png"), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(root / "train" / "masks" / f"{sample_id}.png"), cv2.IMREAD_UNCHANGED) > 0
            axes[0, column].imshow(image, cmap="gray", vmin=0, vmax=255)
            axes[0, column].set_title(f"coverage {mask.mean():.0%}", fontsize=9)
            axes[1, column].imshow(image, cmap="gray", vmin=0, vmax=255)
            axes[1, column].imshow(mask, cmap="Reds", alpha=0.35 * mask, vmin=0, vmax=1)
            if mask.any() and not mask.all():
                axes[1, column].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        for axis in axes.flat:
            axis.set_axis_off()
        figure.suptitle("lovaszseg data synth-salt: images (top) and salt masks (bottom)")
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close(figure)


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    synth_salt_grid(IMAGES / "synth_salt.png")
