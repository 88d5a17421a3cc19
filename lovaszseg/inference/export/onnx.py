"""The ``onnx`` format: one ONNX file, checked against PyTorch with ONNX Runtime before it is written.

The file comes from ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` exporter, the default
and non-deprecated path since torch 2.9; it needs ``onnxscript``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from lovaszseg.errors import ConfigError
from lovaszseg.inference.export import Exporter, register_exporter
from lovaszseg.inference.export.common import (
    INPUT_NAME,
    ONNX_OPSET,
    ONNX_TOLERANCE,
    ExportResult,
    check_out,
    model_usage,
    output_names,
    preset_size,
    stride_note,
)

if TYPE_CHECKING:
    import onnx

    from lovaszseg.storage.run_folder import LoadedModel

__all__ = ["ONNX", "export_onnx"]

# Example batch of the export: not 1, which torch.export would specialise the batch dimension to.
_EXAMPLE_BATCH = 2
# Side of the example input when the evaluation preset gives no fixed size (rounded up to the stride).
_EXAMPLE_SIDE = 256


def export_onnx(loaded: LoadedModel, out: Path, *, overwrite: bool = False) -> ExportResult:
    """Write an ONNX file (opset :data:`~lovaszseg.inference.export.common.ONNX_OPSET`), checked against PyTorch first.

    Input ``images`` ``[batch, C, height, width]`` (normalised as the run's evaluation preset does),
    output ``logits`` ``[batch, classes, height, width]`` (with ``model.empty_head``, a second output
    ``empty_logits`` ``[batch, 1]``: the logit that the image has foreground). The batch is dynamic;
    so are the height and width (multiples of the model's stride) when the exported graph gives
    PyTorch's results at a second size, otherwise they are fixed at the preset's size. The model's
    usage, the dynamic axes and the run's config are stored in the file's ``metadata_props``.

    Args:
        loaded: The model to export.
        out: The ``.onnx`` file to write (atomically).
        overwrite: Replace an existing file.

    Returns:
        What was written, with the largest difference of probabilities found by the check.

    Raises:
        ConfigError: onnx, onnxruntime or onnxscript is not installed; ``out`` is a folder, or exists
            (without ``overwrite``).
        OutputError: ``out`` cannot be written.
        RuntimeError: even the fixed-size graph does not give PyTorch's results (an exporter bug).
    """
    # torch's exporter imports onnxscript only once it runs, and the check needs onnxruntime: fail first.
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'lovaszseg[onnx]'")
    import onnx

    from lovaszseg.config import CONFIG_METADATA_KEY
    from lovaszseg.data.io import atomic_write
    from lovaszseg.models import output_stride

    check_out(out, ONNX.name, folder=False, overwrite=overwrite)
    usage = model_usage(loaded)
    stride = output_stride(loaded.model)
    side = -(-_EXAMPLE_SIDE // stride) * stride
    size = preset_size(loaded) or (side, side)
    try:  # dynamic height and width; some graphs (adaptive pooling: PSPNet, UPerNet) hold only one size
        proto, difference = _export_checked(loaded, size, stride, dynamic_size=True)
        usage["dynamic_axes"] = f"batch, height, width{stride_note(loaded)}"
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
    return ExportResult(out, ONNX.name, loaded.source, usage, f"ONNX opset {ONNX_OPSET}", difference, "onnxruntime")


def _export_checked(
    loaded: LoadedModel, size: tuple[int, int], stride: int, *, dynamic_size: bool
) -> tuple[onnx.ModelProto, float]:
    """Export with a dynamic batch (and height and width), then compare with PyTorch on random batches.

    Raises:
        RuntimeError: ONNX Runtime's probabilities differ from PyTorch's by more than ONNX_TOLERANCE.
    """
    import torch
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
        output_names=output_names(loaded),
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
    import torch

    from lovaszseg.models import output_probabilities

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a graph that fails at another size raises; no extra log lines
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    difference = 0.0
    for batch, height, width in shapes:
        images = torch.randn(batch, loaded.spec.in_channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = output_probabilities(loaded.model(images))
        got = session.run(output_names(loaded), {INPUT_NAME: images.numpy()})
        outputs = output_probabilities(
            tuple(torch.from_numpy(array) for array in got) if len(got) > 1 else torch.from_numpy(got[0])
        )
        pairs = [(outputs.masks, expected.masks), (outputs.empty, expected.empty)]
        difference = max(difference, *(float((a - b).abs().max()) for a, b in pairs if a is not None))
    return difference


ONNX = register_exporter(Exporter("onnx", False, export_onnx, "one .onnx file, checked with onnxruntime"))
