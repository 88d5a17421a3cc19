"""Training and evaluation engine: configs in, run folders with checkpoints, metrics and reports out."""

from lovaszseg.engine.evaluate import BINARY_METRICS, MULTICLASS_METRICS, evaluate
from lovaszseg.engine.trainer import RunResult, TrainingError, build_datasets, resolve_data_root, train

__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "RunResult",
    "TrainingError",
    "build_datasets",
    "evaluate",
    "resolve_data_root",
    "train",
]
