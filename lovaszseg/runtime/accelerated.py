"""A model running with its :class:`~lovaszseg.runtime.acceleration.Acceleration`: autocast, memory format,
torch.compile, float32 output. Imported by training and inference, never by the CLI's start-up (torch)."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from lovaszseg.errors import ConfigError
from lovaszseg.heads import outputs_float
from lovaszseg.runtime.acceleration import Acceleration

__all__ = ["AcceleratedModel", "accelerate", "amp_dtype", "autocast", "native_bf16", "to_memory_format"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) that still let it run bf16
# in hardware: AVX512_CORE_BF16 and every ISA above it (with their AVX10 aliases), or no cap (ALL).
# Lower caps (SSE41 ... AVX512_CORE_VNNI) and values not listed here, which may be newer or misspelt,
# count as capped: amp auto then stays float32, the safe side, and an explicit amp bf16 still runs bf16.
_ONEDNN_BF16_CAPS = frozenset(
    {
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX",
        "AVX10_1_512_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2",
        "AVX10_2_512",
        "AVX10_2_AMX_2",
        "AVX10_2_512_AMX_2",
        "ALL",
    }
)


def _torch_flag(owner: object, name: str, **kwargs: bool) -> bool:
    """``owner.name(**kwargs)``, or False where this torch lacks that function or argument.

    The CPU flags are private torch functions and ``including_emulation`` is newer than some torch
    versions the project allows: a torch without them gets "not native" (float32 for amp auto), not an error.
    """
    probe = getattr(owner, name, None)
    if probe is None:
        return False
    try:
        return bool(probe(**kwargs))
    except TypeError:  # an argument this torch does not take
        return False


def _cpu_caps_allow_bf16() -> bool:
    """Whether this process lets the CPU's bf16 instructions run: ATen's kernels at AVX512
    (``ATEN_CPU_CAPABILITY``) and oneDNN's up to AVX512_CORE_BF16 at least (``ONEDNN_MAX_CPU_ISA``).

    A cap below them makes bf16 emulated, 10 to 30 times slower than float32 (docs/speed.md).
    """
    get_capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if get_capability is None or not str(get_capability()).upper().startswith("AVX512"):
        return False  # DEFAULT, AVX2 (capped or an older CPU), or not x86
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return not cap or cap.strip().upper() in _ONEDNN_BF16_CAPS


@functools.cache  # asked at every forward pass with amp auto; the hardware and the caps do not change
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware.

    A CUDA GPU with bf16 (not emulated), or a CPU with AVX-512 BF16 or AMX whose use this process does
    not cap: torch's CPU capability (``ATEN_CPU_CAPABILITY``) must be AVX512, and ``ONEDNN_MAX_CPU_ISA``
    (or ``DNNL_MAX_CPU_ISA``), when set, AVX512_CORE_BF16 or above (an unknown value counts as a cap).
    A torch too old for these checks gets False.
    """
    if device.type == "cuda":
        return _torch_flag(torch.cuda, "is_bf16_supported", including_emulation=False)
    if device.type == "cpu":  # torch's cpuinfo reads the CPU's feature flags
        flags = _torch_flag(torch.cpu, "_is_avx512_bf16_supported") or _torch_flag(torch.cpu, "_is_amx_tile_supported")
        return flags and _cpu_caps_allow_bf16()
    return False


def amp_dtype(acceleration: Acceleration, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``acceleration`` on ``device`` (None: float32).

    Raises:
        ConfigError: ``fp16`` on a device other than CUDA.
    """
    if acceleration.amp == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if acceleration.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"amp fp16 (train.amp or --amp) needs a CUDA device, not {device.type}; use bf16, auto or none"
        )
    return _DTYPES.get(acceleration.amp)


def autocast(acceleration: Acceleration, device: torch.device) -> AbstractContextManager:
    """The mixed-precision context of forward passes on ``device``."""
    dtype = amp_dtype(acceleration, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def to_memory_format(model: nn.Module, acceleration: Acceleration) -> nn.Module:
    """Put ``model``'s weights in the memory format (in place; before any DDP wrapping) and return it."""
    return model.to(memory_format=torch.channels_last) if acceleration.channels_last else model


class _CompiledForward:
    """``torch.compile`` of a module, falling back to the module itself where compiling fails.

    Compilation happens at the first call; if it raises, a warning names the reason and every call
    (this one included) runs the module uncompiled, so a real error in the model still surfaces.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.forward: Callable[[Tensor], Tensor] | None = None

    def __call__(self, images: Tensor) -> Tensor:
        if self.forward is not None:
            return self.forward(images)
        try:
            compiled = torch.compile(self.module)
            output = compiled(images)
        except Exception as error:  # any compiler failure means: run uncompiled
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            warnings.warn(
                f"compile: torch.compile cannot compile this model here ({type(error).__name__}: {reason}); "
                "running it uncompiled",
                RuntimeWarning,
                stacklevel=2,
            )
            self.forward = self.module
            return self.module(images)
        self.forward = compiled
        return output


class AcceleratedModel(nn.Module):
    """A model whose forward runs with an :class:`Acceleration` and returns float32.

    The wrapped model stays at ``.module`` (its state dict is the model's, prefixed ``module.``; save
    ``.module``'s). Its weights must already be in the memory format (:func:`to_memory_format`,
    or use :func:`accelerate`).

    Args:
        module: A segmentation model (or its DDP wrapper) returning logits or probabilities.
        acceleration: How its forward runs.

    Shape:
        - Input: ``[B, in_channels, H, W]``.
        - Output: the module's output, float32 (a tensor, or :class:`~lovaszseg.heads.Outputs`).
    """

    def __init__(self, module: nn.Module, acceleration: Acceleration) -> None:
        super().__init__()
        self.module = module
        self.acceleration = acceleration
        # Unwrapped models and ensembles say whether they output probabilities; keep saying it.
        self.outputs_probabilities = getattr(module, "outputs_probabilities", False)
        self._compiled = _CompiledForward(module) if acceleration.compile else None

    def forward(self, images: Tensor) -> Tensor:
        run = self._compiled or self.module
        if self.acceleration.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.acceleration, images.device):
            output = run(images)
        return outputs_float(output)


def accelerate(model: nn.Module, acceleration: Acceleration, *, convert: bool = True) -> nn.Module:
    """``model`` running with ``acceleration``: itself when that changes nothing, else an :class:`AcceleratedModel`.

    Args:
        model: A segmentation model, an ensemble, or a DDP wrapper (then ``convert=False``).
        acceleration: How its forward runs.
        convert: Put the weights in the memory format first (:func:`to_memory_format`); a DDP
            model's were put there before wrapping.
    """
    if acceleration == Acceleration():
        return model
    return AcceleratedModel(to_memory_format(model, acceleration) if convert else model, acceleration)
