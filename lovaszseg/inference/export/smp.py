"""The ``smp`` format: the folder smp's ``save_pretrained`` writes, for smp's ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lovaszseg.errors import ConfigError
from lovaszseg.inference.export import Exporter, register_exporter
from lovaszseg.inference.export.common import ExportResult, model_usage, publish_folder

if TYPE_CHECKING:
    from lovaszseg.storage.run_folder import LoadedModel

__all__ = ["SMP", "export_smp"]


def export_smp(loaded: LoadedModel, out: Path, *, overwrite: bool = False) -> ExportResult:
    """Write the folder smp's ``save_pretrained`` writes (``config.json``, ``model.safetensors``, ``README.md``).

    ``segmentation_models_pytorch.from_pretrained(out)`` then builds the same model with the same weights,
    without downloading anything (``encoder_weights`` is null in ``config.json``). The model card
    (``README.md``) gets a section with :func:`~lovaszseg.inference.export.common.model_usage`.

    Args:
        loaded: The model to export.
        out: The folder to write (replaced whole at the end, never left half written).
        overwrite: Replace a folder that is not empty.

    Returns:
        What was written.

    Deep-supervision heads are training-only: the folder holds the plain ``Unet`` without them.

    Raises:
        ConfigError: the model has a hypercolumn head, which smp cannot build (``--format onnx`` can).
        ConfigError, OutputError: ``out`` is a file, is taken (without ``overwrite``) or cannot be written.
    """
    from lovaszseg.decoders import WinnersUnet, plain_unet  # torch: not imported with the registry

    usage = model_usage(loaded)
    model = loaded.model
    if isinstance(model, WinnersUnet):
        if model.hypercolumn:
            raise ConfigError(
                f"{loaded.source}: model.hypercolumn is not an smp architecture, so smp's from_pretrained could not "
                "build it; export it with --format onnx"
            )
        model = plain_unet(model)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, dataset=loaded.config.data.name)
        lines = [f"- {name}: {text}" for name, text in usage.items()]
        with (folder / "README.md").open("a", encoding="utf-8") as card:
            card.write("\n## Input and output (lovaszseg)\n" + "\n".join(lines) + "\n")

    publish_folder(out, SMP.name, write, overwrite=overwrite)
    return ExportResult(out, SMP.name, loaded.source, usage, "smp save_pretrained folder")


SMP = register_exporter(Exporter("smp", True, export_smp, "a folder for smp's from_pretrained"))
