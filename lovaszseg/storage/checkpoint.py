"""Checkpoints as plain dicts of tensors and numbers: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lovaszseg.data.io import atomic_write
from lovaszseg.errors import CheckpointError

__all__ = ["capture_rng", "checkpoint_bytes", "load_checkpoint", "restore_rng", "save_checkpoint"]


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """``state`` serialised once, for writing to several files (best, last, stage files)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, state: dict[str, Any] | bytes) -> None:
    """Write ``state`` (or its :func:`checkpoint_bytes`) through a temporary file: a crash never tears it.

    Args:
        path: The checkpoint file.
        state: The checkpoint dict, or its bytes.

    Raises:
        OutputError: the file cannot be written (e.g. a full disk); the previous ``path`` is kept.
    """
    data = state if isinstance(state, bytes) else checkpoint_bytes(state)
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing code from it (``weights_only=True``), onto the CPU.

    Raises:
        CheckpointError: no such file, or the file is not a lovaszseg checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise CheckpointError(f"{path} is not a readable lovaszseg checkpoint: {error}") from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a lovaszseg checkpoint (it has no 'model' entry)")
    return state


def capture_rng() -> dict[str, Any]:
    """Torch, CUDA, NumPy and Python RNG states as tensors and lists (loadable with weights_only)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": list(random.getstate()),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
