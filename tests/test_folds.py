"""Cross-validation splits: stratified folds, a held-out test set, id-list splits every dataset reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lovaszseg.data import build_dataset
from lovaszseg.data.folds import CvSplit, make_cv_split, write_id_list
from lovaszseg.errors import ConfigError, DataError


class _Keyed:
    """A dataset stand-in: ids and their stratum keys."""

    def __init__(self, keys: dict[str, float]) -> None:
        self.ids, self._keys = list(keys), keys

    def fold_key(self, sample_id: str) -> float:
        return self._keys[sample_id]


def _check_partition(split: CvSplit, ids: list[str]) -> None:
    in_folds = [i for k in range(split.n_folds) for i in split.val_ids(k)]
    assert sorted(in_folds + split.holdout) == sorted(ids)  # every id once: in one fold or held out
    assert len(set(in_folds)) == len(in_folds)
    for k in range(split.n_folds):
        train, val = set(split.train_ids(k)), set(split.val_ids(k))
        assert not train & val and train | val == set(split.folds) and not (train | val) & set(split.holdout)


@pytest.mark.parametrize(("n_ids", "n_folds", "holdout"), [(50, 5, 0), (53, 5, 7), (10, 2, 3), (7, 7, 0)])
def test_every_id_is_in_exactly_one_fold_or_held_out(n_ids: int, n_folds: int, holdout: int) -> None:
    dataset = _Keyed({f"id{i:03d}": i % 4 for i in range(n_ids)})
    split = make_cv_split(dataset, n_folds, seed=0, holdout=holdout)
    _check_partition(split, dataset.ids)
    sizes = Counter(split.folds.values())
    assert len(split.holdout) == holdout and max(sizes.values()) - min(sizes.values()) <= 1


def test_folds_and_holdout_follow_the_strata() -> None:
    keys = {f"id{i:03d}": float(i % 5) for i in range(200)}  # 5 strata of 40
    split = make_cv_split(_Keyed(keys), 4, seed=1, holdout=20)
    assert Counter(keys[i] for i in split.holdout) == dict.fromkeys(range(5), 4)  # 4 held out per stratum
    for fold in range(4):
        per_stratum = Counter(keys[i] for i in split.val_ids(fold))
        assert set(per_stratum.values()) == {9}  # the 36 left of each stratum, 9 per fold


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    dataset = _Keyed({f"id{i:03d}": 0.0 for i in range(40)})
    assert make_cv_split(dataset, 5, 3, 4) == make_cv_split(dataset, 5, 3, 4)
    assert make_cv_split(dataset, 5, 3, 4).folds != make_cv_split(dataset, 5, 4, 4).folds


@pytest.mark.parametrize(
    ("n_folds", "holdout", "message"),
    [
        (1, 0, "at least 2, got 1"),
        (True, 0, "at least 2"),
        (5, -1, "holdout must be a non-negative"),
        (5, 8, "10 labelled images cannot hold 8 out and fill 5 folds"),
    ],
)
def test_impossible_splits_are_config_errors(n_folds: int, holdout: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_cv_split(_Keyed({f"{i}": 0.0 for i in range(10)}), n_folds, 0, holdout)


def test_tgs_folds_are_stratified_by_coverage_and_id_lists_are_tgs_splits(tiny_salt: Path, tmp_path: Path) -> None:
    pool = build_dataset("tgs", tiny_salt, "all", train=False)
    split = make_cv_split(pool, 3, seed=0, holdout=3)
    _check_partition(split, pool.ids)
    counts = [Counter(pool.fold_key(i) for i in split.val_ids(k)) for k in range(3)]
    for stratum in {pool.fold_key(i) for i in split.folds}:  # each coverage class spread to within one image
        assert max(c[stratum] for c in counts) - min(c[stratum] for c in counts) <= 1, stratum
    listed = build_dataset("tgs", tiny_salt, str(write_id_list(tmp_path / "val.txt", split.val_ids(1))), train=False)
    assert listed.ids == split.val_ids(1) and len(listed[0]["mask"].shape) == 2


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("", "lists no ids"),
        ("{a}\n{a}\n", "more than once"),
        ("{a}\nnot-an-id\n", "ids with no image in .*: not-an-id"),
    ],
)
def test_bad_id_lists_are_data_errors_naming_the_file(
    tiny_salt: Path, tmp_path: Path, lines: str, message: str
) -> None:
    first = build_dataset("tgs", tiny_salt, "all", train=False).ids[0]
    path = tmp_path / "split.txt"
    path.write_text(lines.format(a=first))
    with pytest.raises(DataError, match=f"split file {path}.*{message}"):
        build_dataset("tgs", tiny_salt, str(path), train=False)


def test_voc_and_folder_folds_are_seeded_random_splits(tiny_voc: Path) -> None:
    pool = build_dataset("voc", tiny_voc, "trainval", train=False)
    split = make_cv_split(pool, 3, seed=0, holdout=0)
    _check_partition(split, pool.ids)
    assert {pool.fold_key(i) for i in pool.ids} == {0.0}


def test_real_tgs_five_folds_with_300_held_out(shared_dir: Path) -> None:
    pool = build_dataset("tgs", shared_dir / "tgs", "all", train=False)
    split = make_cv_split(pool, 5, seed=0, holdout=300)
    _check_partition(split, pool.ids)
    assert len(split.holdout) == 300 and Counter(split.folds.values()) == dict.fromkeys(range(5), 540)
    empty_share = [sum(pool.fold_key(i) == 0 for i in split.val_ids(k)) / 540 for k in range(5)]
    assert max(empty_share) - min(empty_share) <= 1 / 540  # ~39% empty masks in every fold
