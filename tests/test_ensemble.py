"""Ensembles: averaging by hand, members from runs, files, cv and ensemble folders, agreement checks."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_salt_config
from rich.console import Console
from torch import nn

from lovaszseg.config import load_config
from lovaszseg.errors import CheckpointError, ConfigError, RunFolderError
from lovaszseg.inference.ensemble import Ensemble, load_predictor, resolve_members, write_ensemble
from lovaszseg.inference.predict import predict_probabilities
from lovaszseg.training import train

ONE_STAGE = [{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.001}]


class _Constant(nn.Module):
    """A 'model' whose logits are a fixed tensor, whatever the input (so a mirrored input changes nothing)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits


def _input() -> torch.Tensor:
    return torch.ones(1, 1, 2, 3)


def test_binary_average_equals_a_hand_computation() -> None:
    a = torch.tensor([[[[0.0, 2.0, -2.0], [1.0, -1.0, 0.5]]]])
    b = torch.tensor([[[[4.0, 0.0, 0.0], [-3.0, 3.0, 0.0]]]])
    ensemble = Ensemble([_Constant(a), _Constant(b)], [3.0, 1.0])
    expected = 0.75 * torch.sigmoid(a) + 0.25 * torch.sigmoid(b)
    torch.testing.assert_close(ensemble(_input()), expected, rtol=0, atol=1e-7)
    # With flip TTA: the mean over members and over (plain, mirrored) predictions; the mirrored one,
    # flipped back, is the constant logits flipped.
    mirrored = 0.75 * torch.sigmoid(a.flip(-1)) + 0.25 * torch.sigmoid(b.flip(-1))
    got = predict_probabilities(ensemble, _input(), "hflip")
    torch.testing.assert_close(got, (expected + mirrored) / 2, rtol=0, atol=1e-7)

    # By hand at the first pixel: plain 3/4 s(0) + 1/4 s(4), mirrored 3/4 s(-2) + 1/4 s(0), s the sigmoid.
    def s(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    hand = ((0.75 * s(0) + 0.25 * s(4)) + (0.75 * s(-2) + 0.25 * s(0))) / 2
    assert got[0, 0, 0, 0].item() == pytest.approx(hand, abs=1e-7)


def test_multiclass_average_is_of_softmax_probabilities() -> None:
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    ensemble = Ensemble([_Constant(a), _Constant(b)], [1.0, 1.0])
    probs = ensemble(torch.ones(2, 3, 5, 5))
    torch.testing.assert_close(probs, (a.softmax(1) + b.softmax(1)) / 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 5, 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "one weight per member"),
        ([1.0, -1.0], "non-negative"),
        ([0.0, 0.0], "not all 0"),
        ([1.0, float("nan")], "finite"),
        ([float("inf"), 1.0], "finite"),
    ],
)
def test_bad_weights_are_config_errors(weights: list[float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Ensemble([_Constant(torch.zeros(1, 1, 1, 1))] * 2, weights)


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def two_runs(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        config = tiny_salt_config(tiny_salt, tmp, stages=ONE_STAGE, train={"seed": seed, "device": "cpu"})
        runs.append(train(load_config(config), run_dir=tmp / f"seed{seed}", console=_quiet()).run_dir)
    return runs[0], runs[1]


def test_an_ensemble_of_runs_averages_their_models(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    predictor = load_predictor([first, second / "best.pt"], weights=[1, 3])
    assert [m.path for m in predictor.members] == [first / "model.safetensors", second / "best.pt"]
    images = torch.randn(2, 1, 128, 128)
    single = [load_predictor(p).model for p in (first, second / "best.pt")]
    expected = (torch.sigmoid(single[0](images)) + 3 * torch.sigmoid(single[1](images))) / 4
    with torch.no_grad():
        torch.testing.assert_close(predictor.model(images), expected, rtol=0, atol=1e-6)
    assert predictor.home is None and predictor.name.count(" + ") == 1


def test_an_ensemble_folder_moves_with_its_runs_and_weights_multiply(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = two_runs
    shutil.copytree(first, tmp_path / "runs" / "a")
    shutil.copytree(second, tmp_path / "runs" / "b")
    write_ensemble([tmp_path / "runs" / "a", tmp_path / "runs" / "b"], tmp_path / "ens", weights=[2, 1])
    entries = yaml.safe_load((tmp_path / "ens" / "ensemble.yaml").read_text())["members"]
    assert [e["path"] for e in entries] == ["../runs/a/model.safetensors", "../runs/b/model.safetensors"]
    shutil.move(tmp_path, tmp_path.parent / f"{tmp_path.name}-moved")
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    nested = resolve_members([moved / "ens", moved / "runs" / "a"], weights=[3, 1])
    assert [(m.path.parent.name, m.weight) for m in nested] == [("a", 2.0), ("b", 1.0), ("a", 1.0)]


def test_write_ensemble_refuses_a_taken_folder(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("x")
    with pytest.raises(RunFolderError, match="is not an empty folder"):
        write_ensemble(list(two_runs), tmp_path / "taken")
    write_ensemble(list(two_runs), tmp_path / "ens")
    with pytest.raises(RunFolderError, match="is an ensemble folder; pass --overwrite"):
        write_ensemble(list(two_runs), tmp_path / "ens")
    assert len(write_ensemble(list(two_runs)[:1], tmp_path / "ens", overwrite=True).members) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"options": {"fold": 0, "n_folds": 4, "pad_size": 160}}}, "pad_size 128 vs 160"),
        ({"data": {"options": {"fold": 0, "n_folds": 4, "resize": 96, "pad_size": 96}}}, "resize None vs \\(96, 96\\)"),
    ],
)
def test_members_that_disagree_are_named(
    change: dict, message: str, two_runs: tuple[Path, Path], tiny_salt: Path, tmp_path: Path
) -> None:
    config = tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE, **change)
    other = train(load_config(config), run_dir=tmp_path / "other", console=_quiet()).run_dir
    with pytest.raises(
        ConfigError,
        match=f"members {two_runs[0]}/model.safetensors and {other}/model.safetensors do not agree.*{message}",
    ):
        load_predictor([two_runs[0], other])


