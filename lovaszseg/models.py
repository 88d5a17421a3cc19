"""Segmentation models from segmentation-models-pytorch, by architecture and encoder name."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from lovaszseg.config import ModelConfig

__all__ = ["build_model", "output_stride"]


def build_model(config: ModelConfig, in_channels: int, classes: int, *, pretrained: bool = True) -> nn.Module:
    """Create an smp model (``Unet``, ``DeepLabV3Plus``, ``FPN``, ...) with any smp encoder.

    Args:
        config: Architecture, encoder, encoder weights and extra ``create_model`` options.
        in_channels: Image channels (1 for TGS Salt, 3 for VOC).
        classes: Output channels (1 for binary tasks, 21 for VOC).
        pretrained: Load ``config.encoder_weights``; False when weights will come from a checkpoint.

    Returns:
        The model, returning logits ``[B, classes, H, W]``.

    Raises:
        ValueError: unknown architecture or encoder, or bad options.
        RuntimeError: the pretrained weights could not be downloaded (the message says how to train
            without them).
    """
    weights = config.encoder_weights if pretrained else None
    try:
        return smp.create_model(
            config.arch,
            encoder_name=config.encoder,
            encoder_weights=weights,
            in_channels=in_channels,
            classes=classes,
            **config.options,
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"cannot build model {config.arch!r} with encoder {config.encoder!r}: {error}") from error
    except OSError as error:  # connection, DNS and HTTP errors of the weight download
        raise RuntimeError(
            f"could not download the {weights!r} weights of encoder {config.encoder!r} ({error}); "
            "this machine may be offline: train from scratch with model.encoder_weights=null"
        ) from error


def output_stride(model: nn.Module) -> int:
    """The factor input heights and widths must be divisible by (32 for a depth-5 smp encoder)."""
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 32)) if encoder is not None else 1
