"""Post-processing of binary predictions: a sequence of steps, tuned on predictions whose truth is known.

A binary mask is the probability map above a threshold, then passed through each *rule* (today the
min-area rule: a mask smaller than it is emptied). Every step is one module of this package (imported
here, so a new step is one file); the rules are tuned jointly with the threshold on per-image counts
at every threshold of the grid (:class:`ImageCounts`, which the metrics engine records).
"""

import importlib
import pkgutil

from lovaszseg.scoring.postprocess.counts import ImageCounts, grid_index
from lovaszseg.scoring.postprocess.pipeline import PostProcessing, evaluate_postprocessing, image_scores
from lovaszseg.scoring.postprocess.steps import Rule, Step, rule_classes, step_classes
from lovaszseg.scoring.postprocess.tuning import (
    AUTO,
    POSTPROCESS_FILE,
    Requested,
    Tuning,
    load_tuning,
    resolve,
    save_tuning,
    tune_postprocessing,
)

__all__ = [
    "AUTO",
    "POSTPROCESS_FILE",
    "ImageCounts",
    "PostProcessing",
    "Requested",
    "Rule",
    "Step",
    "Tuning",
    "evaluate_postprocessing",
    "grid_index",
    "image_scores",
    "load_tuning",
    "resolve",
    "rule_classes",
    "save_tuning",
    "step_classes",
    "tune_postprocessing",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
