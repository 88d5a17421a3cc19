"""The run folder: its layout, who may write it, its checkpoints, its exported model.

Every file name of a run lives here, and every command (train, eval, predict, submit, compare) goes
through :class:`RunFolder` to find, write or load them:

- ``config.yaml``: the resolved config, saved once; ``summary.csv`` (a row per epoch) and ``curves.png``;
- ``last.pt`` (written at the start and after every epoch: what ``--resume`` continues from), ``best.pt``
  (the best epoch of the whole run by ``train.monitor``), and per stage N ``stageN_best.pt``,
  ``stageN_last.pt``, at each cosine-restart cycle end ``stageN_snapshotK.pt`` and, for a stage with
  ``swa_epochs``, ``stageN_swa.pt`` (its weight average, a model file like the others);
- ``model.safetensors``: the best weights, with the config in its header, written when training
  finishes: its presence means the run finished;
- ``eval.json``: the last ``lovaszseg eval``;
- ``tensorboard/``: TensorBoard event files, when ``output.tensorboard`` asks for them.

A writer holds an exclusive lock on ``.lock`` (which records its PID) for as long as it writes.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from lovaszseg.config import CONFIG_METADATA_KEY, Config, load_config
from lovaszseg.data.io import atomic_write, make_folder, remove_stale_temporaries
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import CheckpointError, OutputError, RunFolderError
from lovaszseg.storage.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint
from lovaszseg.storage.summary import append_summary, plot_curves, read_summary

__all__ = [
    "BEST_FILE",
    "CONFIG_FILE",
    "CURVES_FILE",
    "EVAL_FILE",
    "EXPORT_FILE",
    "LAST_FILE",
    "SUMMARY_FILE",
    "TENSORBOARD_DIR",
    "LoadedModel",
    "RunFolder",
    "load_model",
    "read_weights",
]

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.csv"
CURVES_FILE = "curves.png"
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
EXPORT_FILE = "model.safetensors"
EVAL_FILE = "eval.json"
TENSORBOARD_DIR = "tensorboard"
DISTRIBUTED_FILE = "distributed.json"
LOCK_FILE = ".lock"
# Where a run folder's model is read from, in order of preference: the export holds best.pt's weights
# without the optimiser state, a third of the size to read.
_MODEL_FILES = (EXPORT_FILE, BEST_FILE, LAST_FILE)


class RunFolder:
    """A run folder: paths, the writer's lock, checkpoints, summary, export.

    Args:
        path: The folder (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # Layout -------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def last_path(self) -> Path:
        return self.path / LAST_FILE

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    @property
    def export_path(self) -> Path:
        return self.path / EXPORT_FILE

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def tensorboard_path(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def stage_best_path(self, stage: int) -> Path:
        """``stageN_best.pt`` of stage index ``stage`` (N = stage + 1)."""
        return self.path / f"stage{stage + 1}_best.pt"

    def stage_last_path(self, stage: int) -> Path:
        return self.path / f"stage{stage + 1}_last.pt"

    def snapshot_path(self, stage: int, cycle: int) -> Path:
        return self.path / f"stage{stage + 1}_snapshot{cycle}.pt"

    def swa_path(self, stage: int) -> Path:
        """``stageN_swa.pt``: the SWA average of stage index ``stage``, BatchNorm statistics recomputed."""
        return self.path / f"stage{stage + 1}_swa.pt"

    @property
    def finished(self) -> bool:
        """Whether training ran to the end (the model is exported only then)."""
        return self.export_path.is_file()

    def finished_as(self, config: Config) -> bool:
        """Whether the folder holds a run of exactly ``config`` that trained to the end (to reuse, not retrain)."""
        return self.finished and self.config_path.is_file() and self.config() == config

    # Creating and locking -----------------------------------------------------------------------------
    @classmethod
    def create(cls, config: Config, path: str | Path | None = None, *, overwrite: bool = False) -> RunFolder:
        """A new run folder for ``config``, locked for writing, with ``config.yaml`` saved.

        Args:
            config: The resolved config.
            path: The folder to use; None for ``output.runs_dir/output.name``, suffixed ``-2``, ``-3``, ...
                when that one is taken.
            overwrite: Replace what a taken folder holds (explicit or default path) instead.

        Raises:
            RunFolderError: an explicit ``path`` holds files and ``overwrite`` is not set, or another
                process is writing the folder.
            OutputError: the folder cannot be created, or ``config.yaml`` written (a full disk); the message
                names the path and the reason.
        """
        folder = cls.claim(path, config.default_run_dir(), overwrite=overwrite)
        try:
            with atomic_write(folder.config_path) as handle:
                handle.write(config.to_yaml())
        except BaseException:
            folder.release()
            raise
        return folder

    @classmethod
    def claim(cls, path: str | Path | None, default: Path, *, overwrite: bool) -> RunFolder:
        """An empty folder to write a new run (or cv) into, locked.

        Args:
            path: The folder asked for, or None for ``default``, suffixed ``-2``, ``-3``, ... when taken.
            default: Where new runs go by default.
            overwrite: Empty a taken folder (explicit or default) instead.

        Raises:
            RunFolderError: an explicit ``path`` holds files and ``overwrite`` is not set, or another
                process is writing the folder.
            OutputError: the folder cannot be created or emptied; the message names it and the reason.
        """
        if path is not None:
            folder = cls(path)
            folder.lock()
            if folder._contents() and not overwrite:
                folder.release()
                raise RunFolderError(
                    f"run folder {folder.path} already holds a run; pass --overwrite to replace it, "
                    f"--resume {folder.path} to continue it, or choose another --run-dir"
                )
        else:
            folder = cls._first_free(default, overwrite)
        try:
            for entry in folder._contents():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except OSError as error:
            folder.release()
            raise OutputError(f"cannot empty run folder {folder.path}: {error.strerror or error}") from error
        return folder

    @classmethod
    def _first_free(cls, base: Path, overwrite: bool) -> RunFolder:
        """``base``, else ``base-2``, ``base-3``, ...: the first one not being written and, unless
        ``overwrite``, empty; returned locked."""
        for suffix in itertools.count(1):
            folder = cls(base if suffix == 1 else base.with_name(f"{base.name}-{suffix}"))
            try:
                folder.lock()
            except RunFolderError:
                continue
            if overwrite or not folder._contents():
                return folder
            folder.release()
        raise AssertionError("unreachable")

    @classmethod
    def for_resume(cls, path: str | Path) -> RunFolder:
        """An existing run folder to continue, locked for writing.

        Raises:
            CheckpointError: the folder is not a run folder or has no ``last.pt``.
            RunFolderError: another process is writing it.
        """
        folder = cls.existing(path)
        if not folder.last_path.is_file():
            raise CheckpointError(f"cannot resume {folder.path}: it has no {LAST_FILE}")
        folder.lock()
        return folder

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """A run folder that must already exist (for reading).

        Raises:
            CheckpointError: ``path`` is not a folder holding a run's config.
        """
        folder = cls(path)
        if not folder.path.is_dir():
            raise CheckpointError(f"run folder not found: {folder.path}")
        if not folder.config_path.is_file():
            raise CheckpointError(f"{folder.path} is not a run folder: it has no {CONFIG_FILE}")
        return folder

    def lock(self) -> None:
        """Take the exclusive writer's lock, then remove temporary files a killed writer left behind.

        The lock is an ``flock`` on ``.lock``: the system releases it when its process ends, however it
        ends, so a lock left by a dead process is simply taken over.

        Raises:
            RunFolderError: another live process holds it; the message gives its PID.
            OutputError: the folder cannot be created or its ``.lock`` written; the message names the
                folder and the reason.
        """
        make_folder(self.path, "run folder")
        try:
            handle = (self.path / LOCK_FILE).open("a+", encoding="utf-8")
        except OSError as error:
            raise OutputError(f"cannot write run folder {self.path}: {error.strerror or error}") from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(
                f"run folder {self.path} is being written by another process (PID {holder}); "
                "wait for it to end or stop it first"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except OSError as error:  # e.g. a full disk
            handle.close()
            raise OutputError(f"cannot write run folder {self.path}: {error.strerror or error}") from error
        self._lock = handle
        remove_stale_temporaries(self.path)

    @property
    def lockable(self) -> bool:
        """Whether writers lock the folder (it has a ``.lock``: a run or cv folder, being written or not)."""
        return (self.path / LOCK_FILE).is_file()

    def writer_pid(self) -> str:
        """The PID recorded by the process writing the folder ("unknown" when none is recorded)."""
        path = self.path / LOCK_FILE
        return (path.read_text(encoding="utf-8").strip() if path.is_file() else "") or "unknown"

    def release(self) -> None:
        """Give the writer's lock back (closing the file releases the ``flock``)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _contents(self) -> list[Path]:
        return [entry for entry in self.path.iterdir() if entry.name != LOCK_FILE] if self.path.is_dir() else []

    # Reading ------------------------------------------------------------------------------------------
    def config(self) -> Config:
        """The run's saved config (``config.yaml``)."""
        if self.config_path.is_file():
            return load_config(self.config_path)
        raise CheckpointError(f"{self.path} is not a run folder: it has no {CONFIG_FILE}")

    def summary(self) -> list[dict[str, str]]:
        """The rows of ``summary.csv``."""
        return read_summary(self.path / SUMMARY_FILE)

    def model_file(self) -> Path:
        """The file a model is loaded from: ``model.safetensors``, else ``best.pt``, else ``last.pt``."""
        for name in _MODEL_FILES:
            if (self.path / name).is_file():
                return self.path / name
        raise CheckpointError(f"{self.path} holds no {', '.join(_MODEL_FILES)}: it has no trained model yet")

    # Writing ------------------------------------------------------------------------------------------
    def save_epoch(
        self, state: dict[str, Any], stage: int, *, stage_best: bool, overall_best: bool, snapshot: int | None
    ) -> None:
        """Write an epoch's checkpoint to every file it belongs in (serialised once).

        Args:
            state: The checkpoint dict.
            stage: Stage index.
            stage_best: The epoch is the stage's best so far (``stageN_best.pt``).
            overall_best: ... and the run's best so far (``best.pt``).
            snapshot: Cosine-restart cycle that ends at this epoch (``stageN_snapshotK.pt``), or None.
        """
        data = checkpoint_bytes(state)
        targets = [self.stage_best_path(stage)] if stage_best else []
        targets += [self.best_path] if overall_best else []
        targets += [self.snapshot_path(stage, snapshot)] if snapshot is not None else []
        for path in (*targets, self.stage_last_path(stage), self.last_path):
            save_checkpoint(path, data)

    def save_average(
        self, average: dict[str, Any], last: dict[str, Any], stage: int, *, stage_best: bool, overall_best: bool
    ) -> None:
        """Write a stage's SWA checkpoint (``stageN_swa.pt``, and the best files it beats), then ``last.pt``.

        Args:
            average: The checkpoint of the average.
            last: The resume point that records the average as done (written last: a crash before it
                makes ``--resume`` redo the average).
            stage: Stage index.
            stage_best: The average beats the stage's epochs (``stageN_best.pt``).
            overall_best: ... and the run's best so far (``best.pt``).
        """
        data = checkpoint_bytes(average)
        targets = [self.stage_best_path(stage)] if stage_best else []
        targets += [self.best_path] if overall_best else []
        for path in (self.swa_path(stage), *targets):
            save_checkpoint(path, data)
        save_checkpoint(self.last_path, last)

    def save_start(self, state: dict[str, Any]) -> None:
        """``last.pt`` before the first epoch, so that an interrupted first epoch can be resumed too."""
        save_checkpoint(self.last_path, state)

    def record_epoch(self, row: dict[str, Any], metrics: tuple[str, ...]) -> None:
        """Append an epoch's row to ``summary.csv`` and redraw ``curves.png``."""
        append_summary(self.path / SUMMARY_FILE, row)
        plot_curves(self.summary(), self.path / CURVES_FILE, metrics)

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        """A small JSON record in the folder (``eval.json``, ``distributed.json``)."""
        with atomic_write(self.path / name) as handle:
            json.dump(payload, handle, indent=2)
        return self.path / name

    def export(self, checkpoint: dict[str, Any], config: Config) -> Path:
        """``model.safetensors``: the checkpoint's weights, with the config in the header (loadable alone)."""
        from safetensors.torch import save as safetensors_bytes

        tensors = {name: tensor.contiguous() for name, tensor in checkpoint["model"].items()}
        metadata = {CONFIG_METADATA_KEY: config.to_yaml()}
        with atomic_write(self.export_path, "wb") as handle:
            handle.write(safetensors_bytes(tensors, metadata=metadata))
        return self.export_path


@dataclass
class LoadedModel:
    """A trained model ready for inference, with what it was trained on."""

    model: nn.Module
    config: Config
    spec: DatasetSpec
    source: Path


def _open_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable .safetensors file: {error}") from error
    return metadata, weights


def _read_safetensors(path: Path) -> tuple[Config, dict[str, torch.Tensor]]:
    metadata, weights = _open_safetensors(path)
    if CONFIG_METADATA_KEY in metadata:
        return Config.from_yaml(metadata[CONFIG_METADATA_KEY], f"the config in {path}"), weights
    return RunFolder(path.parent).config(), weights


def _model_path(source: Path) -> Path:
    """A run folder's :meth:`~RunFolder.model_file`, or ``source`` itself, which must then be a file."""
    path = RunFolder.existing(source).model_file() if source.is_dir() else source
    if not path.is_file():
        raise CheckpointError(f"no run folder or model file at {path}")
    return path


def _read_weights(source: Path) -> tuple[Config, dict[str, torch.Tensor], Path]:
    path = _model_path(source)
    if path.suffix == ".safetensors":
        return (*_read_safetensors(path), path)
    checkpoint = load_checkpoint(path)
    return RunFolder(path.parent).config(), checkpoint["model"], path


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """A model's weights alone, found as :func:`load_model` finds them, without reading any config.

    Args:
        source: A run folder (``model.safetensors``, else ``best.pt``, else ``last.pt``), a ``.pt``
            checkpoint (a dict with a ``"model"`` entry) or a ``.safetensors`` file.

    Returns:
        The state dict and the file it was read from.

    Raises:
        CheckpointError: no such run or file, or an unreadable one.
    """
    path = _model_path(Path(source))
    if path.suffix == ".safetensors":
        return _open_safetensors(path)[1], path
    return load_checkpoint(path)["model"], path


def load_model(source: str | Path) -> LoadedModel:
    """Load a trained model and its config, without executing code from any file.

    Args:
        source: A run folder (``model.safetensors``, else ``best.pt``, else ``last.pt``), a ``.pt``
            checkpoint of a run folder, or an exported ``model.safetensors``.

    Returns:
        :class:`LoadedModel` with the model in eval mode on the CPU.

    Raises:
        CheckpointError: no such run or file, an unreadable file, or weights that do not fit the config.
    """
    from lovaszseg.models import build_model

    config, weights, path = _read_weights(Path(source))
    spec = config.data.spec()
    model = build_model(config.model, spec.in_channels, spec.num_classes, pretrained=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {path} do not fit the model its config describes: {error}") from error
    return LoadedModel(model.eval(), config, spec, path)
