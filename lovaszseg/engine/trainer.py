"""The training loop: stages of (loss, epochs, optimiser, schedule), validation every epoch, checkpoints.

One linear function, :func:`train`, in the style of torchvision's reference scripts; the helpers
above it build the pieces. A run folder holds ``config.yaml``, ``summary.csv``, ``curves.png``,
``last.pt``, ``best.pt``, per-stage ``stage{N}_best.pt``, and at the end ``model.safetensors`` +
``config.json`` for inference.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lovaszseg.config import Config, StageConfig, builtin_config, load_config
from lovaszseg.data import build_dataset
from lovaszseg.data.io import atomic_write
from lovaszseg.data.synth import ensure_demo_salt
from lovaszseg.engine import distributed
from lovaszseg.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from lovaszseg.engine.evaluate import BINARY_METRICS, MULTICLASS_METRICS, evaluate
from lovaszseg.engine.reporting import EpochProgress, append_summary, final_table, plot_curves, read_summary
from lovaszseg.engine.schedule import (
    build_optimizer,
    build_scheduler,
    cycle_length,
    is_snapshot_epoch,
    step_scheduler,
)
from lovaszseg.losses import build_loss
from lovaszseg.models import build_model, check_input_size

__all__ = ["RunResult", "TrainingError", "build_datasets", "resolve_data_root", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what was kept."""


@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path
    best_metrics: dict[str, float]
    completed: bool
    history: list[dict[str, str]] = field(default_factory=list)


def resolve_data_root(config: Config) -> Path:
    """``data.root``, or the built-in synthetic salt data (generated on first use) when it is null."""
    return Path(config.data.root) if config.data.root is not None else ensure_demo_salt()


