"""Ensembles: several trained models used as one, wherever a run is.

A *predictor* is what ``eval``, ``predict`` and ``submit`` use: one model, or the weighted average of
the probabilities of several (:class:`Ensemble`; with test-time augmentation on top, the average is
over members and augmentations). Its members are given as any mix of

- run folders and model files (a run's ``best.pt``, a cosine-restart ``stageN_snapshotK.pt``, an
  exported ``model.safetensors``),
- cv folders (every fold's model, see :mod:`lovaszseg.workflows.cv`),
- ensemble folders written by :func:`write_ensemble` (``ensemble.yaml``: members and weights),

and must agree on what they take and return (task, classes, channels, sizes and preprocessing). The
folder a predictor comes from (run, cv or ensemble folder) keeps its ``eval.json`` and its tuned
post-processing (:mod:`lovaszseg.scoring.postprocess`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from lovaszseg.config import Config
from lovaszseg.data import transform_options
from lovaszseg.data.io import atomic_write
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import CheckpointError, ConfigError, RunFolderError
from lovaszseg.heads import Outputs
from lovaszseg.models import output_probabilities
from lovaszseg.runtime.accelerated import accelerate
from lovaszseg.runtime.acceleration import AccelerationOverride
from lovaszseg.scoring.postprocess import POSTPROCESS_FILE, Tuning, load_tuning, save_tuning
from lovaszseg.storage.cv_folder import CvFolder
from lovaszseg.storage.run_folder import RunFolder, load_model

__all__ = [
    "MANIFEST_FILE",
    "Ensemble",
    "Member",
    "Predictor",
    "check_weights",
    "load_predictor",
    "model_names",
    "resolve_members",
    "write_ensemble",
]

MANIFEST_FILE = "ensemble.yaml"
Sources = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class Member:
    """One model file of an ensemble and its weight."""

    path: Path
    weight: float = 1.0


class Ensemble(nn.Module):
    """The weighted mean of several models' class probabilities (sigmoid or softmax of their logits).

    Its output is probabilities, not logits (``outputs_probabilities``), which
    :func:`~lovaszseg.inference.predict_probabilities` and the metrics engine know.

    Args:
        models: Members returning logits ``[B, C, H, W]`` of the same shape.
        weights: One non-negative weight per member, not all 0 (normalised to sum to 1).

    Shape:
        - Input: ``[B, in_channels, H, W]``.
        - Output: ``[B, C, H, W]`` float32 probabilities; when every member has an empty-image head,
          :class:`~lovaszseg.heads.Outputs` with the heads' probabilities ``[B]`` averaged alike.
    """

    outputs_probabilities = True

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(models) != len(weights) or not models:
            raise ConfigError(
                f"an ensemble needs one weight per member, got {len(models)} members and {len(weights)} weights"
            )
        weights = check_weights(weights, "Ensemble")
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights), persistent=False)

    def forward(self, images: Tensor) -> Tensor | Outputs:
        masks = empty = torch.zeros((), device=images.device)
        every_head = True
        for weight, member in zip(self.weights, self.members, strict=True):
            outputs = output_probabilities(member(images))
            masks = masks + weight * outputs.masks
            every_head = every_head and outputs.empty is not None
            empty = empty + weight * outputs.empty if every_head else empty
        return Outputs(masks, empty) if every_head else masks


@dataclass
class Predictor:
    """One model or an ensemble, ready for inference.

    Attributes:
        model: A model returning logits (one member) or an :class:`Ensemble`.
        config: The first member's config (data and preprocessing, shared by all members).
        spec: What the members take and return.
        members: The model files and their weights.
        home: The run, cv or ensemble folder results are kept in (``eval.json``, the tuned
            post-processing); None for a list of several runs or files.
        cv: The cv folder, when the predictor is one.
        member_configs: Every member's config (what each trained on).
    """

    model: nn.Module
    config: Config
    spec: DatasetSpec
    members: list[Member]
    home: Path | None
    cv: CvFolder | None = None
    member_configs: list[Config] = field(default_factory=list)
    model_names: tuple[str, ...] = field(init=False)
    tuned: Tuning | None = field(default=None, init=False)  # a tuning made in this process (kept or not)

    def __post_init__(self) -> None:
        self.model_names = model_names(self.members, self.home)

    @property
    def name(self) -> str:
        """The model file of a single model, else the cv or ensemble folder, else the members' files."""
        if self.home is not None and (self.cv is not None or len(self.members) > 1):
            return str(self.home)
        return " + ".join(str(m.path) for m in self.members)

    def tuning(self) -> Tuning | None:
        """The post-processing tuned for exactly these members: made in this process, else kept in
        :attr:`home`, else None."""
        if self.tuned is not None:
            return self.tuned
        return load_tuning(self.home, self.model_names) if self.home is not None else None

    @property
    def has_empty_head(self) -> bool:
        """Whether every member has an empty-image head (its probability is then averaged like the masks')."""
        return all(config.model.empty_head for config in self.member_configs)

    def require_empty_head(self, option: str) -> None:
        """Check that every member has an empty-image head, which ``option`` (the gate) reads.

        Raises:
            ConfigError: members without one (named, with those that have one, if any).
        """
        without = [
            str(m.path) for m, c in zip(self.members, self.member_configs, strict=True) if not c.model.empty_head
        ]
        if not without:
            return
        with_head = [str(m.path) for m in self.members if str(m.path) not in without]
        mixed = f"; members with one: {', '.join(with_head)}" if with_head else ""
        raise ConfigError(
            f"{option} reads the empty-image head (model.empty_head), which these members lack: "
            f"{', '.join(without)}{mixed}; leave {option} out or use members that all have one"
        )

    def save_tuning(self, tuning: Tuning) -> None:
        """Keep ``tuning`` in :attr:`home` (the caller holds the folder's lock)."""
        if self.home is not None:
            save_tuning(self.home, tuning)


