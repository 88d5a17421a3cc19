"""Run the ```python blocks of docs/losses.md in order, in one namespace, so the page stays true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "losses.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks(text: str) -> list[str]:
    """The python blocks, each preceded by blank lines so that its line numbers are the page's."""
    return ["\n" * text.count("\n", 0, match.start(1)) + match.group(1) for match in PYTHON_BLOCK.finditer(text)]


def test_python_blocks_are_found_with_their_line_numbers() -> None:
    text = "intro\n```python\nx = 1\n```\n```yaml\nk: v\n```\n```python\ny = x + 1\n```\n"
    assert _blocks(text) == ["\n\nx = 1\n", "\n" * 8 + "y = x + 1\n"]


def test_every_python_block_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    namespace: dict[str, object] = {"__name__": "docs_losses"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # tracebacks point into the page
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "labels must hold 0, 1; found [3]" in printed
    assert "has no option ['per_img']" in printed
    assert "2 pixels missed in image 0: per_image=0.5000 global=0.1111" in printed
