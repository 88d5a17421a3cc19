"""The Python examples in README.md and docs/*.md run as written, so the docs stay true."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/losses.md has its own test (tests/test_docs_losses.py) that also checks what the blocks print.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "losses.md")]
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks(page: Path) -> list[str]:
    return PYTHON_BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Examples that make their own tempfile.mkdtemp() work folder (gigabytes of runs) get it under tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for index, block in enumerate(_blocks(page)):
        try:
            exec(compile(block, f"{page.name}[python block {index}]", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            pytest.fail(f"{page.name}, python block {index} failed: {error!r}\n{block}")


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .venv && [^\n]+)\n```", readme)
    assert len(commands) >= 2
    main_job, tests = commands[0], commands[1]
    assert main_job.endswith("lovaszseg train") and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()
