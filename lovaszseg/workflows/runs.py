"""Using trained models: evaluate them, predict masks, write a Kaggle submission.

Each function takes a run folder or a model file, a cv folder, an ensemble folder, or several of them
with optional weights (see :func:`~lovaszseg.inference.ensemble.load_predictor`), so the CLI commands
``eval``, ``predict`` and ``submit`` are thin wrappers and a notebook can call the same functions.
Binary predictions go through a :class:`~lovaszseg.scoring.postprocess.PostProcessing` (the
threshold, then the min-area rule); ``"auto"`` takes a step's value tuned for the predictor (out of
fold for a cv folder, on the validation split for a run). What a model takes and returns comes from
its dataset's :class:`~lovaszseg.data.spec.DatasetSpec`, never from the dataset's name. Their loops
show their progress (:class:`~lovaszseg.runtime.progress.LoopProgress`) as training does.

Nothing here imports the training code: a run folder another process is still training is scored
without writing into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader

from lovaszseg.data.folds import HOLDOUT
from lovaszseg.data.io import atomic_write, check_writable, list_stems, read_lines
from lovaszseg.data.overlay import save_overlay
from lovaszseg.data.tgs import TGS_ORIGINAL_SIZE
from lovaszseg.data.voc import save_palette_png
from lovaszseg.errors import ConfigError, DataError, RunFolderError
from lovaszseg.inference.ensemble import Predictor, Sources, load_predictor
from lovaszseg.inference.predict import predict_folder, predict_outputs
from lovaszseg.inference.submission import write_submission
from lovaszseg.inference.tta import NO_TTA, Tta, check_tta, warn_if_invalid
from lovaszseg.inference.window import WindowOverride, images_per_pass, window_label
from lovaszseg.rle import read_rle_csv
from lovaszseg.runtime.acceleration import AccelerationOverride
from lovaszseg.runtime.distributed import resolve_device
from lovaszseg.runtime.progress import LoopProgress
from lovaszseg.scoring.catalogue import (
    metric_names,
    postprocess_key,
    postprocessed_key,
    postprocessed_without_key,
    tuning_metric,
)
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.scoring.evidence import ImageRecorder
from lovaszseg.scoring.postprocess import (
    AUTO,
    PostProcessing,
    Tuning,
    evaluate_postprocessing,
    resolve,
    tune_postprocessing,
)
from lovaszseg.scoring.postprocess.empty_gate import EmptyGate
from lovaszseg.storage.cv_folder import OUT_OF_FOLD
from lovaszseg.storage.run_folder import EVAL_FILE, RunFolder
from lovaszseg.windowing import SlidingWindow

__all__ = ["Evaluation", "evaluate_run", "predict_run", "submit_run"]

Auto = Literal["auto"]


@dataclass(frozen=True, eq=False)  # compared as the mapping of its metrics
class Evaluation(Mapping[str, float]):
    """What :func:`evaluate_run` scored: the metrics (it reads as their mapping) and on what.

    Attributes:
        metrics: Metric name -> value.
        split: The split scored (``val``, ``oof`` for a cv folder's out-of-fold predictions, ...).
        tta: The test-time augmentation of the predictions.
        model: The model, cv folder or ensemble scored.
        written: The ``eval.json`` written, or None (a list of sources, or a folder another process writes).
    """

    metrics: dict[str, float]
    split: str
    tta: str
    model: str
    written: Path | None = None

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)


@contextmanager
def _held_out(out: Path | None) -> Iterator[Path | None]:
    """``--out``, locked while the block runs, when writers lock it (a run or cv folder); else None.

    Raises:
        RunFolderError: another process holds it (e.g. a run still training): eval never writes into
            such a folder.
    """
    folder = None if out is None else RunFolder(out)
    if folder is None or not folder.lockable:
        yield None
        return
    try:
        folder.lock()
    except RunFolderError as error:
        raise RunFolderError(
            f"--out {out} is being written by another process (PID {folder.writer_pid()}): eval does not "
            "write into it; wait for that process to end or choose another --out"
        ) from error
    try:
        yield folder.path
    finally:
        folder.release()


@contextmanager
def _writable_home(predictor: Predictor, console: Console, held: Path | None = None) -> Iterator[Path | None]:
    """The predictor's folder, locked for writing its results while the block runs; None when it has
    none, or when another process writes it (a run still training): then nothing is written into it.
    ``held`` is a folder this process already locked (``--out``): a second lock on it would fail."""
    if predictor.home is None or not predictor.home.is_dir():
        yield None
        return
    if held is not None and held.resolve() == predictor.home.resolve():
        yield predictor.home
        return
    folder = RunFolder(predictor.home)
    try:
        folder.lock()
    except RunFolderError:
        console.print(
            f"note: {predictor.home} is being written by another process (PID {folder.writer_pid()}): it is "
            "still training; scored without writing eval.json or postprocess.json into it",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        yield None
        return
    try:
        yield predictor.home
    finally:
        folder.release()


def _predict_images(
    loaded: Predictor,
    images_dir: Path,
    tta: Tta,
    window: SlidingWindow | None,
    device: str,
    *,
    description: str,
    console: Console | None,
    batch_size: int = 16,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray, float | None]]:
    """Predict a folder with the evaluation preset the model was trained with (each image's path, the
    image, its probabilities and its empty-image head probability or None); its progress counts images."""
    config = loaded.config
    total = len(list_stems(images_dir))
    interval = config.output.progress_seconds
    with LoopProgress(console or Console(), description, total, unit="image", interval=interval) as bar:
        for prediction in predict_folder(
            loaded.model,
            images_dir,
            config.data.transform(),
            in_channels=loaded.spec.in_channels,
            device=resolve_device(device),
            tta=tta,
            resized=loaded.spec.resize,
            batch_size=batch_size,
            with_empty=True,
            window=window,
        ):
            yield prediction
            bar.advance(1)  # once the caller has used it: writing its files is part of the work


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


def _postprocessed_metrics(predictor: Predictor, tuning: Tuning, after: Mapping[str, float]) -> dict[str, float]:
    """``postprocess_STEP`` for every step of ``tuning.chosen``, ``NAME_postprocessed`` for every metric and,
    for a model with an empty-image head, ``NAME_postprocessed_without_empty_gate``: the gate's worth.
    A model without a head reports no gate (it is always off there)."""
    chosen = tuning.chosen.values()
    if not predictor.has_empty_head:
        chosen.pop(EmptyGate.name)
    steps = {postprocess_key(name): float(value) for name, value in chosen.items()}
    names = metric_names(predictor.spec)
    gate = tuning.without.get(EmptyGate.name) if predictor.has_empty_head else None
    without = {postprocessed_without_key(name, EmptyGate.name): gate[name] for name in names} if gate else {}
    return steps | {postprocessed_key(name): after[name] for name in names} | without


def _tune_here(
    predictor: Predictor, scorer: Scorer, split: str, tta: Tta, window: SlidingWindow | None, home: Path | None
) -> dict[str, float]:
    """Metrics after post-processing: the predictor's tuned values when they were tuned on another
    split (e.g. out of fold), else tuned here, on this split, and kept in its folder when it may be written."""
    tuning = predictor.tuning()
    if tuning is not None and tuning.split != split:
        return _postprocessed_metrics(predictor, tuning, evaluate_postprocessing(scorer.image_counts(), tuning.chosen))
    metric = tuning_metric(predictor.config.train.monitor, predictor.spec)
    tuning = tune_postprocessing(
        scorer.image_counts(), metric, split=split, tta=tta, window=window_label(window), models=predictor.model_names
    )
    if home is not None:
        predictor.save_tuning(tuning)
    predictor.tuned = tuning
    return _postprocessed_metrics(predictor, tuning, tuning.after)


def _score_split(
    predictor: Predictor,
    split: str,
    tta: Tta,
    window: SlidingWindow | None,
    device: str,
    data_root: str | Path | None,
    console: Console,
    home: Path | None,
    recorder: ImageRecorder | None = None,
) -> dict[str, float]:
    """Score a labelled split (binary models: with the post-processing tuned on it or elsewhere)."""
    config, target = predictor.config, resolve_device(device)
    dataset = config.data.build(_dataset_split(predictor, split), train=False, root=data_root)
    if "mask" not in dataset[0]:
        raise DataError(
            f"split {split!r} of {data_root or config.data.resolved_root()} has no masks to evaluate against"
        )
    _check_unseen(predictor, list(dataset.ids), split)
    loader = DataLoader(dataset, batch_size=images_per_pass(window, config.data.eval_batch_size))
    scorer = Scorer(predictor.spec, target, keep_images=True)
    with LoopProgress(console, f"eval {split}", len(loader), interval=config.output.progress_seconds) as bar:
        metrics = evaluate(
            predictor.model.to(target),
            loader,
            predictor.spec,
            device=target,
            predict=partial(predict_outputs, tta=tta, window=window),
            progress=bar.advance,
            scorer=scorer,
            on_predictions=recorder,
        )
    if recorder is not None:
        recorder.finish(metrics, scorer.image_counts() if predictor.spec.binary else None)
    return metrics | (_tune_here(predictor, scorer, split, tta, window, home) if predictor.spec.binary else {})


def _out_of_fold_metrics(predictor: Predictor) -> dict[str, float]:
    """A cv folder's out-of-fold metrics, as its cross-validation computed them, with its tuning."""
    row = next(row for row in predictor.cv.results()["rows"] if row["fold"] == OUT_OF_FOLD)
    metrics = {name: float(value) for name, value in row.items() if name not in ("fold", "images")}
    if (tuning := predictor.tuning()) is not None:
        metrics |= _postprocessed_metrics(predictor, tuning, tuning.after)
    return metrics


def _load(
    sources: Sources,
    weights: Sequence[float] | None,
    acceleration: AccelerationOverride,
    tta: Tta,
    window: WindowOverride,
) -> tuple[Predictor, SlidingWindow | None]:
    """The model of ``sources`` (with a warning for transforms of ``tta`` its data has no symmetry for)
    and the sliding window to predict with: its config's, changed by ``window``."""
    predictor = load_predictor(sources, weights, acceleration)
    warn_if_invalid(tta, predictor.spec.valid_tta, predictor.spec.name)
    return predictor, window.apply(predictor.config.inference.sliding_window())


def evaluate_run(
    run_or_checkpoint: Sources,
    *,
    weights: Sequence[float] | None = None,
    split: str | None = None,
    tta: Tta = NO_TTA,
    window: WindowOverride = WindowOverride(),
    device: str = "auto",
    acceleration: AccelerationOverride = AccelerationOverride(),
    data_root: str | Path | None = None,
    out: Path | None = None,
    console: Console | None = None,
    recorder: ImageRecorder | None = None,
) -> Evaluation:
    """Score a trained model or an ensemble on a labelled split, streaming, and write ``eval.json``.

    The metrics are those of validation during training (:class:`~lovaszseg.scoring.engine.Scorer`, keys
    from :mod:`lovaszseg.scoring.catalogue`). Binary models also get the metrics after post-processing
    (``NAME_postprocessed``, with ``postprocess_STEP`` for each step): with the values tuned out of fold
    for a cv folder (or an ensemble made from one), else tuned on this split and kept for ``auto``.
    A folder another process is writing (a run still training) is scored but not written into.

    Args:
        run_or_checkpoint: Run folder, model file, cv folder, ensemble folder, or a list of them.
        weights: One weight per source, for an ensemble.
        split: Split to score: ``val`` / ``train`` (the run's own), another split of the dataset (e.g.
            ``all``, a VOC split, a ``.txt`` list of ids), or for a cv folder ``oof`` (the default:
            its out-of-fold predictions) or ``holdout`` (its held-out images). Default ``val``.
        tta: A setting of :mod:`lovaszseg.inference.tta` (``none``, ``hflip``, ``d4:gmean``, ...); not for
            ``oof`` (the cv's own).
        window: Changes to the model's own ``inference`` window (``--window``, ``--stride``, ...).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        acceleration: Changes to each model's own ``train.amp``, ``train.channels_last`` and
            ``train.compile`` (``--amp``, ``--channels-last``, ``--compile``).
        data_root: Dataset root, if not the one in the config.
        out: Folder to write ``eval.json`` to (default: the run, cv or ensemble folder; a list of
            several sources writes none); a run or cv folder is locked while it is written, and refused
            when another process holds it.
        console: Where progress goes (default: a new rich console, which finds a terminal or notebook).
        recorder: Keeps each image's statistics of the scored split (e.g. for paired comparisons);
            not for a cv folder's out-of-fold metrics, which are not scored again.

    Returns:
        :class:`Evaluation`: the metrics, with the split and TTA they were scored with.

    Raises:
        CheckpointError, ConfigError, DataError: no such run, a bad option, a split without masks, or a
            split holding images a member of the ensemble trained on.
        OutputError: ``out`` cannot be written.
        RunFolderError: ``out`` is a folder another process holds (a run still training).
    """
    console = console or Console()
    check_tta(tta)
    if out is not None:
        check_writable(out, "--out", folder=True)
    with _held_out(out) as held:  # before the model is loaded: a folder another process holds is refused at once
        predictor, sliding = _load(run_or_checkpoint, weights, acceleration, tta, window)
        with _writable_home(predictor, console, held) as home:
            if predictor.cv is not None and split in (None, OUT_OF_FOLD):
                split, tta = OUT_OF_FOLD, predictor.cv.settings()[1]["tta"]
                metrics = _out_of_fold_metrics(predictor)
            else:
                split = split or "val"
                metrics = _score_split(predictor, split, tta, sliding, device, data_root, console, home, recorder)
            written = None
            if (target := out or home) is not None:
                record = {"split": split, "tta": tta, "model": predictor.name, **metrics}
                if sliding is not None:
                    record["window"] = sliding.describe()
                written = RunFolder(target).write_json(EVAL_FILE, record)
    return Evaluation(metrics, split, tta, predictor.name, written)


def _postprocessing(
    predictor: Predictor,
    requested: Mapping[str, Any],
    tta: Tta,
    window: SlidingWindow | None,
    device: str,
    console: Console | None,
) -> PostProcessing | None:
    """The post-processing asked for (None for a multi-class model, which takes none).

    ``auto`` values come from the predictor's tuning; a single run without one, or with one tuned on
    its validation split with another TTA or window, is tuned there first, with the TTA and window it
    will be used with.

    Raises:
        ConfigError: a binary-only option given for a multi-class model, a bad value, or ``auto``
            without a tuning.
    """
    given = {name: value for name, value in requested.items() if value is not None}
    if given.get(EmptyGate.name) not in (None, 0, EmptyGate.default):
        predictor.require_empty_head(EmptyGate.option)
    if not predictor.spec.binary:
        if given:
            options = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in given.items())
            raise ConfigError(f"{options}: binary models only; {predictor.name} is multi-class (its masks are argmax)")
        return None
    if AUTO not in given.values():
        return PostProcessing(**given)
    tuning = predictor.tuning()
    single_run = predictor.cv is None and predictor.home is not None and len(predictor.members) == 1
    tuned_for_another = tuning is not None and (tuning.tta, tuning.window) != (tta, window_label(window))
    if single_run and (tuning is None or (tuning.split == "val" and tuned_for_another)):
        console = console or Console()
        with _writable_home(predictor, console) as home:
            _score_split(predictor, "val", tta, window, device, None, console, home)
        tuning = predictor.tuning()
    return resolve(given, tuning, predictor.name)


