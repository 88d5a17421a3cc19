"""A model running with its :class:`~lovaszseg.runtime.acceleration.Acceleration`: autocast, memory format,
torch.compile, float32 output. Imported by training and inference, never by the CLI's start-up (torch)."""

from __future__ import annotations

import functools
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


@functools.cache  # asked at every forward pass with amp auto; the hardware does not change
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # torch's cpuinfo reads the CPU's feature flags
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
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
