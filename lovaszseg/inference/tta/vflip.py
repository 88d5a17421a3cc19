"""Vertical flip: for data without a preferred up and down (aerial, microscopy, medical folders)."""

from __future__ import annotations

from lovaszseg.inference.tta import TtaTransform, TtaView, register

VFLIP_VIEW = TtaView("vflip", lambda batch: batch.flip(-2), lambda prediction, size: prediction.flip(-2))

VFLIP = register(TtaTransform("vflip", lambda values: (VFLIP_VIEW,), "the images and their upside-down copy"))
