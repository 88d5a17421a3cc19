"""Datasets (TGS Salt, Pascal VOC, image/mask folders), transform presets and file readers."""

from lovaszseg.data.factory import (
    DATASET_NAMES,
    build_dataset,
    build_transform,
    dataset_options,
    describe_dataset,
    transform_options,
)
from lovaszseg.data.folder import FolderDataset
from lovaszseg.data.io import DatasetError
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.synth import ensure_demo_salt, synth_salt, synth_voc
from lovaszseg.data.tgs import TGS_ORIGINAL_SIZE, TGSSalt, coverage_class, make_folds, read_folds, write_folds
from lovaszseg.data.transforms import crop_to_original, folder_transforms, tgs_transforms, voc_transforms
from lovaszseg.data.voc import VOC_CLASSES, VOC_COLORMAP, VOCSegmentation, colorize, save_palette_png

__all__ = [
    "DATASET_NAMES",
    "TGS_ORIGINAL_SIZE",
    "VOC_CLASSES",
    "VOC_COLORMAP",
    "DatasetError",
    "DatasetSpec",
    "FolderDataset",
    "TGSSalt",
    "VOCSegmentation",
    "build_dataset",
    "build_transform",
    "colorize",
    "coverage_class",
    "crop_to_original",
    "dataset_options",
    "describe_dataset",
    "ensure_demo_salt",
    "folder_transforms",
    "make_folds",
    "read_folds",
    "save_palette_png",
    "synth_salt",
    "synth_voc",
    "tgs_transforms",
    "transform_options",
    "voc_transforms",
    "write_folds",
]