def build_datasets(config: Config, root: Path) -> tuple[Dataset, Dataset]:
    """The training and validation datasets of a config, with their transform presets."""
    options = config.data.options
    train_set = build_dataset(config.data.name, root, config.data.train_split, train=True, **options)
    val_set = build_dataset(config.data.name, root, config.data.val_split, train=False, **options)
    return train_set, val_set


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def _autocast(amp: str, device: torch.device) -> AbstractContextManager:
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; on CPU use train.amp=bf16 or none")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _new_run_dir(config: Config, run_dir: Path | None, overwrite: bool) -> Path:
    """A fresh folder: an existing non-empty one is replaced only with ``overwrite``, else suffixed."""
    base = run_dir or Path(config.output.runs_dir) / (config.output.name or "run")
    candidate, suffix = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        if overwrite:
            shutil.rmtree(candidate)
            break
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C / SIGTERM into a flag checked between steps, so the run can stop cleanly."""
    flag = {"stop": False}

    def handler(signum: int, _frame: Any) -> None:
        flag["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stage_label(index: int, stage: StageConfig) -> str:
    return f"{index + 1}-{stage.name}"


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def _weights_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.state_dict().values() if p.is_floating_point()))


def train(
    config: Config | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: Path | None = None,
    run_dir: Path | None = None,
    overwrite: bool = False,
    stop_after_epochs: int | None = None,
    console: Console | None = None,
) -> RunResult:
    """Train a model as a config says; callable from a notebook as from ``lovaszseg train``.

    Args:
        config: A :class:`Config`, a YAML path, or None for the built-in demo (``salt-demo.yaml``).
        overrides: ``key.path=value`` strings applied to the config.
        resume: A run folder to continue from its ``last.pt`` (same stage, epoch, schedule and RNG);
            the run's saved config is used and the run continues in that folder.
        run_dir: Where to write the run (default ``output.runs_dir/output.name``, suffixed if taken).
        overwrite: Replace an existing non-empty run folder instead of choosing a new name.
        stop_after_epochs: Stop cleanly after this many epochs of this call, as if interrupted
            (``resume`` then continues).
        console: Where progress and tables go.

    Returns:
        :class:`RunResult` with the run folder and the best validation metrics.

    Raises:
        TrainingError: non-finite loss (the last good checkpoint is kept).
        ConfigError, ValueError, FileNotFoundError: bad config, data or checkpoint; a config or
            overrides given with ``resume``; images whose size the model cannot take.
        EncoderWeightsError: pretrained encoder weights cannot be downloaded (a ValueError).
    """
    console = console or Console()
    checkpoint: dict[str, Any] | None = None
    if resume is not None and (config is not None or overrides):
        raise ValueError("resume continues a run with its saved config: pass no config or overrides with it")
    if resume is not None:
        checkpoint = load_checkpoint(Path(resume) / "last.pt")
        config = load_config(checkpoint["config"])
    elif isinstance(config, Config):
        config = load_config(config.model_dump(), overrides) if overrides else config
    else:
        config = load_config(config if config is not None else builtin_config("salt-demo"), overrides)
    info = distributed.setup(config.train.device)
    try:
        return _train(config, info, checkpoint, resume, run_dir, overwrite, stop_after_epochs, console)
    finally:
        distributed.cleanup()


def _train(
    config: Config,
    info: distributed.DistInfo,
    checkpoint: dict[str, Any] | None,
    resume: Path | None,
    run_dir: Path | None,
    overwrite: bool,
    stop_after_epochs: int | None,
    console: Console,
) -> RunResult:
    # Data: the demo data is generated by rank 0 first.
    root = resolve_data_root(config) if info.is_main else None
    root = distributed.broadcast_object(root, info) if info.distributed else root
    if root is None:
        root = resolve_data_root(config)
    train_set, val_set = build_datasets(config, root)
    resized = config.data.options.get("resize")
    resized = (resized, resized) if resized else None
    task, num_classes = train_set.task, train_set.num_classes
    metric_names = BINARY_METRICS if task == "binary" else MULTICLASS_METRICS
    if task == "binary" and train_set.ignore_index is not None:
        metric_names = tuple(m for m in metric_names if m != "salt_score")
    monitor = config.train.monitor or metric_names[0]
    mode = config.train.monitor_mode
    if monitor not in (*metric_names, "val_loss"):
        raise ValueError(f"train.monitor {monitor!r} is not a validation metric; choose from {list(metric_names)}")
    generator = torch.Generator()
    train_sampler = (
        DistributedSampler(train_set, info.world_size, info.rank, shuffle=True, seed=config.train.seed)
        if info.distributed
        else None
    )
    train_loader = DataLoader(
        train_set,
        batch_size=config.data.batch_size,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        num_workers=config.data.num_workers,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=len(train_set) > config.data.batch_size * info.world_size,
    )
    val_loader = DataLoader(
        val_set,
        batch_size=config.data.val_batch_size or config.data.batch_size,
        sampler=distributed.ShardSampler(len(val_set), info.rank, info.world_size),
        num_workers=config.data.num_workers,
    )

    # Model, and where the run starts (the seed fixes the initial weights too).
    _seed_everything(config.train.seed)
    model = build_model(config.model, train_set.in_channels, num_classes, pretrained=checkpoint is None).to(info.device)
    for dataset, split in ((train_set, config.data.train_split), (val_set, config.data.val_split)):
        height, width = dataset[0]["image"].shape[-2:]
        check_input_size(model, height, width, f"the first image of {config.data.name} split {split!r}")
    start_stage, start_epoch, stage_best, stale_epochs = 0, 0, None, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        start_stage, start_epoch = checkpoint["stage"], checkpoint["epoch"]
        stage_best, stale_epochs = checkpoint["stage_best"], checkpoint["stale_epochs"]
        restore_rng(checkpoint["rng"])
    ddp_model = (
        DistributedDataParallel(model, find_unused_parameters=config.train.find_unused_parameters)
        if info.distributed
        else model
    )
    scaler = torch.amp.GradScaler(info.device.type, enabled=config.train.amp == "fp16")
    autocast = _autocast(config.train.amp, info.device)

    # The run folder, once everything that can fail on bad input has been built: rank 0 chooses and
    # creates it, and only rank 0 writes files.
    out = Path(resume) if resume is not None else (_new_run_dir(config, run_dir, overwrite) if info.is_main else None)
    out = distributed.broadcast_object(out, info)
    if info.is_main and resume is None:
        with atomic_write(out / "config.yaml") as handle:
            yaml.safe_dump(config.model_dump(), handle, sort_keys=False)
        console.print(f"run folder: {out}")

    best_overall = checkpoint["best_overall"] if checkpoint is not None else None
    epochs_this_call = 0
    completed = True

    with _stop_on_signals() as signals:
        for stage_index in range(start_stage, len(config.stages)):
            stage = config.stages[stage_index]
            label = _stage_label(stage_index, stage)
            loss_fn = build_loss(stage.loss, ignore_index=train_set.ignore_index)
            optimizer = build_optimizer(stage, model)
            scheduler = build_scheduler(stage, optimizer, mode)
            resuming_here = checkpoint is not None and stage_index == start_stage and start_epoch > 0
            if resuming_here:
                optimizer.load_state_dict(checkpoint["optimizer"])
                if scheduler is not None:
                    scheduler.load_state_dict(checkpoint["scheduler"])
                scaler.load_state_dict(checkpoint["scaler"])
            else:
                start_epoch, stage_best, stale_epochs = 0, None, 0
                if stage_index > 0:  # e.g. BCE -> Lovász: start from the previous stage's best weights
                    source = "best" if stage.init == "best_of_previous" else "last"
                    if not (out / f"stage{stage_index}_{source}.pt").is_file():
                        source = "last"  # the previous stage never produced a finite metric
                    previous = load_checkpoint(out / f"stage{stage_index}_{source}.pt")
                    model.load_state_dict(previous["model"])
                    if info.is_main:
                        console.print(f"stage {label}: starting from stage {stage_index}'s {source} weights")

            for epoch in range(start_epoch, stage.epochs):
                # Stop requests are agreed on by all ranks (a signal may reach only some), every time.
                stop_here = stop_after_epochs is not None and epochs_this_call >= stop_after_epochs
                signals["stop"] = distributed.any_rank(signals["stop"] or stop_here, info)
                if signals["stop"]:
                    completed = False
                    break
                _seed_everything(_epoch_seed(config.train.seed, stage_index, epoch))
                generator.manual_seed(_epoch_seed(config.train.seed, stage_index, epoch))
                if train_sampler is not None:
                    train_sampler.set_epoch(stage_index * 100_000 + epoch)
                if hasattr(train_set.transform, "set_random_seed"):
                    train_set.transform.set_random_seed(_epoch_seed(config.train.seed, stage_index, epoch))

                ddp_model.train()
                started = time.perf_counter()
                loss_sum, seen = torch.zeros((), dtype=torch.float64), 0
                steps = len(train_loader)
                if config.train.max_steps_per_epoch:
                    steps = min(steps, config.train.max_steps_per_epoch)
                progress = EpochProgress(console, f"{label} {epoch + 1}/{stage.epochs}", steps, info.is_main)
                try:
                    for step, batch in enumerate(train_loader, start=1):
                        signals["stop"] = distributed.any_rank(signals["stop"], info)
                        if step > steps or signals["stop"]:
                            break
                        images, masks = batch["image"].to(info.device), batch["mask"].to(info.device)
                        with autocast:
                            logits = ddp_model(images)
                        loss = loss_fn(logits.float(), masks)
                        if distributed.any_rank(not bool(torch.isfinite(loss)), info):
                            raise TrainingError(
                                f"non-finite loss ({loss.item()} on rank {info.rank}) at stage {label}, "
                                f"epoch {epoch + 1}, step {step}; stopped. "
                                f"The last good checkpoint is kept: {out / 'last.pt'}"
                            )
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        if config.train.grad_clip:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        loss_sum += loss.detach().double() * len(images)
                        seen += len(images)
                        elapsed = time.perf_counter() - started
                        progress.update(step, float(loss_sum / seen), seen / max(elapsed, 1e-9))
                finally:
                    progress.close()
                signals["stop"] = distributed.any_rank(signals["stop"], info)
                if signals["stop"]:  # interrupted mid-epoch: last.pt (end of the previous epoch) is kept
                    completed = False
                    break

                train_loss = float(loss_sum / max(seen, 1))
                distributed.broadcast_buffers(model, info)
                if info.distributed:
                    totals = torch.tensor([train_loss * seen, seen], dtype=torch.float64, device=info.device)
                    torch.distributed.all_reduce(totals)
                    train_loss = float(totals[0] / totals[1])
                metrics = evaluate(
                    model,
                    val_loader,
                    task=task,
                    num_classes=num_classes,
                    ignore_index=val_set.ignore_index,
                    device=info.device,
                    original_size=getattr(val_set, "original_size", None),
                    resized=resized,
                    loss_fn=loss_fn,
                    autocast=autocast,
                )
                value = metrics[monitor]
                lr = optimizer.param_groups[0]["lr"]
                step_scheduler(scheduler, value)

                improved = not math.isnan(value) and _improved(value, stage_best, mode)
                stage_best = value if improved else stage_best
                stale_epochs = 0 if improved else stale_epochs + 1
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict(),
                    "stage": stage_index,
                    "epoch": epoch + 1,
                    "stage_best": stage_best,
                    "stale_epochs": stale_epochs,
                    "best_overall": best_overall,
                    "metrics": metrics,
                    "config": config.model_dump(),
                    "rng": capture_rng(),
                }
                if info.is_main:
                    if improved:
                        save_checkpoint(out / f"stage{stage_index + 1}_best.pt", state)
                        if _improved(value, best_overall, mode):
                            best_overall = value
                            state["best_overall"] = value
                            save_checkpoint(out / "best.pt", state)
                    if is_snapshot_epoch(stage, epoch + 1):  # the end of a cosine cycle: a snapshot-ensemble member
                        cycle = (epoch + 1) // cycle_length(stage)
                        save_checkpoint(out / f"stage{stage_index + 1}_snapshot{cycle}.pt", state)
                    save_checkpoint(out / f"stage{stage_index + 1}_last.pt", state)
                    save_checkpoint(out / "last.pt", state)
                    row = {"stage": label, "epoch": epoch + 1, "lr": f"{lr:.6g}", "train_loss": f"{train_loss:.6f}"}
                    row |= {name: f"{metrics[name]:.6f}" for name in (*metric_names, "val_loss") if name in metrics}
                    row["time_s"] = f"{time.perf_counter() - started:.1f}"
                    append_summary(out / "summary.csv", row)
                    plot_curves(read_summary(out / "summary.csv"), out / "curves.png", metric_names)
                    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                    console.print(
                        f"{label} epoch {epoch + 1}/{stage.epochs}  train_loss {train_loss:.4f}  {shown}",
                        soft_wrap=True,
                    )
                best_overall = distributed.broadcast_object(best_overall, info)
                epochs_this_call += 1
                if config.train.early_stopping and stale_epochs >= config.train.early_stopping:
                    if info.is_main:
                        console.print(
                            f"stage {label}: no improvement of {monitor} for {stale_epochs} epochs, stopping it"
                        )
                    break
            if not completed:
                break

    if info.distributed and completed:  # every rank must end with the same weights (and BN statistics)
        checksums = [None] * info.world_size
        torch.distributed.all_gather_object(checksums, _weights_checksum(model))
        if info.is_main:
            with atomic_write(out / "distributed.json") as handle:
                json.dump({"weights_checksum_per_rank": checksums}, handle)
    history = read_summary(out / "summary.csv")
    best_metrics: dict[str, float] = {}
    if info.is_main and (out / "best.pt").is_file():
        best = load_checkpoint(out / "best.pt")
        best_metrics = dict(best["metrics"])
        if completed:
            export_for_inference(best, out)
    if info.is_main and history:
        console.print(final_table(history, [*metric_names, "val_loss"], monitor, mode))
        if not completed:
            console.print(f"stopped early; continue with: lovaszseg train --resume {out}")
    return RunResult(out, best_metrics, completed, history)


def export_for_inference(checkpoint: dict[str, Any], out: Path) -> None:
    """``model.safetensors`` (weights) + ``config.json`` (the run's config) for inference."""
    tensors = {name: tensor.contiguous() for name, tensor in checkpoint["model"].items()}
    with atomic_write(out / "model.safetensors", "wb") as handle:
        handle.write(safetensors_bytes(tensors))
    with atomic_write(out / "config.json") as handle:
        json.dump(checkpoint["config"], handle, indent=2)
