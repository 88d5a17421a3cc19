"""The training loop: stages of (loss, epochs, optimiser, schedule), validation every epoch, checkpoints.

:func:`train` builds a :class:`Trainer` (data and model first, so that bad input fails before a run
folder exists), opens the :class:`~lovaszseg.storage.run_folder.RunFolder` and calls
:meth:`Trainer.fit`, which runs each stage (:meth:`~Trainer.run_stage`) as epochs of
:meth:`~Trainer.train_epoch` and :meth:`~Trainer.validate`, in the style of Lightning Fabric's trainer.
Nothing goes on silently: a non-finite or exploding loss, or weights that stop being finite, end the
run with a :class:`~lovaszseg.errors.TrainingError` before anything is saved or exported from them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler

from lovaszseg.config import Config, DataConfig, ModelConfig, StageConfig, builtin_config, load_config
from lovaszseg.data.io import check_writable
from lovaszseg.data.pseudo import PSEUDO_KINDS
from lovaszseg.data.sampling import FOREGROUND_KINDS, BalancedBatchSampler, foreground_flags
from lovaszseg.errors import CheckpointError, ConfigError, TrainingError
from lovaszseg.heads import HEAD_DECISION
from lovaszseg.losses import build_loss
from lovaszseg.models import ADDABLE_HEADS, build_model, check_input_size
from lovaszseg.runtime import distributed
from lovaszseg.runtime.accelerated import accelerate, amp_dtype, to_memory_format
from lovaszseg.runtime.interrupt import StopRequest
from lovaszseg.runtime.progress import LoopProgress
from lovaszseg.scoring.catalogue import metric_names
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.storage.checkpoint import capture_rng, load_checkpoint, restore_rng
from lovaszseg.storage.run_folder import DISTRIBUTED_FILE, RunFolder, read_weights
from lovaszseg.storage.summary import SWA_EPOCH
from lovaszseg.training.averaging import (
    SWA_COUNT_KEY,
    SWA_WEIGHTS_KEY,
    build_ema,
    build_swa,
    in_swa_window,
    recompute_batch_norm,
    restore_average,
    restore_swa,
    swa_entries,
)
from lovaszseg.training.objective import Objective
from lovaszseg.training.reporting import TensorBoardLog, final_table
from lovaszseg.training.schedule import (
    Scheduler,
    build_optimizer,
    build_scheduler,
    cycle_length,
    is_snapshot_epoch,
    restore_scheduler,
    step_per_batch,
    step_per_epoch,
)

__all__ = ["RunResult", "Trainer", "resolve_config", "train"]


@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: The run folder.
        best_metrics: Validation metrics of ``best.pt`` (empty before any epoch ended).
        completed: Whether every stage ran to its end.
        history: The rows of ``summary.csv``.
        stop_signal: The signal (SIGINT, SIGTERM) that stopped an incomplete run, if one did.
    """

    run_dir: Path
    best_metrics: dict[str, float]
    completed: bool
    history: list[dict[str, str]] = field(default_factory=list)
    stop_signal: int | None = None


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint, so that ``--resume`` continues exactly there."""

    stage: int = 0
    epoch: int = 0  # epochs of ``stage`` done
    stage_done: bool = False  # the stage ended: all its epochs, or early stopping
    stage_best: float | None = None
    stale_epochs: int = 0
    best_overall: float | None = None
    loss_reference: float | None = None  # the stage's first loss, for the divergence check
    swa_done: bool = False  # the stage's SWA average was validated and saved (swa_epochs stages)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Progress:
        return cls(**{name: checkpoint[name] for name in cls.__dataclass_fields__ if name in checkpoint})


@dataclass
class Stage:
    """One stage being trained: its settings and the objects built from them.

    Attributes:
        ema: The moving average of the weights (``ema`` stages), which validation scores and
            checkpoints hold as their ``"model"``; never wrapped in DDP.
        swa: The SWA average (``swa_epochs`` stages), validated once after the stage's last epoch.
        epoch_lr: The learning rate of the current epoch's first step (``summary.csv``'s ``lr``).
        validated: What validation runs: the validated weights with the run's acceleration.
    """

    index: int
    config: StageConfig
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    ema: AveragedModel | None = None
    swa: AveragedModel | None = None
    epoch_lr: float = 0.0
    validated: nn.Module | None = None

    @property
    def label(self) -> str:
        return f"{self.index + 1}-{self.config.name}"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch_make_up(data: DataConfig, train_set: Any) -> tuple[list[bool], float, str, tuple[str, str]] | None:
    """What balanced batches balance (flags, the share of False, its key, the kinds), or None: shuffled."""
    if data.sampler == "balanced":
        return foreground_flags(train_set), data.empty_share, "data.empty_share", FOREGROUND_KINDS
    if data.pseudo_share is not None:
        return list(train_set.labelled), data.pseudo_share, "data.pseudo_share", PSEUDO_KINDS
    return None


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker gets its own seed derived from the loader's (seeded) generator."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(worker_seed)  # albumentations keeps its own generators


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    # Every epoch reseeds from (seed, stage, epoch): a resumed run replays exactly the same randomness.
    return seed * 1_000_003 + stage * 10_007 + epoch


def _improved(value: float, best: float | None, mode: str) -> bool:
    return not math.isnan(value) and (best is None or (value > best if mode == "max" else value < best))


def _record_best(progress: Progress, value: float, mode: str) -> tuple[bool, bool]:
    """Whether ``value`` is the stage's and the run's best so far; ``progress`` keeps it if so."""
    stage_best = _improved(value, progress.stage_best, mode)
    overall_best = stage_best and _improved(value, progress.best_overall, mode)
    progress.stage_best = value if stage_best else progress.stage_best
    progress.best_overall = value if overall_best else progress.best_overall
    return stage_best, overall_best


def _stage_closed(progress: Progress, config: StageConfig) -> bool:
    """Whether ``progress``'s stage needs nothing more: its epochs ended, and its SWA average if it has one."""
    return progress.stage_done and (progress.swa_done or not config.swa_epochs)


