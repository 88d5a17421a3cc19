"""Run storage: run, cv and ensemble folders, their files, checkpoints, summaries and curves."""

from lovaszseg.storage.cv_folder import CvFolder
from lovaszseg.storage.run_folder import LoadedModel, RunFolder, load_model, read_weights

__all__ = ["CvFolder", "LoadedModel", "RunFolder", "load_model", "read_weights"]
