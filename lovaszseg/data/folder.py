"""Generic segmentation data: ``ROOT/images/*`` and ``ROOT/masks/*`` paired by file stem.

Masks hold class ids (any single-channel PNG, including palette PNGs). Binary data
(``num_classes=2``) may store foreground as 1 or as 255: **255 means foreground unless
``ignore_index`` is 255**, in which case only 0/1 are classes and 255 is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lovaszseg.data.io import (
    check_mask_values,
    check_same_size,
    list_stems,
    read_id_list,
    read_image,
    read_image_size,
    read_mask,
    require_dir,
)
from lovaszseg.data.registry import own_options, register_dataset
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.transforms import folder_transforms
from lovaszseg.errors import ConfigError, DataError

__all__ = ["FOLDER_SPLITS", "FolderDataset"]

FOLDER_SPLITS = ("all", "train", "val")
_BINARY_FOREGROUND_ALIAS = 255


@register_dataset("folder", transforms=folder_transforms)
class FolderDataset(Dataset):
    """Samples ``{"image": [C,H,W] float32, "mask": [H,W] int64, "id": str, "size": [2]}`` from a folder pair.

    Splits: ``"all"``; ``"train"``/``"val"``, a deterministic random hold-out of ``val_fraction`` of
    the ids drawn with ``seed``; or the path of a ``.txt`` file listing ids, one per line.

    Attributes:
        ids: Sample ids (file stems), sorted (file order for a ``.txt`` split).
        spec: What the dataset is (:meth:`describe`): binary (one output channel) when
            ``num_classes == 2``, else ``num_classes`` classes; ``in_channels``, ``ignore_index``.
    """

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> DatasetSpec:
        """The spec of an image/mask folder: binary for 2 classes, else multi-class.

        Args:
            options: The resolved dataset and ``folder_transforms`` options (``num_classes``,
                ``in_channels``, ``ignore_index``, ``size``, ...).

        Returns:
            The :class:`DatasetSpec`.
        """
        classes, size = options["num_classes"], options["size"]
        binary = classes == 2
        return DatasetSpec(
            name="folder",
            task="binary" if binary else "multiclass",
            in_channels=options["in_channels"],
            num_classes=1 if binary else classes,
            ignore_index=options["ignore_index"],
            original_size=None,
            resize=(size, size) if size else None,
            sample_keys=("image", "mask", "id", "size"),
        )

    def __init__(
        self,
        root: str | Path,
        split: str | Path = "all",
        *,
        num_classes: int = 2,
        ignore_index: int | None = None,
        in_channels: int = 3,
        val_fraction: float = 0.2,
        seed: int = 0,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        """Index the split and check its files: one mask per image, of the image's size, with allowed values.

        Every mask of the split is decoded once here and each image's size read from its header, so a
        bad file stops the run before training; ``__getitem__`` then only reads and transforms.

        Args:
            root: Folder with ``images/`` and ``masks/``.
            split: ``"all"``, ``"train"``, ``"val"`` or a ``.txt`` file of ids.
            num_classes: Number of classes including background, 2 to 256 (2 = binary).
            ignore_index: Mask value to ignore, in ``num_classes..255``, or None.
            in_channels: Read images as grayscale (1) or RGB (3).
            val_fraction: Share of ids held out for ``"val"``, in (0, 1).
            seed: Seed of the hold-out draw.
            transform: Albumentations pipeline producing tensors; default
                ``folder_transforms(train=False, in_channels=..., ignore_index=...)``.

        Raises:
            ConfigError: bad option or unknown split.
            DataError: missing root, ``images/``, ``masks/``, split file or mask; ambiguous files; an
                empty split; an unreadable image or mask, a mask of another size than its image, or
                mask values that are neither class ids nor the ignore value.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 256:
            raise ConfigError(f"num_classes must be an integer in [2, 256] (2 = binary), got {num_classes!r}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool)
            or not isinstance(ignore_index, int)
            or not num_classes <= ignore_index <= 255
        ):
            raise ConfigError(
                f"ignore_index must be None or an integer in [{num_classes}, 255] (not a class id), "
                f"got {ignore_index!r}"
            )
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {in_channels!r}")
        self.root = require_dir(Path(root), "dataset root")
        self.spec = self.describe(
            own_options(
                folder_transforms,
                num_classes=num_classes,
                ignore_index=ignore_index,
                in_channels=in_channels,
                val_fraction=val_fraction,
                seed=seed,
            )
        )
        self.transform = (
            transform
            if transform is not None
            else folder_transforms(train=False, in_channels=in_channels, ignore_index=ignore_index)
        )
        self._allowed = set(range(num_classes)) | ({ignore_index} if ignore_index is not None else set())
        # Binary masks saved as 0/255 are common; 255 reads as foreground unless it is the ignore value.
        self._foreground_alias = self.spec.binary and ignore_index != _BINARY_FOREGROUND_ALIAS
        if self._foreground_alias:
            self._allowed.add(_BINARY_FOREGROUND_ALIAS)
        self._images = list_stems(require_dir(self.root / "images", "images"))
        self._masks = list_stems(require_dir(self.root / "masks", "masks"))
        self.ids = self._split_ids(split, val_fraction, seed)
        if missing := [i for i in self.ids if i not in self._masks]:
            raise DataError(
                f"no mask in {self.root / 'masks'} for {len(missing)} image(s), e.g. {', '.join(missing[:5])}"
            )
        self._foreground = {sample_id: self._check_mask(sample_id, ignore_index) for sample_id in self.ids}

    def _check_mask(self, sample_id: str, ignore_index: int | None) -> bool:
        """Check a mask against its image (size, values); whether it has foreground."""
        image_path, mask_path = self._images[sample_id], self._masks[sample_id]
        mask = read_mask(mask_path)
        check_same_size(read_image_size(image_path), mask, image_path, mask_path)
        check_mask_values(mask, self._allowed, mask_path)
        labelled = mask != 0 if ignore_index is None else (mask != 0) & (mask != ignore_index)
        return bool(labelled.any())

    def _split_ids(self, split: str | Path, val_fraction: float, seed: int) -> list[str]:
        ids = list(self._images)
        if split == "all":
            chosen = ids
        elif split in ("train", "val"):
            if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
                raise ConfigError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
            n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
            held_out = {ids[j] for j in np.random.default_rng(seed).permutation(len(ids))[:n_val]}
            chosen = [i for i in ids if (i in held_out) == (split == "val")]
        elif Path(split).suffix == ".txt":
            chosen = read_id_list(Path(split), self._images, self.root / "images")
        else:
            raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(FOLDER_SPLITS)} or a .txt file")
        if not chosen:
            raise DataError(f"split {split!r} of {self.root} is empty")
        return chosen

    def fold_key(self, sample_id: str) -> float:
        """What cross-validation folds are stratified by: nothing (a seeded random split)."""
        return 0.0

    def has_foreground(self, sample_id: str) -> bool:
        """Whether the id's mask has a pixel of a class other than 0 that is not the ignore value."""
        return self._foreground[sample_id]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        image_path, mask_path = self._images[sample_id], self._masks[sample_id]
        image = read_image(image_path, channels=self.spec.in_channels)
        mask = read_mask(mask_path)
        # Values were checked at build time; the sizes again, at no cost, in case a file changed since.
        check_same_size(image, mask, image_path, mask_path)
        if self._foreground_alias:
            mask = np.where(mask == _BINARY_FOREGROUND_ALIAS, 1, mask)
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        # Images keep their own sizes: the size as read tells evaluation which pixels are padding.
        size = torch.tensor(image.shape[:2])
        return {"image": out["image"], "mask": out["mask"].long(), "id": sample_id, "size": size}
