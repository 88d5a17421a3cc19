"""Shared fixtures. Tests that read ../shared run whenever it exists, fail in CI without it, else skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``../shared`` folder of real data and golden results."""
    if SHARED_DIR.is_dir():
        return SHARED_DIR
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the shared test material is missing: {SHARED_DIR}")
    pytest.skip(f"shared test material not found at {SHARED_DIR}")
