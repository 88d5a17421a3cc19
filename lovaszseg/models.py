"""Segmentation models from segmentation-models-pytorch, by architecture and encoder name."""

from __future__ import annotations

import inspect
from typing import Any

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.base.modules import SCSEModule
from torch import Tensor, nn

from lovaszseg.config import ModelConfig
from lovaszseg.decoders import DEEP_HEADS, WinnersUnet
from lovaszseg.encoder_weights import load_encoder_weights, weights_file
from lovaszseg.errors import ConfigError
from lovaszseg.heads import Outputs, split_outputs

__all__ = [
    "ADDABLE_HEADS",
    "EncoderWeightsError",
    "build_model",
    "check_input_size",
    "output_probabilities",
    "output_stride",
    "probabilities",
]


# State-dict prefixes of the heads a config can add to a trained model (model.empty_head: smp's
# classification head; model.deep_supervision: the decoder's training-only heads). Weights without them
# still fit (model.init_from): the heads start fresh, so a plain run can be fine-tuned into the winners' model.
ADDABLE_HEADS = ("classification_head.", f"{DEEP_HEADS}.")


class EncoderWeightsError(ConfigError):
    """``model.encoder_weights`` cannot be downloaded here (e.g. offline); the message says how to go on."""


# Set by the config (in_channels and classes from the dataset; aux_params from model.empty_head), or
# would stop the model returning the logits the losses and metrics expect.
_RESERVED_OPTIONS = frozenset({"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params"})


def _check_options(config: ModelConfig) -> None:
    """smp passes unknown keyword arguments on to the encoder, where non-timm encoders drop them: a typo
    would be ignored silently, so the options are checked against the architecture's signature."""
    model_class = smp.MODEL_ARCHITECTURES_MAPPING.get(config.arch.lower())
    if model_class is None:
        names = sorted(c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values())
        raise ConfigError(f"unknown model.arch {config.arch!r}; choose from {names}")
    parameters = inspect.signature(model_class.__init__).parameters
    allowed = sorted(name for name in parameters if name not in _RESERVED_OPTIONS | {"self", "kwargs"})
    reserved = sorted(set(config.options) & _RESERVED_OPTIONS)
    # timm ("tu-") encoders take further keyword arguments, so only named smp encoders are checked.
    unknown = [] if config.encoder.startswith("tu-") else sorted(set(config.options) - set(allowed) - set(reserved))
    if reserved or unknown:
        hint = "; the classification head is model.empty_head" if "aux_params" in reserved else ""
        raise ConfigError(
            f"model.options {reserved + unknown} not accepted by {model_class.__name__} here; allowed: {allowed}{hint}"
        )


def _aux_params(config: ModelConfig, classes: int) -> dict[str, Any]:
    """smp's ``aux_params`` of ``model.empty_head``: one logit, "the image has foreground" (binary tasks)."""
    if not config.empty_head:
        return {}
    if classes != 1:
        raise ConfigError(
            f"model.empty_head {config.empty_head:g} needs a binary task (one output channel), not {classes} classes; "
            "set model.empty_head=0"
        )
    return {"aux_params": {"classes": 1}}


def _winners_options(config: ModelConfig) -> dict[str, bool]:
    """``WinnersUnet``'s options of ``model.hypercolumn`` and ``model.deep_supervision`` (UNet only)."""
    chosen = {"hypercolumn": config.hypercolumn, "deep_supervision": bool(config.deep_supervision)}
    if any(chosen.values()) and config.arch.lower() != "unet":
        names = [f"model.{name}" for name, value in chosen.items() if value]
        verb = "need" if len(names) > 1 else "needs"
        raise ConfigError(f"{' and '.join(names)} {verb} model.arch Unet, not {config.arch!r}")
    return chosen if any(chosen.values()) else {}


def _check_attention(model: nn.Module, config: ModelConfig) -> None:
    """smp's scSE squeezes a stage's channels by 16: a narrower decoder stage would get zero channels
    there and fail on the first batch, so it is refused when the model is built."""
    if any(module.cSE[1].out_channels == 0 for module in model.modules() if isinstance(module, SCSEModule)):
        channels = config.options.get("decoder_channels", "smp's default")
        raise ConfigError(
            f"model.options.decoder_attention_type scse needs at least 16 channels in every decoder stage "
            f"(its squeeze divides them by 16); model.options.decoder_channels is {channels}"
        )


