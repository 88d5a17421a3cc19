"""Run configuration: YAML files validated into typed models, with dotted command-line overrides.

``load_config("configs/salt.yaml", ["stages.1.epochs=5", "model.encoder=resnet18"])`` reads the YAML,
applies each override (values parsed as YAML scalars; list items by index), and validates the result.
Unknown keys and wrong types are errors naming the key path and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lovaszseg.data import DatasetSpec, build_dataset, build_transform, dataset_options, describe_dataset
from lovaszseg.data.registry import registration
from lovaszseg.errors import ConfigError
from lovaszseg.losses import LossSpec, build_loss
from lovaszseg.runtime.acceleration import Acceleration, Amp
from lovaszseg.runtime.progress import PROGRESS_SECONDS
from lovaszseg.windowing import CROPS_PER_BATCH, WEIGHTINGS, SlidingWindow, Weighting, parse_size

if TYPE_CHECKING:
    import albumentations as A
    from torch.utils.data import Dataset

__all__ = [
    "CONFIG_METADATA_KEY",
    "Config",
    "ConfigError",
    "DataConfig",
    "InferenceConfig",
    "ModelConfig",
    "OutputConfig",
    "StageConfig",
    "TrainConfig",
    "builtin_config",
    "load_config",
]


# Bounds beyond which a value is a slip (a missing "e-", a percentage) rather than a choice.
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 1.0
# The trainer reseeds torch with seed * 1_000_003 + ..., which must stay below 2**64.
MAX_SEED = 2**32 - 1
# The key under which exported models (safetensors header, ONNX metadata) carry their run's config.
CONFIG_METADATA_KEY = "lovaszseg_config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Any ``segmentation_models_pytorch.create_model`` architecture with any smp encoder."""

    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = "imagenet"
    # Further create_model keyword arguments, e.g. {decoder_channels: [64, 32, 16, 8, 4]}.
    options: dict[str, Any] = Field(default_factory=dict)
    # Whole-model starting weights: a run folder (its exported or best model), a .pt checkpoint or a
    # .safetensors file; encoder_weights are then not loaded (nothing to download).
    init_from: str | None = None
    # Binary tasks: weight of the BCE of smp's classification head (one logit, "the image has
    # foreground") beside each stage's segmentation loss; 0 builds no head (lovaszseg.heads).
    empty_head: float = Field(0.0, ge=0, allow_inf_nan=False)
    # UNet: weight of the stage's loss on each intermediate decoder stage's training-only mask head
    # (deep supervision); 0 builds no such heads (lovaszseg.decoders).
    deep_supervision: float = Field(0.0, ge=0, allow_inf_nan=False)
    # UNet: the segmentation head sees every decoder stage, upsampled and concatenated.
    hypercolumn: bool = False


