"""A stage's objective: the segmentation loss, the empty-image head's BCE times its weight, empty images skipped."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lovaszseg.heads import Outputs
from lovaszseg.losses import build_loss
from lovaszseg.training.objective import Objective


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask logits [4, 1, 4, 4], head logits [4, 1] and masks [4, 4, 4]: images 0 and 2 are empty."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 4, 4, generator=generator, requires_grad=True)
    head = torch.tensor([[-1.0], [2.0], [0.5], [0.0]], requires_grad=True)
    masks = torch.zeros(4, 4, 4, dtype=torch.long)
    masks[1, :2, :2] = 1
    masks[3, 3, 3] = 1
    return logits, head, masks


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("loss", ["bce", "lovasz_hinge"])
def test_the_head_adds_its_bce_times_the_weight(loss: str, weight: float) -> None:
    logits, head, masks = _batch()
    objective = Objective(build_loss(loss), empty_head=weight, ignore_index=None)
    # The head's target is "the image has foreground": 0, 1, 0, 1.
    bce = F.binary_cross_entropy_with_logits(head[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    # By hand: -log(1 - s(h)) for the empty images, -log s(h) for the others, s the sigmoid.
    hand = (
        sum(math.log1p(math.exp(-sign * h)) for sign, h in zip((-1, 1, -1, 1), (-1.0, 2.0, 0.5, 0.0), strict=True)) / 4
    )
    assert bce.item() == pytest.approx(hand, abs=1e-6)
    expected = build_loss(loss)(logits, masks) + weight * bce
    torch.testing.assert_close(objective((logits, head), masks), expected)
    # A model without a head: the segmentation loss alone.
    torch.testing.assert_close(objective(logits, masks), build_loss(loss)(logits, masks))


@pytest.mark.parametrize("loss", ["bce", "lovasz_hinge", {"lovasz_hinge": {"per_image": True}}])
def test_skip_counts_only_the_images_with_foreground(loss: object) -> None:
    logits, head, masks = _batch()
    objective = Objective(build_loss(loss), empty_head=0.5, skip_empty=True, ignore_index=None)
    kept = torch.tensor([1, 3])
    bce = F.binary_cross_entropy_with_logits(head[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    expected = build_loss(loss)(logits[kept], masks[kept]) + 0.5 * bce
    torch.testing.assert_close(objective((logits, head), masks), expected)


def test_skip_on_a_batch_without_foreground_is_zero_with_a_valid_graph() -> None:
    logits, _, masks = _batch()
    masks.zero_()
    loss = Objective(build_loss("lovasz_hinge"), skip_empty=True, ignore_index=None)(logits, masks)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_the_ignore_index_is_not_foreground() -> None:
    logits, head, masks = _batch()
    masks[0, 0, 0] = 255  # image 0: only a void pixel
    objective = Objective(build_loss("bce", ignore_index=255), empty_head=1.0, ignore_index=255)
    bce = F.binary_cross_entropy_with_logits(head[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    expected = build_loss("bce", ignore_index=255)(logits, masks) + bce
    torch.testing.assert_close(objective((logits, head), masks), expected)


@pytest.mark.parametrize("weight", [0.0, 0.4])
@pytest.mark.parametrize("skip_empty", [False, True])
def test_deep_supervision_adds_each_heads_loss_times_the_weight(weight: float, skip_empty: bool) -> None:
    logits, _, masks = _batch()
    generator = torch.Generator().manual_seed(1)
    deep = tuple(torch.randn(4, 1, 4, 4, generator=generator) for _ in range(2))
    loss = build_loss("lovasz_hinge")
    objective = Objective(loss, deep_supervision=weight, skip_empty=skip_empty, ignore_index=None)
    keep = [1, 3] if skip_empty else [0, 1, 2, 3]  # images 0 and 2 are empty
    expected = loss(logits[keep], masks[keep]) + sum(weight * loss(head[keep], masks[keep]) for head in deep)
    torch.testing.assert_close(objective(Outputs(logits, None, deep), masks), expected)
