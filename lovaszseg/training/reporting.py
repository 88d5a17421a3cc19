"""What a training run shows: TensorBoard events and the final table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import Dataset

from lovaszseg.data.overlay import overlay
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.errors import ConfigError
from lovaszseg.heads import split_outputs
from lovaszseg.models import probabilities
from lovaszseg.scoring.postprocess import PostProcessing
from lovaszseg.storage.summary import SWA_EPOCH, trained_rows

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["OVERLAY_IMAGES", "TensorBoardLog", "final_table"]

# Validation images drawn with their predicted masks in TensorBoard after every epoch.
OVERLAY_IMAGES = 4


def _summary_writer() -> type[SummaryWriter]:
    """torch's TensorBoard writer, or a ConfigError saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(
            "output.tensorboard is true but the tensorboard package is not installed: "
            "pip install 'lovaszseg[tensorboard]' (or set output.tensorboard=false)"
        ) from error
    return SummaryWriter


def _as_uint8(image: Tensor) -> np.ndarray:
    """A normalised ``[C, H, W]`` image contrast-stretched to uint8 ``[H, W]`` or ``[H, W, 3]`` for display."""
    low, high = image.min(), image.max()
    scaled = ((image - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)
    return scaled[0].numpy() if scaled.shape[0] == 1 else scaled.permute(1, 2, 0).numpy()


class TensorBoardLog:
    """TensorBoard event files of a run (``output.tensorboard``): a scalar per ``summary.csv`` column
    (same names, same values, one step per epoch of the whole run), the stage as text, and the first
    :data:`OVERLAY_IMAGES` validation images with the masks the model predicts after each epoch.

    Built before the run folder, so that a missing tensorboard package fails before anything is
    written; :meth:`writing` then opens the event files for a run. Disabled, every method does nothing.

    Args:
        enabled: Whether to write (the config asks for it and this process writes the run's files).
        spec: The dataset's description (how predictions become masks and are cropped).

    Raises:
        ConfigError: ``enabled`` and tensorboard is not installed.
    """

    def __init__(self, enabled: bool, spec: DatasetSpec) -> None:
        self._writer_class = _summary_writer() if enabled else None
        self.spec = spec
        self.writer: SummaryWriter | None = None
        self.step = 0

    @contextmanager
    def writing(self, log_dir: Path, epochs_done: int) -> Iterator[None]:
        """Write events into ``log_dir`` while the block runs.

        Args:
            log_dir: The run's TensorBoard folder.
            epochs_done: Epochs already in ``summary.csv`` (a resumed run continues their steps).
        """
        if self._writer_class is None:
            yield
            return
        self.writer, self.step = self._writer_class(log_dir=str(log_dir)), epochs_done
        try:
            yield
        finally:
            self.writer.close()
            self.writer = None

    def log_epoch(self, row: Mapping[str, Any], model: nn.Module, dataset: Dataset) -> None:
        """Log an epoch's ``summary.csv`` row and the overlays of ``model`` on the first images of ``dataset``."""
        if self.writer is None:
            return
        self.step += 1
        for name, value in row.items():
            if name not in ("stage", "epoch"):
                self.writer.add_scalar(name, float(value), self.step)
        self.writer.add_text("stage", f"{row['stage']} epoch {row['epoch']}", self.step)
        for index, picture in enumerate(self._overlays(model, dataset)):
            self.writer.add_image(f"overlay/{index}", picture, self.step, dataformats="HWC")
        self.writer.flush()  # readable while the run goes on, and kept if it is killed

    @torch.no_grad()
    def _overlays(self, model: nn.Module, dataset: Dataset) -> list[np.ndarray]:
        model.eval()
        device = next(model.parameters()).device
        binary_mask = PostProcessing().apply  # the default threshold, as every binary prediction takes it
        pictures = []
        for index in range(min(OVERLAY_IMAGES, len(dataset))):
            sample = dataset[index]
            probs = probabilities(split_outputs(model(sample["image"][None].to(device))).masks)[0].cpu()
            image, probs = self._crop(sample["image"], sample), self._crop(probs, sample)
            labels = binary_mask(probs[0].numpy()) if self.spec.binary else probs.argmax(0).numpy()
            pictures.append(overlay(_as_uint8(image), labels.astype(np.intp)))
        return pictures

    def _crop(self, tensor: Tensor, sample: Mapping[str, Any]) -> Tensor:
        """The pixels of the image itself, as evaluation scores them (no padding)."""
        if self.spec.original_size is not None:
            return crop_to_original(tensor, self.spec.original_size, resized=self.spec.resize)
        if "size" in sample:
            return crop_to_original(tensor, self.spec.resize or tuple(sample["size"].tolist()))
        return tensor


def final_table(rows: Sequence[dict[str, str]], metrics: Sequence[str], monitor: str, mode: str) -> Table:
    """One line per stage: its epochs, last train loss and the validation metrics of its best epoch (or of
    its SWA average, marked ``(swa)``, when that is better)."""
    sign = 1.0 if mode == "max" else -1.0
    table = Table(title="lovaszseg run")
    for column in ("stage", "epochs", "train loss", *metrics):
        table.add_column(column, justify="left" if column == "stage" else "right", overflow="fold")
    stages: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        stages.setdefault(row["stage"], []).append(row)
    for stage, stage_rows in stages.items():
        best = max(stage_rows, key=lambda r: sign * float(r[monitor]))  # an SWA average's row competes too
        trained = trained_rows(stage_rows)
        table.add_row(
            stage + (f" ({SWA_EPOCH})" if best["epoch"] == SWA_EPOCH else ""),
            str(len(trained)),
            f"{float(trained[-1]['train_loss']):.4f}",
            *(f"{float(best[m]):.4f}" if m in best else "-" for m in metrics),
        )
    return table
