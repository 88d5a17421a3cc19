"""Encoder weights from a local file: a timm, torchvision or smp state dict mapped onto an smp encoder.

The file's keys are matched to the encoder's after stripping the prefixes every key shares (``module.``,
``model.``, ``encoder.``, ``backbone.``); the classifier head (and, for ``tu-`` encoders, the stages the
feature extractor does not build at this depth) is dropped; anything else that does not fit is a
:class:`~lovaszseg.errors.ConfigError` listing the keys. A first conv with other input channels is adapted
the way smp adapts pretrained weights for ``in_channels``.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders import TimmUniversalEncoder
from segmentation_models_pytorch.encoders._utils import patch_first_conv
from torch import nn

from lovaszseg.errors import ConfigError

__all__ = ["WEIGHT_SUFFIXES", "load_encoder_weights", "weights_file"]

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Prefixes that wrappers add to every key: DataParallel/DDP, EMA or Lightning modules, smp and mmseg models.
_PREFIXES = ("module.", "model.", "encoder.", "backbone.")
# Entries of training checkpoints (timm, Lightning, lovaszseg) that hold the state dict.
_WRAPPERS = ("state_dict", "model")
# The classifier modules smp's encoders delete (resnet, dpn, efficientnet, densenet/vgg/mobilenet, mobileone, mit).
_HEADS = frozenset({"fc", "last_linear", "_fc", "classifier", "linear", "head"})
_LISTED = 10  # keys named per kind of problem; the rest are counted


def weights_file(value: str) -> Path | None:
    """The local file ``model.encoder_weights`` names, or None for an smp weight name (``imagenet``, ...).

    Args:
        value: The config value.

    Returns:
        The path (``~`` expanded) when the value has a weights suffix or a path separator.

    Raises:
        ConfigError: the value looks like a path but no file is there.
    """
    if Path(value).suffix.lower() not in WEIGHT_SUFFIXES and "/" not in value and os.sep not in value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights {value!r}: no such file ({path.absolute()}); give a local weights file "
            f"({', '.join(WEIGHT_SUFFIXES)}), an smp weight name such as 'imagenet', or null to train from scratch"
        )
    return path


def load_encoder_weights(encoder: nn.Module, path: Path, *, in_channels: int, name: str) -> None:
    """Copy the tensors of a weights file into an smp encoder, every one accounted for.

    Args:
        encoder: The encoder of a freshly built smp model (``model.encoder``).
        path: A ``.safetensors`` file, or a ``torch.save`` file (a state dict, or a checkpoint holding one
            under ``state_dict`` or ``model``).
        in_channels: The model's input channels: a first conv saved with other channels (RGB) is adapted.
        name: The encoder's config name, for messages.

    Raises:
        ConfigError: the file cannot be read, holds no state dict, or its keys or shapes do not match the
            encoder (missing, unexpected and mismatched keys are all listed).
    """
    state = _read_state_dict(path)
    # Both sides are normalised alike: tu- encoders hold the timm model under "model.".
    file_keys = _normalise({key: key for key in state})
    own = encoder.state_dict()
    own_keys = _normalise({key: key for key in own})
    first_conv = _first_conv_key(encoder, in_channels)
    unused = _unused_keys(encoder)

    loaded: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, file_key in file_keys.items():
        if key not in own_keys:
            if key not in unused and key.split(".", 1)[0] not in _HEADS:
                unexpected.append(file_key)
            continue
        own_key, tensor = own_keys[key], state[file_key]
        expected = own[own_key].shape
        if own_key == first_conv and tensor.ndim == 4 and tensor.shape[1] != expected[1]:
            tensor = _adapt_first_conv(tensor, expected[1])
        if tensor.shape != expected:
            mismatched.append(f"{file_key} {tuple(state[file_key].shape)} (model: {tuple(expected)})")
        loaded[own_key] = tensor
    # BatchNorm's step counters are not weights; older and converted checkpoints often lack them.
    missing = [key for key in own if key not in loaded and not key.endswith("num_batches_tracked")]
    if missing or unexpected or mismatched:
        problems = [
            _listing(kind, keys)
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ConfigError(
            f"model.encoder_weights {path} does not fit encoder {name!r} (after stripping the prefixes "
            f"{', '.join(_PREFIXES)} shared by all keys and dropping the classifier):\n" + "\n".join(problems)
        )
    encoder.load_state_dict({**own, **loaded})  # strict: the counters a file lacks keep their value


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a training checkpoint."""
    try:
        if path.suffix.lower() == ".safetensors":
            state: object = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling and safetensors errors come in many types
        lines = str(error).strip().splitlines()  # torch's unpickling messages go on for many lines
        raise ConfigError(
            f"model.encoder_weights {path} cannot be read as a state dict (torch.load with weights_only=True, "
            f"or safetensors for .safetensors): {type(error).__name__}: {lines[0] if lines else ''}"
        ) from error
    while isinstance(state, dict) and (wrapper := next((k for k in _WRAPPERS if isinstance(state.get(k), dict)), None)):
        state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"model.encoder_weights {path} holds no state dict (a dict of tensors)")
    other = sorted(str(key) for key, value in state.items() if not isinstance(value, torch.Tensor))
    if other:
        raise ConfigError(
            f"model.encoder_weights {path} is not a state dict: {_listing('entries that are not tensors', other)}"
        )
    return state


def _normalise(keys: dict[str, str]) -> dict[str, str]:
    """``keys`` (normalised key -> original key) without the wrapper prefixes every key shares.

    A whole smp model (its state dict, or a lovaszseg run's ``model.safetensors``) gives its encoder's keys.
    """
    while keys:
        prefix = next((p for p in _PREFIXES if all(key.startswith(p) for key in keys)), None)
        if prefix is None and any(key.startswith("decoder.") for key in keys):
            keys = {key: original for key, original in keys.items() if key.startswith("encoder.")}
            prefix = "encoder."
        if prefix is None:
            break
        keys = {key.removeprefix(prefix): original for key, original in keys.items()}
    return keys


def _unused_keys(encoder: nn.Module) -> set[str]:
    """Keys of the full timm model that a ``tu-`` encoder does not build (head, stages beyond its depth)."""
    if not isinstance(encoder, TimmUniversalEncoder):
        return set()
    with torch.device("meta"):  # keys only: no memory, no initialisation
        full = timm.create_model(encoder.name, pretrained=False)
    return set(full.state_dict())


def _first_conv_key(encoder: nn.Module, in_channels: int) -> str | None:
    """The weight of the conv smp patches for ``in_channels``: the first with that many input channels."""
    return next(
        (
            f"{name}.weight"
            for name, module in encoder.named_modules()
            if isinstance(module, nn.Conv2d) and module.in_channels == in_channels
        ),
        None,
    )


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv kernel saved for ``weight.shape[1]`` input channels, for ``in_channels``, with smp's rule.

    From RGB: 1 channel sums the three kernels (a grey image gets the response its RGB copy got); 2 or more
    cycle through them (R, G, B, R, ...), scaled by 3 / in_channels to keep the activations' scale.
    """
    # A bare conv holding the weight, created without initialisation (it would draw from the seeded RNG).
    conv = nn.utils.skip_init(nn.Conv2d, weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    patch_first_conv(conv, new_in_channels=in_channels, default_in_channels=weight.shape[1], pretrained=True)
    return conv.weight.detach()


def _listing(kind: str, keys: list[str]) -> str:
    """One line naming the first keys of a kind and counting the rest."""
    more = f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return f"  {kind} ({len(keys)}): {', '.join(keys[:_LISTED])}{more}"