class DataConfig(_Strict):
    """Dataset by name (see ``lovaszseg.data.build_dataset``); ``root: null`` is the built-in demo salt data."""

    name: str = "tgs"  # a registered dataset (lovaszseg.data.DATASET_NAMES)
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = Field(16, ge=1)
    val_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    # Training batches: shuffled, or balanced (each batch holds empty_share images without foreground).
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    empty_share: float = Field(0.5, gt=0, lt=1)
    # Pseudo-label folders (lovaszseg pseudo-label) whose images join every training split, never a
    # validation split; pseudo_share: each training batch's share of them (null: ordinary training images).
    pseudo: list[str] = Field(default_factory=list)
    pseudo_share: float | None = Field(None, gt=0, lt=1)
    # Dataset and transform-preset options, e.g. {fold: 0, pad_size: 128, resize: 202}.
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        registration(name)  # raises ConfigError naming the registered datasets
        return name

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any], info: Any) -> dict[str, Any]:
        if "name" not in info.data:  # an unknown name: that error is the one reported
            return options
        name = info.data["name"]
        allowed = set(dataset_options(name))
        if unknown := sorted(set(options) - allowed):
            raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; allowed: {sorted(allowed)}")
        return options

    @model_validator(mode="after")
    def _one_batch_make_up(self) -> DataConfig:
        if self.pseudo_share is not None and not self.pseudo:
            raise ValueError("data.pseudo_share needs pseudo-label folders in data.pseudo")
        if self.pseudo_share is not None and self.sampler == "balanced":
            raise ValueError("data.pseudo_share and data.sampler: balanced both set what a batch holds; choose one")
        return self

    def training_set(self, split: str, *, root: str | Path | None = None) -> Dataset:
        """A training split with its training transform, and the images of :attr:`pseudo` after it."""
        from lovaszseg.data.pseudo import with_pseudo_labels

        dataset = self.build(split, train=True, root=root)
        labelled = self.spec().labelled_split
        return with_pseudo_labels(
            dataset,
            self.pseudo,
            lambda: self.transform(train=True),
            lambda: self.build(labelled, train=False, root=root).ids,
        )

    def spec(self) -> DatasetSpec:
        """What the dataset is (task, channels, classes, ignore index, sizes), without reading any file."""
        return describe_dataset(self.name, self.options)

    def resolved_root(self) -> Path:
        """``root``, or the built-in synthetic salt data (generated on first use) when it is null."""
        from lovaszseg.data.synth import ensure_demo_salt

        return Path(self.root) if self.root is not None else ensure_demo_salt()

    @property
    def eval_batch_size(self) -> int:
        """Images per batch wherever nothing is trained (validation, eval, out-of-fold predictions)."""
        return self.val_batch_size or self.batch_size

    def build(self, split: str, *, train: bool, root: str | Path | None = None) -> Dataset:
        """A split of the dataset with its transform preset (``root`` default: :meth:`resolved_root`)."""
        return build_dataset(self.name, root or self.resolved_root(), split, train=train, **self.options)

    def transform(self, *, train: bool = False) -> A.Compose:
        """The dataset's transform preset: the evaluation one is what a model's input really is."""
        return build_transform(self.name, train=train, **self.options)


class StageConfig(_Strict):
    """One training stage: its loss, length, optimiser and learning-rate schedule."""

    name: str = "train"
    loss: LossSpec = "lovasz_hinge"
    epochs: int = Field(10, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=MAX_LR)
    weight_decay: float = Field(0.0, ge=0, le=MAX_WEIGHT_DECAY)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["none", "cosine", "cosine_restarts", "poly", "plateau"] = "cosine"
    # cosine_restarts: number of equal cycles (a snapshot per cycle end); plateau: patience in epochs.
    cycles: int = Field(1, ge=1)
    patience: int = Field(3, ge=1)
    # Where cosine and poly schedules end and plateau reductions stop; at most lr.
    min_lr: float = Field(0.0, ge=0)
    # poly: lr = (lr - min_lr) * (1 - t / T) ** poly_power + min_lr (mmseg's PolyLR).
    poly_power: float = Field(0.9, gt=0)
    # cosine, cosine_restarts and poly: advance once per epoch, or else at every optimiser step.
    by_epoch: bool = True
    # Linear warm-up over the stage's first optimiser steps, its factor rising from warmup_start_factor
    # to 1 and multiplying the schedule (torch's LinearLR chained with it); not with plateau.
    warmup_steps: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.001, gt=0, le=1)
    # Validate, checkpoint and export an exponential moving average of the weights with this decay.
    ema: float | None = Field(None, gt=0, lt=1)
    # Stochastic weight averaging: the equal mean of the weights at the end of the last swa_epochs epochs
    # (with cosine_restarts: of the last swa_epochs cycle-end snapshots), BatchNorm statistics recomputed
    # on the training data, validated and kept as stageN_swa.pt; 0 or null is off.
    swa_epochs: int | None = Field(None, ge=0)
    # Weights a stage after the first starts from: the previous stage's best or last checkpoint.
    init: Literal["best_of_previous", "last_of_previous"] = "best_of_previous"
    # Whether the segmentation loss counts images without foreground (skip: only the others enter it;
    # the empty head, if any, still learns from every image).
    empty_images: Literal["include", "skip"] = "include"

    @field_validator("loss")
    @classmethod
    def _buildable(cls, loss: LossSpec) -> LossSpec:
        build_loss(loss)  # raises ValueError naming the unknown loss or option
        return loss

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        if self.schedule == "cosine_restarts" and self.epochs % self.cycles:
            raise ValueError(
                f"schedule cosine_restarts needs epochs ({self.epochs}) to be a multiple of cycles ({self.cycles})"
            )
        self._check_swa()
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")
        if self.warmup_steps and self.schedule == "plateau":
            # plateau scales whatever the learning rate is when it triggers: a warm-up factor cannot combine.
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) does not combine with schedule plateau; "
                "use warmup_steps=0 or another schedule"
            )
        return self

    def _check_swa(self) -> None:
        if not self.swa_epochs:
            return
        snapshots = self.schedule == "cosine_restarts"
        limit, counted = (self.cycles, "cycles") if snapshots else (self.epochs, "epochs")
        if self.swa_epochs > limit:
            raise ValueError(f"swa_epochs ({self.swa_epochs}) must not exceed {counted} ({limit})")
        if self.ema is not None:  # two averages of one stage: which one is validated and kept is ambiguous
            raise ValueError(f"swa_epochs ({self.swa_epochs}) does not combine with ema ({self.ema:g}); use one")


