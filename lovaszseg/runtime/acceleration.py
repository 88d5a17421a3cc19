"""How a model's forward pass runs fast on its device: mixed precision, channels-last memory, torch.compile.

A run's config holds the settings (``train.amp``, ``train.channels_last``, ``train.compile``); training
uses them for its steps and validation, and ``eval``, ``predict``, ``submit``, ``cv`` and ``compare``
use each model's own, overridden per call by ``--amp``, ``--channels-last`` and ``--compile``
(:class:`AccelerationOverride`). ``eval``, ``predict`` and ``submit`` change the loaded models'
settings for that call; ``cv`` and ``compare``, which train the models they then predict with, set
them in the config of every run they train (:meth:`AccelerationOverride.config_overrides`), so that
training, validation and the out-of-fold or comparison predictions all use them.
:mod:`lovaszseg.runtime.accelerated` applies them (this module stays free of torch, for the CLI's
start-up). Only the forward pass changes: the model's output is returned as float32, so losses and
metrics compute from float32 values (the Lovász weights from exact counts).

``amp: auto`` is bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX-512
BF16 or AMX, read from the CPU's flags, in a process whose ``ATEN_CPU_CAPABILITY`` and
``ONEDNN_MAX_CPU_ISA`` do not cap it below them) and fp32 elsewhere: a CPU without them emulates bf16,
slower than fp32 (docs/speed.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

from lovaszseg.errors import ConfigError

__all__ = ["AMP_MODES", "Acceleration", "AccelerationOverride", "Amp"]

Amp = Literal["none", "bf16", "fp16", "auto"]
AMP_MODES: tuple[str, ...] = get_args(Amp)


def _check_amp(amp: str, key: str) -> None:
    if amp not in AMP_MODES:
        raise ConfigError(f"unknown {key} {amp!r}; use one of {', '.join(AMP_MODES)}")


@dataclass(frozen=True)
class Acceleration:
    """How a model's forward pass is computed (run by :func:`lovaszseg.runtime.accelerated.accelerate`).

    Attributes:
        amp: ``none`` (float32), ``bf16``, ``fp16`` (CUDA only) or ``auto`` (bf16 where native, else float32).
        channels_last: Weights and batches in channels-last (NHWC) memory.
        compile: Run the model through ``torch.compile`` (uncompiled, with a warning, where it cannot be).
    """

    amp: Amp = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        _check_amp(self.amp, "amp")


@dataclass(frozen=True)
class AccelerationOverride:
    """Per-call changes to a model's own :class:`Acceleration` (None keeps its value)."""

    amp: Amp | None = None
    channels_last: bool | None = None
    compile: bool | None = None

    def __post_init__(self) -> None:
        if self.amp is not None:  # checked as given, before any model is loaded
            _check_amp(self.amp, "--amp")

    def apply(self, base: Acceleration) -> Acceleration:
        """``base`` with every value this override sets."""
        return replace(base, **self._changes())

    def config_overrides(self) -> list[str]:
        """The dotted config overrides (``train.amp="bf16"``, ``train.channels_last=true``, ...) that set
        what this override sets.

        For workflows that train the models they predict with (``cv``, ``compare``): appended after the
        user's own overrides, they set the runs' ``train`` keys as ``train.amp=bf16`` would, so training,
        validation and prediction all use them and each run folder records them.
        """
        # JSON values are YAML that reads back as given: "none" stays a string, booleans stay booleans.
        return [f"train.{name}={json.dumps(value)}" for name, value in self._changes().items()]

    def _changes(self) -> dict[str, object]:
        """The fields this override sets, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
