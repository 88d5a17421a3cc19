"""Pseudo-labels: a trained model labels unlabelled images, and the confident ones become training data.

The 1st place of the TGS challenge trained further rounds on test images labelled by its own
ensemble. :func:`pseudo_label` predicts a folder of images with a model, cv or ensemble folder (its
TTA and post-processing: the tuned ones by default), scores each image's confidence and writes a
pseudo-label folder (:mod:`lovaszseg.data.pseudo`) of the images that pass the rule:

- **uncertain share**: the share of the image's pixels whose probability is in the ``band`` (binary:
  the foreground probability; multi-class: the largest class probability below the band's top) must
  be at most ``max_uncertain``;
- **agreement** (several members): the mean over members of the IoU of a member's mask with the
  ensemble's (binary; both empty counts 1), or of the share of pixels where its argmax is the
  ensemble's (multi-class), must be at least ``min_agreement``.

A config then lists the folder in ``data.pseudo``; its images join every training split and nothing else.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from torch import nn

from lovaszseg.data.io import atomic_write, check_writable, list_stems
from lovaszseg.data.pseudo import BINARY_FOREGROUND, PSEUDO_IMAGES, PSEUDO_MASKS, PSEUDO_RECORD, PSEUDO_TABLE
from lovaszseg.data.voc import save_palette_png
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.inference.ensemble import Predictor, Sources, load_predictor
from lovaszseg.inference.predict import predict_folder
from lovaszseg.inference.tta import NO_TTA, Tta, check_tta, warn_if_invalid
from lovaszseg.inference.window import WindowOverride, window_label
from lovaszseg.runtime.acceleration import AccelerationOverride
from lovaszseg.runtime.distributed import resolve_device
from lovaszseg.runtime.progress import LoopProgress
from lovaszseg.scoring.postprocess import AUTO, PostProcessing, resolve
from lovaszseg.thresholds import DEFAULT_THRESHOLD
from lovaszseg.windowing import SlidingWindow

__all__ = ["ConfidenceRule", "PseudoLabelResult", "pseudo_label"]


@dataclass(frozen=True)
class ConfidenceRule:
    """Which predicted images are kept as pseudo-labels (see the module's docstring).

    Attributes:
        band: Probabilities in ``[low, high]`` are uncertain.
        max_uncertain: The largest share of uncertain pixels an image may have, in [0, 1].
        min_agreement: The members' least mean agreement with the ensemble, in [0, 1] (one model: not used).

    Raises:
        ConfigError: a band outside [0, 1] or reversed, or a share outside [0, 1].
    """

    band: tuple[float, float] = (0.2, 0.8)
    max_uncertain: float = 0.05
    min_agreement: float = 0.8

    def __post_init__(self) -> None:
        low, high = self.band
        if not 0 <= low < high <= 1:
            raise ConfigError(f"--band must be two probabilities low < high in [0, 1], got {low},{high}")
        for option, value in (("--max-uncertain", self.max_uncertain), ("--min-agreement", self.min_agreement)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{option} must be a share in [0, 1], got {value}")

    def uncertain_share(self, probabilities: np.ndarray) -> float:
        """The share of pixels in the band (``[C, H, W]``; one channel: the foreground probability)."""
        low, high = self.band
        if probabilities.shape[0] == 1:
            return float(((probabilities[0] >= low) & (probabilities[0] <= high)).mean())
        return float((probabilities.max(0) < high).mean())


@dataclass(frozen=True)
class PseudoLabelResult:
    """What :func:`pseudo_label` wrote: the folder, how many images it saw and kept."""

    out: Path
    images: int
    kept: int


def _agreement(members: Sequence[np.ndarray], labels: np.ndarray, binary: bool) -> float:
    """The members' mean agreement with the ensemble's labels (see the module's docstring)."""
    scores = []
    for member in members:
        if binary:
            union = np.logical_or(member, labels).sum()
            scores.append(1.0 if union == 0 else float(np.logical_and(member, labels).sum() / union))
        else:
            scores.append(float((member == labels).mean()))
    return float(np.mean(scores))


@dataclass(frozen=True)
class _Inference:
    """How every image is predicted: the TTA, the sliding window (None: whole images) and the device."""

    tta: Tta
    window: SlidingWindow | None
    device: torch.device


def _predictions(predictor: Predictor, model: nn.Module, images_dir: Path, how: _Inference) -> Iterator:
    """``(path, image, probabilities, head probability)`` of every image, by ``model`` (the predictor's or a member)."""
    return predict_folder(
        model,
        images_dir,
        predictor.config.data.transform(),
        in_channels=predictor.spec.in_channels,
        device=how.device,
        tta=how.tta,
        resized=predictor.spec.resize,
        with_empty=True,
        window=how.window,
    )


def _member_labels(predictor: Predictor, images_dir: Path, how: _Inference, threshold: float) -> Iterator:
    """Per image, every member's labels (binary: probability above ``threshold``; else argmax)."""
    models = list(getattr(predictor.model, "members", [predictor.model]))
    streams = [_predictions(predictor, model, images_dir, how) for model in models]
    for predictions in zip(*streams, strict=True):
        yield [probs[0] > threshold if predictor.spec.binary else probs.argmax(0) for _, _, probs, _ in predictions]


def pseudo_label(
    sources: Sources,
    images_dir: str | Path,
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    tta: Tta | None = None,
    threshold: float | str = AUTO,
    min_area: int | str = AUTO,
    empty_gate: float | str | None = None,
    rule: ConfidenceRule = ConfidenceRule(),
    overwrite: bool = False,
    device: str = "auto",
    acceleration: AccelerationOverride = AccelerationOverride(),
    window: WindowOverride = WindowOverride(),
    console: Console | None = None,
) -> PseudoLabelResult:
    """Predict a folder of unlabelled images and write the confident ones as a pseudo-label folder.

    Nothing is written at ``out`` until every image is predicted: the folder is assembled beside it and
    moved into place at the end (replacing ``out`` only with ``overwrite``).

    Args:
        sources: Run folder, model file, cv folder, ensemble folder, or a list of them.
        images_dir: The unlabelled images (e.g. the TGS test images).
        out: The pseudo-label folder to write.
        weights: One weight per source, for an ensemble.
        tta: Test-time augmentation; None: the one the model's post-processing was tuned with (else none).
        threshold: Binary models: a probability, or ``auto`` (tuned; the default threshold where none is).
        min_area: Binary models: a pixel count, or ``auto`` (tuned, where there is a tuning).
        empty_gate: Models with an empty-image head: a probability, ``auto``, or None (off).
        rule: Which images are kept.
        overwrite: Replace what ``out`` holds.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        acceleration: Changes to each model's own acceleration.
        window: Changes to the model's own ``inference`` window (``--window``, ``--stride``, ...).
        console: Where progress goes.

    Returns:
        :class:`PseudoLabelResult`.

    Raises:
        ConfigError: a bad option, ``out`` taken (without ``overwrite``) or a file.
        DataError: no images in ``images_dir``, or no image passing the rule.
    """
    out, images_dir = _checked_out(Path(out), overwrite), Path(images_dir)
    predictor = load_predictor(sources, weights, acceleration)
    tuning = predictor.tuning()
    tta = check_tta(tta if tta is not None else (tuning.tta if tuning is not None else NO_TTA))
    warn_if_invalid(tta, predictor.spec.valid_tta, predictor.spec.name)
    how = _Inference(tta, window.apply(predictor.config.inference.sliding_window()), resolve_device(device))
    post = _postprocessing(predictor, threshold, min_area, empty_gate)
    paths = list_stems(images_dir)
    if not paths:
        raise DataError(f"no images (png, jpg, ...) in {images_dir}")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        kept, rows = _write(predictor, images_dir, staging, how, post, rule, console or Console(), len(paths))
        if not kept:
            raise DataError(
                f"none of the {len(rows)} images of {images_dir} passes the rule ({_describe(rule)}); "
                "loosen --max-uncertain or --min-agreement"
            )
        spec = predictor.spec
        record = {"task": spec.task, "num_classes": spec.num_classes, "dataset": spec.name, "model": predictor.name}
        record |= {"images_dir": str(images_dir), "tta": tta, "window": window_label(how.window), "rule": asdict(rule)}
        record |= {"post_processing": None if post is None else post.values(), "images": len(rows), "kept": kept}
        with atomic_write(staging / PSEUDO_RECORD) as handle:
            json.dump(record, handle, indent=2)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PseudoLabelResult(out, len(rows), kept)


def _checked_out(out: Path, overwrite: bool) -> Path:
    """``out``, once it is known to be a folder it may write (new, empty, or replaced with ``overwrite``)."""
    if out.is_file():
        raise ConfigError(f"--out {out} is a file; name the folder to write")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} is not empty; name a new folder, or replace it with --overwrite")
    check_writable(out, "--out", folder=True)
    return out


def _describe(rule: ConfidenceRule) -> str:
    low, high = rule.band
    return f"at most {rule.max_uncertain:g} of pixels in [{low:g}, {high:g}], agreement at least {rule.min_agreement:g}"


def _postprocessing(
    predictor: Predictor, threshold: float | str, min_area: int | str, empty_gate: float | str | None
) -> PostProcessing | None:
    """The binary post-processing asked for; ``auto`` falls back to the defaults where nothing is tuned."""
    if not predictor.spec.binary:
        return None
    requested = {"threshold": threshold, "min_area": min_area}
    if empty_gate is not None:
        predictor.require_empty_head("--empty-gate")
        requested["empty_gate"] = empty_gate
    if predictor.tuning() is None:  # nothing tuned: auto is the defaults, as a user of one model expects
        requested = {name: value for name, value in requested.items() if value != AUTO}
    return resolve(requested, predictor.tuning(), predictor.name)


def _write(
    predictor: Predictor,
    images_dir: Path,
    staging: Path,
    how: _Inference,
    post: PostProcessing | None,
    rule: ConfidenceRule,
    console: Console,
    total: int,
) -> tuple[int, list[dict[str, object]]]:
    """Predict, score and write every image into ``staging``: the kept ones' files and the whole table."""
    threshold = post.threshold if post is not None else DEFAULT_THRESHOLD  # multi-class: not used
    several = len(predictor.members) > 1
    members = _member_labels(predictor, images_dir, how, threshold) if several else None
    predictions = _predictions(predictor, predictor.model, images_dir, how)
    rows: list[dict[str, object]] = []
    kept = 0
    interval = predictor.config.output.progress_seconds
    with LoopProgress(console, "pseudo-label", total, unit="image", interval=interval) as bar:
        for path, _, probs, empty in predictions:
            labels = post.apply(probs[0], empty) if post is not None else probs.argmax(0)
            uncertain = rule.uncertain_share(probs)
            agreement = _agreement(next(members), labels, predictor.spec.binary) if members is not None else None
            passes = uncertain <= rule.max_uncertain and (agreement is None or agreement >= rule.min_agreement)
            if passes:
                kept += 1
                _save(path, labels, staging, predictor.spec.binary)
            rows.append(
                {
                    "id": path.stem,
                    "uncertain_share": f"{uncertain:.6f}",
                    "agreement": "" if agreement is None else f"{agreement:.6f}",
                    "foreground_share": f"{float((labels > 0).mean()):.6f}",
                    "kept": int(passes),
                }
            )
            bar.advance(1)
    with atomic_write(staging / PSEUDO_TABLE, newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return kept, rows


def _save(image_path: Path, labels: np.ndarray, staging: Path, binary: bool) -> None:
    """The image as it was, and its mask (binary 0/255; else a palette PNG of class ids)."""
    (staging / PSEUDO_IMAGES).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image_path, staging / PSEUDO_IMAGES / image_path.name)
    mask_path = staging / PSEUDO_MASKS / f"{image_path.stem}.png"
    if binary:
        with atomic_write(mask_path, "wb") as handle:
            Image.fromarray(labels.astype(np.uint8) * BINARY_FOREGROUND).save(handle, format="PNG")
    else:
        save_palette_png(labels.astype(np.uint8), mask_path)
