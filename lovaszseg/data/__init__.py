"""Datasets (TGS Salt, Pascal VOC, image/mask folders), transform presets, folds and file readers."""

# Importing a dataset module registers its datasets; this order is the order of DATASET_NAMES.
# isort: off
from lovaszseg.data.tgs import TGS_ORIGINAL_SIZE, TGSSalt, coverage_class
from lovaszseg.data.voc import VOC_CLASSES, VOC_COLORMAP, VOCSegmentation, colorize, save_palette_png
from lovaszseg.data.folder import FolderDataset

# isort: on
from lovaszseg.data.factory import (
    DATASET_NAMES,
    build_dataset,
    build_transform,
    dataset_options,
    describe_dataset,
    transform_options,
)
from lovaszseg.data.folds import CvSplit, make_cv_split, read_folds_csv, stratified_split, write_folds_csv
from lovaszseg.data.io import DatasetError
from lovaszseg.data.registry import register_dataset
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.synth import ensure_demo_salt, synth_salt, synth_voc
from lovaszseg.data.transforms import crop_to_original, folder_transforms, tgs_transforms, voc_transforms

__all__ = [
    "DATASET_NAMES",
    "TGS_ORIGINAL_SIZE",
    "VOC_CLASSES",
    "VOC_COLORMAP",
    "CvSplit",
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
    "make_cv_split",
    "read_folds_csv",
    "register_dataset",
    "save_palette_png",
    "stratified_split",
    "synth_salt",
    "synth_voc",
    "tgs_transforms",
    "transform_options",
    "voc_transforms",
    "write_folds_csv",
]