def _non_finite(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers (e.g. BatchNorm running variances) holding inf or NaN."""
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _weights_mismatch(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """A few differences between a model's state dict and ``weights``: missing (but for a head the config
    adds, :data:`ADDABLE_HEADS`), unexpected, other shapes."""
    expected = model.state_dict()
    missing = [f"missing {name}" for name in expected if name not in weights and not name.startswith(ADDABLE_HEADS)]
    unexpected = [f"unexpected {name}" for name in weights if name not in expected]
    shapes = [
        f"{name}: {tuple(weights[name].shape)} in the file, {tuple(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    return missing[:3] + unexpected[:3] + shapes[:3]


def _load_init_weights(model: nn.Module, source: str, config: ModelConfig) -> tuple[Path, list[str]]:
    """Load the weights of ``source`` (``model.init_from``: a run folder, a ``.pt`` checkpoint or a
    ``.safetensors`` file) into ``model``: every weight must fit, and only heads the config adds
    (:data:`ADDABLE_HEADS`) may be missing from the file; they keep their fresh initialisation.

    Returns:
        The file the weights came from, and the added heads that start fresh (their state-dict prefixes).

    Raises:
        ConfigError: no such run or file, an unreadable one, or weights of another architecture (the
            message names a few differing keys and shapes).
    """
    try:
        weights, path = read_weights(source)
    except CheckpointError as error:
        raise ConfigError(f"model.init_from {source!r}: {error}") from error
    if differences := _weights_mismatch(model, weights):
        raise ConfigError(
            f"model.init_from: the weights in {path} do not fit model.arch {config.arch!r}, model.encoder "
            f"{config.encoder!r} and model.options {config.options}: {'; '.join(differences)}"
        )
    missing = model.load_state_dict(weights, strict=False).missing_keys  # only added heads: checked above
    fresh = [head.rstrip(".") for head in ADDABLE_HEADS if any(name.startswith(head) for name in missing)]
    return path, fresh


def _weights_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.state_dict().values() if p.is_floating_point()))


def resolve_config(config: Config | str | Path | None, overrides: Sequence[str], resume: Path | None) -> Config:
    """The config a run uses: a resumed run's saved one, or ``config`` (None: the demo) with ``overrides``."""
    if resume is not None:
        if config is not None or overrides:
            raise ConfigError("resume continues a run with its saved config: pass no config or overrides with it")
        return RunFolder.existing(resume).config()
    if isinstance(config, Config):
        return load_config(config.model_dump(), overrides) if overrides else config
    return load_config(config if config is not None else builtin_config("salt-demo"), overrides)


