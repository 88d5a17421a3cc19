"""Tests for lovaszseg.runtime.acceleration and .accelerated: amp, channels-last, torch.compile."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

import lovaszseg.runtime.accelerated as accelerated
from lovaszseg.config import load_config
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


@pytest.mark.parametrize(
    ("override", "overrides", "expected"),
    [
        (AccelerationOverride(), [], ("auto", False, True)),
        (
            AccelerationOverride("none", True, False),
            ['train.amp="none"', "train.channels_last=true", "train.compile=false"],
            ("none", True, False),
        ),
        (AccelerationOverride(amp="bf16"), ['train.amp="bf16"'], ("bf16", False, True)),
    ],
)
def test_an_override_sets_the_train_keys_as_dotted_overrides_would(
    override: AccelerationOverride, overrides: list[str], expected: tuple[str, bool, bool]
) -> None:
    assert override.config_overrides() == overrides
    base = ["train.amp=auto", "train.compile=true"]  # the config's own, which the override then changes
    train = load_config(None, [*base, *override.config_overrides()]).train
    assert (train.amp, train.channels_last, train.compile) == expected  # "none" stays a string, not null


@pytest.fixture
def avx512_bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A CPU with AVX-512 BF16 (no AMX) that torch runs at AVX512, no oneDNN cap; native_bf16 forgets its answers."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    native_bf16.cache_clear()  # it remembers the answer per device
    yield monkeypatch
    native_bf16.cache_clear()  # the real answer again for the tests after this one


def test_native_bf16_reads_the_cpu_flags(avx512_bf16_cpu: pytest.MonkeyPatch) -> None:
    assert native_bf16(CPU)
    avx512_bf16_cpu.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    native_bf16.cache_clear()
    assert not native_bf16(CPU)
    avx512_bf16_cpu.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    native_bf16.cache_clear()
    assert native_bf16(CPU)


@pytest.mark.parametrize(
    ("capability", "env", "native"),
    [
        ("AVX512", {}, True),
        ("AVX2", {}, False),  # ATEN_CPU_CAPABILITY=avx2, or torch's own choice
        ("DEFAULT", {}, False),
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, True),
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_SOMETHING_NEW"}, False),  # unknown: counted as a cap
        ("AVX512", {"DNNL_MAX_CPU_ISA": "AVX2"}, False),  # oneDNN's older name
        ("AVX2", {"ONEDNN_MAX_CPU_ISA": "ALL"}, False),
    ],
)
def test_native_bf16_honours_the_process_caps(
    capability: str, env: dict[str, str], native: bool, avx512_bf16_cpu: pytest.MonkeyPatch
) -> None:
    """A capped process emulates bf16 (10-30x slower than float32): amp auto must then stay float32."""
    avx512_bf16_cpu.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    for name, value in env.items():
        avx512_bf16_cpu.setenv(name, value)
    assert native_bf16(CPU) is native
    assert amp_dtype(Acceleration("auto"), CPU) is (torch.bfloat16 if native else None)


def test_a_torch_without_the_probes_is_not_native(avx512_bf16_cpu: pytest.MonkeyPatch) -> None:
    avx512_bf16_cpu.delattr(torch.cpu, "_is_avx512_bf16_supported")
    avx512_bf16_cpu.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not native_bf16(CPU)
    avx512_bf16_cpu.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    avx512_bf16_cpu.delattr(torch.backends.cpu, "get_cpu_capability")
    native_bf16.cache_clear()
    assert not native_bf16(CPU)


@pytest.mark.parametrize(
    ("probe", "native"),
    [
        (lambda including_emulation=True: not including_emulation, True),  # asked without emulation
        (lambda including_emulation=True: False, False),
        (lambda: True, False),  # an older torch: no including_emulation argument
    ],
)
def test_native_bf16_on_cuda_excludes_emulation(
    probe: Callable[..., bool], native: bool, avx512_bf16_cpu: pytest.MonkeyPatch
) -> None:
    avx512_bf16_cpu.setattr(torch.cuda, "is_bf16_supported", probe)
    assert native_bf16(torch.device("cuda")) is native


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
    # Exactly: the losses cast to float32 first, so bf16 changes the values given, not the arithmetic.
    assert torch.equal(loss, loss_fn(logits.float(), labels))
