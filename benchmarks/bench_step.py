"""What the hardware gives one training step of the model alone, without data, loss bookkeeping or a loop.

Usage:
    python benchmarks/bench_step.py [--repeats 10] [--decoder-channels 128,64,32,16,16]

Times a bare training step of smp's UNet-ResNet18 (1 -> 1 channels, one fixed random batch of
16 x 1 x 128 x 128, BCE): forward + backward, and Adam's step with PyTorch's default (``foreach``) and
fused CPU kernels, in float32 and with bf16 autocast + channels-last. Medians of ``--repeats`` steps
after 3 untimed ones. ``bench_train.py --only speed`` measures whole ``train()`` steps against a bare
fp32 loop; this is the ceiling a loop could reach on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

BATCH = (16, 1, 128, 128)


def step_seconds(bf16_channels_last: bool, fused: bool, decoder: list[int], repeats: int) -> tuple[float, float]:
    """Median seconds of forward + backward, and of the optimiser step."""
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1, decoder_channels=decoder)
    images, masks = torch.randn(BATCH), (torch.rand(BATCH) > 0.5).float()
    if bf16_channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {"foreach": True}))
    passes, steps = [], []
    for _ in range(3 + repeats):
        start = time.perf_counter()
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16_channels_last else contextlib.nullcontext()
        with context:
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        middle = time.perf_counter()
        optimizer.step()
        passes.append(middle - start)
        steps.append(time.perf_counter() - middle)
    return statistics.median(passes[3:]), statistics.median(steps[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each setting")
    parser.add_argument("--decoder-channels", default="128,64,32,16,16", help="the UNet decoder's channels")
    args = parser.parse_args()
    decoder = [int(c) for c in args.decoder_channels.split(",")]
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; UNet-ResNet18 decoder {decoder}, batch {BATCH}"
    )
    print("| setting | Adam | forward + backward (s) | optimiser step (s) | images/s |")
    print("|---|---|---:|---:|---:|")
    for bf16_channels_last in (False, True):
        for fused in (False, True):
            passes, step = step_seconds(bf16_channels_last, fused, decoder, args.repeats)
            name = "bf16 autocast + channels-last" if bf16_channels_last else "fp32"
            print(
                f"| {name} | {'fused' if fused else 'foreach'} | {passes:.3f} | {step:.4f} "
                f"| {BATCH[0] / (passes + step):.1f} |"
            )


if __name__ == "__main__":
    main()
