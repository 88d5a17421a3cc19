"""Folds of any labelled dataset: K stratified folds, images held out of every fold, their ``id,fold`` CSV.

Each dataset says what its folds are stratified by (:meth:`fold_key`: TGS the salt coverage class or
the depth, other datasets nothing, i.e. a seeded random split); :func:`stratified_split` orders the
ids by that key, ties broken by a seeded permutation, and deals them out, so every fold holds each
stratum to within one image. It is the one fold system: cross-validation (:func:`make_cv_split`) and
TGS's ``train``/``val`` splits use it, and one CSV (:func:`write_folds_csv`, :func:`read_folds_csv`)
stores a split for both. Each fold's ids are also written as plain ``.txt`` lists, which every dataset
accepts as its ``split``, so each fold trains as an ordinary run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lovaszseg.data.io import atomic_write, read_csv_column
from lovaszseg.errors import ConfigError, DataError

__all__ = [
    "HOLDOUT",
    "CvSplit",
    "check_fold",
    "check_split_options",
    "make_cv_split",
    "read_folds_csv",
    "stratified_order",
    "stratified_split",
    "write_folds_csv",
    "write_id_list",
]

HOLDOUT = "holdout"  # the fold name of held-out images, and the split name that evaluates them


class FoldableDataset(Protocol):
    ids: list[str]

    def fold_key(self, sample_id: str) -> float: ...


def stratified_order(keys: Sequence[float], seed: int) -> np.ndarray:
    """Indices ordering ``keys`` ascending, ties broken by a permutation drawn from ``seed``."""
    tiebreak = np.random.default_rng(seed).permutation(len(keys))
    return np.lexsort((tiebreak, np.asarray(keys, dtype=np.float64)))


@dataclass(frozen=True)
class CvSplit:
    """A K-fold split of a dataset's labelled ids, with a final test set held out of every fold.

    Attributes:
        folds: ``{id: fold}`` of every id in the folds, sorted by id, folds in ``0..n_folds-1``.
        holdout: Ids never used to train or tune (sorted).
        n_folds: Number of folds.
    """

    folds: dict[str, int]
    holdout: list[str]
    n_folds: int

    def val_ids(self, fold: int) -> list[str]:
        """The ids fold ``fold`` is validated (and predicted out of fold) on."""
        return [i for i, k in self.folds.items() if k == fold]

    def train_ids(self, fold: int) -> list[str]:
        """The ids fold ``fold``'s model trains on: every other fold."""
        return [i for i, k in self.folds.items() if k != fold]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_split_options(n_ids: int, n_folds: int, seed: int, holdout: int = 0) -> None:
    """Check the options of a split of ``n_ids`` ids (before any stratum key is computed).

    Args:
        n_ids: Number of labelled ids.
        n_folds: Number of folds: an integer in ``[2, n_ids - holdout]``.
        seed: Seed of the tie-breaking permutation: a non-negative integer.
        holdout: Ids to hold out of every fold: a non-negative integer.

    Raises:
        ConfigError: an option out of its range (the message gives the range).
    """
    if not _is_int(holdout) or holdout < 0:
        raise ConfigError(f"holdout must be a non-negative number of images, got {holdout!r}")
    pool = f"the {n_ids} labelled images" + (f" less the {holdout} held out" if holdout else "")
    if n_ids - holdout < 2:
        raise ConfigError(f"{pool} cannot fill 2 folds")
    if not _is_int(n_folds) or not 2 <= n_folds <= n_ids - holdout:
        raise ConfigError(f"n_folds must be an integer in [2, {n_ids - holdout}] ({pool}), got {n_folds!r}")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def check_fold(fold: int, n_folds: int, source: str = "") -> None:
    """Check that ``fold`` is one of ``n_folds`` folds.

    Args:
        fold: The fold asked for.
        n_folds: Number of folds.
        source: Where the folds come from, for the message (e.g. ``" (folds of folds.csv)"``).

    Raises:
        ConfigError: ``fold`` is not an integer in ``[0, n_folds - 1]``.
    """
    if not _is_int(fold) or not 0 <= fold < n_folds:
        raise ConfigError(f"fold must be an integer in [0, {n_folds - 1}]{source}, got {fold!r}")