class TrainConfig(_Strict):
    """Loop settings shared by every stage."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision of forward passes (training, validation and inference): none (float32), bf16,
    # fp16 (CUDA), or auto (bf16 where the device computes it natively, else float32).
    amp: Amp = "none"
    # Weights and batches in channels-last (NHWC) memory: faster convolutions on CPUs and tensor cores.
    channels_last: bool = False
    # torch.compile the model for training and inference (uncompiled, with a warning, where it cannot be).
    compile: bool = False
    grad_clip: float | None = Field(None, gt=0)
    # Validation metric that picks best.pt: salt_score, iou, image_iou (binary); miou, image_miou.
    monitor: str | None = None
    monitor_mode: Literal["max", "min"] = "max"
    early_stopping: int | None = Field(None, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    # Stop when a step's loss exceeds this many times the stage's first loss (at least 1); null: never.
    divergence_factor: float | None = Field(1000.0, gt=1)
    # DDP only: needed when some parameters get no gradient (e.g. smp encoders with encoder_depth < 5).
    find_unused_parameters: bool = False

    def acceleration(self) -> Acceleration:
        """How the model's forward passes run: what training uses and inference starts from."""
        return Acceleration(self.amp, self.channels_last, self.compile)


class InferenceConfig(_Strict):
    """How ``eval``, ``predict``, ``submit`` and a cv's out-of-fold predictions run the model
    (``--window``, ``--stride``, ``--window-weighting`` change it per call).

    ``window``: predict images larger than the network in overlapping crops of HxW (``512x512``, ``512``
    or ``[512, 384]``; None: whole images), ``stride`` apart (default: the window, tiles),
    ``window_weighting`` ``uniform`` or ``gaussian``, ``crops_per_batch`` at a time
    (:mod:`lovaszseg.windowing`, :mod:`lovaszseg.inference.window`). Validation during training sees whole images.
    """

    window: list[int] | None = None
    stride: list[int] | None = None
    window_weighting: Weighting = WEIGHTINGS[0]
    crops_per_batch: int = Field(CROPS_PER_BATCH, ge=1)

    @field_validator("window", "stride", mode="before")
    @classmethod
    def _size(cls, value: Any, info: ValidationInfo) -> list[int] | None:
        return None if value is None else list(parse_size(value, f"inference.{info.field_name}"))

    @model_validator(mode="after")
    def _window_fits(self) -> InferenceConfig:
        if self.stride is not None and self.window is None:
            raise ValueError("inference.stride needs inference.window")
        self.sliding_window()  # a stride larger than the window is an error here
        return self

    def sliding_window(self) -> SlidingWindow | None:
        """The window these settings describe, or None for whole images."""
        if self.window is None:
            return None
        size = (self.window[0], self.window[1])
        stride = size if self.stride is None else (self.stride[0], self.stride[1])
        return SlidingWindow(size, stride, self.window_weighting, self.crops_per_batch)


