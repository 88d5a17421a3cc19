"""Horizontal flip: the one TTA transform that is physically valid on seismic (TGS) images."""

from __future__ import annotations

from lovaszseg.inference.tta import TtaTransform, TtaView, register

HFLIP_VIEW = TtaView("hflip", lambda batch: batch.flip(-1), lambda prediction, size: prediction.flip(-1))

HFLIP = register(TtaTransform("hflip", lambda values: (HFLIP_VIEW,), "the images and their left-right mirror"))
