"""Why channels-last gains less in training than in inference on a CPU: BatchNorm's training kernels.

Usage:
    python benchmarks/bench_batchnorm.py [--repeats 20]

Times one training-mode ``batch_norm`` forward and backward on a batch of 16 x 64 x 64 x 64 (the size of
an early UNet-ResNet18 stage at batch 16 on 128 x 128 TGS inputs), float32 and bf16, contiguous (NCHW)
and channels-last (NHWC) memory; the median of ``--repeats`` timed calls after 3 untimed ones.

Two gradients flow back into the layer. ``dense`` is a random gradient in the input's memory format:
what the next convolution's backward hands a BatchNorm inside a model. ``expanded`` is the gradient of
``output.sum()``, one value broadcast with stride 0 (the first version of this script, 2026-12-04, timed
only that one): a channels-last BatchNorm must first copy it into channels-last memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPE = (16, 64, 64, 64)
GRADIENTS = ("dense", "expanded")


def step_ms(dtype: torch.dtype, channels_last: bool, gradient: str, repeats: int) -> float:
    """Median milliseconds of one training-mode batch_norm forward and backward."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(SHAPE, dtype=dtype).contiguous(memory_format=memory)
    if gradient == "dense":
        grad_output = torch.randn(SHAPE, dtype=dtype).contiguous(memory_format=memory)
    else:
        grad_output = torch.ones((), dtype=dtype).expand(SHAPE)
    weight, bias = torch.ones(SHAPE[1], requires_grad=True), torch.zeros(SHAPE[1], requires_grad=True)
    mean, var = torch.zeros(SHAPE[1]), torch.ones(SHAPE[1])
    times = []
    for index in range(3 + repeats):
        leaf = x.detach().requires_grad_()
        start = time.perf_counter()
        output = F.batch_norm(leaf, mean, var, weight, bias, training=True)
        output.backward(grad_output)
        if index >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    capability, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    print(f"torch {torch.__version__}, CPU capability {capability}, threads {threads}")
    print(f"batch_norm forward + backward, training mode, {' x '.join(map(str, SHAPE))}, median of {args.repeats}")
    print("| dtype | gradient | contiguous (ms) | channels-last (ms) | channels-last / contiguous |")
    print("|---|---|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        for gradient in GRADIENTS:
            contiguous, channels_last = (step_ms(dtype, cl, gradient, args.repeats) for cl in (False, True))
            ratio = channels_last / contiguous
            print(f"| {name} | {gradient} | {contiguous:.1f} | {channels_last:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
