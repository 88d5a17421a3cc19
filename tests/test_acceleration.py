"""Tests for lovaszseg.runtime.acceleration and .accelerated: amp, channels-last, torch.compile."""

from __future__ import annotations

import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

import lovaszseg.runtime.accelerated as accelerated
from lovaszseg.errors import ConfigError
from lovaszseg.losses import LOSSES, build_loss
from lovaszseg.models import output_stride
from lovaszseg.runtime.accelerated import AcceleratedModel, accelerate, amp_dtype, native_bf16
from lovaszseg.runtime.acceleration import Acceleration, AccelerationOverride

CPU = torch.device("cpu")


def _unet() -> nn.Module:
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1, decoder_channels=[16, 8, 8, 8, 8])
    return model.eval()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (AccelerationOverride(), Acceleration("bf16", True, False)),
        (AccelerationOverride(amp="none"), Acceleration("none", True, False)),
        (AccelerationOverride(channels_last=False, compile=True), Acceleration("bf16", False, True)),
    ],
)
def test_an_override_changes_only_what_it_sets(override: AccelerationOverride, expected: Acceleration) -> None:
    assert override.apply(Acceleration("bf16", channels_last=True)) == expected


@pytest.mark.parametrize("make", [lambda: Acceleration("fp32"), lambda: AccelerationOverride(amp="half")])
def test_an_unknown_amp_is_refused_with_the_choices(make) -> None:
    with pytest.raises(ConfigError, match=r"unknown (--)?amp '(fp32|half)'; use one of none, bf16, fp16, auto"):
        make()


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_is_bf16_only_where_the_device_has_it_natively(
    native: bool, expected: torch.dtype | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accelerated, "native_bf16", lambda device: native)
    assert amp_dtype(Acceleration("auto"), CPU) is expected
    assert amp_dtype(Acceleration("bf16"), CPU) is torch.bfloat16  # asked for: used, native or not
    assert amp_dtype(Acceleration("none"), CPU) is None


def test_native_bf16_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    native_bf16.cache_clear()  # it remembers the answer per device
    assert not native_bf16(CPU)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    native_bf16.cache_clear()
    assert native_bf16(CPU)
    native_bf16.cache_clear()  # the real flags again for the tests after this one


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match=r"amp fp16 \(train\.amp or --amp\) needs a CUDA device, not cpu"):
        amp_dtype(Acceleration("fp16"), CPU)


def test_nothing_to_change_leaves_the_model_itself() -> None:
    model = _unet()
    assert accelerate(model, Acceleration()) is model


@pytest.mark.parametrize(
    ("acceleration", "tolerance"),
    [(Acceleration(channels_last=True), 1e-5), (Acceleration("bf16"), 0.1), (Acceleration("bf16", True), 0.1)],
)
def test_an_accelerated_model_computes_the_same_logits_in_float32(acceleration: Acceleration, tolerance: float) -> None:
    images = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _unet()(images)
        model = accelerate(_unet(), acceleration)
        logits = model(images)
    assert isinstance(model, AcceleratedModel) and logits.dtype == torch.float32
    weight = model.module.encoder.layer1[0].conv1.weight  # 64 input channels: the layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) == acceleration.channels_last
    assert (logits - expected).abs().max().item() < tolerance * max(1.0, expected.abs().max().item())
    assert set(model.state_dict()) == {f"module.{name}" for name in _unet().state_dict()}


def test_the_input_size_check_sees_the_model_inside() -> None:
    model = smp.DeepLabV3Plus("resnet18", encoder_weights=None, in_channels=1, classes=1)
    assert model.requires_divisible_input_shape and output_stride(model) == 16
    assert output_stride(accelerate(model, Acceleration(channels_last=True))) == 16


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).relu() * 2


def test_compile_runs_and_gives_the_eager_output() -> None:
    """Compiled where this machine can (a C++ compiler), else uncompiled with a warning: same numbers."""
    torch.manual_seed(0)
    module, images = _Scale().eval(), torch.randn(2, 1, 16, 16)
    model = accelerate(module, Acceleration(compile=True))
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = model(images), model(images)
    assert all("running it uncompiled" in str(w.message) for w in caught if w.category is RuntimeWarning)
    torch.testing.assert_close(first, module(images).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, first)


def test_a_model_that_cannot_be_compiled_runs_uncompiled_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_compile(module: nn.Module):
        def run(images: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    module, images = _Scale().eval(), torch.randn(1, 1, 8, 8)
    model = accelerate(module, Acceleration(compile=True))
    with pytest.warns(RuntimeWarning, match=r"cannot compile this model here \(RuntimeError: InductorError: no "):
        output = model(images)
    torch.testing.assert_close(output, module(images))
    model(images)  # later calls go straight to the uncompiled model


def test_a_real_error_in_the_model_still_surfaces() -> None:
    model = accelerate(_Scale(), Acceleration(compile=True))
    with pytest.raises(RuntimeError, match="channels"), pytest.warns(RuntimeWarning):
        model(torch.randn(1, 3, 8, 8))  # 3 channels into a 1-channel convolution


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_of_bf16_logits_equals_the_float32_loss_of_the_same_values(name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    classes = 3 if name in ("ce", "lovasz_softmax") else 1
    logits = torch.randn(2, classes, 12, 12, generator=generator).to(torch.bfloat16)
    labels = torch.randint(0, max(classes, 2), (2, 12, 12), generator=generator)
    loss_fn = build_loss(name)
    loss = loss_fn(logits, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss_fn(logits.float(), labels).item(), rel=1e-6)