def test_a_multiclass_member_among_binary_ones_is_refused(
    two_runs: tuple[Path, Path], tiny_voc: Path, tmp_path: Path
) -> None:
    data = {"name": "voc", "root": str(tiny_voc), "batch_size": 4, "options": {"crop_size": 64}}
    stages = [{"name": "lovasz", "loss": {"lovasz_softmax": {"per_image": True}}, "epochs": 1}]
    config = tiny_salt_config(tiny_voc, tmp_path, stages=stages, data=data)
    voc = train(load_config(config), run_dir=tmp_path / "voc", console=_quiet()).run_dir
    with pytest.raises(ConfigError, match=r"task 'binary' vs 'multiclass'.*num_classes 1 vs 21"):
        load_predictor([two_runs[0], voc])


@pytest.mark.parametrize("make", ["missing", "empty folder"])
def test_no_such_member_is_a_checkpoint_error(make: str, tmp_path: Path) -> None:
    source = tmp_path / "nothing"
    if make == "empty folder":
        source.mkdir()
    with pytest.raises(CheckpointError, match=str(source)):
        load_predictor([source])


def test_members_may_differ_in_training_augmentation(
    two_runs: tuple[Path, Path], tiny_salt: Path, tmp_path: Path
) -> None:
    data = {"options": {"fold": 0, "n_folds": 4, "hflip": 0.0, "shift": 0.1}}
    config = tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE, data=data)
    other = train(load_config(config), run_dir=tmp_path / "other", console=_quiet()).run_dir
    assert len(load_predictor([two_runs[0], other]).members) == 2  # the evaluation transform is the same


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, float("nan")], r"finite, non-negative and not all 0, got \[1\.0, nan\]"),
        ([float("inf"), 1.0], r"finite, non-negative and not all 0, got \[inf, 1\.0\]"),
        ([0.0, 0.0], r"finite, non-negative and not all 0, got \[0\.0, 0\.0\]"),
    ],
)
def test_non_finite_or_zero_weights_are_refused_on_the_command_line_and_in_a_manifest(
    weights: list[float], message: str, two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--weights: ensemble weights must be " + message):
        resolve_members(list(two_runs), weights=weights)
    write_ensemble(list(two_runs), tmp_path / "ens")
    manifest = tmp_path / "ens" / "ensemble.yaml"
    entries = yaml.safe_load(manifest.read_text())
    for entry, weight in zip(entries["members"], weights, strict=True):
        entry["weight"] = weight  # as a hand edit would leave it (YAML .nan / .inf)
    manifest.write_text(yaml.safe_dump(entries))
    with pytest.raises(ConfigError, match=f"{manifest}: ensemble weights must be " + message):
        load_predictor(tmp_path / "ens")


class _WithHead(nn.Module):
    """Fixed mask logits and a fixed empty-image head logit per image, whatever the input."""

    def __init__(self, logits: torch.Tensor, head: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.head = logits, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits, self.head


def test_the_heads_probabilities_are_averaged_with_the_member_weights_and_over_tta() -> None:
    from lovaszseg.inference.predict import predict_outputs

    a, b = torch.randn(1, 1, 2, 3), torch.randn(1, 1, 2, 3)
    ensemble = Ensemble([_WithHead(a, torch.tensor([[1.0]])), _WithHead(b, torch.tensor([[-2.0]]))], [3.0, 1.0])
    outputs = predict_outputs(ensemble, _input(), "hflip")
    expected = 0.75 * torch.sigmoid(torch.tensor(1.0)) + 0.25 * torch.sigmoid(torch.tensor(-2.0))
    assert outputs.empty is not None and outputs.empty.item() == pytest.approx(expected.item(), abs=1e-7)
    mirrored = 0.75 * torch.sigmoid(a.flip(-1)) + 0.25 * torch.sigmoid(b.flip(-1))
    plain = 0.75 * torch.sigmoid(a) + 0.25 * torch.sigmoid(b)
    torch.testing.assert_close(outputs.masks, (plain + mirrored) / 2, rtol=0, atol=1e-7)
    # A member without a head: the ensemble gives masks alone.
    mixed = Ensemble([_WithHead(a, torch.tensor([[1.0]])), _Constant(b)], [1.0, 1.0])
    assert predict_outputs(mixed, _input()).empty is None


def test_members_with_and_without_a_head_are_an_error_when_the_gate_is_used(tiny_salt: Path, tmp_path: Path) -> None:
    runs = {}
    for name, weight in (("plain", 0.0), ("head", 0.5)):
        config = tiny_salt_config(
            tiny_salt, tmp_path, stages=ONE_STAGE, train={"device": "cpu", "max_steps_per_epoch": 1}
        )
        config["model"]["empty_head"] = weight
        runs[name] = train(load_config(config), run_dir=tmp_path / name, console=Console(file=io.StringIO())).run_dir
    predictor = load_predictor([runs["plain"], runs["head"]])
    assert not predictor.has_empty_head
    with pytest.raises(ConfigError, match=r"--empty-gate reads .*lack: .*plain.*; members with one: .*head"):
        predictor.require_empty_head("--empty-gate")
    load_predictor(runs["head"]).require_empty_head("--empty-gate")  # every member has one
    from lovaszseg.workflows.runs import predict_run

    with pytest.raises(ConfigError, match="lack"):
        predict_run([runs["plain"], runs["head"]], tiny_salt / "test" / "images", tmp_path / "out", empty_gate=0.5)
