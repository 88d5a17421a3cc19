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

from lovaszseg.data.io import (
    DatasetError,
    atomic_write,
    check_same_size,
    list_stems,
    read_csv_column,
    read_csv_rows,
    read_image,
    read_mask,
    require_dir,
    require_file,
)
from lovaszseg.data.transforms import TGS_SIZE, tgs_transforms
from lovaszseg.rle import decode

__all__ = [
    "COVERAGE_CLASSES",
    "TGS_ORIGINAL_SIZE",
    "TGSSalt",
    "coverage_class",
    "make_folds",
    "read_folds",
    "write_folds",
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


class _TrainMasks:
    """Where each training id's mask comes from: ``train/masks/ID.png``, else its ``train.csv`` RLE."""

    def __init__(self, root: Path) -> None:
        mask_dir, csv_path = root / "train" / "masks", root / "train.csv"
        if not mask_dir.is_dir() and not csv_path.is_file():
            raise FileNotFoundError(f"TGS masks not found: neither {mask_dir} nor {csv_path} exists")
        self.pngs = list_stems(mask_dir, (".png",)) if mask_dir.is_dir() else {}
        self.rles = read_csv_column(csv_path, "id", "rle_mask") if csv_path.is_file() else {}
        self.csv_path = csv_path

    def missing(self, ids: list[str]) -> list[str]:
        return [i for i in ids if i not in self.pngs and i not in self.rles]

    def source(self, sample_id: str) -> Path | str:
        return self.pngs.get(sample_id) or f"{self.csv_path} (id {sample_id})"

    def load(self, sample_id: str) -> np.ndarray:
        """Binary uint8 mask ``[H, W]``; 16-bit {0, 65535} PNGs are binarised with ``> 0``."""
        if sample_id in self.pngs:
            return (read_mask(self.pngs[sample_id]) > 0).astype(np.uint8)
        try:
            return decode(self.rles[sample_id], TGS_ORIGINAL_SIZE)
        except ValueError as exc:
            raise DatasetError(f"bad RLE for id {sample_id} in {self.csv_path}: {exc}") from exc


def _train_ids(root: Path) -> list[str]:
    return list(list_stems(require_dir(root / "train" / "images", "TGS training images"), (".png",)))


def _read_depths(root: Path) -> dict[str, float]:
    path = require_file(root / "depths.csv", "TGS depths file")
    depths: dict[str, float] = {}
    for sample_id, z in read_csv_column(path, "id", "z").items():
        try:
            depths[sample_id] = float(z)
        except ValueError as exc:
            raise DatasetError(f"{path}: depth {z!r} of id {sample_id} is not a number") from exc
    return depths


def make_folds(
    root: str | Path,
    n_folds: int = 5,
    seed: int = 0,
    stratify: Literal["coverage", "depth"] = "coverage",
) -> dict[str, int]:
    """Deterministic stratified K-fold assignment of every training id.

    Ids are ordered by stratum (salt coverage class, see ``coverage_class``, or depth), ties broken
    by a permutation drawn from ``seed``, and dealt to folds round-robin. Every fold thus holds each
    stratum's ids to within one, and fold sizes differ by at most one. Same data and seed, same folds.

    Args:
        root: TGS Salt root folder.
        n_folds: Number of folds, at least 2.
        seed: Seed of the tie-breaking permutation.
        stratify: ``"coverage"`` (reads every mask) or ``"depth"`` (reads ``depths.csv``).

    Returns:
        ``{id: fold}`` for every training id, sorted by id, folds in ``0..n_folds-1``.

    Raises:
        ValueError: bad ``n_folds`` or ``stratify``.
        FileNotFoundError: missing folder or file.
        DatasetError: a mask or depth is missing or unreadable.
    """
    root = Path(root)
    ids = _train_ids(root)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= len(ids):
        raise ValueError(f"n_folds must be an integer in [2, {len(ids)}] (number of training ids), got {n_folds!r}")
    if stratify == "coverage":
        masks = _TrainMasks(root)
        if missing := masks.missing(ids):
            raise DatasetError(f"no mask PNG or train.csv row under {root} for {_ids_with_examples(missing)}")
        keys = np.array([coverage_class(masks.load(i)) for i in ids], dtype=np.float64)
    elif stratify == "depth":
        depths = _read_depths(root)
        if missing := [i for i in ids if i not in depths]:
            raise DatasetError(f"{root / 'depths.csv'} has no depth for {_ids_with_examples(missing)}")
        keys = np.array([depths[i] for i in ids], dtype=np.float64)
    else:
        raise ValueError(f"stratify must be 'coverage' or 'depth', got {stratify!r}")
    tiebreak = np.random.default_rng(seed).permutation(len(ids))
    order = np.lexsort((tiebreak, keys))
    folds = {ids[j]: rank % n_folds for rank, j in enumerate(order)}
    return dict(sorted(folds.items()))


def write_folds(path: str | Path, folds: Mapping[str, int]) -> None:
    """Write ``{id: fold}`` to a CSV with columns ``id,fold`` (atomically).

    Args:
        path: Destination CSV.
        folds: Fold of each id.
    """
    with atomic_write(Path(path), "w", newline="", encoding="utf-8") as handle:
        handle.write("id,fold\n")
        handle.writelines(f"{sample_id},{fold}\n" for sample_id, fold in folds.items())


def read_folds(path: str | Path) -> dict[str, int]:
    """Read a CSV written by ``write_folds``.

    Args:
        path: CSV with columns ``id,fold``.

    Returns:
        ``{id: fold}`` in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: a fold is not a non-negative integer, an id repeats, or the file is empty.
    """
    path = Path(path)
    folds: dict[str, int] = {}
    for sample_id, fold in read_csv_column(path, "id", "fold").items():
        if not fold.isdigit():
            raise DatasetError(f"folds CSV {path}: fold {fold!r} of id {sample_id} is not a non-negative integer")
        folds[sample_id] = int(fold)
    if not folds:
        raise DatasetError(f"folds CSV {path} has no rows")
    return folds


class TGSSalt(Dataset):
    """TGS Salt samples: ``{"image": [1,H,W] float32, "mask": [H,W] int64 0/1, "id": str, "depth": float32}``.

    Splits: ``"train"``/``"val"`` are all folds but ``fold`` / fold ``fold`` of a stratified K-fold
    split (from ``folds_csv`` when given, else ``make_folds(root, n_folds, seed, stratify)``);
    ``"all"`` is every training id; ``"test"`` is the test images without masks, in
    ``sample_submission.csv`` order when present, else sorted by id.

    Attributes:
        ids: Sample ids in order.
        task: ``"binary"``.
        num_classes: 1 (one logit channel).
        ignore_index: None.
        in_channels: 1.
        original_size: ``(101, 101)``; crop predictions back with ``crop_to_original``.
    """

    task: Literal["binary", "multiclass"] = "binary"
    num_classes = 1
    ignore_index: int | None = None
    in_channels = 1
    original_size: tuple[int, int] | None = TGS_ORIGINAL_SIZE

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
        """Index the split; files are read lazily in ``__getitem__``.

        Args:
            root: TGS Salt root folder (Kaggle layout).
            split: ``"train"``, ``"val"``, ``"all"`` or ``"test"``.
            fold: Validation fold for ``"train"``/``"val"``.
            n_folds: Number of folds when computing them (ignored with ``folds_csv``).
            seed: Fold seed when computing them (ignored with ``folds_csv``).
            stratify: ``"coverage"`` or ``"depth"`` when computing folds.
            folds_csv: CSV ``id,fold`` to use instead of computing folds; it must give a fold for every
                training id present (ids not present are ignored).
            transform: Albumentations pipeline producing tensors; default ``tgs_transforms(train=False)``.

        Raises:
            ValueError: unknown split or bad fold.
            FileNotFoundError: missing root, folder or file.
            DatasetError: missing masks or depths, bad CSV, or an empty split.
        """
        self.root = require_dir(Path(root), "TGS Salt root")
        if split not in TGS_SPLITS:
            raise ValueError(f"unknown TGS split {split!r}; expected one of {', '.join(TGS_SPLITS)}")
        self.split = split
        self.transform = transform if transform is not None else tgs_transforms(train=False)
        self._masks: _TrainMasks | None = None
        if split == "test":
            self._images = list_stems(require_dir(self.root / "test" / "images", "TGS test images"), (".png",))
            self.ids = self._test_ids()
        else:
            self._images = list_stems(require_dir(self.root / "train" / "images", "TGS training images"), (".png",))
            self._masks = _TrainMasks(self.root)
            self.ids = list(self._images)
            if missing := self._masks.missing(self.ids):
                raise DatasetError(f"no mask PNG or train.csv row under {self.root} for {_ids_with_examples(missing)}")
            if split in ("train", "val"):
                self.ids = self._fold_ids(split, fold, n_folds, seed, stratify, folds_csv)
        if not self.ids:
            which = f"{split!r} (fold {fold})" if split in ("train", "val") else repr(split)
            raise DatasetError(f"TGS split {which} under {self.root} is empty")
        depths = _read_depths(self.root)
        if missing := [i for i in self.ids if i not in depths]:
            raise DatasetError(f"{self.root / 'depths.csv'} has no depth for {_ids_with_examples(missing)}")
        self._depths = {i: depths[i] for i in self.ids}

    def _test_ids(self) -> list[str]:
        submission = self.root / "sample_submission.csv"
        if not submission.is_file():
            return list(self._images)
        ids = [row["id"] for row in read_csv_rows(submission, ("id",))]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{submission} lists some ids more than once")
        if missing := [i for i in ids if i not in self._images]:
            raise DatasetError(
                f"{submission} lists ids with no image in {self.root / 'test' / 'images'}: "
                f"{_ids_with_examples(missing)}"
            )
        return ids

    def _fold_ids(
        self,
        split: str,
        fold: int,
        n_folds: int,
        seed: int,
        stratify: Literal["coverage", "depth"],
        folds_csv: str | Path | None,
    ) -> list[str]:
        if folds_csv is not None:
            folds = read_folds(folds_csv)
            n_folds = max(folds.values()) + 1
            if missing := [i for i in self.ids if i not in folds]:
                raise DatasetError(f"folds CSV {folds_csv} has no fold for {_ids_with_examples(missing)}")
        else:
            folds = make_folds(self.root, n_folds, seed, stratify)
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n_folds:
            raise ValueError(f"fold must be an integer in [0, {n_folds - 1}], got {fold!r}")
        keep_val = split == "val"
        return [i for i in self.ids if (folds[i] == fold) == keep_val]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        path = self._images[sample_id]
        image = read_image(path, channels=1)
        if image.shape != TGS_ORIGINAL_SIZE:
            raise DatasetError(f"TGS image {path} is {image.shape[0]}x{image.shape[1]}; expected 101x101")
        sample: dict[str, Any] = {"id": sample_id, "depth": torch.tensor(self._depths[sample_id], dtype=torch.float32)}
        if self._masks is None:
            sample["image"] = self.transform(image=image)["image"]
            return sample
        mask = self._masks.load(sample_id)
        check_same_size(image, mask, path, self._masks.source(sample_id))
        out = self.transform(image=image, mask=mask)
        sample["image"], sample["mask"] = out["image"], out["mask"].long()
        return sample
