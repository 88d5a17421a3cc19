"""Time of lovaszseg.scoring.metrics.best_threshold on a TGS-sized validation set.

Usage:
    python benchmarks/bench_threshold.py [--images 4000] [--size 101] [--thresholds 50] [--repeats 5]

Prints the median wall time of ``best_threshold`` (TGS score, and dataset IoU) over random float32
probabilities and masks, every threshold scored in one pass over the pixels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lovaszseg.scoring.metrics import best_threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=101)
    parser.add_argument("--thresholds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.images, args.size, args.size)
    truth = rng.random(shape, dtype=np.float32) < 0.3
    probs = np.clip(truth * 0.5 + rng.random(shape, dtype=np.float32) * 0.6, 0.0, 1.0).astype(np.float32)
    thresholds = np.linspace(0.02, 0.98, args.thresholds)
    for metric in ("salt", "iou"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            best, score, _ = best_threshold(probs, truth, thresholds, metric=metric)
            times.append(time.perf_counter() - start)
        print(
            f"best_threshold metric={metric} {args.images}x{args.size}x{args.size}, {args.thresholds} thresholds: "
            f"median {statistics.median(times) * 1000:.0f} ms over {args.repeats} runs (best {best:.3f} -> {score:.4f})"
        )


if __name__ == "__main__":
    main()
