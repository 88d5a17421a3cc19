"""The rooms of the package and who may import whom (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lovaszseg"
# What uses a model or a run: no module below these rooms imports them.
_USERS = ("training", "inference", "workflows", "scoring", "storage")
# room (a folder or a top-level module) -> the rooms and modules it must not import (anywhere in it).
FORBIDDEN = {
    "training": ("inference", "workflows"),
    "inference": ("training", "workflows"),
    "scoring": ("training", "inference", "workflows", "storage"),
    "storage": ("training", "inference", "workflows", "scoring"),
    "runtime": (*_USERS, "config"),
    "data": (*_USERS, "runtime"),
    "losses": (*_USERS, "runtime", "data"),
    "config": _USERS,
    "models": _USERS,
    "decoders": _USERS,
    "heads": _USERS,
    "encoder_weights": _USERS,
    "rle": _USERS,
    # Plain-Python settings the CLI and the config import: the errors alone.
    "windowing": (*_USERS, "runtime", "data", "losses", "config", "models", "heads"),
    "thresholds": (*_USERS, "runtime", "data", "losses", "config", "models", "heads"),
}
MAX_FUNCTION_LINES = 80


def _modules(room: str = "") -> list[Path]:
    if (PACKAGE / f"{room}.py").is_file():
        return [PACKAGE / f"{room}.py"]
    return sorted((PACKAGE / room).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every ``lovaszseg.*`` module a file imports, at any depth (also inside functions)."""
    return _imported_by(path.read_text(encoding="utf-8"))


def _imported_by(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("lovaszseg.")}


def _crossings(room: str, imported: set[str]) -> list[str]:
    """The imports among ``imported`` that ``room`` must not make."""
    return [name for name in sorted(imported) if name.split(".")[1] in FORBIDDEN[room]]


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_does_not_import_the_rooms_above_it(room: str) -> None:
    assert _modules(room), f"no room {room}"
    crossings = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules(room)
        for name in _crossings(room, _imported(path))
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
    # A top-level module is a room too: the config's former import of the sliding window is refused.
    old_config_import = "from lovaszseg.inference.window import SlidingWindow, parse_size\n"
    assert "lovaszseg.inference.window" in _crossings("config", _imported_by(old_config_import))
    assert _modules("config") == [PACKAGE / "config.py"]


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long
