"""Losses for segmentation: Lovász hinge/softmax/sigmoid, soft Jaccard and cross-entropy.

Functions take ``(logits, labels, ...)`` and return a scalar; modules wrap them for training loops;
:func:`build_loss` builds a module (or a weighted sum) from a config entry.
"""

from lovaszseg.losses.constants import BINARY_MODE, MODES, MULTICLASS_MODE, MULTILABEL_MODE
from lovaszseg.losses.cross_entropy import binary_cross_entropy, cross_entropy
from lovaszseg.losses.jaccard import soft_jaccard
from lovaszseg.losses.lovasz import lovasz_hinge, lovasz_sigmoid, lovasz_softmax
from lovaszseg.losses.modules import (
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    LovaszHingeLoss,
    LovaszSigmoidLoss,
    LovaszSoftmaxLoss,
    SoftJaccardLoss,
    WeightedSumLoss,
)
from lovaszseg.losses.registry import LOSSES, LossSpec, build_loss

__all__ = [
    "BINARY_MODE",
    "LOSSES",
    "MODES",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "LossSpec",
    "LovaszHingeLoss",
    "LovaszSigmoidLoss",
    "LovaszSoftmaxLoss",
    "SoftJaccardLoss",
    "WeightedSumLoss",
    "binary_cross_entropy",
    "build_loss",
    "cross_entropy",
    "lovasz_hinge",
    "lovasz_sigmoid",
    "lovasz_softmax",
    "soft_jaccard",
]
