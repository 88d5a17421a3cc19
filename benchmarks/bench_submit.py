"""Time and peak memory of ``lovaszseg submit`` with a 5-model ensemble and flip TTA, by test-set size.

Usage:
    python benchmarks/bench_submit.py [--images ../shared/tgs/test/images] [--counts 1000,18000]
        [--members 5] [--config configs/salt-demo.yaml] [--tta hflip] [--repeats 1]

The ensemble is ``--members`` models of the config's architecture (default: the demo's UNet-ResNet18,
decoder ``[64, 32, 16, 16, 8]``, 101 -> 128 padding; ``--config docs/experiments-tgs-cv.yaml`` for the
cv experiment's wider decoder), each saved as a
``model.safetensors`` with freshly initialised weights (seeds 0, 1, ...): inference costs the same
whatever the weights, and the benchmark needs no trained run. For each count N, a temporary Kaggle-like
``test/images`` folder holds N hard links to the given images under new ids (``ID-k``: the real 1,000
TGS test images cycled, as the 18,000 of the competition's test set), and ``lovaszseg submit MEMBERS...
TEST --tta hflip`` runs in a fresh process, on the CPU with PyTorch's default threads. Measured: the
wall time of the whole command (start-up and model loading included), images/s (N over that), and the
peak resident memory of the process (``ru_maxrss`` of the command, read by a one-child wrapper
process), and the size of the CSV written. Bounded memory means the peak does not grow with N: images
stream through the members in batches of 16, and each row is encoded, checked and spooled to a temporary
file as it comes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lovaszseg.config import load_config
from lovaszseg.data import describe_dataset
from lovaszseg.models import build_model
from lovaszseg.storage.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
# Runs the command given as arguments and prints its peak RSS in KiB (Linux ru_maxrss): the wrapper's
# only child is the measured command.
WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def write_members(config_path: Path, count: int, folder: Path) -> list[Path]:
    """``count`` exported models of the config's architecture, initialised with seeds 0..count-1."""
    config = load_config(config_path, ["model.encoder_weights=null"])
    spec = describe_dataset(config.data.name, config.data.options)
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = build_model(config.model, spec.in_channels, spec.num_classes, pretrained=False)
        run = RunFolder.create(config, folder / f"member{seed}")
        paths.append(run.export({"model": model.state_dict()}, config))
        run.release()
    return paths


def test_folder(images: list[Path], count: int, folder: Path) -> Path:
    """``folder/test/images`` with ``count`` hard links to ``images`` (cycled) under new ids."""
    target = folder / "test" / "images"
    target.mkdir(parents=True)
    for index in range(count):
        source = images[index % len(images)]
        link = target / f"{source.stem}-{index // len(images)}{source.suffix}"
        try:
            os.link(source, link)
        except OSError:  # another file system: a copy
            link.write_bytes(source.read_bytes())
    return target.parent


def measure(members: list[Path], test: Path, out: Path, tta: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``lovaszseg submit`` in a fresh process."""
    command = [sys.executable, "-m", "lovaszseg", "submit", *map(str, members), str(test), "--out", str(out)]
    command += ["--tta", tta, "--device", "cpu"]
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"submit failed:\n{process.stdout}\n{process.stderr}")
    kib = int(next(line.split()[1] for line in process.stdout.splitlines() if line.startswith("maxrss_kib")))
    return seconds, kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "tgs" / "test" / "images")
    parser.add_argument("--counts", default="1000,18000", help="Test-set sizes, comma-separated.")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "salt-demo.yaml")
    parser.add_argument("--tta", default="hflip")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per count (the median is reported).")
    args = parser.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.suffix == ".png")
    counts = [int(c) for c in args.counts.split(",")]
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"ensemble of {args.members} x {args.config.name} models, tta {args.tta}, {len(images)} source images")
    print(f"{'images':>7} {'seconds':>9} {'images/s':>9} {'peak RSS MiB':>13} {'CSV MiB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        members = write_members(args.config, args.members, Path(tmp) / "members")
        for count in counts:
            test = test_folder(images, count, Path(tmp) / f"n{count}")
            runs = [measure(members, test, Path(tmp) / f"n{count}.csv", args.tta) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            peak = statistics.median(r[1] for r in runs)
            csv_path = Path(tmp) / f"n{count}.csv"
            rows = sum(1 for _ in csv_path.open()) - 1
            assert rows == count, f"the submission holds {rows} rows for {count} images"
            size = csv_path.stat().st_size / 2**20
            print(f"{count:>7} {seconds:>9.1f} {count / seconds:>9.1f} {peak:>13.0f} {size:>8.1f}")


if __name__ == "__main__":
    main()
