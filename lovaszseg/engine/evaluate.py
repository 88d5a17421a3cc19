"""Validation metrics over a dataset, reduced across processes before any IoU is computed."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader

from lovaszseg.data.transforms import crop_to_original
from lovaszseg.metrics import ConfusionMatrix, MeanMeter, binary_iou, image_iou, salt_score

__all__ = ["BINARY_METRICS", "MULTICLASS_METRICS", "evaluate"]

BINARY_METRICS = ("salt_score", "iou", "image_iou")
MULTICLASS_METRICS = ("miou", "image_miou", "pixel_acc")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    task: str,
    num_classes: int,
    ignore_index: int | None,
    device: torch.device,
    original_size: tuple[int, int] | None = None,
    resized: tuple[int, int] | None = None,
    loss_fn: nn.Module | None = None,
    autocast: AbstractContextManager | None = None,
) -> dict[str, float]:
    """Score a model on a labelled loader (this process's shard; metrics are summed over all ranks).

    Binary tasks: ``salt_score`` (the TGS competition metric at threshold 0.5, when nothing is
    ignored), ``iou`` (dataset foreground IoU), ``image_iou`` (mean per-image IoU). Multi-class:
    ``miou`` (VOC: per-class IoU from the dataset confusion matrix, averaged), ``image_miou`` (the
    paper's per-image mIoU) and ``pixel_acc``. Predictions and masks are cropped back to
    ``original_size`` first (TGS: 128 -> 101). ``loss`` is the mean batch loss when ``loss_fn`` is given.

    Returns:
        Metric name -> value.
    """
    model.eval()
    binary = task == "binary"
    matrix = ConfusionMatrix(2 if binary else num_classes, ignore_index, device=device)
    image_scores, salt_scores, losses = MeanMeter(device), MeanMeter(device), MeanMeter(device)
    for batch in loader:
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        with autocast or nullcontext():
            logits = model(images)
        logits = logits.float()
        if loss_fn is not None:
            losses.update(loss_fn(logits, masks).reshape(1))
        if original_size is not None:
            logits = crop_to_original(logits, original_size, resized=resized)
            masks = crop_to_original(masks, original_size, resized=resized)
        if binary:
            pred = (logits[:, 0] > 0).long()  # sigmoid(logit) > 0.5
            image_scores.update(binary_iou(pred, masks, ignore_index=ignore_index))
            if ignore_index is None:
                salt_scores.update(torch.from_numpy(salt_score(pred.cpu().numpy(), masks.cpu().numpy())))
        else:
            pred = logits.argmax(1)
            image_scores.update(image_iou(pred, masks, num_classes, ignore_index))
        matrix.update(pred, masks)
    for meter in (matrix, image_scores, salt_scores, losses):
        meter.reduce_from_all_processes()
    metrics: dict[str, float] = {}
    if binary:
        if salt_scores.count:
            metrics["salt_score"] = salt_scores.compute()
        metrics["iou"] = float(matrix.iou()[1])
        metrics["image_iou"] = image_scores.compute()
    else:
        metrics["miou"] = matrix.mean_iou()
        metrics["image_miou"] = image_scores.compute()
        metrics["pixel_acc"] = matrix.pixel_accuracy()
    if losses.count:
        metrics["val_loss"] = losses.compute()
    return metrics
