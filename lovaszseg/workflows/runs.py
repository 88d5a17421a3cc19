"""Using trained models: evaluate them, predict masks, write a Kaggle submission.

Each function takes a run folder or a model file, a cv folder, an ensemble folder, or several of them
with optional weights (see :func:`~lovaszseg.inference.ensemble.load_predictor`), so the CLI commands
``eval``, ``predict`` and ``submit`` are thin wrappers and a notebook can call the same functions.
Binary predictions go through a :class:`~lovaszseg.scoring.postprocess.PostProcessing` (threshold and
min-area); ``"auto"`` takes the values tuned for the predictor (out of fold for a cv folder, on the
validation split for a run). What a model takes and returns comes from its dataset's
:class:`~lovaszseg.data.spec.DatasetSpec`, never from the dataset's name. Their loops show their
progress (:class:`~lovaszseg.training.reporting.LoopProgress`) as training does, every
``output.progress_seconds`` of the run's config where no bar can be drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader

from lovaszseg.data.io import atomic_write, list_stems, read_lines
from lovaszseg.data.overlay import save_overlay
from lovaszseg.data.tgs import TGS_ORIGINAL_SIZE
from lovaszseg.data.voc import save_palette_png
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.inference.ensemble import Predictor, Sources, load_predictor
from lovaszseg.inference.predict import predict_folder, predict_probabilities
from lovaszseg.inference.submission import write_submission
from lovaszseg.inference.tta import NO_TTA, Tta
from lovaszseg.rle import read_rle_csv
from lovaszseg.runtime.distributed import resolve_device
from lovaszseg.runtime.progress import LoopProgress
from lovaszseg.scoring.catalogue import metric_names, tuning_metric
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.scoring.evidence import ImageRecorder
from lovaszseg.scoring.postprocess import ImageCounts, PostProcessing, evaluate_postprocessing, tune_postprocessing
from lovaszseg.storage.cv_folder import HOLDOUT, OUT_OF_FOLD
from lovaszseg.storage.run_folder import EVAL_FILE, RunFolder
from lovaszseg.thresholds import DEFAULT_THRESHOLD

__all__ = ["check_min_area", "check_threshold", "evaluate_run", "predict_run", "submit_run"]

Auto = Literal["auto"]


def check_threshold(value: float) -> float:
    """A probability threshold, which must lie in [0, 1] (outside it every mask is full or empty).

    Raises:
        ConfigError: the value is not a number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold must be a probability in [0, 1], got {value!r}")
    return float(value)


