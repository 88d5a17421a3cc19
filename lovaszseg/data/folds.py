"""Cross-validation splits of any labelled dataset: K folds, and images held out of every fold.

Each dataset says what its folds are stratified by (:meth:`fold_key`: TGS the salt coverage class or
the depth, other datasets nothing, i.e. a seeded random split); :func:`make_cv_split` orders the ids
by that key, ties broken by a seeded permutation, and deals them out, so every fold holds each
stratum to within one image. A split is written as plain ``.txt`` id lists, which every dataset
accepts as its ``split``, so each fold trains as an ordinary run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lovaszseg.data.io import atomic_write
from lovaszseg.errors import ConfigError

__all__ = ["CvSplit", "make_cv_split", "stratified_order", "write_id_list"]


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


def make_cv_split(dataset: FoldableDataset, n_folds: int, seed: int = 0, holdout: int = 0) -> CvSplit:
    """Split a dataset's ids into ``n_folds`` stratified folds after holding ``holdout`` ids out.

    The held-out ids are a systematic sample along the stratified order (so they follow the strata
    too); the rest are dealt to folds round-robin, so fold sizes differ by at most one. Same ids,
    keys and seed: same split.

    Args:
        dataset: A labelled dataset (its ``ids`` and ``fold_key``), e.g. split ``"all"``.
        n_folds: At least 2.
        seed: Seed of the tie-breaking permutation.
        holdout: Ids to keep out of every fold as a final test set (0: none).

    Returns:
        :class:`CvSplit`.

    Raises:
        ConfigError: ``n_folds`` below 2, ``holdout`` negative, or too few ids for both.
    """
    ids = list(dataset.ids)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ConfigError(f"the number of folds must be an integer of at least 2, got {n_folds!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise ConfigError(f"holdout must be a non-negative number of images, got {holdout!r}")
    if len(ids) - holdout < n_folds:
        raise ConfigError(
            f"{len(ids)} labelled images cannot hold {holdout} out and fill {n_folds} folds; "
            "use fewer folds or a smaller holdout"
        )
    order = stratified_order([dataset.fold_key(i) for i in ids], seed)
    held = set(order[np.linspace(0, len(ids) - 1, holdout).round().astype(int)].tolist()) if holdout else set()
    rest = [j for j in order.tolist() if j not in held]
    folds = {ids[j]: rank % n_folds for rank, j in enumerate(rest)}
    return CvSplit(dict(sorted(folds.items())), sorted(ids[j] for j in held), n_folds)


def write_id_list(path: Path, ids: Sequence[str]) -> Path:
    """Write ids one per line (a ``.txt`` split any dataset reads), atomically."""
    with atomic_write(path) as handle:
        handle.writelines(f"{sample_id}\n" for sample_id in ids)
    return path