class Trainer:
    """Everything a run needs, built from its config; :meth:`fit` trains it into a run folder.

    Args:
        config: The resolved config.
        info: This process's rank, world size and device.
        console: Where progress and tables go (rank 0 only).
        pretrained: Load the encoder's pretrained weights (not when resuming: the checkpoint has them).
    """

    def __init__(self, config: Config, info: distributed.DistInfo, console: Console, *, pretrained: bool) -> None:
        self.config, self.info, self.console = config, info, console
        self.spec = config.data.spec()
        self.metric_names = metric_names(self.spec)
        self.monitor = config.train.monitor or self.metric_names[0]
        if self.monitor not in (*self.metric_names, "val_loss"):
            raise ConfigError(
                f"train.monitor {self.monitor!r} is not a validation metric of this dataset; "
                f"choose from {[*self.metric_names, 'val_loss']}"
            )
        self.stop = StopRequest()
        self.resume_hint: str | None = None  # the command that continues the run, if not its own train --resume
        self.board = TensorBoardLog(config.output.tensorboard and info.is_main, self.spec)  # before the run folder
        self._build_data()
        self._build_model(pretrained)

    def _build_data(self) -> None:
        config, info = self.config, self.info
        root = distributed.on_main(info, config.data.resolved_root)  # rank 0 generates the demo data first
        self.train_set = config.data.training_set(config.data.train_split, root=root)
        self.val_set = config.data.build(config.data.val_split, train=False, root=root)
        self.generator = torch.Generator()
        loading: dict[str, Any] = {
            "num_workers": config.data.num_workers,
            "worker_init_fn": _seed_worker,
            "generator": self.generator,
        }
        self.train_sampler: DistributedSampler | BalancedBatchSampler | None = None
        if (make_up := _batch_make_up(config.data, self.train_set)) is not None:
            flags, share, option, kinds = make_up
            self.train_sampler = BalancedBatchSampler(
                flags,
                config.data.batch_size,
                share,
                config.train.seed,
                info.rank,
                info.world_size,
                option=option,
                kinds=kinds,
            )
            self.train_loader = DataLoader(self.train_set, batch_sampler=self.train_sampler, **loading)
        else:
            if info.distributed:
                self.train_sampler = DistributedSampler(
                    self.train_set, info.world_size, info.rank, shuffle=True, seed=config.train.seed
                )
            self.train_loader = DataLoader(
                self.train_set,
                batch_size=config.data.batch_size,
                shuffle=self.train_sampler is None,
                sampler=self.train_sampler,
                drop_last=len(self.train_set) > config.data.batch_size * info.world_size,
                **loading,
            )
        # Optimiser steps of every epoch: what per-step schedules count in.
        self.steps_per_epoch = min(len(self.train_loader), config.train.max_steps_per_epoch or len(self.train_loader))
        self.val_loader = DataLoader(
            self.val_set,
            batch_size=config.data.eval_batch_size,
            sampler=distributed.ShardSampler(len(self.val_set), info.rank, info.world_size),
            num_workers=config.data.num_workers,
        )

    def _build_model(self, pretrained: bool) -> None:
        config, info = self.config, self.info
        init_from = config.model.init_from if pretrained else None  # a resumed run's checkpoint has the weights
        _seed_everything(config.train.seed)  # the seed fixes the initial weights too
        model = build_model(
            config.model, self.spec.in_channels, self.spec.num_classes, pretrained=pretrained and init_from is None
        )
        if init_from is not None:
            source, fresh = _load_init_weights(model, init_from, config.model)
            if info.is_main:
                added = f" ({', '.join(fresh)}: new, not in the file)" if fresh else ""
                self.console.print(f"model: starting from the weights in {source}{added}")
        for dataset, split in ((self.train_set, config.data.train_split), (self.val_set, config.data.val_split)):
            height, width = dataset[0]["image"].shape[-2:]
            check_input_size(model, height, width, f"the first image of {config.data.name} split {split!r}")
        self.acceleration = config.train.acceleration()
        dtype = amp_dtype(self.acceleration, info.device)  # fp16 on a CPU is refused here, before any folder
        self.model = to_memory_format(model.to(info.device), self.acceleration)  # before DDP sees the weights
        ddp_model = distributed.wrap_model(self.model, info, config.train.find_unused_parameters)
        # Forward passes in mixed precision (float32 logits out) and channels-last batches, maybe compiled.
        self.accelerated = accelerate(ddp_model, self.acceleration, convert=False)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16)

    # The run ------------------------------------------------------------------------------------------
    def open_folder(self, resume: Path | None, run_dir: Path | None, overwrite: bool) -> RunFolder:
        """Rank 0 creates (or reopens, to resume) and locks the run folder; every rank learns its path."""

        def open_folder() -> RunFolder:
            if resume is not None:
                return RunFolder.for_resume(resume)
            return RunFolder.create(self.config, run_dir, overwrite=overwrite)

        return distributed.open_on_main(self.info, open_folder, RunFolder)

    def fit(self, folder: RunFolder, *, resume: bool, stop_after_epochs: int | None = None) -> RunResult:
        """Train every stage into ``folder``; continue from its ``last.pt`` when ``resume``."""
        checkpoint, progress = None, Progress()
        if resume:
            checkpoint = load_checkpoint(folder.last_path)
            progress = Progress.from_checkpoint(checkpoint)
            # With ema, "model" holds the averaged weights and "train_model" those being trained.
            self.model.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
            restore_rng(checkpoint["rng"])
        elif self.info.is_main:
            folder.save_start(self._state(None, progress, {}))
            self.console.print(f"run folder: {folder.path}")
        self.epochs_left = stop_after_epochs
        completed = True
        with self.stop, self.board.writing(folder.tensorboard_path, len(folder.summary())):
            for index in range(progress.stage, len(self.config.stages)):
                if index == progress.stage and _stage_closed(progress, self.config.stages[index]):
                    continue
                continuing = checkpoint if index == progress.stage and progress.epoch > 0 else None
                if not self.run_stage(folder, index, progress, continuing):
                    completed = False
                    break
        return self._finish(folder, completed)

    def run_stage(self, folder: RunFolder, index: int, progress: Progress, checkpoint: dict[str, Any] | None) -> bool:
        """Train one stage from where ``progress`` says; False when a stop request ended it early."""
        stage = self._start_stage(folder, index, progress, checkpoint)
        while not progress.stage_done:  # a resumed stage may have ended its epochs but not its SWA average
            if self._stop_requested(before_epoch=True):
                return False
            epoch = progress.epoch
            self._seed_epoch(index, epoch)
            started = time.perf_counter()
            train_loss = self.train_epoch(stage, epoch, folder, progress)
            if train_loss is None:
                return False
            if stage.swa is not None and in_swa_window(stage.config, epoch + 1):
                stage.swa.update_parameters(self.model)
            metrics = self.validate(stage, epoch, folder)
            self._end_epoch(folder, stage, epoch, train_loss, metrics, progress, time.perf_counter() - started)
        if stage.swa is not None and not progress.swa_done:
            if self._stop_requested():
                return False
            self._end_swa(folder, stage, progress)
        return True

    def _start_stage(
        self, folder: RunFolder, index: int, progress: Progress, checkpoint: dict[str, Any] | None
    ) -> Stage:
        config = self.config.stages[index]
        ignore_index = self.spec.ignore_index
        loss_fn = Objective(
            build_loss(config.loss, ignore_index=ignore_index, num_classes=self.spec.num_classes),
            empty_head=self.config.model.empty_head,
            deep_supervision=self.config.model.deep_supervision,
            skip_empty=config.empty_images == "skip",
            ignore_index=ignore_index,
        )
        optimizer = build_optimizer(config, self.model)
        scheduler = build_scheduler(config, optimizer, self.config.train.monitor_mode, self.steps_per_epoch)
        stage = Stage(index, config, loss_fn, optimizer, scheduler)
        if checkpoint is not None:  # continuing this stage where the checkpoint left it
            optimizer.load_state_dict(checkpoint["optimizer"])
            restore_scheduler(scheduler, checkpoint["scheduler"], progress.epoch * self.steps_per_epoch)
            self.scaler.load_state_dict(checkpoint["scaler"])
        else:
            self._enter_stage(folder, stage, progress)
        stage.ema = self._build_ema(config, checkpoint)
        stage.swa = self._build_swa(config, checkpoint)
        stage.validated = accelerate(self._validated_model(stage), self.acceleration)
        return stage

    def _enter_stage(self, folder: RunFolder, stage: Stage, progress: Progress) -> None:
        """Reset the progress for a new stage and load the weights it starts from."""
        index = stage.index
        progress.stage, progress.epoch, progress.stage_done = index, 0, False
        progress.stage_best, progress.stale_epochs, progress.loss_reference = None, 0, None
        progress.swa_done = False
        if index > 0:  # e.g. BCE -> Lovász: start from the previous stage's best weights
            source, which = folder.stage_best_path(index - 1), "best"
            if stage.config.init == "last_of_previous" or not source.is_file():  # no epoch had a finite metric
                source, which = folder.stage_last_path(index - 1), "last"
            self.model.load_state_dict(load_checkpoint(source)["model"])
            if self.info.is_main:
                self.console.print(f"stage {stage.label}: starting from stage {index}'s {which} weights")
        if self._gated(stage) and self.info.is_main:
            self.console.print(
                f"stage {stage.label}: its mask loss skips empty images; validated with the empty-image head's "
                f"gate at {HEAD_DECISION} (images it calls empty count as predicted empty)"
            )

    def _build_ema(self, config: StageConfig, checkpoint: dict[str, Any] | None) -> AveragedModel | None:
        """The stage's weight average, from the current weights or, continuing, the checkpoint's."""
        if config.ema is None:
            return None
        ema = build_ema(self.model, config.ema)
        if checkpoint is not None and "ema_n_averaged" in checkpoint:
            restore_average(ema, checkpoint["model"], int(checkpoint["ema_n_averaged"]))
        return ema

    def _build_swa(self, config: StageConfig, checkpoint: dict[str, Any] | None) -> AveragedModel | None:
        """The stage's SWA average: empty, or continuing the checkpoint's."""
        if not config.swa_epochs:
            return None
        swa = build_swa(self.model)
        if checkpoint is not None:
            restore_swa(swa, checkpoint)
        return swa

    def _validated_model(self, stage: Stage) -> nn.Module:
        """What validation scores and checkpoints hold as ``"model"``: the EMA weights, if the stage keeps them."""
        return stage.ema.module if stage.ema is not None else self.model

    def _stop_requested(self, *, before_epoch: bool = False) -> bool:
        """Whether to stop now: a signal (on any rank: all must leave at the same step) or the epoch budget."""
        budget_spent = before_epoch and self.epochs_left is not None and self.epochs_left <= 0
        return distributed.any_rank(self.stop.requested or budget_spent, self.info)

    def _seed_epoch(self, index: int, epoch: int) -> None:
        seed = _epoch_seed(self.config.train.seed, index, epoch)
        _seed_everything(seed)
        self.generator.manual_seed(seed)
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(index * 100_000 + epoch)
        # The split's transform, and each pseudo-label folder's (its own draws: offset seeds).
        for offset, part in enumerate(getattr(self.train_set, "parts", [self.train_set])):
            if hasattr(part.transform, "set_random_seed"):
                part.transform.set_random_seed(seed + offset)

    # One epoch ----------------------------------------------------------------------------------------
    def train_epoch(self, stage: Stage, epoch: int, folder: RunFolder, progress: Progress) -> float | None:
        """One pass over the training data; its mean loss over all ranks, or None if stopped midway."""
        self.accelerated.train()
        steps = self.steps_per_epoch
        stage.epoch_lr = stage.optimizer.param_groups[0]["lr"]
        description = f"{stage.label} {epoch + 1}/{stage.config.epochs}"
        bar = self._progress(description, steps)
        total, seen = 0.0, 0
        try:
            for step, batch in enumerate(self.train_loader, start=1):
                if step > steps:
                    break
                if self._stop_requested():
                    return None
                loss = self.training_step(stage, batch, progress, f"{description}, step {step}", folder)
                total, seen = total + loss * len(batch["image"]), seen + len(batch["image"])
                bar.advance(len(batch["image"]), total / seen)
        finally:
            bar.close()
        return distributed.mean_over_ranks(total, seen, self.info)

    def training_step(
        self, stage: Stage, batch: dict[str, Any], progress: Progress, where: str, folder: RunFolder
    ) -> float:
        """Forward, loss check, backward and optimiser step on one batch; returns the loss."""
        images, masks = batch["image"].to(self.info.device), batch["mask"].to(self.info.device)
        loss = stage.loss_fn(self.accelerated(images), masks)
        value = float(loss.detach())
        self._check_loss(value, stage, progress, where, folder)
        stage.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.train.grad_clip:
            self.scaler.unscale_(stage.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(stage.optimizer)
        self.scaler.update()
        step_per_batch(stage.scheduler)
        if stage.ema is not None:
            stage.ema.update_parameters(self.model)
        return value

    def _check_loss(self, value: float, stage: Stage, progress: Progress, where: str, folder: RunFolder) -> None:
        """Stop on a non-finite loss, or one ``train.divergence_factor`` times the stage's first (at least 1)."""
        if progress.loss_reference is None and math.isfinite(value):
            progress.loss_reference = value
        factor = self.config.train.divergence_factor
        limit = factor * max(progress.loss_reference or 0.0, 1.0) if factor else math.inf
        if not distributed.any_rank(not math.isfinite(value) or value > limit, self.info):
            return
        problem = "non-finite" if not math.isfinite(value) else f"exploding ({value:.4g} > {limit:.4g})"
        raise TrainingError(
            f"{problem} loss on rank {self.info.rank} at {where}: training diverged; lower the learning rate "
            f"(stages.{stage.index}.lr={stage.config.lr:g}) or set train.grad_clip. {self._kept(folder)}"
        )

    def validate(self, stage: Stage, epoch: int, folder: RunFolder) -> dict[str, float]:
        """Metrics of the validation split (of the EMA weights, with ``ema``), after checking that the
        weights are still finite."""
        distributed.broadcast_buffers(self.model, self.info)
        bad = _non_finite(self.model)
        if stage.ema is not None:
            distributed.broadcast_buffers(stage.ema.module, self.info)  # each rank averaged its own statistics
            bad += [f"{name} (EMA)" for name in _non_finite(stage.ema.module)]
        if bad:
            raise TrainingError(
                f"after epoch {epoch + 1} of stage {stage.label}, {len(bad)} weight tensor(s) hold inf or NaN "
                f"(e.g. {', '.join(bad[:3])}): training diverged; lower the learning rate "
                f"(stages.{stage.index}.lr={stage.config.lr:g}) or set train.grad_clip. {self._kept(folder)}"
            )
        return self._score(stage.validated, stage, f"{stage.label} {epoch + 1}/{stage.config.epochs} val")

    def _score(self, model: nn.Module, stage: Stage, description: str) -> dict[str, float]:
        """Metrics of ``model`` on the validation split, with the stage's loss as ``val_loss``; gated by the
        empty-image head where the stage's mask loss skips empty images (its masks are not trained to be empty)."""
        scorer = Scorer(self.spec, self.info.device, empty_gate=HEAD_DECISION if self._gated(stage) else 0.0)
        with self._progress(description, len(self.val_loader)) as bar:
            return evaluate(
                model,
                self.val_loader,
                self.spec,
                device=self.info.device,
                loss_fn=stage.loss_fn,
                progress=bar.advance,
                scorer=scorer,
            )

    def _gated(self, stage: Stage) -> bool:
        return stage.config.empty_images == "skip" and self.config.model.empty_head > 0

    def _progress(self, description: str, steps: int) -> LoopProgress:
        """Progress of a loop, shown by rank 0 only."""
        interval = self.config.output.progress_seconds
        return LoopProgress(self.console, description, steps, enabled=self.info.is_main, interval=interval)

    def _kept(self, folder: RunFolder) -> str:
        if folder.last_path.is_file():
            return f"The last good checkpoint is kept: {folder.last_path}"
        return "No checkpoint was written."

    def _end_epoch(
        self,
        folder: RunFolder,
        stage: Stage,
        epoch: int,
        train_loss: float,
        metrics: dict[str, float],
        progress: Progress,
        seconds: float,
    ) -> None:
        """Update the progress, write the checkpoints and the summary row, print the epoch's line."""
        value, lr = metrics[self.monitor], stage.epoch_lr
        step_per_epoch(stage.scheduler, value)
        stage_best, overall_best = _record_best(progress, value, self.config.train.monitor_mode)
        progress.epoch = epoch + 1
        progress.stale_epochs = 0 if stage_best else progress.stale_epochs + 1
        patience = self.config.train.early_stopping
        early = bool(patience) and progress.stale_epochs >= patience and progress.epoch < stage.config.epochs
        progress.stage_done = early or progress.epoch == stage.config.epochs
        if self.epochs_left is not None:
            self.epochs_left -= 1
        if not self.info.is_main:
            return
        snapshot = (epoch + 1) // cycle_length(stage.config) if is_snapshot_epoch(stage.config, epoch + 1) else None
        state = self._state(stage, progress, metrics)
        folder.save_epoch(state, stage.index, stage_best=stage_best, overall_best=overall_best, snapshot=snapshot)
        row = {"stage": stage.label, "epoch": epoch + 1, "lr": f"{lr:.6g}", "train_loss": f"{train_loss:.6f}"}
        heading = f"{stage.label} epoch {epoch + 1}/{stage.config.epochs}  train_loss {train_loss:.4f}"
        self._record(folder, row, metrics, seconds, self._validated_model(stage), heading)
        if early:
            self.console.print(
                f"stage {stage.label}: no improvement of {self.monitor} for {patience} epochs, stopping it"
            )

    def _record(
        self,
        folder: RunFolder,
        row: dict[str, Any],
        metrics: dict[str, float],
        seconds: float,
        model: nn.Module,
        heading: str,
    ) -> None:
        """Append ``row`` with the metrics to ``summary.csv`` and TensorBoard, and print it after ``heading``."""
        names = [name for name in (*self.metric_names, "val_loss") if name in metrics]
        row = row | {name: f"{metrics[name]:.6f}" for name in names}
        with self.stop.deferred():  # plotting curves.png imports matplotlib, which an interrupt aborts
            folder.record_epoch(row | {"time_s": f"{seconds:.1f}"}, self.metric_names)
        self.board.log_epoch(row, model, self.val_set)
        shown = "  ".join(f"{name} {metrics[name]:.4f}" for name in names)
        self.console.print(f"{heading}  {shown}", soft_wrap=True)

    # The SWA average --------------------------------------------------------------------------------
    def _end_swa(self, folder: RunFolder, stage: Stage, progress: Progress) -> None:
        """Recompute the SWA average's BatchNorm statistics, validate it like an epoch, keep it as
        ``stageN_swa.pt`` (and as best where it beats the epochs), and record the stage as closed."""
        swa, started = stage.swa, time.perf_counter()
        progress.swa_done = True
        if int(swa.n_averaged) == 0:  # early stopping ended the stage before its SWA window
            if self.info.is_main:
                folder.save_start(self._state(stage, progress, load_checkpoint(folder.last_path)["metrics"]))
                self.console.print(f"stage {stage.label}: stopped before its swa_epochs window; no SWA average")
            return
        model = accelerate(swa.module, self.acceleration)
        self._seed_epoch(stage.index, stage.config.epochs)  # a fixed draw: a resumed run recomputes the same
        recompute_batch_norm(swa.module, self._training_images(), model)
        distributed.broadcast_buffers(swa.module, self.info)
        if bad := _non_finite(swa.module):
            raise TrainingError(f"the SWA average of stage {stage.label} holds inf or NaN in {', '.join(bad[:3])}")
        metrics = self._score(model, stage, f"{stage.label} {SWA_EPOCH} val")
        stage_best, overall_best = _record_best(progress, metrics[self.monitor], self.config.train.monitor_mode)
        if not self.info.is_main:
            return
        last = self._state(stage, progress, load_checkpoint(folder.last_path)["metrics"])
        average = {key: item for key, item in self._state(stage, progress, metrics).items() if key != SWA_WEIGHTS_KEY}
        average |= {"model": swa.module.state_dict(), SWA_COUNT_KEY: int(swa.n_averaged)}
        folder.save_average(average, last, stage.index, stage_best=stage_best, overall_best=overall_best)
        row = {"stage": stage.label, "epoch": SWA_EPOCH, "lr": "nan", "train_loss": "nan"}
        heading = f"{stage.label} {SWA_EPOCH} of the weights of {int(swa.n_averaged)} epochs"
        self._record(folder, row, metrics, time.perf_counter() - started, swa.module, heading)

    def _training_images(self) -> Iterator[Tensor]:
        """The images of one training epoch's batches, on the device: what SWA's BatchNorm statistics see."""
        for batch in islice(self.train_loader, self.steps_per_epoch):
            yield batch["image"].to(self.info.device)

    def _state(self, stage: Stage | None, progress: Progress, metrics: dict[str, float]) -> dict[str, Any]:
        """The checkpoint dict: weights, optimiser, schedule, progress, metrics and RNG states.

        ``"model"`` holds the validated weights (the EMA's, with ``ema``: what best.pt, the export and the
        next stage use); ``"train_model"`` and ``"ema_n_averaged"`` then let ``--resume`` restore both.
        """
        ema = stage.ema if stage is not None else None
        averaged = (
            {} if ema is None else {"train_model": self.model.state_dict(), "ema_n_averaged": int(ema.n_averaged)}
        )
        return {
            "model": (ema.module if ema is not None else self.model).state_dict(),
            **averaged,
            **swa_entries(stage.swa if stage is not None else None),
            "optimizer": stage.optimizer.state_dict() if stage else {},
            "scheduler": stage.scheduler.state_dict() if stage else {},
            "scaler": self.scaler.state_dict(),
            **asdict(progress),
            "metrics": metrics,
            "rng": capture_rng(),
        }

    def _finish(self, folder: RunFolder, completed: bool) -> RunResult:
        """Export the best model of a finished run and show the final table."""
        if self.info.distributed and completed:  # every rank must end with the same weights (and BN statistics)
            checksums = [None] * self.info.world_size
            torch.distributed.all_gather_object(checksums, _weights_checksum(self.model))
            if self.info.is_main:
                folder.write_json(DISTRIBUTED_FILE, {"weights_checksum_per_rank": checksums})
        history, best_metrics = folder.summary(), {}
        if self.info.is_main and folder.best_path.is_file():
            best = load_checkpoint(folder.best_path)
            best_metrics = dict(best["metrics"])
            if completed:
                folder.export(best, self.config)
        elif self.info.is_main and completed:
            raise TrainingError(f"no epoch produced a finite {self.monitor}: there is no best model to export")
        if self.info.is_main and history:
            self.console.print(
                final_table(history, [*self.metric_names, "val_loss"], self.monitor, self.config.train.monitor_mode)
            )
            if not completed:
                hint = self.resume_hint or f"lovaszseg train --resume {folder.path}"
                self.console.print(f"stopped early; continue with: {hint}")
        return RunResult(folder.path, best_metrics, completed, history, self.stop.signum)


def train(
    config: Config | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: Path | None = None,
    run_dir: Path | None = None,
    overwrite: bool = False,
    stop_after_epochs: int | None = None,
    console: Console | None = None,
    resume_hint: str | None = None,
) -> RunResult:
    """Train a model as a config says; callable from a notebook as from ``lovaszseg train``.

    Args:
        config: A :class:`Config`, a YAML path, or None for the built-in demo (``salt-demo.yaml``).
        overrides: ``key.path=value`` strings applied to the config.
        resume: A run folder to continue from its ``last.pt`` (same stage, epoch, schedule and RNG)
            with its saved config.
        run_dir: Where to write the run (default ``output.runs_dir/output.name``, suffixed if taken);
            an explicit folder that holds a run is refused unless ``overwrite``.
        overwrite: Replace what the run folder holds.
        stop_after_epochs: Stop cleanly after this many epochs of this call, as if interrupted
            (``resume`` then continues).
        console: Where progress and tables go.
        resume_hint: The command that continues the run, shown when it stops early (default its own
            ``lovaszseg train --resume RUN``; cross-validation gives ``lovaszseg cv --resume CV``).

    Returns:
        :class:`RunResult`; ``completed`` is False (and ``stop_signal`` set) after Ctrl-C or SIGTERM,
        which stop at the next step and keep ``last.pt`` (the end of the last whole epoch).

    Raises:
        ConfigError, DataError: bad config, options or data (before any run folder is created).
        OutputError: the run folder cannot be created or written (a path under /proc, a read-only
            mount), found before the datasets and the model are built.
        RunFolderError: the run folder is taken or being written by another process.
        CheckpointError: ``resume`` names no resumable run.
        TrainingError: a non-finite or exploding loss, or weights that turned non-finite.
    """
    console = console or Console()
    config = resolve_config(config, overrides, resume)
    joined = distributed.joined()  # a caller (cross-validation) may hold the process group for several runs
    info = distributed.setup(config.train.device)
    try:
        # Nothing is created yet (a config error must leave no empty run folder), only refused early.
        destination = resume or run_dir or config.default_run_dir()
        distributed.on_main(info, lambda: check_writable(destination, "run folder", folder=True))
        trainer = Trainer(config, info, console, pretrained=resume is None)
        trainer.resume_hint = resume_hint
        folder = trainer.open_folder(resume, run_dir, overwrite)
        try:
            return trainer.fit(folder, resume=resume is not None, stop_after_epochs=stop_after_epochs)
        finally:
            folder.release()
    finally:
        if not joined:
            distributed.cleanup()
