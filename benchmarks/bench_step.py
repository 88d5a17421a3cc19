"""What the hardware gives one training step of the model alone, without data, loss bookkeeping or a loop.

Usage:
    python benchmarks/bench_step.py [--repeats 10] [--decoder-channels 128,64,32,16,16]

Times a bare training step of smp's UNet-ResNet18 (1 -> 1 channels, one fixed random batch of
16 x 1 x 128 x 128, BCE): forward + backward, and Adam's step with PyTorch's ``foreach`` and fused CPU
kernels, under each of ``SETTINGS``. Medians of ``--repeats`` steps after 3 untimed ones.
``bench_train.py --only speed`` measures whole ``train()`` steps against a bare fp32 loop; this is the
ceiling a loop could reach on this machine.

One setting is not a lovaszseg setting but a candidate for one: float32 weights and activations whose
convolutions oneDNN computes in bf16 inside (``torch.backends.mkldnn.conv.fp32_precision = "bf16"``,
PyTorch 2.9 and later), so no autocast casts run and BatchNorm stays float32. On a CPU without bf16
instructions oneDNN cannot use it, and the row shows what it falls back to.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

BATCH = (16, 1, 128, 128)


@contextlib.contextmanager
def _onednn_bf16_convolutions() -> Iterator[None]:
    """float32 convolutions computed by oneDNN in bf16, restored afterwards."""
    previous = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.conv.fp32_precision = previous


def _bf16_autocast() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


# name: (channels-last, the context the forward pass runs in, the context the whole step runs in)
Context = Callable[[], contextlib.AbstractContextManager]
SETTINGS: dict[str, tuple[bool, Context, Context]] = {
    "fp32": (False, contextlib.nullcontext, contextlib.nullcontext),
    "fp32 + channels-last": (True, contextlib.nullcontext, contextlib.nullcontext),
    "bf16 autocast + channels-last": (True, _bf16_autocast, contextlib.nullcontext),
    "fp32 with oneDNN bf16 convolutions + channels-last": (True, contextlib.nullcontext, _onednn_bf16_convolutions),
}


def step_seconds(setting: str, fused: bool, decoder: list[int], repeats: int) -> tuple[float, float]:
    """Median seconds of forward + backward, and of the optimiser step."""
    channels_last, forward_context, step_context = SETTINGS[setting]
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1, decoder_channels=decoder)
    images, masks = torch.randn(BATCH), (torch.rand(BATCH) > 0.5).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {"foreach": True}))
    passes, steps = [], []
    with step_context():
        for _ in range(3 + repeats):
            start = time.perf_counter()
            with forward_context():
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
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    args = parser.parse_args()
    decoder = [int(c) for c in args.decoder_channels.split(",")]
    names = [name.strip() for name in args.settings.split(",")]
    if unknown := [name for name in names if name not in SETTINGS]:
        parser.error(f"unknown --settings {unknown}; choose from {list(SETTINGS)}")
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; UNet-ResNet18 decoder {decoder}, batch {BATCH}"
    )
    print("| setting | Adam | forward + backward (s) | optimiser step (s) | images/s |")
    print("|---|---|---:|---:|---:|")
    for name in names:
        for fused in (False, True):
            passes, step = step_seconds(name, fused, decoder, args.repeats)
            print(
                f"| {name} | {'fused' if fused else 'foreach'} | {passes:.3f} | {step:.4f} "
                f"| {BATCH[0] / (passes + step):.1f} |"
            )


if __name__ == "__main__":
    main()
