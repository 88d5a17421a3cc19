"""Exporting a trained model for use without lovaszseg: a registry of formats (an ONNX file, smp's folder, ...).

Every format holds the model only; what it takes and returns (channels, size, normalisation, sigmoid or
softmax) comes from the run's config and its evaluation transform preset (:func:`model_usage`), is
stored with the export and returned to print.

Each format is one module of this package that calls :func:`register_exporter` when imported; every
module here is imported with the package, so adding a format is adding a file. The modules import
torch and the like inside their functions, so that importing the registry (the CLI's help) stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lovaszseg.errors import ConfigError
from lovaszseg.inference.export.common import (
    EMPTY_OUTPUT_NAME,
    INPUT_NAME,
    ONNX_OPSET,
    ONNX_TOLERANCE,
    OUTPUT_NAME,
    ExportResult,
    check_out,
    model_usage,
)

if TYPE_CHECKING:
    from lovaszseg.storage.run_folder import LoadedModel

__all__ = [
    "EMPTY_OUTPUT_NAME",
    "EXPORT_FORMATS",
    "INPUT_NAME",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "OUTPUT_NAME",
    "ExportFunction",
    "ExportResult",
    "Exporter",
    "describe_formats",
    "export_run",
    "get_exporter",
    "model_usage",
    "register_exporter",
]


class ExportFunction(Protocol):
    """Writes ``out`` from a loaded model, whole or not at all; refuses an ``out`` that holds something
    unless ``overwrite``."""

    def __call__(self, loaded: LoadedModel, out: Path, *, overwrite: bool = False) -> ExportResult: ...


@dataclass(frozen=True)
class Exporter:
    """An export format.

    Attributes:
        name: What ``--format`` calls it.
        writes_folder: ``out`` is a folder (else one file).
        export: Writes the export.
        description: A few words for the help text (what ``out`` becomes).
    """

    name: str
    writes_folder: bool
    export: ExportFunction
    description: str


_REGISTRY: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    """Make an export format available by its name (called by the module defining it)."""
    if exporter.name in _REGISTRY:
        raise AssertionError(f"export format {exporter.name!r} is registered twice")
    _REGISTRY[exporter.name] = exporter
    return exporter


def get_exporter(name: str) -> Exporter:
    """The registered format called ``name``.

    Raises:
        ConfigError: no such format; the message lists the registered ones.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown export format {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def describe_formats() -> str:
    """Every registered format with its description, for the help text: ``onnx (...), smp (...)``."""
    return ", ".join(f"{exporter.name} ({exporter.description})" for exporter in _REGISTRY.values())


def export_run(
    run_or_file: str | Path, export_format: str, out: str | Path, *, overwrite: bool = False
) -> ExportResult:
    """Export a trained model in a registered format; ``out`` is checked before the model is loaded.

    Args:
        run_or_file: Run folder or model file (see :func:`~lovaszseg.storage.run_folder.load_model`).
        export_format: A registered format's name (:data:`EXPORT_FORMATS`).
        out: The file or folder to write; written whole or not at all.
        overwrite: Replace an existing ``out`` (a file, or a folder that is not empty).

    Returns:
        What was written, and how to use it.

    Raises:
        ConfigError: unknown format, an ``out`` that exists (without ``overwrite``) or is of the wrong
            kind, or the format's packages are not installed.
        OutputError: ``out`` cannot be written (its parent is a file, a path under /proc, no permission).
        CheckpointError: no run or model file at ``run_or_file``, or an unreadable one.
    """
    from lovaszseg.storage.run_folder import load_model

    exporter = get_exporter(export_format)
    out = Path(out)
    check_out(out, exporter.name, folder=exporter.writes_folder, overwrite=overwrite)
    return exporter.export(load_model(run_or_file), out, overwrite=overwrite)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# The registered formats' names, in the order their modules are imported (alphabetical).
EXPORT_FORMATS: tuple[str, ...] = tuple(_REGISTRY)
