"""Exporting a trained model for use without lovaszseg: an ONNX file, or smp's ``save_pretrained`` folder.

Both formats hold the model only; what it takes and returns (channels, size, normalisation, sigmoid or
softmax) comes from the run's config and its evaluation transform preset, and is written beside the
weights (ONNX ``metadata_props``; a section of the smp folder's ``README.md``) and returned to print.

The ONNX file comes from ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` exporter, the
default and non-deprecated path since torch 2.9; it needs ``onnxscript``) and is checked against PyTorch
with ONNX Runtime before it is written.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from lovaszseg.config import CONFIG_METADATA_KEY
from lovaszseg.data.io import atomic_write
from lovaszseg.errors import ConfigError
from lovaszseg.models import output_stride, probabilities
from lovaszseg.storage.run_folder import LoadedModel, load_model

if TYPE_CHECKING:
    import onnx

__all__ = [
    "EXPORT_FORMATS",
    "INPUT_NAME",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "OUTPUT_NAME",
    "ExportFormat",
    "ExportResult",
    "export_onnx",
    "export_run",
    "export_smp",
    "model_usage",
]

ExportFormat = Literal["onnx", "smp"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "smp")
# The default opset of torch's exporter (torch 2.9 - 2.14), pinned so that every export states the same one.
ONNX_OPSET = 20
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Largest difference of probabilities between ONNX Runtime and PyTorch an export may show.
ONNX_TOLERANCE = 1e-4
# Example batch of the export: not 1, which torch.export would specialise the batch dimension to.
_EXAMPLE_BATCH = 2
# Side of the example input when the evaluation preset gives no fixed size (rounded up to the stride).
_EXAMPLE_SIDE = 256


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes:
        path: The ONNX file or the smp folder.
        format: ``onnx`` or ``smp``.
        source: The model file it was exported from (``best.pt``, ``model.safetensors``, ...).
        usage: What a user needs to run it: input and output, size, normalisation, activation, ...
            (the ONNX file's ``metadata_props`` and the smp ``README.md`` hold the same).
        max_difference: ONNX: the largest difference of probabilities between ONNX Runtime and PyTorch on
            the check batches; None for smp (the same PyTorch model).
    """

    path: Path
    format: ExportFormat
    source: Path
    usage: dict[str, str]
    max_difference: float | None = None


