"""The metric catalogue: every metric's name and the names of the values derived from it, defined once.

The metrics engine, post-processing, evaluation, comparisons and evidence all read their keys here:

- binary tasks: ``salt_score`` (the TGS metric; only without an ignore index), ``iou`` (dataset IoU)
  and ``image_iou`` (mean per-image IoU) at the default threshold; for each, the grid threshold that
  maximises it (:func:`best_threshold_key`) and its value there (:func:`at_best_threshold_key`); after
  post-processing, its value (:func:`postprocessed_key`), its value with a tuned rule off
  (:func:`postprocessed_without_key`) and each step's chosen value (:func:`postprocess_key`);
- multi-class tasks: ``miou`` (VOC), ``image_miou`` (the paper's per-image mIoU) and ``pixel_acc``;
- models with an empty-image head: ``empty_head_accuracy`` (the head at probability 0.5 against
  "the image has foreground").
"""

from __future__ import annotations

from lovaszseg.data.spec import DatasetSpec

__all__ = [
    "BINARY_METRICS",
    "EMPTY_HEAD_ACCURACY",
    "MULTICLASS_METRICS",
    "PER_IMAGE_METRICS",
    "at_best_threshold_key",
    "best_threshold_key",
    "metric_names",
    "postprocess_key",
    "postprocessed_key",
    "postprocessed_without_key",
    "threshold_of",
    "tuning_metric",
]

# Binary metrics; each can be maximised by a threshold search and by post-processing.
BINARY_METRICS = ("salt_score", "iou", "image_iou")
MULTICLASS_METRICS = ("miou", "image_miou", "pixel_acc")
# The binary metrics that are means of per-image scores (``iou`` is a ratio of sums over images).
PER_IMAGE_METRICS = ("salt_score", "image_iou")
# The share of images whose foreground the empty-image head (model.empty_head) calls right.
EMPTY_HEAD_ACCURACY = "empty_head_accuracy"
# The TGS metric, whose best-threshold key predates the others' pattern and is kept for run folders' eval.json.
_SALT = "salt_score"


def metric_names(spec: DatasetSpec) -> tuple[str, ...]:
    """The headline metrics of a dataset, the first being the default ``train.monitor``.

    The TGS competition metric needs every pixel labelled, so binary data with an ignore index go without it.
    """
    if not spec.binary:
        return MULTICLASS_METRICS
    return BINARY_METRICS if spec.ignore_index is None else BINARY_METRICS[1:]


def tuning_metric(monitor: str | None, spec: DatasetSpec) -> str:
    """The metric binary post-processing is tuned for: the run's ``train.monitor`` when it is a binary
    metric of the dataset, else the dataset's headline metric."""
    names = metric_names(spec)
    return monitor if monitor in BINARY_METRICS and monitor in names else names[0]


def best_threshold_key(metric: str) -> str:
    """The key of the grid threshold that maximises ``metric`` (``best_threshold`` for the TGS metric)."""
    return "best_threshold" if metric == _SALT else f"{metric}_best_threshold"


def at_best_threshold_key(metric: str) -> str:
    """The key of ``metric``'s value at its best threshold."""
    return f"{metric}_at_best_threshold"


def threshold_of(key: str) -> tuple[str, str | None]:
    """The metric a result key scores and the key of the threshold it is scored at (None: the default).

    ``iou`` -> ``("iou", None)``; ``iou_at_best_threshold`` -> ``("iou", "iou_best_threshold")``.
    """
    metric = key.removesuffix("_at_best_threshold")
    return metric, (best_threshold_key(metric) if metric != key else None)


def postprocessed_key(metric: str) -> str:
    """The key of ``metric``'s value after post-processing."""
    return f"{metric}_postprocessed"


def postprocessed_without_key(metric: str, step: str) -> str:
    """The key of ``metric`` after a post-processing tuned without ``step``
    (``salt_score_postprocessed_without_empty_gate``)."""
    return f"{postprocessed_key(metric)}_without_{step}"


def postprocess_key(step: str) -> str:
    """The key of a post-processing step's chosen value (``postprocess_threshold``, ``postprocess_min_area``)."""
    return f"postprocess_{step}"
