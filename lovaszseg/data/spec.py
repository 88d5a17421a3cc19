"""What a dataset is, as the model, losses, metrics and submission need to know it, without reading files.

Each dataset class declares its own: its ``describe`` classmethod builds one, by keyword, from the
dataset's resolved options. :func:`lovaszseg.data.describe_dataset` gives it for a config's ``data``
section, and a dataset instance holds it as ``dataset.spec``. The trainer, evaluation, inference and
submission read it instead of knowing dataset names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DatasetSpec", "Task"]

Task = Literal["binary", "multiclass"]


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """The facts about a dataset that everything downstream of it relies on.

    Attributes:
        name: Registered name (``tgs``, ``voc``, ``voc_binary``, ``folder``, ...).
        task: ``"binary"`` (one logit channel, sigmoid) or ``"multiclass"`` (softmax over classes).
        in_channels: Image channels the model takes (1 grayscale, 3 RGB).
        num_classes: Model output channels: 1 for binary tasks, else the number of classes.
        ignore_index: Mask value excluded from losses and metrics, or None.
        original_size: ``(height, width)`` predictions are cropped back to (TGS: 101x101), or None when
            images keep their own size.
        resize: ``(height, width)`` images are resized to before padding, or None.
        sample_keys: What a labelled sample holds (``image``, ``mask``, ``id``, ...).
        class_names: Names of the classes, when the dataset has them.
        labelled_split: The split holding every labelled image: what cross-validation divides into folds.
        valid_tta: The test-time augmentations (:mod:`lovaszseg.inference.tta`) its images have the
            symmetry of, or None for every one; asking for another is a warning.
    """

    name: str
    task: Task
    in_channels: int
    num_classes: int
    ignore_index: int | None
    original_size: tuple[int, int] | None
    resize: tuple[int, int] | None
    sample_keys: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    labelled_split: str = "all"
    valid_tta: tuple[str, ...] | None = None

    @property
    def binary(self) -> bool:
        """Whether the model has one sigmoid output."""
        return self.task == "binary"

    @property
    def label_classes(self) -> int:
        """Classes a label map holds: 2 (background, foreground) for binary tasks."""
        return 2 if self.binary else self.num_classes
