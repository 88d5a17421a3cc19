"""What a stage minimises: its segmentation loss of the model's outputs, plus the losses of the extras.

The one place the extras' losses live: with ``model.empty_head: W`` the empty-image head adds
``W * BCE(head logit, "the image has foreground")``; with ``model.deep_supervision: W`` each
intermediate decoder stage's mask logits add ``W`` times the stage's segmentation loss; with
``empty_images: skip`` the segmentation losses count only the images with foreground (phalanx's pixel
head in TGS Salt's first place).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lovaszseg.heads import has_foreground, split_outputs

__all__ = ["Objective"]


class Objective(nn.Module):
    """The loss of a training step (and validation's ``val_loss``) of any model's outputs.

    Args:
        segmentation: The stage's loss of mask logits and labels (``build_loss``).
        empty_head: Weight of the empty-image head's BCE (0: the head, if any, is not trained).
        deep_supervision: Weight of each deep-supervision head's segmentation loss.
        skip_empty: Leave the images without foreground out of the segmentation loss.
        ignore_index: The void label (not foreground), or None.
    """

    def __init__(
        self,
        segmentation: nn.Module,
        *,
        empty_head: float = 0.0,
        deep_supervision: float = 0.0,
        skip_empty: bool = False,
        ignore_index: int | None,
    ) -> None:
        super().__init__()
        self.segmentation = segmentation
        self.empty_head = empty_head
        self.deep_supervision = deep_supervision
        self.skip_empty = skip_empty
        self.ignore_index = ignore_index

    def forward(self, output: Tensor | tuple[Tensor, ...], masks: Tensor) -> Tensor:
        """The loss of a model's ``output`` (mask logits, or with the extras) against labels ``[B, H, W]``."""
        outputs = split_outputs(output)
        foreground = has_foreground(masks, self.ignore_index)
        loss = self._segmentation_loss(outputs.masks, masks, foreground)
        for deep in outputs.deep if self.deep_supervision else ():
            loss = loss + self.deep_supervision * self._segmentation_loss(deep, masks, foreground)
        if outputs.empty is not None and self.empty_head:
            bce = F.binary_cross_entropy_with_logits(outputs.empty.float(), foreground.float())
            loss = loss + self.empty_head * bce
        return loss

    def _segmentation_loss(self, logits: Tensor, masks: Tensor, foreground: Tensor) -> Tensor:
        if not self.skip_empty:
            return self.segmentation(logits, masks)
        if not bool(foreground.any()):
            return logits.sum() * 0.0  # no image counts: a zero that keeps every parameter in the graph
        return self.segmentation(logits[foreground], masks[foreground])
