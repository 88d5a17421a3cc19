"""The cv folder: a K-fold cross-validation's layout, every file name of it defined here.

- ``cv.yaml``: the resolved base config and the cv settings (folds, holdout, TTA), saved once;
- ``folds.csv``: ``id,fold`` of every labelled image (``holdout`` for the held-out ones), written and
  read by :mod:`lovaszseg.data.folds` (TGS's ``folds_csv`` option takes it as is);
- ``splits/``: ``fold-K-train.txt`` / ``fold-K-val.txt`` / ``holdout.txt``, the id lists each fold's
  run trains and validates on (any dataset reads them as its split);
- ``fold-K/``: fold K's ordinary run folder (resumable, exportable, usable alone);
- ``oof.npz``: the out-of-fold probabilities, one float16 ``[C, H, W]`` array per training image
  (``numpy.load`` reads them one at a time), and for models with an empty-image head its probability
  of foreground per image, a float32 scalar under ``empty_head/ID``;
- ``cv.csv`` / ``cv.json``: per-fold and out-of-fold metrics; ``postprocess.json``: the threshold and
  min-area tuned on the out-of-fold predictions (binary tasks).
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from lovaszseg.config import Config, load_config
from lovaszseg.data.folds import HOLDOUT, CvSplit, read_folds_csv, write_folds_csv, write_id_list
from lovaszseg.data.io import atomic_write
from lovaszseg.errors import CheckpointError
from lovaszseg.storage.run_folder import RunFolder

__all__ = [
    "CV_FILE",
    "CV_RESULTS_FILE",
    "CV_TABLE_FILE",
    "FOLDS_FILE",
    "OOF_EMPTY_HEAD",
    "OOF_FILE",
    "OUT_OF_FOLD",
    "POSTPROCESSED",
    "CvFolder",
]

CV_FILE = "cv.yaml"
FOLDS_FILE = "folds.csv"
SPLITS_DIR = "splits"
OOF_FILE = "oof.npz"
OOF_EMPTY_HEAD = "empty_head/"  # the prefix of the head probabilities' names in oof.npz (an id has no "/")
CV_TABLE_FILE = "cv.csv"
CV_RESULTS_FILE = "cv.json"
OUT_OF_FOLD = "oof"  # the row of cv.csv scoring every out-of-fold prediction, and the split name of eval
POSTPROCESSED = "oof, tuned"  # the row of cv.csv after the post-processing tuned on them


class CvFolder:
    """A cv folder (see the module docstring).

    Args:
        path: The folder (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.run = RunFolder(self.path)  # its lock and JSON records work as a run folder's

    @classmethod
    def from_run_folder(cls, claimed: RunFolder) -> CvFolder:
        """The cv folder of a folder claimed (and locked) by :meth:`RunFolder.claim`."""
        folder = cls(claimed.path)
        folder.run = claimed
        return folder

    def __repr__(self) -> str:
        return f"CvFolder({str(self.path)!r})"

    @staticmethod
    def is_cv_folder(path: str | Path) -> bool:
        return (Path(path) / CV_FILE).is_file()

    @classmethod
    def existing(cls, path: str | Path) -> CvFolder:
        """A cv folder that must exist.

        Raises:
            CheckpointError: ``path`` holds no ``cv.yaml``.
        """
        if not cls.is_cv_folder(path):
            raise CheckpointError(f"{path} is not a cv folder: it has no {CV_FILE}")
        return cls(path)

    # Layout -------------------------------------------------------------------------------------------
    def fold_path(self, fold: int) -> Path:
        return self.path / f"fold-{fold}"

    def split_path(self, fold: int | str, part: str = "") -> Path:
        """``splits/fold-K-train.txt`` / ``splits/fold-K-val.txt``, or ``splits/holdout.txt``."""
        name = HOLDOUT if fold == HOLDOUT else f"fold-{fold}-{part}"
        return (self.path / SPLITS_DIR / f"{name}.txt").resolve()

    @property
    def oof_path(self) -> Path:
        return self.path / OOF_FILE

    # Settings and split -------------------------------------------------------------------------------
    def write_settings(self, config: Config, settings: dict[str, Any]) -> None:
        """``cv.yaml``: the cv settings, then the config as the config writes itself, under ``config``."""
        with atomic_write(self.path / CV_FILE) as handle:
            handle.write(yaml.safe_dump({"cv": settings}, sort_keys=False))
            handle.write("config:\n" + textwrap.indent(config.to_yaml(), "  "))

    def settings(self) -> tuple[Config, dict[str, Any]]:
        """The base config and the cv settings saved in ``cv.yaml``."""
        path = self.path / CV_FILE
        try:
            payload = yaml.safe_load(path.read_text(encoding="utf-8"))
            return load_config(payload["config"]), dict(payload["cv"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path} is not a cv settings file: {error}") from error

    def write_split(self, split: CvSplit) -> None:
        """``folds.csv`` and the id lists of every fold and of the held-out images."""
        write_folds_csv(self.path / FOLDS_FILE, split)
        for fold in range(split.n_folds):
            write_id_list(self.split_path(fold, "train"), split.train_ids(fold))
            write_id_list(self.split_path(fold, "val"), split.val_ids(fold))
        if split.holdout:
            write_id_list(self.split_path(HOLDOUT), split.holdout)

    def split(self) -> CvSplit:
        """The split saved in ``folds.csv``.

        Raises:
            DataError: ``folds.csv`` is missing or unusable (see :func:`lovaszseg.data.folds.read_folds_csv`).
        """
        return read_folds_csv(self.path / FOLDS_FILE)

    # Models and results -------------------------------------------------------------------------------
    def model_files(self) -> list[Path]:
        """The model of every fold the cv trains, which must all have finished."""
        _, settings = self.settings()
        unfinished = [k for k in settings["folds"] if not RunFolder(self.fold_path(k)).finished]
        if unfinished:
            raise CheckpointError(
                f"cv folder {self.path}: fold(s) {', '.join(map(str, unfinished))} have not finished training; "
                f"continue with lovaszseg cv --resume {self.path}"
            )
        return [RunFolder(self.fold_path(k)).model_file() for k in settings["folds"]]

    def write_results(self, rows: list[dict[str, Any]], payload: dict[str, Any]) -> None:
        """``cv.csv`` (a row per fold, then the out-of-fold rows) and ``cv.json``."""
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with atomic_write(self.path / CV_TABLE_FILE, newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
        self.run.write_json(CV_RESULTS_FILE, payload)

    def results(self) -> dict[str, Any]:
        """What ``cv.json`` holds (per-fold and out-of-fold metrics)."""
        path = self.path / CV_RESULTS_FILE
        if not path.is_file():
            raise CheckpointError(
                f"cv folder {self.path} has no {CV_RESULTS_FILE} yet: finish it with lovaszseg cv --resume"
            )
        return json.loads(path.read_text(encoding="utf-8"))
