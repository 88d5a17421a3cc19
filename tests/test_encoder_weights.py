"""Encoder weights from local files: timm/torchvision/smp layouts, the first conv, every mismatch an error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import tiny_salt_config
from safetensors.torch import save_file
from torch import nn

from lovaszseg.config import ModelConfig, load_config
from lovaszseg.encoder_weights import weights_file
from lovaszseg.errors import ConfigError
from lovaszseg.models import build_model
from lovaszseg.storage.checkpoint import load_checkpoint
from lovaszseg.storage.run_folder import RunFolder
from lovaszseg.training import train

_OPTIONS = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def _config(path: Path | str, encoder: str = "resnet18") -> ModelConfig:
    return ModelConfig(arch="Unet", encoder=encoder, encoder_weights=str(path), options=_OPTIONS)


@pytest.fixture(scope="module")
def timm_resnet18() -> dict[str, torch.Tensor]:
    """A randomly initialised timm resnet18 (classifier ``fc`` included), its BatchNorm statistics made non-trivial."""
    torch.manual_seed(1)
    model = timm.create_model("resnet18", pretrained=False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.state_dict()


@pytest.fixture(scope="module")
def torchvision_resnet18() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision resnet18, in torchvision's key layout."""
    torch.manual_seed(2)
    return torchvision.models.resnet18(weights=None).state_dict()


def _save(state: dict[str, torch.Tensor], path: Path, *, prefix: str = "", wrapper: str | None = None) -> Path:
    state = {prefix + key: value for key, value in state.items()}
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save({wrapper: state, "epoch": 90} if wrapper else state, path)
    return path


def _assert_holds(encoder: nn.Module, state: dict[str, torch.Tensor], *, prefix: str = "", skip: str = "") -> int:
    """Every tensor of the encoder (but ``skip``) equals the file's; returns how many the encoder has."""
    own = {key.removeprefix(prefix): value for key, value in encoder.state_dict().items()}
    for key, value in own.items():
        if key != skip:
            assert key in state and torch.equal(value, state[key]), key
    return len(own)


@pytest.mark.parametrize(
    ("source", "name", "prefix", "wrapper"),
    [
        ("timm", "w.pth", "", None),
        ("torchvision", "w.pt", "", None),
        ("timm", "w.safetensors", "", None),
        ("torchvision", "w.safetensors", "", None),
        ("timm", "ddp.pth", "module.", None),  # saved from a DistributedDataParallel model
        ("timm", "checkpoint.pth", "module.", "state_dict"),  # a timm training checkpoint
        ("torchvision", "backbone.bin", "backbone.", "model"),
    ],
)
def test_weights_file_is_loaded_exactly(
    source: str,
    name: str,
    prefix: str,
    wrapper: str | None,
    tmp_path: Path,
    timm_resnet18: dict[str, torch.Tensor],
    torchvision_resnet18: dict[str, torch.Tensor],
) -> None:
    state = timm_resnet18 if source == "timm" else torchvision_resnet18
    path = _save(state, tmp_path / name, prefix=prefix, wrapper=wrapper)
    # All 122 tensors but the classifier's two, BatchNorm counters included (smp keeps every stage at depth 3).
    assert _assert_holds(build_model(_config(path), 3, 1).encoder, state) == 120


def test_smp_encoder_and_whole_smp_model_files(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = build_model(ModelConfig(arch="FPN", encoder="resnet18", encoder_weights=None), 3, 2)
    encoder_state = source.encoder.state_dict()
    for path, state in (
        (tmp_path / "encoder.pth", encoder_state),
        (tmp_path / "fpn.safetensors", source.state_dict()),  # e.g. a lovaszseg run's model.safetensors
    ):
        _save(state, path)
        assert _assert_holds(build_model(_config(path), 3, 1).encoder, encoder_state) == 120


def test_batchnorm_counters_may_be_absent(tmp_path: Path, torchvision_resnet18: dict[str, torch.Tensor]) -> None:
    weights = {key: value for key, value in torchvision_resnet18.items() if not key.endswith("num_batches_tracked")}
    encoder = build_model(_config(_save(weights, tmp_path / "converted.safetensors")), 3, 1).encoder
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, weights.get(key, torch.tensor(0))), key


def test_timm_universal_encoder_drops_the_stages_it_does_not_build(
    tmp_path: Path, timm_resnet18: dict[str, torch.Tensor]
) -> None:
    path = _save(timm_resnet18, tmp_path / "timm.safetensors")
    encoder = build_model(_config(path, "tu-resnet18"), 3, 1).encoder
    # At depth 3 timm's feature extractor ends after layer2: layer3, layer4 and fc of the file are unused.
    assert _assert_holds(encoder, timm_resnet18, prefix="model.") == 60


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
@pytest.mark.parametrize(
    ("in_channels", "expected"),
    [
        (1, lambda rgb: rgb.sum(1, keepdim=True)),  # TGS: a grey image
        (2, lambda rgb: rgb[:, :2] * 3 / 2),
        (4, lambda rgb: torch.cat([rgb, rgb[:, :1]], 1) * 3 / 4),  # e.g. RGB + near infrared
    ],
    ids=["1ch", "2ch", "4ch"],
)
def test_first_conv_is_adapted_like_smp_pretrained_weights(
    encoder: str,
    in_channels: int,
    expected: Callable[[torch.Tensor], torch.Tensor],
    tmp_path: Path,
    timm_resnet18: dict[str, torch.Tensor],
) -> None:
    path = _save(timm_resnet18, tmp_path / "rgb.pth")
    model = build_model(_config(path, encoder), in_channels, 1)
    prefix = "model." if encoder.startswith("tu-") else ""
    conv1 = model.encoder.state_dict()[prefix + "conv1.weight"]
    assert conv1.shape == (64, in_channels, 7, 7)
    assert torch.equal(conv1, expected(timm_resnet18["conv1.weight"]))
    _assert_holds(model.encoder, timm_resnet18, prefix=prefix, skip="conv1.weight")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, in_channels, 32, 32)).shape == (1, 1, 32, 32)


