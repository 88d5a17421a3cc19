"""What a segmentation model returns: the mask logits, and the extras some models add.

A plain smp model returns its mask logits ``[B, C, H, W]``. With ``model.empty_head`` it is built with
smp's ``aux_params`` and returns ``(masks, labels)``: ``labels`` ``[B, 1]`` is the logit of "the image has
foreground". :func:`split_outputs` reads either as :class:`Outputs`, the one place that knows both
forms, so that losses, metrics, inference and export take any model.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["HEAD_DECISION", "Outputs", "has_foreground", "outputs_float", "split_outputs"]

# The empty-image head's own call: an image has foreground when its probability is at least this (its
# accuracy; the gate validating a stage whose mask loss skips empty images).
HEAD_DECISION = 0.5


class Outputs(NamedTuple):
    """A model's outputs (logits, or probabilities where an ensemble or a prediction gives them).

    Attributes:
        masks: The segmentation ``[B, C, H, W]``.
        empty: ``[B]``: the image has foreground (the empty-image head), or None without one.
        deep: The deep-supervision heads' mask logits, each shaped as ``masks`` (training only;
            :mod:`lovaszseg.decoders`), or empty.
    """

    masks: Tensor
    empty: Tensor | None = None
    deep: tuple[Tensor, ...] = ()

    def to_float(self) -> Outputs:
        """The outputs in float32 (after a mixed-precision forward pass)."""
        empty = None if self.empty is None else self.empty.float()
        return Outputs(self.masks.float(), empty, tuple(head.float() for head in self.deep))


def split_outputs(output: Tensor | tuple[Tensor, ...]) -> Outputs:
    """A model's output as :class:`Outputs`: mask logits alone, smp's ``(masks, labels)``, or Outputs."""
    if isinstance(output, Outputs):
        return output
    if isinstance(output, Tensor):
        return Outputs(output)
    masks, labels = output  # smp with aux_params: labels [B, 1]
    return Outputs(masks, labels.reshape(-1))


def outputs_float(output: Tensor | tuple[Tensor, ...]) -> Tensor | Outputs:
    """``output`` in float32, a tensor staying a tensor (the plain models' contract)."""
    return output.float() if isinstance(output, Tensor) else split_outputs(output).to_float()


def has_foreground(masks: Tensor, ignore_index: int | None) -> Tensor:
    """``[B]`` bool: the image has a labelled pixel of a class other than 0 (the empty head's target).

    Args:
        masks: Labels ``[B, H, W]``.
        ignore_index: The void label, which is not foreground; None when every pixel is labelled.
    """
    foreground = masks != 0
    if ignore_index is not None:
        foreground &= masks != ignore_index
    return foreground.flatten(1).any(1)
