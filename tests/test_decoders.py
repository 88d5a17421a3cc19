"""The winners' UNet decoders: the hypercolumn head, the training-only deep-supervision heads, scSE."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from lovaszseg.config import ModelConfig
from lovaszseg.decoders import DEEP_HEADS, WinnersUnet, plain_unet
from lovaszseg.errors import ConfigError
from lovaszseg.heads import Outputs, split_outputs
from lovaszseg.models import build_model

TINY = {
    "encoder": "resnet18",
    "encoder_weights": None,
    "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
}


def _model(**model: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**(TINY | model)), 1, 1)


def _images(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 1, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("train", [False, True])
def test_without_its_options_the_decoder_is_smps_unet(train: bool) -> None:
    """WinnersUnet re-runs smp's decoder loop to keep every stage: with both options off it must give
    exactly what smp.Unet gives with the same weights (it would drift if smp changed its decoder)."""
    ours = WinnersUnet(
        encoder_name="resnet18",
        encoder_weights=None,
        in_channels=1,
        classes=1,
        encoder_depth=3,
        decoder_channels=[32, 16, 8],
    )
    theirs = smp.Unet(
        encoder_name="resnet18",
        encoder_weights=None,
        in_channels=1,
        classes=1,
        encoder_depth=3,
        decoder_channels=[32, 16, 8],
    )
    theirs.load_state_dict(ours.state_dict())
    ours.train(train), theirs.train(train)
    images = _images()
    torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=0)


def test_deep_supervision_heads_give_upsampled_stage_logits_in_training_only() -> None:
    model = _model(deep_supervision=0.5)
    heads = getattr(model, DEEP_HEADS)
    assert [head.in_channels for head in heads] == [32, 16]  # every decoder stage but the last
    images = _images()
    outputs = model.train()(images)
    assert isinstance(outputs, Outputs) and outputs.masks.shape == (2, 1, 32, 32)
    # The first head by hand: its 1x1 conv on the coarsest decoder stage, bilinearly upsampled.
    stages = []
    hook = model.decoder.blocks[0].register_forward_hook(lambda module, args, output: stages.append(output))
    model(images)
    hook.remove()
    by_hand = F.interpolate(heads[0](stages[0]), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(images).deep[0], by_hand)
    assert [d.shape for d in outputs.deep] == [(2, 1, 32, 32)] * 2
    evaluated = model.eval()(images)
    assert isinstance(evaluated, torch.Tensor)  # inference sees a plain model's output
    torch.testing.assert_close(plain_unet(model).eval()(images), evaluated, rtol=0, atol=0)


def test_deep_supervision_with_an_empty_head_keeps_the_head_logit() -> None:
    model = _model(deep_supervision=0.5, empty_head=0.25)
    outputs = split_outputs(model.train()(_images(3)))
    assert outputs.empty.shape == (3,) and len(outputs.deep) == 2
    _, labels = model.eval()(_images(3))
    assert labels.shape == (3, 1)


def test_the_hypercolumn_head_sees_every_decoder_stage_upsampled() -> None:
    model = _model(hypercolumn=True).eval()
    head = model.segmentation_head[0]
    assert head.in_channels == 32 + 16 + 8
    images = _images()
    stages = []
    hooks = [block.register_forward_hook(lambda m, a, output: stages.append(output)) for block in model.decoder.blocks]
    logits = model(images)
    for hook in hooks:
        hook.remove()
    resized = [F.interpolate(s, size=(32, 32), mode="bilinear", align_corners=False) for s in stages[:-1]]
    torch.testing.assert_close(logits, model.segmentation_head(torch.cat([*resized, stages[-1]], 1)))


def test_scse_is_passed_through_to_the_decoder() -> None:
    model = _model(options={"encoder_depth": 3, "decoder_channels": [32, 16, 16], "decoder_attention_type": "scse"})
    attention = [m for m in model.modules() if isinstance(m, smp.base.modules.SCSEModule)]
    assert len(attention) == 2 * 3  # two per decoder block
    assert model.eval()(_images()).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"arch": "FPN", "options": {"encoder_depth": 3}, "deep_supervision": 0.5},
            r"model\.deep_supervision needs model\.arch Unet, not 'FPN'",
        ),
        ({"arch": "DeepLabV3Plus", "options": {}, "hypercolumn": True}, r"model\.hypercolumn needs model\.arch Unet"),
        (
            {"options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8], "decoder_attention_type": "scse"}},
            r"scse needs at least 16 channels in every decoder stage.*decoder_channels is \[16, 8, 8\]",
        ),
    ],
)
def test_an_option_the_architecture_cannot_take_is_a_config_error(model: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _model(**model)


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf")])
def test_deep_supervision_must_be_a_finite_weight(value: float) -> None:
    with pytest.raises(ValueError, match="deep_supervision"):
        ModelConfig(deep_supervision=value)
