"""The rooms of the package and who may import whom (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lovaszseg"
# room -> the rooms it must not import (directly, anywhere in its modules).
FORBIDDEN = {
    "training": ("inference", "workflows"),
    "inference": ("training", "workflows"),
    "scoring": ("training", "inference", "workflows", "storage"),
    "storage": ("training", "inference", "workflows", "scoring"),
    "runtime": ("training", "inference", "workflows", "scoring", "storage"),
    "data": ("training", "inference", "workflows", "scoring", "storage", "runtime"),
    "losses": ("training", "inference", "workflows", "scoring", "storage", "runtime", "data"),
}
MAX_FUNCTION_LINES = 80


def _modules(room: str = "") -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every ``lovaszseg.*`` module a file imports, at any depth (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("lovaszseg.")}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_does_not_import_the_rooms_above_it(room: str) -> None:
    assert _modules(room), f"no room {room}"
    crossings = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules(room)
        for name in sorted(_imported(path))
        if name.split(".")[1] in FORBIDDEN[room]
    ]
    assert not crossings


def test_eval_predict_and_submit_do_not_load_the_training_code() -> None:
    code = (
        "import sys, lovaszseg.workflows.runs, lovaszseg.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('lovaszseg.training', 'lovaszseg.workflows.cv'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_check_sees_a_crossing() -> None:
    """The import scan finds what it must refuse (so the room test can fail)."""
    assert "lovaszseg.training.train" in _imported(PACKAGE / "workflows" / "cv.py")
    assert any(name.startswith("lovaszseg.inference") for name in _imported(PACKAGE / "workflows" / "runs.py"))


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long