def _without(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: _without(s, "layer1.0.conv1.weight"),
            r"missing \(1\): layer1\.0\.conv1\.weight$",
        ),
        (
            lambda s: {**s, "layer5.0.conv1.weight": torch.zeros(1)},
            r"unexpected \(1\): layer5\.0\.conv1\.weight$",
        ),
        (
            lambda s: {**s, "layer2.0.bn1.bias": torch.zeros(3)},
            r"shape mismatch \(1\): layer2\.0\.bn1\.bias \(3,\) \(model: \(128,\)\)$",
        ),
        (  # the first conv adapts its input channels, not its output channels
            lambda s: {**s, "conv1.weight": torch.zeros(32, 3, 7, 7)},
            r"shape mismatch \(1\): conv1\.weight \(32, 3, 7, 7\) \(model: \(64, 1, 7, 7\)\)$",
        ),
        (  # all three at once, each listed; a classifier ("head") is dropped, not listed
            lambda s: {
                **_without(s, "bn1.bias"),
                "head.fc.weight": torch.zeros(1),
                "extra": torch.zeros(1),
                "layer2.0.bn1.bias": torch.zeros(3),
            },
            r"'resnet18' .*:\n  missing \(1\): bn1\.bias\n  unexpected \(1\): extra\n  shape mismatch \(1\): layer2",
        ),
    ],
    ids=["missing", "unexpected", "shape", "first-conv-out-channels", "all-listed"],
)
def test_weights_that_do_not_fit_are_a_config_error_listing_the_keys(
    edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    message: str,
    tmp_path: Path,
    timm_resnet18: dict[str, torch.Tensor],
) -> None:
    path = _save(edit(dict(timm_resnet18)), tmp_path / "edited.pth")
    with pytest.raises(ConfigError, match=rf"model\.encoder_weights {path} does not fit encoder (?s:.*){message}"):
        build_model(_config(path), 1, 1)


def test_weights_of_another_encoder_are_counted_not_all_listed(
    tmp_path: Path, timm_resnet18: dict[str, torch.Tensor]
) -> None:
    path = _save(timm_resnet18, tmp_path / "resnet18.pth")
    with pytest.raises(ConfigError, match=r"'resnet34'.*\n  missing \(80\): layer1\.2\.conv1\.weight, .*\(70 more\)$"):
        build_model(_config(path, "resnet34"), 3, 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("text.pth", b"not a checkpoint", r"cannot be read as a state dict .*: UnpicklingError"),
        ("empty.pt", b"", r"cannot be read as a state dict .*: EOFError"),
        ("broken.safetensors", b"\x00" * 16, r"cannot be read as a state dict .*: SafetensorError"),
    ],
)
def test_unreadable_weights_file_is_a_config_error(name: str, content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"model\.encoder_weights {path} {message}"):
        build_model(_config(path), 1, 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epoch": 3, "weights": torch.zeros(2)}, r"is not a state dict:\s+entries that are not tensors \(1\): epoch"),
        ([torch.zeros(2)], r"holds no state dict"),
        ({"state_dict": {}}, r"holds no state dict"),
    ],
)
def test_file_without_a_state_dict_is_a_config_error(content: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(ConfigError, match=rf"model\.encoder_weights {path} {message}"):
        build_model(_config(path), 1, 1)


@pytest.mark.parametrize("value", ["missing.pth", "weights/resnet18", "~/no/such/file.safetensors"])
def test_missing_weights_file_is_a_config_error_unless_weights_come_from_a_checkpoint(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.encoder_weights '{value}': no such file \(/.*\)"):
        build_model(_config(value), 1, 1)
    # Evaluating or resuming reads the weights from the checkpoint: the file need not be on this machine.
    assert build_model(_config(value), 1, 1, pretrained=False) is not None


@pytest.mark.parametrize("value", ["imagenet", "ssl", "imagenet+background", "advprop"])
def test_weight_names_are_not_files(value: str) -> None:
    assert weights_file(value) is None


def test_training_starts_from_the_weights_file(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torchvision_resnet18: dict[str, torch.Tensor]
) -> None:
    path = _save(torchvision_resnet18, tmp_path / "resnet18.safetensors")
    config = load_config(
        tiny_salt_config(
            tiny_salt,
            tmp_path / "runs",
            model={"encoder_weights": str(path)},
            stages=[{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01}],
            train={"max_steps_per_epoch": 1},
        )
    )
    starts: list[dict[str, torch.Tensor]] = []
    save_start = RunFolder.save_start

    def record(folder: RunFolder, state: dict[str, object]) -> None:
        save_start(folder, state)
        starts.append(load_checkpoint(folder.last_path)["model"])

    monkeypatch.setattr(RunFolder, "save_start", record)
    result = train(config)
    assert result.completed and len(result.history) == 1
    (start,) = starts
    rgb = torchvision_resnet18["conv1.weight"]
    assert torch.equal(start["encoder.conv1.weight"], rgb.sum(1, keepdim=True))  # TGS images have one channel
    for key, value in torchvision_resnet18.items():
        if not key.startswith(("fc.", "conv1.")):
            assert torch.equal(start[f"encoder.{key}"], value), key
    trained = load_checkpoint(result.run_dir / "last.pt")["model"]
    assert not torch.equal(trained["encoder.conv1.weight"], start["encoder.conv1.weight"])  # one step was taken
