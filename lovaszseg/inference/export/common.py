"""What every export format shares: the result, the model's usage, the input and output names, safe writing.

Heavy packages (torch, albumentations, numpy) are imported inside the functions: the CLI imports this
package for its help text, which must stay instant.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lovaszseg.errors import ConfigError

if TYPE_CHECKING:
    from lovaszseg.storage.run_folder import LoadedModel

__all__ = [
    "EMPTY_OUTPUT_NAME",
    "INPUT_NAME",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "OUTPUT_NAME",
    "ExportResult",
    "check_out",
    "model_usage",
    "output_names",
    "preset_size",
    "publish_folder",
    "stride_note",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# The second output of a model with an empty-image head (model.empty_head): smp's classification logit.
EMPTY_OUTPUT_NAME = "empty_logits"
# The default opset of torch's exporter (torch 2.9 - 2.14), pinned so that every export states the same one.
ONNX_OPSET = 20
# Largest difference of probabilities between ONNX Runtime and PyTorch an export may show.
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes:
        path: The file or folder written (the ONNX file, the smp folder, ...).
        format: The exporter's name (``onnx``, ``smp``, ...).
        source: The model file it was exported from (``best.pt``, ``model.safetensors``, ...).
        usage: What a user needs to run it: input and output, size, normalisation, activation, ...
            (stored with the export too: the ONNX file's ``metadata_props``, the smp ``README.md``).
        label: What was written, as the one-line report names it (``ONNX opset 20``, ...).
        max_difference: The largest difference of probabilities between the export, run by
            ``checked_with``, and PyTorch on the check batches; None when nothing was checked (smp: the
            same PyTorch model).
        checked_with: What ran the export for the check (``onnxruntime``); None when nothing was checked.
    """

    path: Path
    format: str
    source: Path
    usage: dict[str, str]
    label: str
    max_difference: float | None = None
    checked_with: str | None = None


def check_out(out: Path, name: str, *, folder: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that cannot be written, is of the wrong kind, or holds something not to be replaced.

    Args:
        out: The file, or with ``folder`` the folder, an export will write.
        name: The export format, for the messages.
        folder: The export writes a folder.
        overwrite: An existing ``out`` (a file, or a folder that is not empty) may be replaced.

    Raises:
        ConfigError: ``out`` is of the wrong kind, or exists and ``overwrite`` is not given.
        OutputError: ``out`` cannot be written (its parent is a file, a path under /proc, no permission).
    """
    from lovaszseg.data.io import check_writable

    if folder and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; the {name} export writes a folder")
    if not folder and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; the {name} export writes a file: name it")
    taken = any(out.iterdir()) if out.is_dir() else out.exists()
    if taken and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it")
    check_writable(out, "--out", folder=folder)


def publish_folder(out: Path, name: str, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Fill a new folder beside ``out`` and rename it onto ``out`` only when ``write`` succeeded.

    Args:
        out: The folder to write (replaced whole at the end, never left half written).
        name: The export format, for the messages.
        write: Fills the folder it is given.
        overwrite: Replace a folder that is not empty.

    Raises:
        ConfigError, OutputError: as :func:`check_out` for a folder.
    """
    check_out(out, name, folder=True, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    staging.mkdir()  # the umask's mode, as the folder would get from a plain mkdir
    try:
        write(staging)
        if out.is_dir():
            old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def model_usage(loaded: LoadedModel) -> dict[str, str]:
    """What a user of the exported model needs: its input and output, size, normalisation, activation.

    Read from the run's config and its evaluation transform preset, the one ``eval``, ``predict`` and
    ``submit`` use.

    Args:
        loaded: The model and its config.

    Returns:
        Ordered ``{name: text}``: ``dataset``, ``input``, ``output``, ``input_size``, ``normalisation``,
        ``mean``, ``std``, ``activation`` and, where they apply, ``empty_output``, ``classes`` and ``crop``.
    """
    import albumentations as A

    spec, data = loaded.spec, loaded.config.data
    transform = data.transform()
    normalize = next(step for step in transform.transforms if isinstance(step, A.Normalize))
    size = preset_size(loaded)
    channels = f"{spec.in_channels}, height, width"
    usage = {
        "dataset": data.name,
        "input": f"{INPUT_NAME}: float32 [batch, {channels}]",
        "output": f"{OUTPUT_NAME}: float32 [batch, {spec.num_classes}, height, width]",
        "input_size": f"{size[0]}x{size[1]}" if size else f"any height and width{stride_note(loaded)}",
        "normalisation": f"(pixel / {normalize.max_pixel_value:g} - mean) / std, per channel "
        f"({'grayscale' if spec.in_channels == 1 else 'RGB'})",
        "mean": ", ".join(f"{value:g}" for value in normalize.mean),
        "std": ", ".join(f"{value:g}" for value in normalize.std),
        "activation": "sigmoid (foreground probability)" if spec.binary else "softmax over dim 1 (classes)",
    }
    if EMPTY_OUTPUT_NAME in output_names(loaded):
        usage["empty_output"] = (
            f"{EMPTY_OUTPUT_NAME}: float32 [batch, 1], the logit that the image has foreground "
            "(sigmoid: its probability)"
        )
    if spec.class_names:
        usage["classes"] = ", ".join(spec.class_names)
    if spec.original_size and size and tuple(size) != tuple(spec.original_size):
        height, width = spec.original_size
        usage["crop"] = f"the centre {height}x{width} of the output is the image (the preset padded it)"
    return usage


def output_names(loaded: LoadedModel) -> list[str]:
    """The exported model's outputs, in the order its forward returns them."""
    return [OUTPUT_NAME, EMPTY_OUTPUT_NAME] if loaded.config.model.empty_head else [OUTPUT_NAME]


def stride_note(loaded: LoadedModel) -> str:
    """ " divisible by S" for a model whose sides must be multiples of its stride S, else ""."""
    from lovaszseg.models import output_stride

    stride = output_stride(loaded.model)
    return f" divisible by {stride}" if stride > 1 else ""


def preset_size(loaded: LoadedModel) -> tuple[int, int] | None:
    """The height and width the evaluation preset gives every image, or None when it keeps their sizes.

    A dataset of one image size (TGS: 101x101) gives one input size; otherwise two blank images of
    different sizes tell whether the preset resizes (one size) or only pads (sizes differ).
    """
    import numpy as np

    spec, data = loaded.spec, loaded.config.data
    transform = data.transform()
    sizes = [spec.original_size] if spec.original_size else [(97, 131), (160, 120)]
    shapes = set()
    for height, width in sizes:
        blank = np.zeros((height, width) if spec.in_channels == 1 else (height, width, 3), dtype=np.uint8)
        shapes.add(tuple(transform(image=blank)["image"].shape[-2:]))
    return shapes.pop() if len(shapes) == 1 else None