class OutputConfig(_Strict):
    """Where runs are written (``runs_dir/name``; name defaults to the config file's stem) and what they show."""

    runs_dir: str = "runs"
    name: str | None = None
    # Where output cannot redraw a progress bar, a plain progress line at most this often.
    progress_seconds: float = Field(PROGRESS_SECONDS, gt=0)
    # TensorBoard event files in RUN/tensorboard (needs the tensorboard extra).
    tensorboard: bool = False


class Config(_Strict):
    """A whole run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()], min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _class_weights_fit_the_data(self) -> Config:
        num_classes = self.data.spec().num_classes
        for index, stage in enumerate(self.stages):
            try:
                build_loss(stage.loss, num_classes=num_classes)
            except ConfigError as error:
                raise ValueError(f"stages.{index}.loss: {error}") from None
        return self

    def default_run_dir(self, suffix: str = "") -> Path:
        """Where a run (``suffix=""``) or its cross-validation (``"-cv"``) goes unless told otherwise."""
        return Path(self.output.runs_dir) / f"{self.output.name or 'run'}{suffix}"

    def to_yaml(self) -> str:
        """The config as YAML, keys in declaration order: ``config.yaml``, checkpoints' and exports' copy."""
        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str) -> Config:
        """Undo :meth:`to_yaml` (``source`` names where the text came from, for errors)."""
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{source} is not valid YAML: {error}") from error
        if not isinstance(tree, dict):
            raise ConfigError(f"{source} does not hold a config mapping")
        return load_config(tree)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown key; allowed here: {', '.join(_allowed_keys(item['loc']))}"
        elif item["type"] == "literal_error":
            message = f"{message}, got {item['input']!r}"
        lines.append(f"  {path}: {message}")
    return f"invalid configuration {source}:\n" + "\n".join(lines)


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
    return sorted(model.model_fields)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted!r}: {where} is not an index of a list of {len(node)}")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:depth])} is a value, not a section")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: mappings recursively, everything else replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> None:
    for override in overrides:
        path, sep, raw = override.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"override {override!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: value is not valid YAML ({error})") from error
        _set_path(tree, path.strip(), value)


def builtin_config(name: str) -> Path:
    """Path of a config shipped with the package, e.g. ``builtin_config("salt-demo")``."""
    path = Path(str(resources.files("lovaszseg") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no built-in config {name!r}")
    return path


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate a run configuration.

    Args:
        source: A YAML file, a mapping (e.g. a checkpoint's saved config), or None for the defaults.
        overrides: ``key.path=value`` strings applied in order.

    Returns:
        The validated :class:`Config`; ``output.name`` defaults to the YAML file's stem.

    Raises:
        ConfigError: a missing or unreadable file, invalid YAML, a bad override, or a validation error
            naming each key path.
    """
    label = "(defaults)"
    tree: dict[str, Any] = {}
    if isinstance(source, Mapping):
        tree, label = yaml.safe_load(yaml.safe_dump(dict(source))), "(mapping)"
    elif source is not None:
        path = Path(source)
        if path.is_dir():
            raise ConfigError(f"config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(tree).__name__}")
        label = str(path)
        tree.setdefault("output", {}).setdefault("name", path.stem)
    # Start from the defaults so that overrides can reach keys the file leaves out.
    tree = _merge(Config().model_dump(), tree)
    _apply_overrides(tree, overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, label)) from None
