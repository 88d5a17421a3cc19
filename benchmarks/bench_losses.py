"""Forward+backward time of lovaszseg's Lovász losses against smp's LovaszLoss and one torch.sort.

Usage:
    python benchmarks/bench_losses.py [--repeats 15] [--device cpu|cuda|all]

Prints one markdown table per device: the median time of each case (forward + backward) for
lovaszseg, for ``segmentation_models_pytorch.losses.LovaszLoss`` with the same mode and per_image,
and for a single ``torch.sort`` of the same logits (per image / per class row, the work every
Lovász loss must at least do), with the ratios the targets are stated in. On CPU it also prints the
minor page faults per lovaszseg call: glibc hands big freed buffers back to the OS, and touching
fresh pages again can cost as much as the arithmetic (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from segmentation_models_pytorch.losses import LovaszLoss

from lovaszseg.losses import lovasz_hinge, lovasz_softmax


@dataclass
class Case:
    name: str
    logits: torch.Tensor
    labels: torch.Tensor
    ours: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    smp: torch.nn.Module
    sort_rows: Callable[[torch.Tensor], torch.Tensor]  # the logits as the rows a loss has to sort


def _binary_case(name: str, generator: torch.Generator, device: str, confident: bool) -> Case:
    batch, size = 32, 128
    labels = (torch.rand(batch, size, size, generator=generator) < 0.4).long()
    signs = labels * 2.0 - 1.0
    if confident:
        # margin ~ N(2.645, 1): P(margin < 1) = 5%, i.e. about 5% of pixels with a positive hinge error.
        logits = signs * (2.645 + torch.randn(batch, size, size, generator=generator))
    else:
        logits = torch.randn(batch, size, size, generator=generator)
    return Case(
        name,
        logits.to(device),
        labels.to(device),
        lambda x, y: lovasz_hinge(x, y, per_image=True),
        LovaszLoss("binary", per_image=True, from_logits=True),
        lambda x: x.reshape(batch, -1),
    )


def _softmax_case(name: str, generator: torch.Generator, device: str, per_image: bool) -> Case:
    batch, classes, size, present = 8, 21, 128, 5
    # Each image: background plus 4 object classes drawn at random, in square blocks of 16x16 pixels.
    chosen = torch.stack([torch.randperm(classes - 1, generator=generator)[: present - 1] + 1 for _ in range(batch)])
    palette = torch.cat([torch.zeros(batch, 1, dtype=torch.long), chosen], 1)
    blocks = torch.randint(0, present, (batch, size // 16, size // 16), generator=generator)
    labels = torch.gather(palette, 1, blocks.reshape(batch, -1)).reshape(batch, size // 16, size // 16)
    labels = labels.repeat_interleave(16, 1).repeat_interleave(16, 2)
    logits = torch.randn(batch, classes, size, size, generator=generator)
    return Case(
        name,
        logits.to(device),
        labels.to(device),
        lambda x, y: lovasz_softmax(x, y, per_image=per_image),
        LovaszLoss("multiclass", per_image=per_image, from_logits=True),
        lambda x: x.reshape(batch * classes, -1) if per_image else x.transpose(0, 1).reshape(classes, -1),
    )


def _median_ms(step: Callable[[], None], device: str, repeats: int) -> tuple[float, float]:
    """Median wall time in ms and median minor page faults of ``step``."""

    def synced() -> None:
        step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up: allocator, kernels, caches
        synced()
    times, faults = [], []
    for _ in range(repeats):
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        synced()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    return statistics.median(times) * 1e3, statistics.median(faults)


def _loss_step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], case: Case) -> Callable[[], None]:
    def step() -> None:
        logits = case.logits.detach().requires_grad_(True)
        loss_fn(logits, case.labels).backward()

    return step


def run(device: str, repeats: int) -> str:
    generator = torch.Generator().manual_seed(0)
    cases = [
        _binary_case("hinge per-image, random logits, 32x128x128", generator, device, confident=False),
        _binary_case("hinge per-image, confident logits (5% active), 32x128x128", generator, device, confident=True),
        _softmax_case("softmax per-image, 21 classes (5 present), 8x128x128", generator, device, per_image=True),
        _softmax_case("softmax global, 21 classes (5 present), 8x128x128", generator, device, per_image=False),
    ]
    header = (
        "| case | lovaszseg (ms) | smp LovaszLoss (ms) | one torch.sort (ms) | speed-up vs smp | lovaszseg / sort "
        "| page faults / call |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for case in cases:
        ours, faults = _median_ms(_loss_step(case.ours, case), device, repeats)
        smp, _ = _median_ms(_loss_step(case.smp, case), device, repeats)
        rows_to_sort = case.sort_rows(case.logits)
        sort, _ = _median_ms(lambda r=rows_to_sort: torch.sort(r, dim=1, descending=True), device, repeats)
        rows.append(
            f"| {case.name} | {ours:.1f} | {smp:.1f} | {sort:.1f} | {smp / ours:.2f}x | {ours / sort:.2f} "
            f"| {faults:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per measurement (median)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="cuda/all use CUDA if present")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("CUDA: not available, skipped")
            continue
        name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"\n{name}, torch {torch.__version__}, median of {args.repeats} (forward + backward)\n")
        print(run(device, args.repeats))


if __name__ == "__main__":
    main()
