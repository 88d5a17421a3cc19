"""The TGS winners' UNet decoders: hypercolumns and deep supervision on smp's ``Unet``.

- **Hypercolumn** (1st and 4th place, TGS Salt): the segmentation head sees the outputs of every
  decoder stage, upsampled to the finest one and concatenated, instead of the last stage alone.
- **Deep supervision**: a 1x1 head on each intermediate decoder stage gives mask logits, upsampled to
  the output size, that the training objective scores with the stage's loss. The heads run in training
  only: in ``eval()`` the model returns what a plain smp model returns, so inference, ONNX and smp
  export never see them (their weights are under :data:`DEEP_HEADS`, which the smp export drops).

:class:`WinnersUnet` is an ``smp.Unet`` (same encoder, decoder and head keys), so everything that reads
an smp model (input-size checks, encoder weights, channels-last) reads it unchanged.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from torch import Tensor, nn

from lovaszseg.heads import Outputs

__all__ = ["DEEP_HEADS", "WinnersUnet", "plain_unet"]

DEEP_HEADS = "deep_heads"  # the attribute (and state-dict prefix) of the training-only heads


class WinnersUnet(smp.Unet):
    """smp's ``Unet`` with a hypercolumn head and/or deep-supervision heads.

    Args:
        hypercolumn: The segmentation head takes every decoder stage, upsampled and concatenated.
        deep_supervision: Add the intermediate stages' training-only heads.
        **unet_options: ``smp.Unet``'s keyword arguments (encoder, classes, decoder_channels, ...).

    Shape:
        - Input: ``[B, in_channels, H, W]``.
        - Output in ``eval()``: as ``smp.Unet`` (``[B, classes, H, W]``, or ``(masks, labels)`` with
          ``aux_params``). In training with deep supervision: :class:`~lovaszseg.heads.Outputs` whose
          ``deep`` holds one ``[B, classes, H, W]`` per intermediate stage, coarsest first.
    """

    def __init__(self, *, hypercolumn: bool = False, deep_supervision: bool = False, **unet_options: Any) -> None:
        super().__init__(**unet_options)
        self.unet_options = unet_options
        self.hypercolumn = hypercolumn
        channels = [block.conv2[0].out_channels for block in self.decoder.blocks]
        classes = self.segmentation_head[0].out_channels
        if hypercolumn:
            self.segmentation_head = SegmentationHead(sum(channels), classes, kernel_size=3)
        heads = [nn.Conv2d(stage, classes, kernel_size=1) for stage in channels[:-1]] if deep_supervision else []
        setattr(self, DEEP_HEADS, nn.ModuleList(heads))

    def _decoder_stages(self, features: list[Tensor]) -> list[Tensor]:
        """Every decoder block's output, coarsest first (smp's ``UnetDecoder.forward``, keeping each)."""
        decoder = self.decoder
        shapes = [feature.shape[2:] for feature in features][::-1]
        encoded = features[1:][::-1]  # the first feature map has the input's resolution: not a skip
        x = decoder.center(encoded[0])
        skips = encoded[1:]
        stages = []
        for i, block in enumerate(decoder.blocks):
            height, width = shapes[i + 1]
            x = block(x, height, width, skip_connection=skips[i] if i < len(skips) else None)
            stages.append(x)
        return stages

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor] | Outputs:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_shape(x)
        features = self.encoder(x)
        stages = self._decoder_stages(features)
        top = stages[-1]
        if self.hypercolumn:
            size = top.shape[2:]
            top = torch.cat([*(_resize(stage, size) for stage in stages[:-1]), top], dim=1)
        masks = self.segmentation_head(top)
        labels = self.classification_head(features[-1]) if self.classification_head is not None else None
        heads: nn.ModuleList = getattr(self, DEEP_HEADS)
        if self.training and len(heads):
            size = masks.shape[2:]
            deep = tuple(_resize(head(stage), size) for head, stage in zip(heads, stages, strict=False))
            return Outputs(masks, None if labels is None else labels.reshape(-1), deep)
        return masks if labels is None else (masks, labels)


def _resize(tensor: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def plain_unet(model: WinnersUnet) -> smp.Unet:
    """The same network as a plain ``smp.Unet`` (what smp's ``from_pretrained`` can load): the
    deep-supervision heads dropped, the weights copied.

    Raises:
        ValueError: the model has a hypercolumn head, which ``smp.Unet`` has no place for.
    """
    if model.hypercolumn:
        raise ValueError("model.hypercolumn is not an smp architecture")
    plain = smp.Unet(**(model.unet_options | {"encoder_weights": None}))
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(f"{DEEP_HEADS}.")}
    plain.load_state_dict(state)
    return plain.to(next(model.parameters()).device).train(model.training)