def stratified_split(ids: Sequence[str], keys: Sequence[float], n_folds: int, seed: int, holdout: int = 0) -> CvSplit:
    """Split ids into ``n_folds`` folds stratified by ``keys``, after holding ``holdout`` ids out.

    Ids are ordered by key, ties broken by a permutation drawn from ``seed``. The held-out ids are a
    systematic sample along that order (so they follow the strata too); the rest are dealt to folds
    round-robin, so every fold holds each stratum to within one id and fold sizes differ by at most
    one. Same ids, keys and seed: same split.

    Args:
        ids: The labelled ids.
        keys: The stratum key of each id (e.g. a class or a depth; all equal: a seeded random split).
        n_folds: Number of folds, in ``[2, len(ids) - holdout]``.
        seed: Seed of the tie-breaking permutation (non-negative).
        holdout: Ids to keep out of every fold as a final test set (0: none).

    Returns:
        :class:`CvSplit`.

    Raises:
        ConfigError: see :func:`check_split_options`.
        ValueError: ``ids`` and ``keys`` differ in length.
    """
    ids = list(ids)
    if len(keys) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(keys)} stratum keys")
    check_split_options(len(ids), n_folds, seed, holdout)
    order = stratified_order(keys, seed)
    held = set(order[np.linspace(0, len(ids) - 1, holdout).round().astype(int)].tolist()) if holdout else set()
    rest = [j for j in order.tolist() if j not in held]
    folds = {ids[j]: rank % n_folds for rank, j in enumerate(rest)}
    return CvSplit(dict(sorted(folds.items())), sorted(ids[j] for j in held), n_folds)


def make_cv_split(dataset: FoldableDataset, n_folds: int, seed: int = 0, holdout: int = 0) -> CvSplit:
    """:func:`stratified_split` of a dataset's ids by its ``fold_key``.

    Args:
        dataset: A labelled dataset (its ``ids`` and ``fold_key``), e.g. split ``"all"``.
        n_folds: Number of folds.
        seed: Seed of the tie-breaking permutation.
        holdout: Ids to keep out of every fold as a final test set (0: none).

    Returns:
        :class:`CvSplit`.

    Raises:
        ConfigError: see :func:`check_split_options`.
    """
    ids = list(dataset.ids)
    check_split_options(len(ids), n_folds, seed, holdout)  # before any key is computed
    return stratified_split(ids, [dataset.fold_key(i) for i in ids], n_folds, seed, holdout)


def write_folds_csv(path: str | Path, split: CvSplit) -> Path:
    """Write a split as a CSV ``id,fold`` sorted by id (held-out ids with the fold ``holdout``), atomically.

    Args:
        path: Destination CSV (TGS's ``folds_csv`` option reads it).
        split: The split.

    Returns:
        ``path``.
    """
    path = Path(path)
    rows = sorted([*split.folds.items(), *((i, HOLDOUT) for i in split.holdout)], key=lambda row: row[0])
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        handle.write("id,fold\n")
        handle.writelines(f"{sample_id},{fold}\n" for sample_id, fold in rows)
    return path


def read_folds_csv(path: str | Path) -> CvSplit:
    """Read a CSV written by :func:`write_folds_csv` (or any ``id,fold`` CSV).

    Args:
        path: CSV with columns ``id`` and ``fold`` (a non-negative integer, or ``holdout``).

    Returns:
        :class:`CvSplit`; its ``n_folds`` is the largest fold plus one.

    Raises:
        DataError: the file does not exist or lacks a column, a fold is neither a non-negative integer
            nor ``holdout``, an id repeats, or no row has a fold number.
    """
    path = Path(path)
    folds: dict[str, int] = {}
    holdout: list[str] = []
    for sample_id, fold in read_csv_column(path, "id", "fold").items():
        if fold == HOLDOUT:
            holdout.append(sample_id)
        elif fold.isascii() and fold.isdigit():
            folds[sample_id] = int(fold)
        else:
            raise DataError(
                f"folds CSV {path}: fold {fold!r} of id {sample_id} is neither a non-negative integer nor {HOLDOUT!r}"
            )
    if not folds:
        raise DataError(f"folds CSV {path} has no rows with a fold number")
    return CvSplit(dict(sorted(folds.items())), sorted(holdout), max(folds.values()) + 1)


def write_id_list(path: Path, ids: Sequence[str]) -> Path:
    """Write ids one per line (a ``.txt`` split any dataset reads), atomically."""
    with atomic_write(path) as handle:
        handle.writelines(f"{sample_id}\n" for sample_id in ids)
    return path