def export_run(
    run_or_file: str | Path, export_format: str, out: str | Path, *, overwrite: bool = False
) -> ExportResult:
    """Export a trained model as an ONNX file or an smp ``save_pretrained`` folder.

    Args:
        run_or_file: Run folder or model file (see :func:`~lovaszseg.storage.run_folder.load_model`).
        export_format: ``onnx`` (one ``.onnx`` file) or ``smp`` (a folder for smp's ``from_pretrained``).
        out: The file or folder to write; written whole or not at all.
        overwrite: Replace an existing ``out`` (a file, or a folder that is not empty).

    Returns:
        What was written, and how to use it.

    Raises:
        ConfigError: unknown format, an ``out`` that exists (without ``overwrite``) or is of the wrong
            kind, or the ONNX packages are not installed.
        CheckpointError: no run or model file at ``run_or_file``, or an unreadable one.
    """
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {export_format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    _check_out(out, folder=export_format == "smp", overwrite=overwrite)
    loaded = load_model(run_or_file)
    if export_format == "onnx":
        return export_onnx(loaded, out, overwrite=overwrite)
    return export_smp(loaded, out, overwrite=overwrite)


def _check_out(out: Path, *, folder: bool, overwrite: bool) -> None:
    """Refuse an ``out`` of the wrong kind, or one that holds something, unless it may be replaced."""
    if folder and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; the smp export writes a folder")
    if not folder and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the .onnx file to write")
    taken = any(out.iterdir()) if out.is_dir() else out.exists()
    if taken and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it")


def model_usage(loaded: LoadedModel) -> dict[str, str]:
    """What a user of the exported model needs: its input and output, size, normalisation, activation.

    Read from the run's config and its evaluation transform preset, the one ``eval``, ``predict`` and
    ``submit`` use.

    Args:
        loaded: The model and its config.

    Returns:
        Ordered ``{name: text}``: ``dataset``, ``input``, ``output``, ``input_size``, ``normalisation``,
        ``mean``, ``std``, ``activation`` and, where they apply, ``classes`` and ``crop``.
    """
    import albumentations as A

    spec, data = loaded.spec, loaded.config.data
    transform = data.transform()
    normalize = next(step for step in transform.transforms if isinstance(step, A.Normalize))
    size = _preset_size(loaded)
    channels = f"{spec.in_channels}, height, width"
    usage = {
        "dataset": data.name,
        "input": f"{INPUT_NAME}: float32 [batch, {channels}]",
        "output": f"{OUTPUT_NAME}: float32 [batch, {spec.num_classes}, height, width]",
        "input_size": f"{size[0]}x{size[1]}" if size else f"any height and width{_multiples(loaded)}",
        "normalisation": f"(pixel / {normalize.max_pixel_value:g} - mean) / std, per channel "
        f"({'grayscale' if spec.in_channels == 1 else 'RGB'})",
        "mean": ", ".join(f"{value:g}" for value in normalize.mean),
        "std": ", ".join(f"{value:g}" for value in normalize.std),
        "activation": "sigmoid (foreground probability)" if spec.binary else "softmax over dim 1 (classes)",
    }
    if spec.class_names:
        usage["classes"] = ", ".join(spec.class_names)
    if spec.original_size and size and tuple(size) != tuple(spec.original_size):
        height, width = spec.original_size
        usage["crop"] = f"the centre {height}x{width} of the output is the image (the preset padded it)"
    return usage


def _multiples(loaded: LoadedModel) -> str:
    """ " divisible by S" for a model whose sides must be multiples of its stride S, else ""."""
    stride = output_stride(loaded.model)
    return f" divisible by {stride}" if stride > 1 else ""


def _preset_size(loaded: LoadedModel) -> tuple[int, int] | None:
    """The height and width the evaluation preset gives every image, or None when it keeps their sizes.

    A dataset of one image size (TGS: 101x101) gives one input size; otherwise two blank images of
    different sizes tell whether the preset resizes (one size) or only pads (sizes differ).
    """
    spec, data = loaded.spec, loaded.config.data
    transform = data.transform()
    sizes = [spec.original_size] if spec.original_size else [(97, 131), (160, 120)]
    shapes = set()
    for height, width in sizes:
        blank = np.zeros((height, width) if spec.in_channels == 1 else (height, width, 3), dtype=np.uint8)
        shapes.add(tuple(transform(image=blank)["image"].shape[-2:]))
    return shapes.pop() if len(shapes) == 1 else None


def export_smp(loaded: LoadedModel, out: Path, *, overwrite: bool = False) -> ExportResult:
    """Write the folder smp's ``save_pretrained`` writes (``config.json``, ``model.safetensors``, ``README.md``).

    ``segmentation_models_pytorch.from_pretrained(out)`` then builds the same model with the same weights,
    without downloading anything (``encoder_weights`` is null in ``config.json``). The model card
    (``README.md``) gets a section with :func:`model_usage`.

    Args:
        loaded: The model to export.
        out: The folder to write (replaced whole at the end, never left half written).
        overwrite: Replace a folder that is not empty.

    Returns:
        What was written.
    """
    usage = model_usage(loaded)

    def write(folder: Path) -> None:
        loaded.model.save_pretrained(folder, dataset=loaded.config.data.name)
        lines = [f"- {name}: {text}" for name, text in usage.items()]
        with (folder / "README.md").open("a", encoding="utf-8") as card:
            card.write("\n## Input and output (lovaszseg)\n" + "\n".join(lines) + "\n")

    _publish_folder(out, write, overwrite=overwrite)
    return ExportResult(out, "smp", loaded.source, usage)


def _publish_folder(out: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Fill a new folder beside ``out`` and rename it onto ``out`` only when ``write`` succeeded."""
    _check_out(out, folder=True, overwrite=overwrite)
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


def export_onnx(loaded: LoadedModel, out: Path, *, overwrite: bool = False) -> ExportResult:
    """Write an ONNX file (opset :data:`ONNX_OPSET`) of the model, checked against PyTorch first.

    Input ``images`` ``[batch, C, height, width]`` (normalised as the run's evaluation preset does),
    output ``logits`` ``[batch, classes, height, width]``. The batch is dynamic; so are the height and
    width (multiples of the model's stride) when the exported graph gives PyTorch's results at a second
    size, otherwise they are fixed at the preset's size. :func:`model_usage`, the dynamic axes and the
    run's config are stored in the file's ``metadata_props``.

    Args:
        loaded: The model to export.
        out: The ``.onnx`` file to write (atomically).
        overwrite: Replace an existing file.

    Returns:
        What was written, with the largest difference of probabilities found by the check.

    Raises:
        ConfigError: onnx, onnxruntime or onnxscript is not installed.
        RuntimeError: even the fixed-size graph does not give PyTorch's results (an exporter bug).
    """
    # torch's exporter imports onnxscript only once it runs, and the check needs onnxruntime: fail first.
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'lovaszseg[onnx]'")
    import onnx

    _check_out(out, folder=False, overwrite=overwrite)
    usage = model_usage(loaded)
    stride = output_stride(loaded.model)
    side = -(-_EXAMPLE_SIDE // stride) * stride
    size = _preset_size(loaded) or (side, side)
    try:  # dynamic height and width; some graphs (adaptive pooling: PSPNet, UPerNet) hold only one size
        proto, difference = _export_checked(loaded, size, stride, dynamic_size=True)
        usage["dynamic_axes"] = f"batch, height, width{_multiples(loaded)}"
    except Exception:  # any failure at the second size: export the preset's size only
        proto, difference = _export_checked(loaded, size, stride, dynamic_size=False)
        usage["dynamic_axes"] = "batch"
        usage["input_size"] = f"{size[0]}x{size[1]} (fixed in this ONNX graph)"
    usage["opset"] = str(ONNX_OPSET)
    metadata = {**usage, "source": str(loaded.source)}
    metadata[CONFIG_METADATA_KEY] = loaded.config.to_yaml()
    onnx.helper.set_model_props(proto, metadata)
    with atomic_write(out, "wb") as handle:
        handle.write(proto.SerializeToString())
    return ExportResult(out, "onnx", loaded.source, usage, difference)


def _export_checked(
    loaded: LoadedModel, size: tuple[int, int], stride: int, *, dynamic_size: bool
) -> tuple[onnx.ModelProto, float]:
    """Export with a dynamic batch (and height and width), then compare with PyTorch on random batches.

    Raises:
        RuntimeError: ONNX Runtime's probabilities differ from PyTorch's by more than ONNX_TOLERANCE.
    """
    from torch.export import Dim

    axes = {0: Dim("batch")}
    if dynamic_size and stride == 1:
        axes |= {2: Dim("height"), 3: Dim("width")}
    elif dynamic_size:  # sides are multiples of the stride: the model checks that in eager mode
        axes |= {2: stride * Dim("height_blocks"), 3: stride * Dim("width_blocks")}
    example = torch.zeros(_EXAMPLE_BATCH, loaded.spec.in_channels, *size)
    program = torch.onnx.export(
        loaded.model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=ONNX_OPSET,
        dynamo=True,
        dynamic_shapes=(axes,),
        verbose=False,
    )
    proto = program.model_proto
    shapes = [(_EXAMPLE_BATCH + 1, *size)]
    if dynamic_size:
        shapes.append((1, size[0] + stride, size[1] + 2 * stride))
    difference = _max_difference(proto, loaded, shapes)
    if difference > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime's probabilities differ from PyTorch's by {difference:.2e}")
    return proto, difference


def _max_difference(proto: onnx.ModelProto, loaded: LoadedModel, shapes: list[tuple[int, int, int]]) -> float:
    """Largest difference of probabilities between ONNX Runtime and PyTorch on seeded random batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a graph that fails at another size raises; no extra log lines
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    difference = 0.0
    for batch, height, width in shapes:
        images = torch.randn(batch, loaded.spec.in_channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = probabilities(loaded.model(images))
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        difference = max(difference, float((probabilities(torch.from_numpy(logits)) - expected).abs().max()))
    return difference
