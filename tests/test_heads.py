"""What models return: plain mask logits, smp's (masks, labels) with an empty-image head, read as Outputs."""

from __future__ import annotations

import pytest
import torch

from lovaszseg.config import ModelConfig
from lovaszseg.errors import ConfigError
from lovaszseg.heads import Outputs, has_foreground, outputs_float, split_outputs
from lovaszseg.models import build_model, output_probabilities

_UNET = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def test_split_outputs_reads_every_form() -> None:
    masks, labels = torch.randn(2, 1, 4, 4), torch.randn(2, 1)
    assert split_outputs(masks).masks is masks and split_outputs(masks).empty is None
    both = split_outputs((masks, labels))
    assert both.masks is masks and torch.equal(both.empty, labels[:, 0])
    assert split_outputs(both) is both
    assert outputs_float(masks.half()).dtype == torch.float32  # a tensor stays a tensor
    assert outputs_float((masks.half(), labels.half())).empty.dtype == torch.float32


@pytest.mark.parametrize(
    ("masks", "ignore_index", "expected"),
    [
        ([[0, 0], [0, 0]], None, False),
        ([[0, 1], [0, 0]], None, True),
        ([[0, 255], [0, 0]], 255, False),
        ([[1, 255], [0, 0]], 255, True),
    ],
)
def test_has_foreground(masks: list[list[int]], ignore_index: int | None, expected: bool) -> None:
    assert has_foreground(torch.tensor([masks]), ignore_index).tolist() == [expected]


def test_the_empty_head_is_smps_classification_head_with_one_logit() -> None:
    config = ModelConfig(encoder="resnet18", encoder_weights=None, options=_UNET, empty_head=0.5)
    model = build_model(config, 1, 1).eval()
    assert model.classification_head is not None and model.classification_head[3].out_features == 1
    with torch.inference_mode():
        masks, labels = model(torch.randn(3, 1, 64, 64))
    assert masks.shape == (3, 1, 64, 64) and labels.shape == (3, 1)
    probs = output_probabilities((masks, labels))
    torch.testing.assert_close(probs.empty, labels[:, 0].sigmoid())
    assert isinstance(probs, Outputs)
    plain = build_model(ModelConfig(encoder="resnet18", encoder_weights=None, options=_UNET), 1, 1)
    assert plain.classification_head is None


def test_the_empty_head_needs_a_binary_task() -> None:
    config = ModelConfig(encoder="resnet18", encoder_weights=None, options=_UNET, empty_head=0.5)
    with pytest.raises(ConfigError, match=r"model.empty_head 0.5 needs a binary task .* not 21 classes"):
        build_model(config, 3, 21)


def test_aux_params_in_the_options_points_to_model_empty_head() -> None:
    config = ModelConfig(encoder="resnet18", encoder_weights=None, options={"aux_params": {"classes": 1}})
    with pytest.raises(ConfigError, match=r"\['aux_params'\] not accepted.*model.empty_head"):
        build_model(config, 1, 1)


def test_a_negative_or_infinite_weight_is_refused() -> None:
    for value in (-0.1, float("inf")):
        with pytest.raises(ValueError, match="empty_head"):
            ModelConfig(empty_head=value)
