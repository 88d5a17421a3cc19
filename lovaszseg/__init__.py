"""lovaszseg: semantic segmentation with the Lovász losses (Berman, Rannen Triki & Blaschko, CVPR 2018)."""

__version__ = "0.1.0"