def model_names(members: Sequence[Member], home: Path | None) -> tuple[str, ...]:
    """How a tuned post-processing names the models (and weights) it was tuned for: their paths relative
    to the folder that keeps the tuning, so that it survives the folder being copied or moved."""
    root = (home or Path()).resolve()
    return tuple(f"{os.path.relpath(m.path.resolve(), root)}*{m.weight:g}" for m in members)


def check_weights(weights: Sequence[float], where: str) -> list[float]:
    """Ensemble weights as floats: finite, non-negative and not all 0.

    Raises:
        ConfigError: anything else, naming ``where`` they come from.
    """
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: ensemble weights must be numbers, got {list(weights)}") from None
    if not all(math.isfinite(w) and w >= 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"{where}: ensemble weights must be finite, non-negative and not all 0, got {values}")
    return values


def _read_manifest(folder: Path) -> list[Member]:
    path = folder / MANIFEST_FILE
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
        entries = [(folder / entry["path"], entry["weight"]) for entry in payload["members"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not an ensemble manifest: {error}") from error
    if not entries:
        raise CheckpointError(f"{path} is not an ensemble manifest: it lists no members")
    weights = check_weights([weight for _, weight in entries], str(path))
    return [Member(where.resolve(), weight) for (where, _), weight in zip(entries, weights, strict=True)]


def _expand(source: Path, weight: float) -> list[Member]:
    if not source.exists():
        raise CheckpointError(f"no run folder, cv folder, ensemble folder or model file at {source}")
    if source.is_file():
        return [Member(source, weight)]
    if (source / MANIFEST_FILE).is_file():
        members = _read_manifest(source)
        total = sum(m.weight for m in members)
        return [Member(m.path, weight * m.weight / total) for m in members]
    if CvFolder.is_cv_folder(source):
        files = CvFolder(source).model_files()
        return [Member(path, weight / len(files)) for path in files]
    return [Member(RunFolder.existing(source).model_file(), weight)]


def resolve_members(sources: Sources, weights: Sequence[float] | None = None) -> list[Member]:
    """The model files behind ``sources`` (cv and ensemble folders expanded), with their weights.

    Args:
        sources: Run folders, model files, cv folders and ensemble folders.
        weights: One per source (default 1 each); a folder's weight is shared by its models.

    Raises:
        ConfigError: a weight count that does not match, or bad weights.
        CheckpointError: a source that is none of these, or a cv folder whose folds have not finished.
    """
    sources = [sources] if isinstance(sources, str | Path) else list(sources)
    if not sources:
        raise ConfigError("no model given: name a run folder, a model file, a cv folder or an ensemble folder")
    weights = [1.0] * len(sources) if weights is None else check_weights(weights, "--weights")
    if len(weights) != len(sources):
        raise ConfigError(f"got {len(weights)} weights for {len(sources)} members; give one weight per member")
    return [member for source, weight in zip(sources, weights, strict=True) for member in _expand(Path(source), weight)]


def _preprocessing(config: Config) -> dict[str, Any]:
    """The evaluation transform as albumentations serialises it: what a model's input really is."""
    import albumentations as A

    return A.to_dict(config.data.transform())


def _check_agree(first: tuple[Member, Config, DatasetSpec], other: tuple[Member, Config, DatasetSpec]) -> None:
    """Members must take the same input and give the same output: the differences are named.

    Training-only options (augmentation) may differ; what the evaluation transform does may not.
    """
    (first_member, first_config, first_spec), (member, config, spec) = first, other
    differences = [
        f"{f.name} {getattr(first_spec, f.name)!r} vs {getattr(spec, f.name)!r}"
        for f in fields(DatasetSpec)
        if f.name not in ("name", "sample_keys", "labelled_split")
        and getattr(first_spec, f.name) != getattr(spec, f.name)
    ]
    if _preprocessing(first_config) != _preprocessing(config):
        options = [
            {"data.name": c.data.name, **transform_options(c.data.name, c.data.options, resolved=True)}
            for c in (first_config, config)
        ]
        keys = sorted(set(options[0]) | set(options[1]))
        named = [
            f"{k} {options[0].get(k)!r} vs {options[1].get(k)!r}"
            for k in keys
            if options[0].get(k) != options[1].get(k)
        ]
        differences += named or ["their evaluation transforms differ"]
    if differences:
        raise ConfigError(
            f"ensemble members {first_member.path} and {member.path} do not agree on their input and output: "
            + "; ".join(differences)
        )


def _home(sources: Sources) -> tuple[Path | None, CvFolder | None]:
    sources = [sources] if isinstance(sources, str | Path) else list(sources)
    if len(sources) != 1:
        return None, None
    source = Path(sources[0])
    if source.is_file():
        return source.parent, None
    return source, CvFolder(source) if CvFolder.is_cv_folder(source) else None


def load_predictor(
    sources: Sources,
    weights: Sequence[float] | None = None,
    acceleration: AccelerationOverride = AccelerationOverride(),
) -> Predictor:
    """Load one model or an ensemble from run folders, model files, cv folders and ensemble folders.

    Every member runs with its own run's ``train.amp``, ``train.channels_last`` and ``train.compile``,
    changed by ``acceleration``.

    Args:
        sources: One source or several (see :func:`resolve_members`).
        weights: One weight per source.
        acceleration: Per-call changes to the members' acceleration (e.g. ``--amp bf16``).

    Returns:
        :class:`Predictor`: the model alone when there is one member, else an :class:`Ensemble`.

    Raises:
        CheckpointError: a missing or unreadable source.
        ConfigError: members that disagree on task, classes, channels, sizes or preprocessing; bad weights.
    """
    members = resolve_members(sources, weights)
    loaded = [load_model(member.path) for member in members]
    described = [(m, lm.config, lm.spec) for m, lm in zip(members, loaded, strict=True)]
    for other in described[1:]:
        _check_agree(described[0], other)
    models = [accelerate(lm.model, acceleration.apply(lm.config.train.acceleration())) for lm in loaded]
    model = models[0] if len(models) == 1 else Ensemble(models, [m.weight for m in members])
    home, cv = _home(sources)
    configs = [lm.config for lm in loaded]
    return Predictor(model.eval(), loaded[0].config, loaded[0].spec, members, home, cv, configs)


def write_ensemble(
    sources: Sequence[str | Path], out: str | Path, *, weights: Sequence[float] | None = None, overwrite: bool = False
) -> Predictor:
    """Write an ensemble folder (``ensemble.yaml``) that ``eval``, ``predict`` and ``submit`` accept as a run.

    The members are checked (they load and agree) before anything is written; their paths are kept
    relative to ``out``, so the folder moves with the runs. Built from one cv folder, it keeps the
    post-processing tuned on that cv's out-of-fold predictions.

    Args:
        sources: Run folders, model files, cv folders and ensemble folders.
        out: The folder to write.
        weights: One per source (default: equal).
        overwrite: Replace an existing ensemble folder.

    Returns:
        The loaded ensemble, whose ``home`` is ``out``.

    Raises:
        RunFolderError: ``out`` exists and holds something else, or an ensemble without ``overwrite``.
        CheckpointError, ConfigError: see :func:`load_predictor`.
    """
    out = Path(out)
    is_ensemble = (out / MANIFEST_FILE).is_file()
    taken = out.exists() and (out.is_file() or any(out.iterdir()))
    if taken and not (overwrite and is_ensemble):
        hint = "an ensemble folder; pass --overwrite to replace it" if is_ensemble else "not an empty folder"
        raise RunFolderError(f"--out {out} is {hint}")
    predictor = load_predictor(sources, weights)
    out.mkdir(parents=True, exist_ok=True)
    entries = [
        {"path": os.path.relpath(m.path.resolve(), out.resolve()), "weight": m.weight} for m in predictor.members
    ]
    tuning = predictor.tuning() if predictor.cv is not None else None
    (out / POSTPROCESS_FILE).unlink(missing_ok=True)
    with atomic_write(out / MANIFEST_FILE) as handle:
        yaml.safe_dump({"members": entries}, handle, sort_keys=False)
    result = load_predictor(out)
    if tuning is not None:
        result.save_tuning(replace(tuning, models=result.model_names))
    return result
