"""Kaggle TGS Salt Identification: 101x101 grayscale seismic images, binary salt masks, depths, folds.

Layout under ROOT: ``train/images/*.png``, ``train/masks/*.png`` and/or ``train.csv`` (id,rle_mask),
``depths.csv`` (id,z), ``test/images/*.png`` and optionally ``sample_submission.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lovaszseg.data.folds import (
    CvSplit,
    check_fold,
    check_split_options,
    read_folds_csv,
    stratified_split,
)
from lovaszseg.data.io import (
    check_mask_values,
    list_stems,
    read_csv_column,
    read_csv_rows,
    read_id_list,
    read_image,
    read_image_size,
    read_mask,
    require_dir,
    require_file,
)
from lovaszseg.data.registry import own_options, register_dataset
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.transforms import TGS_SIZE, tgs_transforms
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.rle import decode

__all__ = [
    "COVERAGE_CLASSES",
    "TGS_ORIGINAL_SIZE",
    "TGSSalt",
    "coverage_class",
]

TGS_ORIGINAL_SIZE: tuple[int, int] = (TGS_SIZE, TGS_SIZE)
COVERAGE_CLASSES = 11
TGS_SPLITS = ("train", "val", "all", "test")


def coverage_class(mask: np.ndarray) -> int:
    """Salt coverage class: 0 for an empty mask, else k in 1..10 for coverage in ((k-1)/10, k/10].

    Args:
        mask: Binary mask ``[H, W]`` (non-zero = salt).

    Returns:
        An int in ``0..10`` (``COVERAGE_CLASSES`` classes).
    """
    coverage = np.count_nonzero(mask) / mask.size
    return 0 if coverage == 0 else min(10, max(1, math.ceil(coverage * 10)))


def _ids_with_examples(ids: list[str], limit: int = 5) -> str:
    return f"{len(ids)} id(s), e.g. {', '.join(ids[:limit])}"


def _list_images(folder: Path, what: str) -> dict[str, Path]:
    """``{id: path}`` of the PNGs in ``folder``, which must hold at least one."""
    images = list_stems(require_dir(folder, what), (".png",))
    if not images:
        raise DataError(f"{what} folder {folder} holds no .png images")
    return images


def _check_image_size(path: Path) -> None:
    """Raise unless the image is 101x101, read from its header without decoding it."""
    height, width = read_image_size(path)
    if (height, width) != TGS_ORIGINAL_SIZE:
        raise DataError(f"TGS image {path} is {height}x{width} (HxW); expected 101x101")


def _foreground_values(dtype: np.dtype) -> tuple[int, ...]:
    """Values a TGS mask may hold: 0, and salt as 1 or as the bit depth's maximum.

    255 for 8-bit PNGs, 65535 for 16-bit ones (read as uint16, or int32 by some Pillow versions).
    """
    return 0, 1, 255 if dtype.itemsize == 1 else 65535


class _TrainMasks:
    """Each training id's mask, ``train/masks/ID.png`` or else its ``train.csv`` RLE, checked when read.

    ``coverage`` reads and checks a mask (and its image's size) once and remembers the coverage class,
    so the fold computation and the build-time check of a split share one pass over the files.
    """

    def __init__(self, root: Path, images: dict[str, Path]) -> None:
        mask_dir, csv_path = root / "train" / "masks", root / "train.csv"
        if not mask_dir.is_dir() and not csv_path.is_file():
            raise DataError(f"TGS masks not found: neither {mask_dir} nor {csv_path} exists")
        self.pngs = list_stems(mask_dir, (".png",)) if mask_dir.is_dir() else {}
        self.rles = read_csv_column(csv_path, "id", "rle_mask") if csv_path.is_file() else {}
        self.csv_path = csv_path
        self.images = images
        if missing := [i for i in images if i not in self.pngs and i not in self.rles]:
            raise DataError(f"no mask PNG or train.csv row under {root} for {_ids_with_examples(missing)}")
        self._coverage: dict[str, int] = {}

    def load(self, sample_id: str) -> np.ndarray:
        """Binary uint8 mask ``[101, 101]``; a PNG's salt value (1, 255 or 65535) becomes 1.

        Raises:
            DataError: bad RLE, unreadable PNG, values other than 0 and salt, or not 101x101.
        """
        if sample_id not in self.pngs:
            try:
                return decode(self.rles[sample_id], TGS_ORIGINAL_SIZE)
            except ValueError as exc:
                raise DataError(f"bad RLE for id {sample_id} in {self.csv_path}: {exc}") from exc
        path = self.pngs[sample_id]
        mask = read_mask(path)
        if mask.shape != TGS_ORIGINAL_SIZE:
            raise DataError(
                f"TGS mask {path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                f"{self.images[sample_id]} is 101x101"
            )
        check_mask_values(mask, _foreground_values(mask.dtype), path)
        return (mask > 0).astype(np.uint8)

    def coverage(self, sample_id: str) -> int:
        """Coverage class of the id's mask, after checking the mask and its image's size (once per id)."""
        if sample_id not in self._coverage:
            _check_image_size(self.images[sample_id])
            self._coverage[sample_id] = coverage_class(self.load(sample_id))
        return self._coverage[sample_id]


def _read_depths(root: Path) -> dict[str, float]:
    path = require_file(root / "depths.csv", "TGS depths file")
    depths: dict[str, float] = {}
    for sample_id, z in read_csv_column(path, "id", "z").items():
        try:
            depths[sample_id] = float(z)
        except ValueError as exc:
            raise DataError(f"{path}: depth {z!r} of id {sample_id} is not a number") from exc
    return depths


def _check_stratify(stratify: str) -> None:
    if stratify not in ("coverage", "depth"):
        raise ConfigError(f"stratify must be 'coverage' or 'depth', got {stratify!r}")


def _depth_keys(root: Path, ids: list[str]) -> list[float]:
    depths = _read_depths(root)
    if missing := [i for i in ids if i not in depths]:
        raise DataError(f"{root / 'depths.csv'} has no depth for {_ids_with_examples(missing)}")
    return [depths[i] for i in ids]


def _fold_part(cv_split: CvSplit, ids: list[str], fold: int, val: bool) -> list[str]:
    """The ids (in ``ids`` order) of fold ``fold`` (``val``) or of every other fold; held-out ids in neither."""
    return [i for i in ids if i in cv_split.folds and (cv_split.folds[i] == fold) == val]


@register_dataset("tgs", transforms=tgs_transforms)
class TGSSalt(Dataset):
    """TGS Salt samples: ``{"image": [1,H,W] float32, "mask": [H,W] int64 0/1, "id": str, "depth": float32}``.

    Splits: ``"train"``/``"val"`` are all folds but ``fold`` / fold ``fold`` of a stratified K-fold
    split (:func:`lovaszseg.data.folds.stratified_split` of the ids by ``stratify``, or the split in
    ``folds_csv``); ``"all"`` is every training id; ``"test"`` is the test images without masks, in
    ``sample_submission.csv`` order when present, else sorted by id.

    Attributes:
        ids: Sample ids in order.
        spec: What the dataset is (:meth:`describe`): binary, one channel, original size ``(101, 101)``
            (crop predictions back with ``crop_to_original``).
    """

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> DatasetSpec:
        """The spec of TGS Salt: a binary task on 101x101 grayscale images, resized if ``resize`` says so.

        Args:
            options: The resolved dataset and ``tgs_transforms`` options.

        Returns:
            The :class:`DatasetSpec`.
        """
        resize = options["resize"]
        return DatasetSpec(
            name="tgs",
            task="binary",
            in_channels=1,
            num_classes=1,
            ignore_index=None,
            original_size=TGS_ORIGINAL_SIZE,
            resize=(resize, resize) if resize else None,
            sample_keys=("image", "mask", "id", "depth"),
            # Seismic sections have an up and down and a scale (depth): only the mirror is the same data.
            valid_tta=("hflip",),
        )

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        fold: int = 0,
        n_folds: int = 5,
        seed: int = 0,
        stratify: Literal["coverage", "depth"] = "coverage",
        folds_csv: str | Path | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        """Index the split and check its files; samples are decoded in ``__getitem__``.

        Every image of the split must be 101x101 (read from the PNG headers) and every mask of a
        training split (PNG or ``train.csv`` RLE) 101x101 with values 0 (no salt) and 1 or the bit
        depth's maximum (255 / 65535 in 8-bit / 16-bit PNGs) for salt. Each mask is read once, also
        when coverage folds are computed from all of them.

        Args:
            root: TGS Salt root folder (Kaggle layout).
            split: ``"train"``, ``"val"``, ``"all"`` or ``"test"``.
            fold: Validation fold for ``"train"``/``"val"``.
            n_folds: Number of folds when computing them (ignored with ``folds_csv``).
            seed: Fold seed when computing them (ignored with ``folds_csv``).
            stratify: What folds are stratified by, ``"coverage"`` or ``"depth"`` (also ``fold_key``'s).
            folds_csv: CSV ``id,fold`` to use instead of computing folds (see
                :func:`lovaszseg.data.folds.write_folds_csv`; a cv folder's ``folds.csv`` is one): it must
                give a fold, or ``holdout``, for every training id present (ids not present are ignored);
                held-out ids are in neither ``"train"`` nor ``"val"``.
            transform: Albumentations pipeline producing tensors; default ``tgs_transforms(train=False)``.

        Raises:
            ConfigError: unknown split or bad fold option.
            DataError: missing or empty root, folder or file; missing masks or depths, bad CSV, an image
                or mask of the wrong size, a mask with values other than 0 and salt, or an empty split.
        """
        self.root = require_dir(Path(root), "TGS Salt root")
        is_list = Path(split).suffix == ".txt"
        if split not in TGS_SPLITS and not is_list:
            raise ConfigError(f"unknown TGS split {split!r}; expected one of {', '.join(TGS_SPLITS)} or a .txt file")
        _check_stratify(stratify)
        self.split, self.stratify = str(split), stratify
        self.spec = self.describe(
            own_options(tgs_transforms, fold=fold, n_folds=n_folds, seed=seed, stratify=stratify, folds_csv=folds_csv)
        )
        self.transform = transform if transform is not None else tgs_transforms(train=False)
        self._masks: _TrainMasks | None = None
        if split == "test":
            self._images = _list_images(self.root / "test" / "images", "TGS test images")
            self.ids = self._test_ids()
            for sample_id in self.ids:
                _check_image_size(self._images[sample_id])
        else:
            self._images = _list_images(self.root / "train" / "images", "TGS training images")
            self._masks = _TrainMasks(self.root, self._images)
            self.ids = list(self._images)
            if split in ("train", "val"):
                self.ids = self._fold_ids(self._masks, split, fold, n_folds, seed, stratify, folds_csv)
            elif is_list:
                self.ids = read_id_list(Path(split), self._images, self.root / "train" / "images")
            for sample_id in self.ids:  # already done for every id when coverage folds were computed
                self._masks.coverage(sample_id)
        if not self.ids:
            which = f"{split!r} (fold {fold})" if split in ("train", "val") else repr(split)
            raise DataError(f"TGS split {which} under {self.root} is empty")
        depths = _read_depths(self.root)
        if missing := [i for i in self.ids if i not in depths]:
            raise DataError(f"{self.root / 'depths.csv'} has no depth for {_ids_with_examples(missing)}")
        self._depths = {i: depths[i] for i in self.ids}

    def _test_ids(self) -> list[str]:
        submission = self.root / "sample_submission.csv"
        if not submission.is_file():
            return list(self._images)
        ids = [row["id"] for row in read_csv_rows(submission, ("id",))]
        if len(set(ids)) != len(ids):
            raise DataError(f"{submission} lists some ids more than once")
        if missing := [i for i in ids if i not in self._images]:
            raise DataError(
                f"{submission} lists ids with no image in {self.root / 'test' / 'images'}: "
                f"{_ids_with_examples(missing)}"
            )
        return ids

    def _fold_ids(
        self,
        masks: _TrainMasks,
        split: str,
        fold: int,
        n_folds: int,
        seed: int,
        stratify: Literal["coverage", "depth"],
        folds_csv: str | Path | None,
    ) -> list[str]:
        if folds_csv is None:
            if len(self.ids) < 2:
                raise DataError(
                    f"TGS training images folder {self.root / 'train' / 'images'} holds {len(self.ids)} image; "
                    "folds need at least 2"
                )
            check_split_options(len(self.ids), n_folds, seed)  # before any mask is read
            check_fold(fold, n_folds)
            keys = [masks.coverage(i) for i in self.ids] if stratify == "coverage" else _depth_keys(self.root, self.ids)
            cv_split = stratified_split(self.ids, keys, n_folds, seed)
        else:
            cv_split = read_folds_csv(folds_csv)
            held = set(cv_split.holdout)
            if missing := [i for i in self.ids if i not in cv_split.folds and i not in held]:
                raise DataError(f"folds CSV {folds_csv} has no fold for {_ids_with_examples(missing)}")
            check_fold(fold, cv_split.n_folds, f" (folds of {folds_csv})")
        return _fold_part(cv_split, self.ids, fold, split == "val")

    def fold_key(self, sample_id: str) -> float:
        """What cross-validation folds are stratified by: the salt coverage class, or the depth."""
        if self._masks is None:
            raise ConfigError("the TGS test split has no masks to make folds of")
        return self._masks.coverage(sample_id) if self.stratify == "coverage" else self._depths[sample_id]

    def has_foreground(self, sample_id: str) -> bool:
        """Whether the id's mask has salt (read once, shared with the folds' coverage classes)."""
        if self._masks is None:
            raise ConfigError("the TGS test split has no masks")
        return self._masks.coverage(sample_id) > 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        path = self._images[sample_id]
        image = read_image(path, channels=1)
        if image.shape != TGS_ORIGINAL_SIZE:  # checked at build time from the header; the file may have changed
            raise DataError(f"TGS image {path} is {image.shape[0]}x{image.shape[1]} (HxW); expected 101x101")
        sample: dict[str, Any] = {"id": sample_id, "depth": torch.tensor(self._depths[sample_id], dtype=torch.float32)}
        if self._masks is None:
            sample["image"] = self.transform(image=image)["image"]
            return sample
        out = self.transform(image=image, mask=self._masks.load(sample_id))
        sample["image"], sample["mask"] = out["image"], out["mask"].long()
        return sample
