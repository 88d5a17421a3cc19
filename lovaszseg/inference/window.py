"""Sliding-window inference: images larger than the network, predicted in overlapping crops.

The settings (:class:`~lovaszseg.windowing.SlidingWindow`) live in :mod:`lovaszseg.windowing`, free of
torch for the config and the CLI; here they are used. Windows of ``size`` start every ``stride`` pixels
along each side, the last one moved back to end at the border, so that every pixel is covered; a side
shorter than the window is one window of that side (the image has already been padded as in training by
the evaluation preset, so every crop is a size the model takes). Each crop's probabilities are weighted
(``uniform``, or ``gaussian``: a window centred, standard deviation 1/8 of its sides, as nnU-Net weights
its patches) and the weights are normalised to sum to one at every pixel. Crops go through the model
``crops_per_batch`` at a time, with the TTA inside each crop; one image's probability map is accumulated
at a time, and the callers give windowed images one at a time (:func:`images_per_pass`), so that one
merged map at most is held. The empty-image head's probability of an image is the largest of its
windows' (foreground in any window is foreground in it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lovaszseg.errors import ConfigError
from lovaszseg.windowing import CROPS_PER_BATCH, WEIGHTINGS, SlidingWindow, Weighting, parse_size

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports WindowOverride
    from torch import Tensor

    from lovaszseg.heads import Outputs

__all__ = [
    "NO_WINDOW",
    "WindowOverride",
    "images_per_pass",
    "predict_windows",
    "window_label",
    "window_starts",
    "window_weights",
]

# The gaussian window's standard deviation, as a share of each side.
GAUSSIAN_SIGMA = 1 / 8
# The gaussian window's weights are at least this share of its centre's, so that corners still count.
GAUSSIAN_FLOOR = 1e-3


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where windows start along a side of ``length`` pixels: every ``stride``, the last ending at the border."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def images_per_pass(window: SlidingWindow | None, batch_size: int) -> int:
    """How many images to predict together: ``batch_size``, or one with a window, whose crops fill the
    forward passes already; then one image's merged probability map at most is held at a time."""
    return batch_size if window is None else 1


def predict_windows(window: SlidingWindow, predict: Callable[[Tensor], Outputs], images: Tensor) -> Outputs:
    """Predict ``[B, C, H, W]`` images window by window with ``predict`` (crops -> their outputs).

    Returns:
        The merged probabilities ``[B, classes, H, W]`` and the head's probability ``[B]`` (or None).
    """
    import torch

    from lovaszseg.heads import Outputs

    # The images of a batch share a size, hence the windows' corners and the weights' sum.
    height, width = images.shape[-2:]
    crop = window.crop_size((height, width))
    corners = [
        (top, left)
        for top in window_starts(height, crop[0], window.stride[0])
        for left in window_starts(width, crop[1], window.stride[1])
    ]
    weights = window_weights(crop, window.weighting).to(images.device)
    total = images.new_zeros(height, width)
    for top, left in corners:
        total[top : top + crop[0], left : left + crop[1]] += weights
    masks, heads = [], []
    for image in images:
        mask, head = _predict_image(predict, image, crop, corners, weights, window.crops_per_batch)
        masks.append(mask / total)
        heads.append(head)
    empty = None if any(head is None for head in heads) else torch.stack(heads)
    return Outputs(torch.stack(masks), empty)


def _predict_image(
    predict: Callable[[Tensor], Outputs],
    image: Tensor,
    crop: tuple[int, int],
    corners: list[tuple[int, int]],
    weights: Tensor,
    crops_per_batch: int,
) -> tuple[Tensor, Tensor | None]:
    """An image's weighted sum of its windows' probabilities, and its windows' largest head probability."""
    import torch

    merged: Tensor | None = None
    head: Tensor | None = None
    for first in range(0, len(corners), crops_per_batch):
        batch = corners[first : first + crops_per_batch]
        crops = [image[:, top : top + crop[0], left : left + crop[1]] for top, left in batch]
        outputs = predict(torch.stack(crops))
        if merged is None:
            merged = image.new_zeros(outputs.masks.shape[1], *image.shape[-2:])
        for (top, left), probabilities in zip(batch, outputs.masks, strict=True):
            merged[:, top : top + crop[0], left : left + crop[1]] += probabilities * weights
        if outputs.empty is not None:
            best = outputs.empty.max()
            head = best if head is None else head.maximum(best)
    assert merged is not None  # an image has at least one window
    return merged, head


def window_weights(size: tuple[int, int], weighting: Weighting) -> Tensor:
    """A window's pixel weights ``[H, W]`` (before they are normalised over the windows covering a pixel)."""
    import torch

    if weighting == "uniform":
        return torch.ones(size)
    axes = []
    for side in size:
        offsets = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
        axes.append(torch.exp(-0.5 * (offsets / (side * GAUSSIAN_SIGMA)) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    return (weights / weights.max()).clamp_min(GAUSSIAN_FLOOR)


# What ``--window`` takes to turn off a window the model's config sets.
NO_WINDOW = "none"


def window_label(window: SlidingWindow | None) -> str:
    """How a tuning or a record names the window predictions were made with: ``none`` for whole images."""
    return NO_WINDOW if window is None else window.describe()


@dataclass(frozen=True)
class WindowOverride:
    """Per-call changes to a model's own sliding window (``inference`` in its config); None keeps a value.

    Attributes:
        size: A new window; its stride is then the window itself unless ``stride`` is given.
        stride: A new stride (needs a window, given here or in the config).
        weighting: A new weighting.
        whole: Predict whole images, whatever the config says.
    """

    size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    weighting: Weighting | None = None
    whole: bool = False

    @classmethod
    def parse(cls, window: str | None, stride: str | None, weighting: str | None) -> WindowOverride:
        """The override of ``--window HxW|none``, ``--stride SxS`` and ``--window-weighting``.

        Raises:
            ConfigError: a malformed size, an unknown weighting, or a stride or weighting with ``--window none``.
        """
        whole = window is not None and window.lower() == NO_WINDOW
        if whole and (stride is not None or weighting is not None):
            raise ConfigError("--window none predicts whole images: it takes no --stride or --window-weighting")
        if weighting is not None and weighting not in WEIGHTINGS:
            raise ConfigError(f"--window-weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        return cls(
            None if window is None or whole else parse_size(window, "--window"),
            None if stride is None else parse_size(stride, "--stride"),
            weighting,  # type: ignore[arg-type]  # checked above
            whole,
        )

    def apply(self, base: SlidingWindow | None) -> SlidingWindow | None:
        """``base`` (the config's window, or None) with the changes.

        Raises:
            ConfigError: a stride or weighting without any window, or a stride larger than the window.
        """
        if self.whole:
            return None
        size = self.size or (base.size if base is not None else None)
        if size is None:
            if self.stride is not None or self.weighting is not None:
                raise ConfigError("--stride and --window-weighting need a window: --window HxW (or inference.window)")
            return None
        kept_stride = base.stride if base is not None and self.size is None else size
        return SlidingWindow(
            size,
            self.stride or kept_stride,
            self.weighting or (base.weighting if base is not None else WEIGHTINGS[0]),
            base.crops_per_batch if base is not None else CROPS_PER_BATCH,
        )
