"""Execute ``notebooks/lovasz_losses.ipynb`` end to end and check what it prints."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lovasz_losses.ipynb"
IOU_LINE = re.compile(r"^(?P<name>\S.*?)\s+IoU (?P<before>\d\.\d{3}) -> (?P<after>\d\.\d{3})$", re.MULTILINE)
TRAINED_FROM_SCRATCH = [
    "bce",
    "jaccard",
    "lovasz_hinge",
    "lovasz_hinge elu+1",
    "lovasz_softmax",
    "0.5 bce + 0.5 lovasz",
]
FINE_TUNED = "bce, then lovasz"
MAX_BYTES = 500_000


def _stream_text(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.output_type == "stream")


def _execute(tmp_path: Path) -> nbformat.NotebookNode:
    """Run the notebook in ``notebooks/`` on a kernel of this very interpreter; raises if a cell fails."""
    # A kernel spec of our own, so the kernel is sys.executable whatever other "python3" specs exist.
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "test", "language": "python"}))
    manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        km=manager,
        kernel_name="python3",
        timeout=300,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    return notebook


def _ious(notebook: nbformat.NotebookNode) -> dict[str, tuple[float, float]]:
    text = "".join(_stream_text(cell) for cell in notebook.cells)
    return {m["name"]: (float(m["before"]), float(m["after"])) for m in IOU_LINE.finditer(text)}


def _check_training(ious: dict[str, tuple[float, float]], min_gain: float) -> None:
    assert sorted(ious) == sorted([*TRAINED_FROM_SCRATCH, FINE_TUNED])
    for name in TRAINED_FROM_SCRATCH:
        before, after = ious[name]
        assert after >= before + min_gain, (name, before, after)
    assert ious[FINE_TUNED][0] == ious["bce"][1]  # fine-tuning starts from the BCE model


def test_stored_notebook_is_executed_and_small() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)
    figures = [output for cell in code for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 2
    assert "Using real TGS Salt data" in "".join(_stream_text(cell) for cell in code)
    assert NOTEBOOK.stat().st_size < MAX_BYTES


def test_notebook_runs_on_the_real_tgs_data(shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOVASZSEG_SHARED", raising=False)  # the notebook must find ../shared by itself
    executed = _execute(tmp_path)
    text = "".join(_stream_text(cell) for cell in executed.cells)
    assert "Using real TGS Salt data from" in text
    assert "SYNTHETIC" not in text
    ious = _ious(executed)
    _check_training(ious, min_gain=0.2)
    assert all(after > 0.6 for _, after in ious.values())
    # The worked examples are exact arithmetic: the stored outputs must be what the code prints today.
    stored = nbformat.read(NOTEBOOK, as_version=4)
    for old, new in zip(stored.cells, executed.cells, strict=True):
        if old.cell_type == "code" and not IOU_LINE.search(_stream_text(old)):
            assert _stream_text(new) == _stream_text(old), old.source[:80]


@pytest.mark.slow
def test_notebook_falls_back_to_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOVASZSEG_SHARED", str(tmp_path / "nowhere"))
    executed = _execute(tmp_path)
    text = "".join(_stream_text(cell) for cell in executed.cells)
    assert "using SYNTHETIC salt blobs" in text
    assert "Using real TGS Salt data" not in text
    _check_training(_ious(executed), min_gain=0.1)