def build_model(config: ModelConfig, in_channels: int, classes: int, *, pretrained: bool = True) -> nn.Module:
    """Create an smp model (``Unet``, ``DeepLabV3Plus``, ``FPN``, ...) with any smp encoder.

    ``config.encoder_weights`` is an smp weight name (``imagenet``, ...: downloaded through the Hugging Face
    Hub, or read from its cache, offline too), a local weights file (a value with a weights suffix or a path
    separator; see :mod:`lovaszseg.encoder_weights`) or None (from scratch).

    Args:
        config: Architecture, encoder, encoder weights and extra ``create_model`` options.
        in_channels: Image channels (1 for TGS Salt, 3 for VOC).
        classes: Output channels (1 for binary tasks, 21 for VOC).
        pretrained: Load ``config.encoder_weights``; False when weights will come from a checkpoint: then
            nothing is downloaded and a weights file is neither read nor required to exist.

    Returns:
        The model, returning logits ``[B, classes, H, W]``; with ``config.empty_head`` smp's
        ``(masks, labels)``, which :func:`lovaszseg.heads.split_outputs` reads. With
        ``config.hypercolumn`` or ``config.deep_supervision`` a :class:`~lovaszseg.decoders.WinnersUnet`.

    Raises:
        ConfigError: unknown architecture or encoder, bad options, ``model.empty_head`` on a multi-class
            task, ``model.hypercolumn`` or ``model.deep_supervision`` on an architecture other than UNet,
            scSE attention on decoder stages narrower than 16 channels, or a weights file that is missing,
            unreadable or does not fit the encoder (the message lists the keys).
        EncoderWeightsError: the pretrained weights could not be downloaded (a ConfigError; the message
            says the ways out).
    """
    _check_options(config)
    winners = _winners_options(config)
    weights = config.encoder_weights if pretrained else None
    local = weights_file(weights) if weights is not None else None
    options = {
        "encoder_name": config.encoder,
        "encoder_weights": None if local is not None else weights,
        "in_channels": in_channels,
        "classes": classes,
        **_aux_params(config, classes),
        **config.options,
    }
    try:
        model = WinnersUnet(**winners, **options) if winners else smp.create_model(config.arch, **options)
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(
            f"cannot build model.arch {config.arch!r} with model.encoder {config.encoder!r}: {error}"
        ) from error
    except OSError as error:  # connection, DNS, HTTP and "not in the offline cache" errors of the download
        raise EncoderWeightsError(
            f"could not download the {weights!r} weights of encoder {config.encoder!r} ({error}); "
            "this machine may be offline: train from scratch with model.encoder_weights=null, or set "
            "model.encoder_weights to a local weights file (.pth/.pt/.bin/.safetensors), or copy here a Hugging Face "
            "cache (HF_HOME) filled on a machine with internet and set HF_HUB_OFFLINE=1 (docs/configs.md)"
        ) from error
    _check_attention(model, config)
    if local is not None:
        load_encoder_weights(model.encoder, local, in_channels=in_channels, name=config.encoder)
    return model


def output_stride(model: nn.Module) -> int:
    """The factor input heights and widths must be divisible by (1 when the model takes any size).

    Args:
        model: An smp model (or a wrapper holding it as ``.module``).

    Returns:
        32 for a depth-5 smp encoder, 8 for depth 3, 16 for a dilated DeepLabV3+ encoder, ...
    """
    while isinstance(getattr(model, "module", None), nn.Module):  # an AcceleratedModel or DDP: the model inside
        model = model.module
    if not getattr(model, "requires_divisible_input_shape", True):
        return 1
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 1)) if encoder is not None else 1


def check_input_size(model: nn.Module, height: int, width: int, source: str) -> None:
    """Fail early, with a fix, when images do not fit the encoder's downsampling.

    Args:
        model: An smp model.
        height: Image height the model will be fed.
        width: Image width.
        source: What produced the size, for the message (e.g. ``"the first training image"``).

    Raises:
        ConfigError: a side is not divisible by :func:`output_stride`; names the padded size to use.
    """
    stride = output_stride(model)
    if height % stride or width % stride:
        padded = (-(-height // stride) * stride, -(-width // stride) * stride)
        raise ConfigError(
            f"{source} is {height}x{width}, but this model needs sides divisible by {stride}: "
            f"pad or resize to {padded[0]}x{padded[1]} (e.g. TGS 101x101 -> data.options.pad_size=128)"
        )


def output_probabilities(output: Tensor | tuple[Tensor, ...]) -> Outputs:
    """The probabilities of a model's output: :func:`probabilities` of the masks, the sigmoid of the
    empty-image head's logit (None without a head)."""
    outputs = split_outputs(output)
    return Outputs(probabilities(outputs.masks), None if outputs.empty is None else outputs.empty.float().sigmoid())


def probabilities(logits: Tensor) -> Tensor:
    """Sigmoid of a one-channel (binary) model's logits, softmax over the classes otherwise, in float32."""
    logits = logits.float()
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)
