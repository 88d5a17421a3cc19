"""Every command shown in README.md and docs/*.md runs, so the docs stay true.

Each page's commands run in order, as written, in a sandbox laid out like the repository (``configs/``,
``docs/``, ``../shared``, a private ``~``). The default run appends only budget overrides (a tiny model,
two steps per epoch, one or two epochs, a thirtieth of TGS-layout data to validate) and checks the shape
of every output shown after a ``$`` prompt (numbers replaced by ``#``); the slow run (``-m slow``)
replays the README walkthrough at full size and checks what the README claims of its numbers."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.config import builtin_config, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^ *```(bash|text)\n(.*?)^ *```$", re.MULTILINE | re.DOTALL)
# Commands the docs show that no test can run here, with the reason.
NOT_RUN = {
    "python3 -m venv": "the README's install commands: CI runs the test one verbatim (.ci/run)",
    "kaggle competitions": "uploads to Kaggle; needs the network and an account",
    "head ": "shows the start of the file the command before it wrote",
}
# Commands a page repeats from the page that runs them, by (page, command prefix): that page's run.
# The speed benchmark (compiled and bf16 models, minutes) runs with speed.md's slow check.
RUN_ON_ANOTHER_PAGE = {("benchmarks.md", "python benchmarks/bench_train.py --only speed"): "speed.md"}
# A tiny model and two steps per epoch: every train and compare command finishes in seconds.
TINY_MODEL = [
    "model.encoder=resnet18",
    "model.encoder_weights=null",
    "model.options.encoder_depth=3",
    "model.options.decoder_channels=[16,16,16]",  # scSE (configs/salt-winners.yaml) needs 16
    "train.max_steps_per_epoch=2",
    "train.device=cpu",
    "train.amp=none",
    "data.num_workers=0",
]
runner = CliRunner()


@dataclass
class DocCommand:
    page: str
    line: int
    argv: list[str]
    shown_output: list[str] = field(default_factory=list)  # lines after a `$ ` prompt, if any

    @property
    def abbreviated(self) -> bool:
        """``$ lovaszseg predict ...``: the output of the full command shown earlier on the page."""
        return self.argv[-1] == "..."


def doc_commands(page: Path) -> list[DocCommand]:
    """The commands of a page's ```bash blocks (one a line) and ```text blocks (after ``$ ``)."""
    text = page.read_text(encoding="utf-8")
    commands: list[DocCommand] = []
    for block in BLOCK.finditer(text):
        kind, body = block.groups()
        first_line = text.count("\n", 0, block.start(2)) + 1
        output: list[str] | None = None
        pending, start = "", 0  # a bash command so far: one may go on over lines ending in a backslash
        for offset, raw in enumerate(body.splitlines()):
            line = raw.strip()
            if kind == "bash":
                if not pending and (not line or line.startswith("#")):
                    continue
                start = start if pending else first_line + offset
                pending += line
                if pending.endswith("\\"):
                    pending = pending[:-1]
                    continue
                commands.append(DocCommand(page.name, start, shlex.split(pending, comments=True)))
                pending = ""
            elif kind == "text" and line.startswith("$ "):
                commands.append(DocCommand(page.name, first_line + offset, shlex.split(line[2:])))
                output = commands[-1].shown_output
            elif output is not None:
                output.append(raw)
    return commands


def _skeleton(lines: list[str]) -> list[str]:
    """Lines without numbers, box-drawing padding and surrounding blanks: what a tiny run shares."""
    shapes = (re.sub(r"\d+(\.\d+)?", "#", line) for line in lines)
    return [re.sub(r"[\s━─═]+", " ", shape).strip() for shape in shapes if shape.strip()]


# Benchmarks run once, on the least work that still goes through every measurement.
BENCHMARK_BUDGET = {
    "benchmarks/bench_train.py": [
        *("--s1", "1", "--s2", "2", "--val-size", "8", "--test-images", "4"),
        *("--cli-repeats", "1", "--retries", "0", "--wait", "0"),
        *("--speed-repeats", "1", "--speed-s1", "1", "--speed-s2", "2"),
    ],
    "benchmarks/bench_submit.py": ["--counts", "16,32", "--members", "2"],
}
# Docs scripts that train: the tiny model, two seeds and the entries that show every kind of line.
SCRIPT_BUDGET = {
    "docs/winners_evidence.py": [*TINY_MODEL, "--seeds", "0,1", "--entries", "plain,empty-head"],
}


