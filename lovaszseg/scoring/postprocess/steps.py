"""What a post-processing step is: a value checked once, applied to a batch, tuned on recorded counts.

The first step is the threshold, which turns probabilities into masks; every later step is a *rule*
that empties the masks whose key is below its value (the min-area rule empties small ones). Tuning
works on the columns of the threshold grid: the rules choose their best values together for every
threshold column, and the threshold then picks the best column (:mod:`lovaszseg.scoring.postprocess.tuning`).
A step is one module of this package that defines a subclass and decorates it with :func:`register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from lovaszseg.scoring.postprocess.counts import ImageCounts

__all__ = ["Rule", "Step", "register", "rule_classes", "step_classes"]


class Step(ABC):
    """One step of post-processing with its value.

    Class attributes:
        name: Its key: the keyword of :class:`~lovaszseg.scoring.postprocess.PostProcessing`, the
            record's field and the ``postprocess_NAME`` metric of ``eval``.
        option: The command-line option that sets it (for messages).
        order: Where it runs: lower first.
        default: Its value when none is given (the threshold: 0.5; a rule: the value that changes nothing).
    """

    name: ClassVar[str]
    option: ClassVar[str]
    order: ClassVar[int]
    default: ClassVar[Any]

    def __init__(self, value: Any) -> None:
        self.value = self.check(value)

    @classmethod
    @abstractmethod
    def check(cls, value: Any) -> Any:
        """The value, validated (the one place it is); raises ConfigError naming the option otherwise."""

    @abstractmethod
    def apply(self, probabilities: np.ndarray, masks: np.ndarray, empty: np.ndarray | None) -> np.ndarray:
        """The masks ``[..., H, W]`` (bool) after this step, from the foreground probabilities ``[..., H, W]``
        and the empty-image head's probabilities ``[...]`` that each image has foreground (None without a head)."""

    def describe(self) -> str:
        """The value for people, e.g. ``threshold 0.49`` or ``min-area 278 px``."""
        return f"{self.option.removeprefix('--')} {self.value}"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.name, self.value))


class Rule(Step):
    """A step after the threshold: it empties the masks whose key (their predicted area, their head
    probability, ...) is below its value. Tuning chooses among the cuts of the images sorted by key."""

    @classmethod
    @abstractmethod
    def keys(cls, counts: ImageCounts) -> np.ndarray | None:
        """Each prediction's key ``[N, T]``, at every threshold column; None where the rule cannot act
        (it is then tuned to its default)."""

    @classmethod
    @abstractmethod
    def cuts(cls, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For keys sorted along axis 0 (``[N, T]``): which cuts ``k = 0 .. N`` (empty the ``k`` smallest)
        a value of the rule makes (``[N + 1, T]`` bool: not between equal keys), and that value ``[N + 1, T]``."""

    def empties(self, counts: ImageCounts) -> np.ndarray:
        """Which predictions ``[N, T]`` the rule empties, at every threshold of the grid."""
        return self.empties_per_column(counts, [self] * counts.predicted.shape[1])

    @classmethod
    def empties_per_column(cls, counts: ImageCounts, rules: list[Rule]) -> np.ndarray:
        """Which predictions ``[N, T]`` are emptied when threshold column ``k`` has its own rule ``rules[k]``."""
        keys = cls.keys(counts)
        values = np.asarray([rule.value for rule in rules])[None, :]
        return np.zeros(counts.predicted.shape, dtype=bool) if keys is None else keys < values


_STEPS: dict[str, type[Step]] = {}


def register(step: type[Step]) -> type[Step]:
    """Class decorator: make a step part of every post-processing, at its ``order``."""
    if step.name in _STEPS:
        raise AssertionError(f"post-processing step {step.name!r} is registered twice")
    _STEPS[step.name] = step
    return step


def step_classes() -> tuple[type[Step], ...]:
    """Every registered step, in the order they run (the threshold first)."""
    return tuple(sorted(_STEPS.values(), key=lambda step: step.order))


def rule_classes() -> tuple[type[Rule], ...]:
    """The registered rules (every step after the threshold), in order."""
    return tuple(step for step in step_classes() if issubclass(step, Rule))
