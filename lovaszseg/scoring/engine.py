"""The one metrics engine: validation during training and ``lovaszseg eval`` both score through it.

:class:`Scorer` streams batches of probabilities and keeps only sums (a confusion matrix; for binary
tasks per-threshold counts over :data:`~lovaszseg.scoring.metrics.THRESHOLD_GRID`), so a split of any size is
scored in constant memory, the threshold search comes for free, and reducing the sums across
processes before any ratio is taken makes a DDP evaluation equal a single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.heads import HEAD_DECISION, Outputs, has_foreground, outputs_float, split_outputs
from lovaszseg.models import output_probabilities
from lovaszseg.scoring.catalogue import EMPTY_HEAD_ACCURACY, at_best_threshold_key, best_threshold_key, metric_names
from lovaszseg.scoring.metrics import (
    DEFAULT_THRESHOLD,
    SALT_IOU_THRESHOLDS,
    THRESHOLD_GRID,
    ConfusionMatrix,
    MeanMeter,
    image_iou,
    round_down,
)
from lovaszseg.scoring.postprocess import ImageCounts

__all__ = ["Scorer", "evaluate"]


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 1 where the denominator is 0 (both masks empty: a perfect score)."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.ones_like(denominator))


class Scorer:
    """Streaming metrics of a labelled split.

    Binary tasks, at :data:`~lovaszseg.scoring.metrics.DEFAULT_THRESHOLD`: ``salt_score`` (TGS metric),
    ``iou`` (dataset foreground IoU), ``image_iou`` (mean per-image IoU); and for each of them the grid
    threshold that maximises it and its value there (keys from :mod:`lovaszseg.scoring.catalogue`).
    Multi-class: ``miou`` (VOC), ``image_miou`` (the paper's per-image mIoU) and ``pixel_acc``.

    Args:
        spec: The dataset's description (task, classes, ignore index).
        device: Where the sums live (the model's device).
        keep_images: Binary tasks: also keep each image's counts at every threshold
            (:meth:`image_counts`, what post-processing is tuned on; a few hundred bytes an image).
        empty_gate: Binary tasks: score an image whose empty-image head probability is below this as
            predicted empty (0: the masks as they are); images scored without a head are never gated.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        device: torch.device | str = "cpu",
        *,
        keep_images: bool = False,
        empty_gate: float = 0.0,
    ) -> None:
        self.spec = spec
        self.empty_gate = empty_gate
        self.keep_images = keep_images and spec.binary
        self._images: list[ImageCounts] = []
        self.device = torch.device(device)
        self.salt = spec.binary and spec.ignore_index is None
        grid = len(THRESHOLD_GRID)
        # Rounded down to float32 so that ``p > t`` decides exactly as for the float64 thresholds.
        grid_array = np.asarray(THRESHOLD_GRID, dtype=np.float64)
        self._boundaries = torch.from_numpy(round_down(grid_array, np.dtype(np.float32))).to(self.device)
        self._default = THRESHOLD_GRID.index(DEFAULT_THRESHOLD)
        self.sums = {
            "images": torch.zeros((), dtype=torch.int64, device=self.device),
            "intersection": torch.zeros(grid, dtype=torch.int64, device=self.device),
            "predicted": torch.zeros(grid, dtype=torch.int64, device=self.device),
            "truth": torch.zeros((), dtype=torch.int64, device=self.device),
            "image_iou": torch.zeros(grid, dtype=torch.float64, device=self.device),
            "salt_passes": torch.zeros(grid, dtype=torch.int64, device=self.device),
            # The empty-image head: images it was given for, and those it called right.
            "head_images": torch.zeros((), dtype=torch.int64, device=self.device),
            "head_correct": torch.zeros((), dtype=torch.int64, device=self.device),
        }
        self.matrix = ConfusionMatrix(spec.label_classes, spec.ignore_index, device=self.device)
        self.image_mious = MeanMeter(self.device)

    @torch.no_grad()
    def update(self, probs: Tensor, masks: Tensor, empty: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            probs: Class probabilities at the original size (sigmoid for binary tasks), ``[B, C, H, W]``.
            masks: Labels ``[B, H, W]`` (0/1 for binary tasks; ``spec.ignore_index`` where void).
            empty: The empty-image head's probabilities ``[B]`` that each image has foreground, if any.
        """
        probs, masks = probs.to(self.device), masks.to(self.device)
        if empty is not None:
            empty = empty.to(self.device).float()
            truth = has_foreground(masks, self.spec.ignore_index)
            self.sums["head_images"] += len(empty)
            self.sums["head_correct"] += ((empty > HEAD_DECISION) == truth).sum()
        if self.spec.binary:
            gated = self.empty_gate and empty is not None
            binary = probs[:, 0].float() * (empty >= self.empty_gate).view(-1, 1, 1) if gated else probs[:, 0].float()
            self._update_binary(binary, masks, empty)
        else:
            pred = probs.argmax(1)
            self.matrix.update(pred, masks)
            self.image_mious.update(image_iou(pred, masks, self.spec.num_classes, self.spec.ignore_index))

    def _update_binary(self, probs: Tensor, masks: Tensor, empty: Tensor | None) -> None:
        # Every threshold at once: a pixel's bin is the number of thresholds below its probability, so it
        # is foreground at threshold k iff its bin is > k; per-image (bin, truth) histograms give the counts.
        batch, bins = probs.shape[0], len(THRESHOLD_GRID) + 1
        index = torch.bucketize(probs.contiguous(), self._boundaries) * 2 + (masks == 1)
        index += (torch.arange(batch, device=self.device) * 2 * bins).view(-1, 1, 1)
        if self.spec.ignore_index is not None:
            index = index[masks != self.spec.ignore_index]
        counts = torch.bincount(index.reshape(-1), minlength=batch * 2 * bins).view(batch, bins, 2)
        predicted = counts.flip(1).cumsum(1).flip(1)[:, 1:]  # [B, T, truth]: pixels above threshold k
        intersection, area = predicted[..., 1], predicted.sum(-1)
        truth = counts[..., 1].sum(1)
        ious = _ratio(intersection, area + truth[:, None] - intersection)
        if self.keep_images:
            head = None if empty is None else empty.cpu().numpy().astype(np.float32)
            self._images.append(ImageCounts(*(t.int().cpu().numpy() for t in (intersection, area, truth)), head))
        self.sums["images"] += batch
        self.sums["intersection"] += intersection.sum(0)
        self.sums["predicted"] += area.sum(0)
        self.sums["truth"] += truth.sum()
        self.sums["image_iou"] += ious.sum(0)
        if self.salt:
            passes = ious[..., None] > torch.as_tensor(SALT_IOU_THRESHOLDS, device=self.device)
            self.sums["salt_passes"] += passes.sum(-1).sum(0)

    def image_counts(self) -> ImageCounts:
        """The counts of every image scored so far (only with ``keep_images``, in this process)."""
        if not self.keep_images:
            raise AssertionError("image_counts needs a binary Scorer made with keep_images=True")
        return ImageCounts.concatenate(self._images)

    def reduce_from_all_processes(self) -> None:
        """Sum the state over all DDP processes (a no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for total in self.sums.values():
                torch.distributed.all_reduce(total)
        self.matrix.reduce_from_all_processes()
        self.image_mious.reduce_from_all_processes()

    def compute(self) -> dict[str, float]:
        """Metric name -> value (see the class docstring), with the empty-image head's accuracy when it scored one."""
        head = int(self.sums["head_images"])
        accuracy = {EMPTY_HEAD_ACCURACY: int(self.sums["head_correct"]) / head} if head else {}
        return self._compute() | accuracy

    def _compute(self) -> dict[str, float]:
        if not self.spec.binary:
            return {
                "miou": self.matrix.mean_iou(),
                "image_miou": self.image_mious.compute(),
                "pixel_acc": self.matrix.pixel_accuracy(),
            }
        images = int(self.sums["images"])
        if not images:
            return dict.fromkeys(metric_names(self.spec), float("nan"))
        intersection = self.sums["intersection"]
        curves = {
            "iou": _ratio(intersection, self.sums["predicted"] + self.sums["truth"] - intersection),
            "image_iou": self.sums["image_iou"] / images,
        }
        if self.salt:
            curves = {"salt_score": self.sums["salt_passes"].double() / (len(SALT_IOU_THRESHOLDS) * images), **curves}
        metrics = {name: float(curve[self._default]) for name, curve in curves.items()}
        for name, curve in curves.items():
            best = int(torch.argmax(curve))  # the first maximum: the lowest threshold on ties
            metrics[best_threshold_key(name)] = THRESHOLD_GRID[best]
            metrics[at_best_threshold_key(name)] = float(curve[best])
        return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    spec: DatasetSpec,
    *,
    device: torch.device,
    predict: Callable[[nn.Module, Tensor], Tensor | Outputs] | None = None,
    loss_fn: nn.Module | None = None,
    progress: Callable[[int], None] | None = None,
    scorer: Scorer | None = None,
    on_predictions: Callable[[Sequence[str], Tensor, Tensor, Tensor | None], None] | None = None,
    across_processes: bool = True,
) -> dict[str, float]:
    """Score a model on a labelled loader (this process's shard; sums are reduced over all ranks).

    Predictions and masks are cropped back to ``spec.original_size`` first (TGS: 128 -> 101).

    Args:
        model: Segmentation model returning logits (or :class:`~lovaszseg.heads.Outputs` with an
            empty-image head, whose accuracy is then reported too).
        loader: Batches with ``image`` and ``mask``.
        spec: The dataset's description.
        device: The model's device.
        predict: How a batch's probabilities are made, e.g. with test-time augmentation or from an
            ensemble (``lovaszseg.inference.predict_outputs``: with the empty-image head's probability);
            default the model's own sigmoid or softmax. Not with ``loss_fn``, whose probabilities are
            those of the logits it scores.
        loss_fn: When given, ``val_loss`` is the mean batch loss of the logits.
        progress: Called with each batch's number of images once it is predicted (e.g. ``LoopProgress.advance``).
        scorer: The scorer to fill (e.g. one keeping per-image counts); default a new one.
        on_predictions: Called with the ids, probabilities, masks and empty-image head probabilities (or
            None) of the images as scored (cropped to their original size: a batch at a time, or one
            image at a time where sizes differ).
        across_processes: Sum the metrics over DDP processes (each scoring its shard); False when this
            process scores a whole split alone while the others wait.

    Returns:
        Metric name -> value (see :class:`Scorer`), with ``val_loss`` when ``loss_fn`` is given.
    """
    model.eval()
    scorer, losses = scorer or Scorer(spec, device), MeanMeter(device)
    for batch in loader:
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        output = outputs_float(model(images)) if loss_fn is not None or predict is None else None
        predicted = output_probabilities(output) if output is not None else split_outputs(predict(model, images))
        if progress is not None:
            progress(len(images))
        if loss_fn is not None:
            losses.update(loss_fn(output, masks).reshape(1))
        for ids, prob, mask, empty in _original_size(batch, predicted, masks, spec):
            scorer.update(prob, mask, empty)
            if on_predictions is not None:
                on_predictions(ids, prob, mask, empty)
    if across_processes:
        scorer.reduce_from_all_processes()
        losses.reduce_from_all_processes()
    metrics = scorer.compute()
    if losses.count:
        metrics["val_loss"] = losses.compute()
    return metrics


def _original_size(
    batch: dict[str, Any], predicted: Outputs, masks: Tensor, spec: DatasetSpec
) -> Iterator[tuple[list[str], Tensor, Tensor, Tensor | None]]:
    """A batch's ids, probabilities, masks and head probabilities cropped back to ``spec.original_size``
    (TGS: 128 -> 101) or, for images of their own sizes padded to the model's stride, one image at a
    time to its own pixels."""
    probs, empty = predicted.masks, predicted.empty
    ids = list(batch["id"]) if "id" in batch else [""] * len(probs)  # ids only name predictions
    if spec.original_size is not None:
        window = spec.original_size
        yield (
            ids,
            crop_to_original(probs, window, resized=spec.resize),
            crop_to_original(masks, window, resized=spec.resize),
            empty,
        )
    elif "size" in batch:
        for index, (sample_id, size) in enumerate(zip(ids, batch["size"].tolist(), strict=True)):
            window = spec.resize or tuple(size)
            head = None if empty is None else empty[index : index + 1]
            yield (
                [sample_id],
                crop_to_original(probs[index : index + 1], window),
                crop_to_original(masks[index : index + 1], window),
                head,
            )
    else:
        yield ids, probs, masks, empty
