"""Where a salt model's TGS metric comes from: its validation images without salt, and those with salt.

The TGS metric scores an image without salt 1 if nothing is predicted there and 0 otherwise, so a stage
that changes the metric may do it on the empty images alone. Used in docs/experiments.md for the demo:

    python docs/demo_empty_images.py runs/salt-demo/stage1_best.pt runs/salt-demo/stage2_last.pt
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lovaszseg.data import describe_dataset
from lovaszseg.scoring.evidence import ImageRecorder, ImageStatistics
from lovaszseg.scoring.postprocess import ImageCounts
from lovaszseg.workflows.runs import evaluate_run


@dataclass
class _CountsRecorder(ImageRecorder):
    """Also keeps the engine's per-image pixel counts, whose ``truth`` tells the empty images."""

    counts: ImageCounts | None = None

    def finish(self, metrics: dict[str, float], counts: ImageCounts | None = None) -> ImageStatistics:
        self.counts = counts
        return super().finish(metrics, counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="run folders or checkpoints of TGS-like salt models")
    for model in parser.parse_args().models:
        recorder = _CountsRecorder(describe_dataset("tgs"))
        with tempfile.TemporaryDirectory() as scratch:  # its eval.json, not the run's
            evaluate_run(model, device="cpu", recorder=recorder, out=Path(scratch))
        score = recorder.statistics.values["salt_score"][:, 0]
        empty = recorder.counts.truth == 0
        print(
            f"{model}: TGS metric {score.mean():.4f}; on the {empty.sum()} images without salt "
            f"{score[empty].mean():.3f}, on the {(~empty).sum()} with salt {score[~empty].mean():.3f}"
        )


if __name__ == "__main__":
    main()