def predict_run(
    run_or_checkpoint: Sources,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    weights: Sequence[float] | None = None,
    tta: Tta = NO_TTA,
    window: WindowOverride = WindowOverride(),
    threshold: float | Auto | None = None,
    min_area: int | Auto | None = None,
    empty_gate: float | Auto | None = None,
    device: str = "auto",
    acceleration: AccelerationOverride = AccelerationOverride(),
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
        tta: A setting of :mod:`lovaszseg.inference.tta` (``none``, ``hflip``, ``d4:gmean``, ...).
        window: Changes to the model's own ``inference`` window (``--window``, ``--stride``, ...).
        threshold: Binary models: probability threshold in [0, 1] (default 0.5), or ``"auto"`` (tuned).
        min_area: Binary models: masks with fewer foreground pixels are emptied (default 0: none);
            ``"auto"``: tuned for the threshold used.
        empty_gate: Models with an empty-image head: an image whose head probability is below it is
            predicted empty (default 0: none); ``"auto"``: tuned for the threshold used.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        acceleration: Changes to each model's own ``train.amp``, ``train.channels_last`` and
            ``train.compile`` (``--amp``, ``--channels-last``, ``--compile``).
        console: Where progress goes.

    Returns:
        The number of images predicted.

    Raises:
        ConfigError: a threshold or min-area for a multi-class model, a bad value, or ``out_dir`` naming a file.
        OutputError: ``out_dir`` cannot be written.
    """
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise ConfigError(f"output folder {out_dir} is a file")
    check_writable(out_dir, "output folder", folder=True)
    check_tta(tta)
    predictor, sliding = _load(run_or_checkpoint, weights, acceleration, tta, window)
    requested = {"threshold": threshold, "min_area": min_area, "empty_gate": empty_gate}
    post = _postprocessing(predictor, requested, tta, sliding, device, console)
    count = 0
    for path, image, probs, empty in _predict_images(
        predictor, Path(images_dir), tta, sliding, device, description="predict", console=console
    ):
        mask_path = out_dir / "masks" / f"{path.stem}.png"
        if post is not None:
            labels = post.apply(probs[0], empty).astype(np.uint8)
            with atomic_write(mask_path, "wb") as handle:
                Image.fromarray(labels * 255).save(handle, format="PNG")
        else:
            labels = probs.argmax(0).astype(np.uint8)
            save_palette_png(labels, mask_path)
        save_overlay(image, labels, out_dir / "overlays" / f"{path.stem}.png")
        count += 1
    return count


def _expected_ids(images_dir: Path, sample_submission: Path | None) -> list[str] | None:
    """The ids of ``sample_submission.csv`` (default: beside ``test/``), which must be the test images'.

    Raises:
        DataError: the sample lists ids with no image, or images it does not list (examples named).
    """
    if sample_submission is None and (images_dir.parent.parent / "sample_submission.csv").is_file():
        sample_submission = images_dir.parent.parent / "sample_submission.csv"
    if sample_submission is None:
        return None
    expected = list(read_rle_csv(Path(sample_submission)))
    images = set(list_stems(images_dir))
    missing = [i for i in expected if i not in images]
    extra = sorted(images - set(expected))
    problems = [f"{len(missing)} id(s) with no image in {images_dir}, e.g. {', '.join(missing[:3])}"] if missing else []
    problems += [f"{len(extra)} image(s) it does not list, e.g. {', '.join(extra[:3])}"] if extra else []
    if problems:
        raise DataError(f"sample submission {sample_submission} does not match the test images: {'; '.join(problems)}")
    return expected


def submit_run(
    run_or_checkpoint: Sources,
    test_dir: str | Path,
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    tta: Tta = NO_TTA,
    window: WindowOverride = WindowOverride(),
    threshold: float | Auto | None = None,
    min_area: int | Auto | None = None,
    empty_gate: float | Auto | None = None,
    sample_submission: str | Path | None = None,
    device: str = "auto",
    acceleration: AccelerationOverride = AccelerationOverride(),
    console: Console | None = None,
) -> tuple[Path, PostProcessing]:
    """Write a Kaggle TGS Salt submission (``id,rle_mask``) for every image of a test folder.

    Images stream through the model (or every member of an ensemble) in batches and masks are
    encoded as they are predicted, so memory does not grow with the number of images; every image
    must be 101x101 (the competition's size) and the file is validated before it is written or
    replaces anything. The test images and the sample submission's ids are compared before anything
    is predicted.

    Args:
        run_or_checkpoint: Run folder, model file, cv folder, ensemble folder, or a list of them, of a
            binary (salt) model.
        test_dir: The test images, or a folder holding ``images/`` (Kaggle's ``test/``).
        out: CSV to write.
        weights: One weight per source, for an ensemble.
        tta: A setting of :mod:`lovaszseg.inference.tta` (``none``, ``hflip``, ``d4:gmean``, ...).
        window: Changes to the model's own ``inference`` window (``--window``, ``--stride``, ...).
        threshold: Probability threshold in [0, 1] (default 0.5), or ``"auto"``: the tuned one (out of
            fold for a cv folder; on the validation split for a run, tuned first if it has not been).
        min_area: Predicted masks with fewer pixels are submitted empty (default 0); ``"auto"``: the
            one tuned for the threshold used.
        empty_gate: Images whose empty-image head probability is below it are submitted empty
            (default 0); ``"auto"``: the one tuned for the threshold used.
        sample_submission: Kaggle's ``sample_submission.csv``: the file must then hold exactly its ids,
            in its order. By default the one beside ``test_dir`` (``test/../sample_submission.csv``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        acceleration: Changes to each model's own ``train.amp``, ``train.channels_last`` and
            ``train.compile`` (``--amp``, ``--channels-last``, ``--compile``).
        console: Where progress goes (default: a new rich console).

    Returns:
        ``(path of the CSV, post-processing used)``.

    Raises:
        ConfigError: a multi-class model, a bad threshold or min-area, ``auto`` untuned, ``out`` a folder.
        DataError: an image that is not 101x101 (named), ids that do not match the sample submission.
        OutputError: ``out`` cannot be written.
    """
    out, test_dir = Path(out), Path(test_dir)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the CSV file to write")
    check_writable(out, "--out")
    check_tta(tta)
    images_dir = test_dir / "images" if (test_dir / "images").is_dir() else test_dir
    expected = _expected_ids(images_dir, Path(sample_submission) if sample_submission else None)
    predictor, sliding = _load(run_or_checkpoint, weights, acceleration, tta, window)
    if not predictor.spec.binary:
        raise ConfigError("submit writes binary RLE masks; this model is multi-class")
    requested = {"threshold": threshold, "min_area": min_area, "empty_gate": empty_gate}
    post = _postprocessing(predictor, requested, tta, sliding, device, console)
    assert post is not None  # a binary model's

    def masks() -> Iterator[tuple[str, np.ndarray]]:
        predictions = _predict_images(
            predictor, images_dir, tta, sliding, device, description="submit", console=console
        )
        for path, image, probs, empty in predictions:
            if image.shape[:2] != TGS_ORIGINAL_SIZE:
                raise DataError(
                    f"image {path} is {image.shape[0]}x{image.shape[1]}; TGS submissions need "
                    f"{TGS_ORIGINAL_SIZE[0]}x{TGS_ORIGINAL_SIZE[1]} images"
                )
            yield path.stem, post.apply(probs[0], empty)

    return write_submission(masks(), out, shape=TGS_ORIGINAL_SIZE, expected_ids=expected), post
