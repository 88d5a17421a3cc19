"""The dihedral group D4: the eight symmetries of the square (four turns, each with and without a mirror)."""

from __future__ import annotations

from lovaszseg.inference.tta import TtaTransform, register
from lovaszseg.inference.tta.hflip import HFLIP_VIEW
from lovaszseg.inference.tta.rot90 import QUARTER_TURNS

# Every symmetry but the identity: the turns, the mirror, and the mirror followed by each turn (which
# give the vertical flip and both diagonal transpositions).
D4_VIEWS = (*QUARTER_TURNS, HFLIP_VIEW, *(HFLIP_VIEW.then(turn) for turn in QUARTER_TURNS))

D4 = register(
    TtaTransform(
        "d4",
        lambda values: D4_VIEWS,
        "the eight symmetries of the square (holds hflip, vflip and rot90)",
        contains=("hflip", "vflip", "rot90"),
    )
)
