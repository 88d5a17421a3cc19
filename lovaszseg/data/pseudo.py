"""Pseudo-labelled images in training: the folders ``lovaszseg pseudo-label`` writes, joined to a training split.

A pseudo-label folder holds ``images/`` (the images, copied as they were), ``masks/`` (a model's
post-processed masks: 0/255 PNGs for binary tasks, palette PNGs of class ids otherwise), ``pseudo.csv``
(every image's confidence, kept or not) and ``pseudo.json`` (the model, TTA, post-processing and rule).
``data.pseudo`` lists such folders: :func:`with_pseudo_labels` joins their images to the training split
only. Validation splits, out-of-fold predictions and held-out images are built from the dataset
itself and never see them; an image of a folder that is also a labelled image of the dataset is an
error (it would leak a held-out or validation image's own test-time prediction into training).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from lovaszseg.data.io import list_stems, read_image, read_mask, require_dir
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import DataError

if TYPE_CHECKING:
    from lovaszseg.data.registry import SegmentationDataset

__all__ = [
    "PSEUDO_IMAGES",
    "PSEUDO_KINDS",
    "PSEUDO_MASKS",
    "PSEUDO_RECORD",
    "PSEUDO_TABLE",
    "PseudoLabels",
    "TrainingSet",
    "with_pseudo_labels",
]

PSEUDO_IMAGES, PSEUDO_MASKS = "images", "masks"
PSEUDO_RECORD, PSEUDO_TABLE = "pseudo.json", "pseudo.csv"
# What a labelled (True) and a pseudo-labelled (False) flag are, in the batch sampler's messages.
PSEUDO_KINDS = ("labelled image", "pseudo-labelled image")
# What a training sample holds, whatever its dataset adds (depth, size): what training reads.
TRAINING_KEYS = ("image", "mask", "id")
# Binary masks are written 0/255.
BINARY_FOREGROUND = 255


class PseudoLabels(Dataset):
    """A pseudo-label folder as a training dataset of a task (``spec``) through its training ``transform``.

    Raises:
        DataError: not a pseudo-label folder (no ``pseudo.json``), one made for another task or number of
            classes, or an image without its mask.
    """

    def __init__(self, root: str | Path, spec: DatasetSpec, transform: Callable[..., dict[str, Any]]) -> None:
        self.root = require_dir(Path(root), "pseudo-label folder")
        record_path = self.root / PSEUDO_RECORD
        if not record_path.is_file():
            raise DataError(
                f"{self.root} is not a pseudo-label folder: it has no {PSEUDO_RECORD} (lovaszseg pseudo-label)"
            )
        record = json.loads(record_path.read_text(encoding="utf-8"))
        made_for = (record.get("task"), record.get("num_classes"))
        if made_for != (spec.task, spec.num_classes):
            raise DataError(
                f"pseudo-label folder {self.root} holds {made_for[0]} masks of {made_for[1]} classes; "
                f"the dataset {spec.name} is {spec.task} with {spec.num_classes}"
            )
        self.spec, self.transform = spec, transform
        self._images = list_stems(require_dir(self.root / PSEUDO_IMAGES, "pseudo-labelled images"))
        self._masks = list_stems(require_dir(self.root / PSEUDO_MASKS, "pseudo-label masks"))
        self.ids = list(self._images)
        if missing := [i for i in self.ids if i not in self._masks]:
            raise DataError(f"no mask in {self.root / PSEUDO_MASKS} for {len(missing)} image(s), e.g. {missing[0]}")

    def _mask(self, sample_id: str) -> np.ndarray:
        mask = read_mask(self._masks[sample_id])
        return (mask == BINARY_FOREGROUND).astype(np.uint8) if self.spec.binary else mask

    def has_foreground(self, sample_id: str) -> bool:
        """Whether the pseudo-label has a foreground pixel."""
        return bool(self._mask(sample_id).any())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        image = read_image(self._images[sample_id], channels=self.spec.in_channels)
        out = self.transform(image=image, mask=self._mask(sample_id))
        return {"image": out["image"], "mask": out["mask"].long(), "id": sample_id}


class TrainingSet(Dataset):
    """A training split followed by pseudo-labelled images; samples hold :data:`TRAINING_KEYS` only.

    Attributes:
        ids: The split's ids, then each folder's.
        labelled: Per index, whether the image is of the split (True) or pseudo-labelled (False).
    """

    def __init__(self, split: SegmentationDataset, pseudo: Sequence[PseudoLabels]) -> None:
        self.parts: list[Any] = [split, *pseudo]
        self.ids = [sample_id for part in self.parts for sample_id in part.ids]
        self.labelled = [True] * len(split) + [False] * sum(len(part) for part in pseudo)
        self.spec = split.spec
        self._where = [(part, index) for part in self.parts for index in range(len(part))]
        self._by_id = {sample_id: part for part in self.parts for sample_id in part.ids}

    def fold_key(self, sample_id: str) -> float:
        part = self._by_id[sample_id]
        return part.fold_key(sample_id) if part is self.parts[0] else 0.0

    def has_foreground(self, sample_id: str) -> bool:
        return self._by_id[sample_id].has_foreground(sample_id)

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, inner = self._where[index]
        sample = part[inner]
        return {key: sample[key] for key in TRAINING_KEYS}


def with_pseudo_labels(
    split: SegmentationDataset,
    folders: Sequence[str | Path],
    make_transform: Callable[[], Callable[..., dict[str, Any]]],
    labelled_ids: Callable[[], Sequence[str]],
) -> SegmentationDataset | TrainingSet:
    """A training split with the pseudo-labelled images of ``folders`` (the split itself when there are none).

    Args:
        split: The training split.
        folders: Pseudo-label folders (``data.pseudo``).
        make_transform: Makes the dataset's training transform (one per folder: each draws its own).
        labelled_ids: Every labelled id of the dataset (called only when there are folders).

    Raises:
        DataError: a bad folder, an id in two folders, or a pseudo-labelled image that is a labelled one.
    """
    if not folders:
        return split
    parts = [PseudoLabels(folder, split.spec, make_transform()) for folder in folders]
    labelled, seen = set(labelled_ids()), {}
    for part in parts:
        if clash := sorted(labelled & set(part.ids)):
            raise DataError(
                f"pseudo-label folder {part.root} holds {len(clash)} labelled image(s) of the dataset, e.g. "
                f"{clash[0]}: pseudo-labels are for unlabelled images (a validation or held-out image would train "
                "on its own prediction)"
            )
        for sample_id in part.ids:
            if sample_id in seen:
                raise DataError(f"image {sample_id} is in two pseudo-label folders: {seen[sample_id]} and {part.root}")
            seen[sample_id] = part.root
    return TrainingSet(split, parts)
