"""Training and evaluation engine: configs in, run folders with checkpoints, metrics and reports out."""

from lovaszseg.engine.evaluate import BINARY_METRICS, MULTICLASS_METRICS, Scorer, evaluate, metric_names
from lovaszseg.engine.run_folder import LoadedModel, RunFolder, load_model
from lovaszseg.engine.trainer import RunResult, Trainer, TrainingError, build_datasets, resolve_data_root, train

__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "LoadedModel",
    "RunFolder",
    "RunResult",
    "Scorer",
    "Trainer",
    "TrainingError",
    "build_datasets",
    "evaluate",
    "load_model",
    "metric_names",
    "resolve_data_root",
    "train",
]
