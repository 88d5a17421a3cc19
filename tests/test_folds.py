"""The one fold system: stratified folds, a held-out test set, the ``id,fold`` CSV, id-list splits."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from lovaszseg.data import TGSSalt, build_dataset
from lovaszseg.data.folds import (
    HOLDOUT,
    CvSplit,
    make_cv_split,
    read_folds_csv,
    stratified_split,
    write_folds_csv,
    write_id_list,
)
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.storage.cv_folder import FOLDS_FILE, CvFolder

# sha256 of the sorted ``id,fold`` rows (``holdout`` for held-out ids) of the 3000 real TGS training
# images in ../shared, 5 folds stratified by coverage, seed 0: computed before the two fold systems
# became one, so the assignment every earlier run and cv folder used stays exactly the same.
REAL_FOLDS_SHA256 = {
    0: "056cdf2de2cde7fba083fba52ba7cbad546e1949a3ee692c0677dab9fb8fa9ed",
    300: "a6e81284df32299912274709125f0cf05150870454f52508cf2166ed41d5c377",
}


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


def test_the_core_is_a_function_of_ids_and_keys() -> None:
    keys = {f"id{i:03d}": float(i % 3) for i in range(30)}
    split = stratified_split(list(keys), list(keys.values()), 3, seed=2, holdout=3)
    assert split == make_cv_split(_Keyed(keys), 3, seed=2, holdout=3)
    assert Counter(keys[i] for i in split.holdout) == {0.0: 1, 1.0: 1, 2.0: 1}
    with pytest.raises(ValueError, match="30 ids but 29 stratum keys"):
        stratified_split(list(keys), list(keys.values())[:-1], 3, seed=2)


@pytest.mark.parametrize(
    ("n_folds", "seed", "holdout", "message"),
    [
        (1, 0, 0, r"n_folds must be an integer in \[2, 10\] \(the 10 labelled images\), got 1"),
        (11, 0, 0, r"n_folds must be an integer in \[2, 10\] \(the 10 labelled images\), got 11"),
        (True, 0, 0, r"n_folds must be an integer in \[2, 10\] .*got True"),
        (5, 0, -1, "holdout must be a non-negative number of images, got -1"),
        (5, 0, 8, r"n_folds must be an integer in \[2, 2\] \(the 10 labelled images less the 8 held out\), got 5"),
        (2, 0, 9, "the 10 labelled images less the 9 held out cannot fill 2 folds"),
        (5, -1, 0, "seed must be a non-negative integer, got -1"),
        (5, 1.5, 0, "seed must be a non-negative integer, got 1.5"),
    ],
)
def test_impossible_splits_are_config_errors(n_folds: int, seed: int, holdout: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_cv_split(_Keyed({f"{i}": 0.0 for i in range(10)}), n_folds, seed, holdout)


@pytest.mark.parametrize("holdout", [0, 2])
def test_folds_csv_round_trip(tmp_path: Path, holdout: int) -> None:
    split = make_cv_split(_Keyed({f"id{i:02d}": float(i % 2) for i in range(12)}), 3, seed=0, holdout=holdout)
    path = write_folds_csv(tmp_path / "folds.csv", split)
    rows = path.read_text().splitlines()
    assert rows[0] == "id,fold" and rows[1:] == sorted(rows[1:])  # sorted by id
    assert sum(row.endswith(f",{HOLDOUT}") for row in rows) == holdout
    assert read_folds_csv(path) == split


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,fold\nid000,-1\n", "fold '-1' of id id000 is neither a non-negative integer nor 'holdout'"),
        ("id,fold\nid000,one\n", "fold 'one' of id id000"),
        ("id,fold\nid000,1\nid000,2\n", "has id 'id000' more than once"),
        ("id,fold\n", "has no rows"),
        (f"id,fold\nid000,{HOLDOUT}\n", "has no rows with a fold number"),
        ("id\nid000\n", "lacks column"),
    ],
)
def test_read_folds_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_folds_csv(path)


def test_a_cv_folders_folds_csv_is_a_tgs_folds_csv(tiny_salt: Path, tmp_path: Path) -> None:
    pool = TGSSalt(tiny_salt, "all")
    split = make_cv_split(pool, 3, seed=0, holdout=4)
    folder = CvFolder(tmp_path / "cv")
    folder.write_split(split)
    assert folder.split() == split
    for fold in range(3):
        val = TGSSalt(tiny_salt, "val", fold=fold, folds_csv=tmp_path / "cv" / FOLDS_FILE)
        train = TGSSalt(tiny_salt, "train", fold=fold, folds_csv=tmp_path / "cv" / FOLDS_FILE)
        assert val.ids == split.val_ids(fold) and train.ids == split.train_ids(fold)
        assert not (set(val.ids) | set(train.ids)) & set(split.holdout)  # held out of both
    # Without a holdout, the train/val splits are the cross-validation folds of the same seed.
    assert TGSSalt(tiny_salt, "val", fold=1, n_folds=3).ids == make_cv_split(pool, 3, seed=0).val_ids(1)


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


@pytest.mark.parametrize("holdout", sorted(REAL_FOLDS_SHA256))
def test_real_tgs_fold_assignment_is_pinned(shared_dir: Path, holdout: int) -> None:
    split = make_cv_split(build_dataset("tgs", shared_dir / "tgs", "all", train=False), 5, seed=0, holdout=holdout)
    rows = sorted([*split.folds.items(), *((i, HOLDOUT) for i in split.holdout)])
    text = "".join(f"{sample_id},{fold}\n" for sample_id, fold in rows)
    assert hashlib.sha256(text.encode()).hexdigest() == REAL_FOLDS_SHA256[holdout]


def test_real_tgs_five_folds_with_300_held_out(shared_dir: Path) -> None:
    pool = build_dataset("tgs", shared_dir / "tgs", "all", train=False)
    split = make_cv_split(pool, 5, seed=0, holdout=300)
    _check_partition(split, pool.ids)
    assert len(split.holdout) == 300 and Counter(split.folds.values()) == dict.fromkeys(range(5), 540)
    empty_share = [sum(pool.fold_key(i) == 0 for i in split.val_ids(k)) / 540 for k in range(5)]
    assert max(empty_share) - min(empty_share) <= 1 / 540  # ~39% empty masks in every fold