def _with_budget(argv: list[str]) -> list[str]:
    """The command with budget overrides appended (train, compare) or fewer repeats (benchmarks)."""
    if argv[0] != "lovaszseg":
        if argv[1] in SCRIPT_BUDGET:  # an option the command gives itself (e.g. its --entries) is kept
            budget = SCRIPT_BUDGET[argv[1]]
            kept = [i for i, word in enumerate(budget) if word.startswith("--") and word in argv]
            return [*argv, *(word for i, word in enumerate(budget) if i not in kept and i - 1 not in kept)]
        budget = ["--repeats", "1", *BENCHMARK_BUDGET.get(argv[1], [])]
        return [*argv, *budget] if argv[1].startswith("benchmarks/") else argv
    if argv[1] not in ("train", "compare", "cv") or "--resume" in argv:
        return argv
    explicit = len(argv) > 2 and "=" not in argv[2] and not argv[2].startswith("-")
    config_path = argv[2] if explicit else builtin_config("salt-demo")
    config = load_config(config_path)
    budget = [*TINY_MODEL, "data.options.n_folds=30"] if config.data.name == "tgs" else TINY_MODEL  # 1/30 to validate
    if argv[1] == "compare":
        return [*argv, *budget, "--epochs", "2"]
    epochs = [f"stages.{i}.{key}=1" for i in range(len(config.stages)) for key in ("epochs", "cycles")]
    folds = ["--folds", "2"] if argv[1] == "cv" else []  # two folds show everything five do
    return [*argv, *budget, *epochs, *folds]


