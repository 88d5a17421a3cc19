"""Shared fixtures. Tests that read ../shared run whenever it exists, fail in CI without it, else skip."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from lovaszseg.data.synth import synth_salt, synth_voc

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
# cv and compare's --amp/--channels-last/--compile against a config with amp auto, compile on and a
# dotted train.amp=none: (options, the (amp, channels_last, compile) every run must get).
ACCELERATION_CASES = [
    ([], ("none", False, True)),  # the config's own, with its dotted override train.amp=none
    (["--amp", "bf16", "--channels-last", "--no-compile"], ("bf16", True, False)),  # typed options win
]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``../shared`` folder of real data and golden results."""
    if SHARED_DIR.is_dir():
        return SHARED_DIR
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the shared test material is missing: {SHARED_DIR}")
    pytest.skip(f"shared test material not found at {SHARED_DIR}")


@pytest.fixture(scope="session")
def tiny_salt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic TGS Salt tree (24 train, 6 test images)."""
    return synth_salt(tmp_path_factory.mktemp("data") / "salt", n_train=24, n_test=6, seed=0)


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic VOC tree (12 images of 64x64)."""
    return synth_voc(tmp_path_factory.mktemp("data") / "voc", n_images=12, seed=0, size=(64, 64))


def tiny_salt_config(root: Path, runs: Path, **sections: Any) -> dict[str, Any]:
    """A config that trains a very small UNet for a few steps on ``root``."""
    config: dict[str, Any] = {
        "model": {
            "arch": "Unet",
            "encoder": "resnet18",
            "encoder_weights": None,
            "options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
        },
        "data": {"name": "tgs", "root": str(root), "batch_size": 8, "options": {"fold": 0, "n_folds": 4}},
        "stages": [
            {"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01},
            {"name": "lovasz", "loss": {"lovasz_hinge": {"per_image": True}}, "epochs": 2, "lr": 0.005},
        ],
        "train": {"seed": 0, "device": "cpu"},
        "output": {"runs_dir": str(runs), "name": "tiny"},
    }
    for section, values in sections.items():
        config[section] = values if not isinstance(config.get(section), dict) else {**config[section], **values}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# What the metrics engine reports for a binary task without an ignore index.
BINARY_METRIC_KEYS = frozenset(
    {
        "salt_score",
        "iou",
        "image_iou",
        "best_threshold",
        "salt_score_at_best_threshold",
        "iou_best_threshold",
        "iou_at_best_threshold",
        "image_iou_best_threshold",
        "image_iou_at_best_threshold",
    }
)
# What eval adds for binary models: the metrics after the tuned (or applied) threshold and min-area.
POSTPROCESSED_KEYS = frozenset(
    {
        "postprocess_threshold",
        "postprocess_min_area",
        "salt_score_postprocessed",
        "iou_postprocessed",
        "image_iou_postprocessed",
    }
)


class FirstColumns(nn.Module):
    """A fake binary model: logit +4 on the first 16 columns of the (padded) input, -4 elsewhere."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.full((images.shape[0], 1, *images.shape[-2:]), -4.0)
        logits[..., :16] = 4.0
        return logits


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """``atomic_write``'s temporary files sit on a full disk: the system fails their writes with ENOSPC.

    Their descriptor is pointed at ``/dev/full``, so the real write calls fail as on a full disk.
    """
    import lovaszseg.data.io

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    create = lovaszseg.data.io._create_temporary

    def on_full_disk(path: Path) -> tuple[int, Path]:
        fd, temporary = create(path)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, temporary

    monkeypatch.setattr(lovaszseg.data.io, "_create_temporary", on_full_disk)


@pytest.fixture
def window_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of each call of the sliding-window machinery (the merged maps it holds at once)."""
    import lovaszseg.inference.predict

    passes: list[int] = []
    predict_windows = lovaszseg.inference.predict.predict_windows

    def counted(window: Any, predict: Any, images: torch.Tensor) -> Any:
        passes.append(len(images))
        return predict_windows(window, predict, images)

    monkeypatch.setattr(lovaszseg.inference.predict, "predict_windows", counted)
    return passes
