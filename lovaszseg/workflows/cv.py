"""K-fold cross-validation: one ordinary run per fold, out-of-fold predictions, tuned post-processing.

:func:`cross_validate` splits the dataset's labelled images by its own rules (TGS: stratified by salt
coverage or depth; other data: a seeded random split; see :mod:`lovaszseg.data.folds`), optionally
holding some out of every fold as a final test, and trains fold K into ``CV/fold-K`` with
:func:`~lovaszseg.training.trainer.train`. Folds that finished are skipped and an interrupted one is
resumed, so running it again with ``resume`` continues where it stopped. Then every training image is
predicted by the one fold model that did not train on it (``oof.npz``), the folds and the
out-of-fold predictions are scored by the metrics engine, and for binary tasks the threshold and
min-area are tuned on the out-of-fold predictions (:mod:`lovaszseg.scoring.postprocess`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader

from lovaszseg.config import Config
from lovaszseg.data.folds import make_cv_split
from lovaszseg.data.io import atomic_write
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import ConfigError
from lovaszseg.inference.ensemble import model_names, resolve_members
from lovaszseg.inference.predict import predict_outputs
from lovaszseg.inference.tta import NO_TTA, Tta, check_tta, warn_if_invalid
from lovaszseg.inference.window import images_per_pass, window_label
from lovaszseg.runtime import distributed
from lovaszseg.runtime.accelerated import accelerate
from lovaszseg.runtime.acceleration import AccelerationOverride
from lovaszseg.runtime.progress import LoopProgress
from lovaszseg.scoring.catalogue import metric_names, tuning_metric
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.scoring.postprocess import Tuning, save_tuning, tune_postprocessing
from lovaszseg.storage.cv_folder import OOF_EMPTY_HEAD, OUT_OF_FOLD, POSTPROCESSED, CvFolder
from lovaszseg.storage.run_folder import RunFolder, load_model
from lovaszseg.training import RunResult, resolve_config, train

__all__ = ["CvResult", "cross_validate", "parse_folds"]


@dataclass
class CvResult:
    """What :func:`cross_validate` returns.

    Attributes:
        cv_dir: The cv folder.
        folds: The folds trained.
        rows: One row of metrics per fold, then the out-of-fold rows (empty when not completed).
        tuning: The post-processing tuned on the out-of-fold predictions (binary tasks).
        completed: Whether every fold finished and the out-of-fold predictions were written.
        stop_signal: The signal (SIGINT, SIGTERM) that stopped an incomplete cv, if one did.
    """

    cv_dir: Path
    folds: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    tuning: Tuning | None = None
    completed: bool = False
    stop_signal: int | None = None


def parse_folds(text: str) -> tuple[int | None, list[int] | None]:
    """Read ``--folds``: ``K`` (all K folds) or a comma-separated subset such as ``0,3`` (or ``2,``).

    Returns:
        ``(K, None)`` or ``(None, [folds])``.

    Raises:
        ConfigError: anything else.
    """
    try:
        if "," not in text:
            return int(text), None
        return None, sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(
            f"--folds must be a number of folds (e.g. 5) or a list of folds (e.g. 0,3), got {text!r}"
        ) from None


def _check_settings(n_folds: int, folds: list[int], holdout: int, tta: str) -> None:
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ConfigError(f"the number of folds must be at least 2, got {n_folds!r}")
    if not folds or any(not 0 <= k < n_folds for k in folds):
        raise ConfigError(f"folds to train must be in 0..{n_folds - 1}, got {folds}")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise ConfigError(f"holdout must be a non-negative number of images, got {holdout!r}")
    check_tta(tta)


def _open_new(config: Config, settings: dict[str, Any], run_dir: Path | None, overwrite: bool) -> CvFolder:
    """Check the data and split it (before any folder exists), then create and lock the cv folder."""
    pool = config.data.build(config.data.spec().labelled_split, train=False)
    split = make_cv_split(pool, settings["n_folds"], settings["seed"], settings["holdout"])
    folder = CvFolder.from_run_folder(RunFolder.claim(run_dir, config.default_run_dir("-cv"), overwrite=overwrite))
    folder.write_split(split)
    folder.write_settings(config, settings)
    return folder


def _open_resume(
    folder: CvFolder, config: Config, settings: dict[str, Any], folds: list[int] | None, n_folds: int | None
) -> CvFolder:
    """Lock a cv folder to continue it (its saved ``config`` and ``settings``), with other folds if asked."""
    if n_folds is not None and n_folds != settings["n_folds"]:
        raise ConfigError(f"cv folder {folder.path} has {settings['n_folds']} folds, not {n_folds}")
    folder.run.lock()
    if folds is not None:
        _check_settings(settings["n_folds"], folds, settings["holdout"], settings["tta"])
        settings["folds"] = folds
        folder.write_settings(config, settings)
    return folder


def _fold_config(folder: CvFolder, config: Config, fold: int) -> Config:
    """Fold ``fold``'s run: the cv's config trained on every other fold and validated on this one."""
    splits = {"train_split": str(folder.split_path(fold, "train")), "val_split": str(folder.split_path(fold, "val"))}
    return config.model_copy(
        update={
            "data": config.data.model_copy(update=splits),
            "output": config.output.model_copy(update={"name": f"{config.output.name or 'run'}-fold-{fold}"}),
        }
    )


def _train_fold(
    folder: CvFolder, config: Config, fold: int, n_folds: int, console: Console, stop_after_epochs: int | None
) -> RunResult | None:
    """Train (or resume) fold ``fold``; None when it had already finished. ``console``: rank 0's."""
    run = RunFolder(folder.fold_path(fold))
    if run.finished:
        console.print(f"cv fold {fold} of 0..{n_folds - 1}: finished before, skipped ({run.path})")
        return None
    console.print(f"cv fold {fold} of 0..{n_folds - 1}: {run.path}")
    options = {
        "console": console,
        "stop_after_epochs": stop_after_epochs,
        "resume_hint": f"lovaszseg cv --resume {folder.path}",
    }
    if run.last_path.is_file():
        return train(resume=run.path, **options)
    return train(_fold_config(folder, config, fold), run_dir=run.path, overwrite=True, **options)