def _run(command: DocCommand, argv: list[str]) -> str:
    """Run one documented command in the current directory; return what it printed."""
    where = f"{command.page}:{command.line}"
    if argv[0] == "lovaszseg":
        result = runner.invoke(app, [str(Path(a).expanduser()) if a.startswith("~") else a for a in argv[1:]])
        output, failed = result.output, result.exit_code != 0
    elif argv[0] in ("python", "python3"):
        process = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=600)
        output, failed = process.stdout + process.stderr, process.returncode != 0
    else:
        pytest.fail(f"{where}: {shlex.join(argv)!r} is neither run here nor listed in NOT_RUN")
    shows_an_error = bool(command.shown_output) and command.shown_output[0].startswith("error:")
    assert failed == shows_an_error, f"{where}: {shlex.join(argv)} exit status unexpected:\n{output}"
    return output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``~`` for every page, so the built-in demo data is generated once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def sandbox(tmp_path: Path, home: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in ``tmp/repo`` (the repository's configs, docs and benchmarks), ``tmp/shared`` beside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("configs", "docs", "benchmarks"):
        (repo / name).symlink_to(ROOT / name)
    (tmp_path / "shared").symlink_to(shared_dir)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LOVASZSEG_CACHE", raising=False)
    monkeypatch.chdir(repo)
    return repo


def run_page(page: Path, full_size: bool) -> dict[str, str]:
    """Run a page's commands in order and check that they print what the page shows, in shape.

    Returns:
        What each ``lovaszseg SUBCOMMAND`` printed last.
    """
    outputs: dict[str, str] = {}  # by `lovaszseg SUBCOMMAND`, for the abbreviated `$ lovaszseg predict ...`
    for command in doc_commands(page):
        words = shlex.join(command.argv)
        if any(words.startswith(prefix) for prefix in NOT_RUN):
            continue
        if any(command.page == name and words.startswith(prefix) for name, prefix in RUN_ON_ANOTHER_PAGE):
            continue
        if command.abbreviated:
            output = outputs[shlex.join(command.argv[:2])]
        else:
            output = _run(command, command.argv if full_size else _with_budget(command.argv))
            outputs[shlex.join(command.argv[:2])] = output
        expected, actual = _skeleton(command.shown_output), _skeleton(output.splitlines())
        missing = [line for line in expected if line not in actual]
        assert not missing, f"{command.page}:{command.line}: {words} no longer prints {missing}; it printed:\n{output}"
    return outputs


def test_commands_are_found_in_bash_and_text_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "intro\n```bash\n# a comment\nlovaszseg train configs/x.yaml a.b=1  # trailing\n"
        "lovaszseg compare \\\n    --seeds 0,1\n```\n"
        "  ```text\n  $ lovaszseg eval runs/x\n  metric 0.5\n  ```\n```python\nlovaszseg = 1\n```\n"
    )
    commands = doc_commands(page)
    assert [(c.line, c.argv, c.shown_output) for c in commands] == [
        (4, ["lovaszseg", "train", "configs/x.yaml", "a.b=1"], []),
        (5, ["lovaszseg", "compare", "--seeds", "0,1"], []),
        (9, ["lovaszseg", "eval", "runs/x"], ["  metric 0.5"]),
    ]


@pytest.mark.parametrize(
    ("shown", "printed", "same_shape"),
    [
        (["1-bce epoch 1/3  loss 0.4248"], ["1-bce epoch 1/1  loss 12.5"], True),
        (["┃ stage    ┃ iou ┃"], ["┃ stage ┃ iou ┃"], True),
        (["1-bce epoch 1/3  loss 0.4248"], ["1-ce epoch 1/1  loss 0.1"], False),
    ],
)
def test_skeleton_ignores_numbers_and_padding(shown: list[str], printed: list[str], same_shape: bool) -> None:
    assert (_skeleton(shown) == _skeleton(printed)) is same_shape


def test_a_command_repeated_from_another_page_runs_there() -> None:
    for (page, prefix), runner_page in RUN_ON_ANOTHER_PAGE.items():
        shown = [
            shlex.join(c.argv) for c in doc_commands(ROOT / "docs" / page) if shlex.join(c.argv).startswith(prefix)
        ]
        run = {shlex.join(c.argv) for c in doc_commands(ROOT / "docs" / runner_page)}
        assert shown and set(shown) <= run, f"{page} shows {shown}, which {runner_page} does not run"


def test_every_page_with_commands_is_covered() -> None:
    pages = {p.name for p in PAGES if doc_commands(p)}
    assert {"README.md", "tgs-recipe.md", "experiments.md", "datasets.md", "configs.md"} <= pages


# experiments.md replays every experiment on the real TGS files (a compare and a 5-fold cv over 3,000
# images): about 5 minutes even at the tiny budget, so it runs with the slow checks; the commands it
# uses are the same ones the README and tgs-recipe.md pages run here.
SLOW_PAGES = {"experiments.md", "speed.md"}  # minutes: real-data runs, compiled and emulated-bf16 models


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p for p in PAGES if doc_commands(p)],
    ids=lambda p: p.name,
)
def test_documented_commands_run(page: Path, sandbox: Path) -> None:
    run_page(page, full_size=False)


def _table_value(output: str, name: str) -> float:
    """A number from a rich table row ``│ name │ value │`` of a command's output."""
    match = re.search(rf"│ {name} +│ +([\d.]+) │", output)
    assert match, f"no row {name!r} in:\n{output}"
    return float(match.group(1))


@pytest.mark.slow
def test_readme_walkthrough_at_full_size_keeps_the_readme_claims(sandbox: Path) -> None:
    """The full-size demo, as the README runs it. Its numbers move with the torch version and threads,
    so the README's claims are checked, not its digits: the demo learns, and TTA plus the threshold
    search do not lose what training reached."""
    outputs = run_page(ROOT / "README.md", full_size=True)
    trained = outputs["lovaszseg train"]
    best_per_stage = [float(score) for score in re.findall(r"│ \d-\w+ +│ +3 │ +[\d.]+ │ +([\d.]+) │", trained)]
    assert len(best_per_stage) == 2 and max(best_per_stage) > 0.4, trained
    evaluated = outputs["lovaszseg eval"]
    assert _table_value(evaluated, "salt_score_at_best_threshold") >= _table_value(evaluated, "salt_score")
    assert _table_value(evaluated, "image_iou_at_best_threshold") >= _table_value(evaluated, "image_iou")
    assert "wrote 100 masks" in outputs["lovaszseg predict"]
    assert (sandbox / "submission.csv").read_text().count("\n") == 101  # header + the 100 test ids
