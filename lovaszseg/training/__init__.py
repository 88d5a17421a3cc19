"""Training: stages of (loss, epochs, optimiser, schedule) into a run folder, validated every epoch."""

from lovaszseg.training.trainer import RunResult, Trainer, resolve_config, train

__all__ = ["RunResult", "Trainer", "resolve_config", "train"]