def _predict_images(
    loaded: Predictor,
    images_dir: Path,
    tta: Tta,
    device: str,
    *,
    description: str,
    console: Console | None,
    batch_size: int = 16,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """Predict a folder with the evaluation preset the model was trained with; its progress counts images."""
    config = loaded.config
    transform = config.data.transform()
    total = len(list_stems(images_dir))
    interval = config.output.progress_seconds
    with LoopProgress(console or Console(), description, total, unit="image", interval=interval) as bar:
        for prediction in predict_folder(
            loaded.model,
            images_dir,
            transform,
            in_channels=loaded.spec.in_channels,
            device=resolve_device(device),
            tta=tta,
            resized=loaded.spec.resize,
            batch_size=batch_size,
        ):
            yield prediction
            bar.advance(1)  # once the caller has used it: writing its files is part of the work


def check_min_area(value: int) -> int:
    """A min-area in pixels, which must be a non-negative integer.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"min-area must be a non-negative number of pixels, got {value!r}")
    return value


def _dataset_split(predictor: Predictor, split: str) -> str:
    """The dataset split a split name means for a predictor: ``train``/``val`` are the run's own
    (for a cv fold, its id lists), ``holdout`` a cv folder's held-out images."""
    config = predictor.config
    if split == HOLDOUT and predictor.cv is not None:
        path = predictor.cv.split_path(HOLDOUT)
        if not path.is_file():
            raise ConfigError(f"cv folder {predictor.cv.path} holds no images out (it was made without --holdout)")
        return str(path)
    return {"train": config.data.train_split, "val": config.data.val_split}.get(split, split)


def _check_unseen(predictor: Predictor, ids: list[str], split: str) -> None:
    """Refuse to score an ensemble on images one of its members trained on (known for id-list splits)."""
    trained: set[str] = set()
    for config in predictor.member_configs:
        path = Path(config.data.train_split)
        if path.suffix == ".txt" and path.is_file():
            trained.update(read_lines(path, "split file"))
    if seen := [i for i in ids if i in trained]:
        hint = "; score a cv folder out of fold (no --split) or on --split holdout" if predictor.cv else ""
        raise ConfigError(
            f"{len(seen)} of the {len(ids)} images of split {split!r} were used to train a model of "
            f"{predictor.name}, e.g. {', '.join(seen[:3])}: its scores would not mean anything{hint}"
        )


def _postprocessed(predictor: Predictor, counts: ImageCounts, split: str, tta: Tta) -> dict[str, float]:
    """Metrics after post-processing: the predictor's tuned values when they were tuned on another
    split (e.g. out of fold), else tuned here, on this split, and kept with the predictor."""
    tuning = predictor.tuning()
    if tuning is not None and tuning.split != split:
        chosen, after = tuning.chosen, evaluate_postprocessing(counts, tuning.chosen)
    else:
        metric = tuning_metric(predictor.config.train.monitor, predictor.spec)
        tuning = tune_postprocessing(counts, metric, split=split, tta=tta, models=predictor.model_names)
        predictor.save_tuning(tuning)
        chosen, after = tuning.chosen, tuning.after
    names = metric_names(predictor.spec)
    return {
        "postprocess_threshold": chosen.threshold,
        "postprocess_min_area": float(chosen.min_area),
        **{f"{name}_postprocessed": after[name] for name in names},
    }


def _score_split(
    predictor: Predictor,
    split: str,
    tta: Tta,
    device: str,
    data_root: str | Path | None,
    console: Console | None,
    recorder: ImageRecorder | None = None,
) -> dict[str, float]:
    config, target = predictor.config, resolve_device(device)
    root = Path(data_root) if data_root else config.data.resolved_root()
    dataset = config.data.build(_dataset_split(predictor, split), train=False, root=root)
    if "mask" not in dataset[0]:
        raise DataError(f"split {split!r} of {root} has no masks to evaluate against")
    _check_unseen(predictor, list(dataset.ids), split)
    loader = DataLoader(dataset, batch_size=config.data.eval_batch_size)
    model, interval = predictor.model.to(target), config.output.progress_seconds
    scorer = Scorer(predictor.spec, target, keep_images=True)
    with LoopProgress(console or Console(), f"eval {split}", len(loader), interval=interval) as bar:
        metrics = evaluate(
            model,
            loader,
            predictor.spec,
            device=target,
            predict=partial(predict_probabilities, tta=tta),
            progress=bar.advance,
            scorer=scorer,
            on_predictions=recorder,
        )
    if recorder is not None:
        recorder.finish(metrics, scorer.image_counts() if predictor.spec.binary else None)
    return metrics | (_postprocessed(predictor, scorer.image_counts(), split, tta) if predictor.spec.binary else {})


def _out_of_fold_metrics(predictor: Predictor) -> dict[str, float]:
    """A cv folder's out-of-fold metrics, as its cross-validation computed them, with its tuning."""
    row = next(row for row in predictor.cv.results()["rows"] if row["fold"] == OUT_OF_FOLD)
    metrics = {name: float(value) for name, value in row.items() if name not in ("fold", "images")}
    if (tuning := predictor.tuning()) is not None:
        metrics["postprocess_threshold"] = tuning.chosen.threshold
        metrics["postprocess_min_area"] = float(tuning.chosen.min_area)
        metrics |= {f"{name}_postprocessed": tuning.after[name] for name in metric_names(predictor.spec)}
    return metrics


def evaluate_run(
    run_or_checkpoint: Sources,
    *,
    weights: Sequence[float] | None = None,
    split: str | None = None,
    tta: Tta = NO_TTA,
    device: str = "auto",
    data_root: str | Path | None = None,
    out: Path | None = None,
    console: Console | None = None,
    recorder: ImageRecorder | None = None,
) -> dict[str, float]:
    """Score a trained model or an ensemble on a labelled split, streaming, and write ``eval.json``.

    The metrics are those of validation during training (:class:`~lovaszseg.scoring.engine.Scorer`):
    binary models get the TGS metric (``salt_score``, without an ignore index), ``iou`` and
    ``image_iou`` at the default threshold, and for each the best threshold of the grid and its score;
    multi-class models ``miou``, ``image_miou`` and ``pixel_acc``. Binary models also get the metrics
    after post-processing (``NAME_postprocessed``, with ``postprocess_threshold`` and
    ``postprocess_min_area``): with the values tuned out of fold for a cv folder (or an ensemble made
    from one), else tuned on this split and kept for ``--threshold auto`` / ``--min-area auto``.

    Args:
        run_or_checkpoint: Run folder, model file, cv folder, ensemble folder, or a list of them.
        weights: One weight per source, for an ensemble.
        split: Split to score: ``val`` / ``train`` (the run's own), another split of the dataset (e.g.
            ``all``, a VOC split, a ``.txt`` list of ids), or for a cv folder ``oof`` (the default:
            its out-of-fold predictions) or ``holdout`` (its held-out images). Default ``val``.
        tta: ``none`` or ``hflip``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: Dataset root, if not the one in the config.
        out: Folder to write ``eval.json`` to (default: the run, cv or ensemble folder; a list of
            several sources writes none).
        console: Where progress goes (default: a new rich console, which finds a terminal or notebook).
        recorder: Keeps each image's statistics of the scored split (e.g. for paired comparisons);
            not for a cv folder's out-of-fold metrics, which are not scored again.

    Returns:
        Metric name -> value.

    Raises:
        CheckpointError, ConfigError, DataError: no such run, a bad option, a split without masks, or a
            split holding images a member of the ensemble trained on.
    """
    predictor = load_predictor(run_or_checkpoint, weights)
    if predictor.cv is not None and split in (None, OUT_OF_FOLD):
        split, tta = OUT_OF_FOLD, predictor.cv.settings()[1]["tta"]
        metrics = _out_of_fold_metrics(predictor)
    else:
        split = split or "val"
        metrics = _score_split(predictor, split, tta, device, data_root, console, recorder)
    if (home := out or predictor.home) is not None:
        RunFolder(home).write_json(EVAL_FILE, {"split": split, "tta": tta, "model": predictor.name, **metrics})
    return metrics


def _postprocessing(
    predictor: Predictor,
    threshold: float | Auto,
    min_area: int | Auto,
    tta: Tta,
    device: str,
    console: Console | None,
) -> PostProcessing:
    """The post-processing asked for; ``auto`` values come from the predictor's tuning (for a single run
    without one, or with one tuned on its validation split with another TTA, tuned there first)."""
    if threshold != "auto" and min_area != "auto":
        return PostProcessing(check_threshold(threshold), check_min_area(min_area))
    tuning = predictor.tuning()
    single_run = predictor.cv is None and predictor.home is not None and len(predictor.members) == 1
    if single_run and (tuning is None or (tuning.split == "val" and tuning.tta != tta)):
        _score_split(predictor, "val", tta, device, None, console)  # tuned with the TTA it will be used with
        tuning = predictor.tuning()
    if tuning is None:
        raise ConfigError(
            f"{predictor.name} has no tuned post-processing for 'auto': tune it with lovaszseg eval "
            "on a split none of its models trained on (an ensemble of several sources: make it a folder "
            "with lovaszseg ensemble first)"
        )
    if threshold == "auto":
        threshold = tuning.threshold_alone if min_area == 0 else tuning.chosen.threshold
    return PostProcessing(
        check_threshold(threshold), tuning.chosen.min_area if min_area == "auto" else check_min_area(min_area)
    )


def predict_run(
    run_or_checkpoint: Sources,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    weights: Sequence[float] | None = None,
    tta: Tta = NO_TTA,
    threshold: float | Auto = DEFAULT_THRESHOLD,
    min_area: int | Auto = 0,
    device: str = "auto",
    console: Console | None = None,
) -> int:
    """Predict every image of a folder: ``OUT/masks/STEM.png`` and ``OUT/overlays/STEM.png``.

    Binary masks are saved as 0/255 grayscale PNGs, multi-class ones as VOC palette PNGs. Progress goes
    to ``console`` (default: a new rich console).

    Args:
        run_or_checkpoint: Run folder, model file, cv folder, ensemble folder, or a list of them.
        images_dir: The images.
        out_dir: Where ``masks/`` and ``overlays/`` go.
        weights: One weight per source, for an ensemble.
        tta: ``none`` or ``hflip``.
        threshold: Binary models: probability threshold in [0, 1], or ``"auto"`` (tuned).
        min_area: Binary models: masks with fewer foreground pixels are emptied; ``"auto"`` (tuned).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        console: Where progress goes.

    Returns:
        The number of images predicted.
    """
    predictor = load_predictor(run_or_checkpoint, weights)
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise ConfigError(f"output folder {out_dir} is a file")
    post = _postprocessing(predictor, threshold, min_area, tta, device, console) if predictor.spec.binary else None
    count = 0
    for path, image, probs in _predict_images(
        predictor, Path(images_dir), tta, device, description="predict", console=console
    ):
        mask_path = out_dir / "masks" / f"{path.stem}.png"
        if post is not None:
            labels = post.apply(probs[0]).astype(np.uint8)
            with atomic_write(mask_path, "wb") as handle:
                Image.fromarray(labels * 255).save(handle, format="PNG")
        else:
            labels = probs.argmax(0).astype(np.uint8)
            save_palette_png(labels, mask_path)
        save_overlay(image, labels, out_dir / "overlays" / f"{path.stem}.png")
        count += 1
    return count


def submit_run(
    run_or_checkpoint: Sources,
    test_dir: str | Path,
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    tta: Tta = NO_TTA,
    threshold: float | Auto = DEFAULT_THRESHOLD,
    min_area: int | Auto = 0,
    sample_submission: str | Path | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> tuple[Path, PostProcessing]:
    """Write a Kaggle TGS Salt submission (``id,rle_mask``) for every image of a test folder.

    Images stream through the model (or every member of an ensemble) in batches and masks are
    encoded as they are predicted, so memory does not grow with the number of images; every image
    must be 101x101 (the competition's size) and the file is validated before it is written or
    replaces anything.

    Args:
        run_or_checkpoint: Run folder, model file, cv folder, ensemble folder, or a list of them, of a
            binary (salt) model.
        test_dir: The test images, or a folder holding ``images/`` (Kaggle's ``test/``).
        out: CSV to write.
        weights: One weight per source, for an ensemble.
        tta: ``none`` or ``hflip``.
        threshold: Probability threshold in [0, 1], or ``"auto"``: the tuned one (out of fold for a cv
            folder; on the validation split for a run, tuned first if it has not been).
        min_area: Predicted masks with fewer pixels are submitted empty; ``"auto"``: the tuned one.
        sample_submission: Kaggle's ``sample_submission.csv``: the file must then hold exactly its ids,
            in its order. By default the one beside ``test_dir`` (``test/../sample_submission.csv``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        console: Where progress goes (default: a new rich console).

    Returns:
        ``(path of the CSV, post-processing used)``.

    Raises:
        ConfigError: a multi-class model, a threshold outside [0, 1], a negative min-area, ``auto``
            without a tuning, or ``out`` naming a folder.
        DataError: an image that is not 101x101 (named), ids that do not match the sample submission.
    """
    out, test_dir = Path(out), Path(test_dir)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the CSV file to write")
    predictor = load_predictor(run_or_checkpoint, weights)
    if not predictor.spec.binary:
        raise ConfigError("submit writes binary RLE masks; this model is multi-class")
    post = _postprocessing(predictor, threshold, min_area, tta, device, console)
    images_dir = test_dir / "images" if (test_dir / "images").is_dir() else test_dir
    if sample_submission is None and (images_dir.parent.parent / "sample_submission.csv").is_file():
        sample_submission = images_dir.parent.parent / "sample_submission.csv"
    expected = list(read_rle_csv(Path(sample_submission))) if sample_submission else None

    def masks() -> Iterator[tuple[str, np.ndarray]]:
        predictions = _predict_images(predictor, images_dir, tta, device, description="submit", console=console)
        for path, image, probs in predictions:
            if image.shape[:2] != TGS_ORIGINAL_SIZE:
                raise DataError(
                    f"image {path} is {image.shape[0]}x{image.shape[1]}; TGS submissions need "
                    f"{TGS_ORIGINAL_SIZE[0]}x{TGS_ORIGINAL_SIZE[1]} images"
                )
            yield path.stem, post.apply(probs[0])

    return write_submission(masks(), out, shape=TGS_ORIGINAL_SIZE, expected_ids=expected), post
