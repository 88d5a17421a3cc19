"""smp models by name: channels, outputs, offline weights, input sizes the encoder can take."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import segmentation_models_pytorch.encoders as smp_encoders
import torch
import torchvision
from safetensors.torch import save_file

from lovaszseg.config import ModelConfig
from lovaszseg.errors import ConfigError
from lovaszseg.models import EncoderWeightsError, build_model, check_input_size, output_stride


def _tiny(arch: str, **options: object) -> ModelConfig:
    return ModelConfig(arch=arch, encoder="resnet18", encoder_weights=None, options=options)


@pytest.mark.parametrize(
    ("arch", "options", "in_channels", "classes", "size"),
    [
        ("Unet", {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}, 1, 1, 64),
        ("FPN", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}, 3, 21, 64),
        ("DeepLabV3Plus", {}, 3, 2, 64),
    ],
)
def test_build_model_without_weights(
    arch: str, options: dict[str, object], in_channels: int, classes: int, size: int
) -> None:
    torch.manual_seed(0)
    model = build_model(_tiny(arch, **options), in_channels, classes).eval()
    torch.manual_seed(0)
    again = build_model(_tiny(arch, **options), in_channels, classes)
    assert model.encoder.conv1.weight.shape[1] == in_channels
    for name, tensor in model.state_dict().items():  # the seed fixes the initial weights
        assert torch.equal(tensor, again.state_dict()[name]), name
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, classes, size, size)
    assert torch.isfinite(logits).all() and logits.std() > 0


@pytest.fixture
def offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, with HF_HUB_OFFLINE=1: nothing can be downloaded."""
    cache = tmp_path / "hf-cache"
    # huggingface_hub reads both variables when imported; its functions look them up here at each call.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_imagenet_weights_come_from_a_prefilled_cache_offline(offline_hf_cache: Path) -> None:
    # The layout hf_hub_download writes: models--{org}--{name}/snapshots/{revision}/{file}.
    settings = smp_encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    org, name = settings["repo_id"].split("/")
    snapshot = offline_hf_cache / f"models--{org}--{name}" / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    torch.manual_seed(4)
    weights = torchvision.models.resnet18(weights=None).state_dict()
    save_file(weights, snapshot / "model.safetensors")
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="imagenet"), 3, 1)
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, weights[key]), key


def test_failed_weight_download_says_the_ways_out(offline_hf_cache: Path) -> None:
    config = ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="imagenet")
    with pytest.raises(EncoderWeightsError) as caught:
        build_model(config, 1, 1)
    message = str(caught.value)
    assert "'imagenet' weights of encoder 'resnet18'" in message
    for way_out in (
        "model.encoder_weights=null",
        "local weights file (.pth/.pt/.bin/.safetensors)",
        "HF_HUB_OFFLINE=1",
    ):
        assert way_out in message, way_out
    assert isinstance(caught.value, ConfigError)
    # Weights that will come from a checkpoint are never downloaded.
    assert build_model(config, 1, 1, pretrained=False) is not None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ModelConfig(arch="NoSuchNet", encoder_weights=None), r"unknown model.arch 'NoSuchNet'; choose from .*'Unet'"),
        (ModelConfig(encoder="no_such_encoder", encoder_weights=None), r"model\.encoder 'no_such_encoder'"),
        (ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="imagenett"), r"model\.encoder 'resnet18'"),
        # smp itself would silently drop the misspelt option
        (_tiny("Unet", decoder_chanels=[8]), r"\['decoder_chanels'\] not accepted by Unet.*'decoder_channels'"),
        (_tiny("Unet", activation="sigmoid"), r"\['activation'\] not accepted by Unet here"),
    ],
)
def test_bad_model_config_is_a_config_error(config: ModelConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(config, 3, 1)


@pytest.mark.parametrize(
    ("arch", "options", "stride"),
    [
        ("Unet", {}, 1),  # smp's Unet resizes its skip connections: any size works
        ("FPN", {}, 32),
        ("FPN", {"encoder_depth": 3}, 8),
        ("DeepLabV3Plus", {}, 16),
    ],
)
def test_output_stride(arch: str, options: dict[str, object], stride: int) -> None:
    assert output_stride(build_model(_tiny(arch, **options), 1, 1)) == stride


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (101, 101, r"is 101x101, but this model needs sides divisible by 32: pad or resize to 128x128"),
        (128, 100, r"is 128x100, .* pad or resize to 128x128"),
        (321, 320, r"pad or resize to 352x320"),
    ],
)
def test_check_input_size_names_the_padded_size(height: int, width: int, message: str) -> None:
    model = build_model(_tiny("FPN"), 1, 1)
    with pytest.raises(ConfigError, match=message):
        check_input_size(model, height, width, "the first image")
    check_input_size(model, 128, 64, "the first image")
