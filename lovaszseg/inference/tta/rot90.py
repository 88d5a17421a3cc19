"""Quarter turns: the images turned by 90, 180 and 270 degrees (non-square images swap height and width)."""

from __future__ import annotations

from lovaszseg.inference.tta import TtaTransform, TtaView, register

_PLANE = (-2, -1)


def quarter_turn(turns: int) -> TtaView:
    """The view turning images ``turns`` quarter turns counter-clockwise (undone by turning back)."""
    return TtaView(
        f"rot90x{turns}",
        lambda batch: batch.rot90(turns, _PLANE),
        lambda prediction, size: prediction.rot90(-turns, _PLANE),
        lambda size: size[::-1] if turns % 2 else size,
    )


QUARTER_TURNS = tuple(quarter_turn(turns) for turns in (1, 2, 3))

ROT90 = register(TtaTransform("rot90", lambda values: QUARTER_TURNS, "the images and their three quarter turns"))