@contextmanager
def _oof_writer(path: Path) -> Iterator[Callable[[Sequence[str], Tensor, Tensor | None], None]]:
    """Write ``oof.npz`` as predictions come: a zip of one float16 ``.npy`` per image (and one float32
    scalar per image for the empty-image head's probability, if any), replaced atomically."""
    with atomic_write(path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:

        def write(name: str, array: np.ndarray) -> None:
            with archive.open(f"{name}.npy", "w") as entry:
                np.lib.format.write_array(entry, array)

        def add(ids: Sequence[str], probs: Tensor, empty: Tensor | None) -> None:
            for sample_id, prob in zip(ids, probs.cpu().numpy().astype(np.float16), strict=True):
                write(sample_id, prob)
            if empty is not None:
                for sample_id, head in zip(ids, empty.cpu().numpy().astype(np.float32), strict=True):
                    write(f"{OOF_EMPTY_HEAD}{sample_id}", head)

        yield add


def _out_of_fold(
    folder: CvFolder, config: Config, settings: dict[str, Any], console: Console
) -> tuple[list[dict[str, Any]], Tuning | None]:
    """Predict every fold's validation images with that fold's model: ``oof.npz``, metrics, tuning."""
    spec = config.data.spec()
    root, tta, window = config.data.resolved_root(), settings["tta"], config.inference.sliding_window()
    device = distributed.resolve_device(config.train.device)
    oof_scorer, rows = Scorer(spec, device, keep_images=True), []
    with _oof_writer(folder.oof_path) as write:

        def record(ids: Sequence[str], probs: Tensor, masks: Tensor, empty: Tensor | None) -> None:
            write(ids, probs, empty)
            oof_scorer.update(probs, masks, empty)

        for fold in settings["folds"]:
            loaded = load_model(folder.fold_path(fold))
            val_split = str(folder.split_path(fold, "val"))
            dataset = config.data.build(val_split, train=False, root=root)
            loader = DataLoader(dataset, batch_size=images_per_pass(window, config.data.eval_batch_size))
            interval = config.output.progress_seconds
            with LoopProgress(console, f"out-of-fold {fold}", len(dataset), unit="image", interval=interval) as bar:
                model = accelerate(loaded.model.to(device), loaded.config.train.acceleration())
                metrics = evaluate(
                    model,
                    loader,
                    spec,
                    device=device,
                    predict=partial(predict_outputs, tta=tta, window=window),
                    progress=bar.advance,
                    on_predictions=record,
                    across_processes=False,
                )
            rows.append({"fold": str(fold), "images": len(dataset), **metrics})
    images = sum(row["images"] for row in rows)
    rows.append({"fold": OUT_OF_FOLD, "images": images, **oof_scorer.compute()})
    tuning = None
    if spec.binary:
        names = model_names(resolve_members(folder.path), folder.path)
        tuning = tune_postprocessing(
            oof_scorer.image_counts(),
            tuning_metric(config.train.monitor, spec),
            split=OUT_OF_FOLD,
            tta=tta,
            window=window_label(window),
            models=names,
        )
        save_tuning(folder.path, tuning)
        rows.append({"fold": POSTPROCESSED, "images": images, **tuning.after, **tuning.chosen.values()})
    folder.write_results(rows, {"settings": settings, "rows": rows, "tuning": tuning.as_record() if tuning else None})
    return rows, tuning


def cv_table(rows: list[dict[str, Any]], spec: DatasetSpec, tta: Tta) -> Table:
    """Per-fold and out-of-fold metrics, as ``lovaszseg cv`` prints them (the out-of-fold ones with ``tta``)."""
    metrics = metric_names(spec)
    extra = ("threshold", "min_area") if spec.binary else ()
    table = Table(title=f"lovaszseg cv (out of fold with tta {tta})")
    for column in ("fold", "images", *metrics, *extra):
        table.add_column(column, justify="left" if column == "fold" else "right", overflow="fold")
    for row in rows:
        cells = [f"{row[m]:.4f}" if m in row else "" for m in metrics]
        cells += [f"{row['threshold']:.2f}", str(row["min_area"])] if "min_area" in row else [""] * len(extra)
        table.add_row(str(row["fold"]), str(row["images"]), *cells)
    return table


def cross_validate(
    config: Config | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    n_folds: int | None = None,
    folds: Sequence[int] | None = None,
    holdout: int = 0,
    tta: Tta = NO_TTA,
    acceleration: AccelerationOverride = AccelerationOverride(),
    run_dir: Path | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    stop_after_epochs: int | None = None,
    console: Console | None = None,
) -> CvResult:
    """K-fold cross-validation into a cv folder; callable from a notebook as from ``lovaszseg cv``.

    Args:
        config: A :class:`Config`, a YAML path, or None for the built-in demo config.
        overrides: ``key.path=value`` strings applied to the config.
        n_folds: Number of folds K (default 5, or the resumed cv's).
        folds: The folds to train (default all K); the out-of-fold predictions cover these folds.
        holdout: Labelled images to keep out of every fold (``--split holdout`` of ``eval`` scores them).
        tta: Test-time augmentation of the out-of-fold predictions (a setting of :mod:`lovaszseg.inference.tta`),
            recorded in ``cv.yaml``, ``cv.json`` and the tuning.
        acceleration: ``train.amp``, ``train.channels_last`` and ``train.compile`` of the cv's config
            (``--amp``, ``--channels-last``, ``--compile``), set as the overrides ``train.amp=...`` would:
            every fold trains, validates and predicts out of fold with them.
        run_dir: The cv folder (default ``output.runs_dir/NAME-cv``, suffixed if taken).
        resume: A cv folder to continue: finished folds are skipped, an interrupted one resumed.
        overwrite: Replace what ``run_dir`` holds.
        stop_after_epochs: Stop cleanly after this many epochs of the fold being trained, as if
            interrupted (``resume`` then continues).
        console: Where progress and tables go.

    Returns:
        :class:`CvResult`.

    Raises:
        ConfigError, DataError: bad config, settings or data (before the cv folder is created).
        RunFolderError: the folder is taken or being written by another process.
        TrainingError: a fold's training diverged.
    """
    console = console or Console()
    # After the user's overrides: a typed option wins over a dotted override of the same key.
    overrides = [*overrides, *acceleration.config_overrides()]
    if resume is not None and (config is not None or overrides or holdout):
        raise ConfigError(
            "--resume continues a cv with its saved config and split: pass no config, overrides or holdout "
            "(nor --amp, --channels-last or --compile, which set the config)"
        )
    saved = CvFolder.existing(resume).settings() if resume is not None else None
    base = resolve_config(config, overrides, None) if saved is None else saved[0]
    joined = distributed.joined()
    info = distributed.setup(base.train.device)
    try:
        folder, settings = _open_on_main(info, base, saved, resume, n_folds, folds, holdout, tta, run_dir, overwrite)
        try:
            return _run_folds(folder, base, settings, info, console, stop_after_epochs)
        finally:
            folder.run.release()
    finally:
        if not joined:
            distributed.cleanup()


def _open_on_main(
    info: distributed.DistInfo,
    config: Config,
    saved: tuple[Config, dict[str, Any]] | None,
    resume: Path | None,
    n_folds: int | None,
    folds: Sequence[int] | None,
    holdout: int,
    tta: str,
    run_dir: Path | None,
    overwrite: bool,
) -> tuple[CvFolder, dict[str, Any]]:
    """Rank 0 creates (or reopens) and locks the cv folder; every rank learns its path and settings."""
    chosen: list[dict[str, Any]] = []

    def open_folder() -> CvFolder:
        if resume is not None and saved is not None:
            chosen.append(saved[1])
            return _open_resume(CvFolder(resume), config, saved[1], None if folds is None else list(folds), n_folds)
        k = n_folds or 5
        settings = {"n_folds": k, "folds": sorted(folds) if folds is not None else list(range(k))}
        settings |= {"holdout": holdout, "seed": int(config.data.options.get("seed", 0)), "tta": tta}
        _check_settings(k, settings["folds"], holdout, tta)
        spec = config.data.spec()
        warn_if_invalid(tta, spec.valid_tta, spec.name)
        chosen.append(settings)
        return _open_new(config, settings, run_dir, overwrite)

    folder = distributed.open_on_main(info, open_folder, CvFolder)
    return folder, distributed.broadcast_object(chosen[0] if chosen else None, info)


def _run_folds(
    folder: CvFolder,
    config: Config,
    settings: dict[str, Any],
    info: distributed.DistInfo,
    console: Console,
    stop_after_epochs: int | None,
) -> CvResult:
    """Train every fold not finished yet, then (rank 0) the out-of-fold predictions, metrics and tuning."""
    result = CvResult(folder.path, list(settings["folds"]))
    for fold in settings["folds"]:
        notes = console if info.is_main else Console(file=io.StringIO())
        trained = _train_fold(folder, config, fold, settings["n_folds"], notes, stop_after_epochs)
        if trained is not None and not trained.completed:
            result.stop_signal = trained.stop_signal
            return result
    if info.is_main:
        result.rows, result.tuning = _out_of_fold(folder, config, settings, console)
        console.print(cv_table(result.rows, config.data.spec(), settings["tta"]))
        if result.tuning is not None:
            console.print(f"post-processing: {result.tuning.describe()}")
    distributed.broadcast_object(None, info)  # the other ranks wait for rank 0's predictions
    result.completed = True
    return result
