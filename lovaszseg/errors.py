"""Errors a user can cause: one base class, one subclass per kind of input.

The CLI turns exactly these into one red line and exit code 2; any other exception is a bug and
keeps its traceback. Each class also derives from the built-in type callers caught before
(``ValueError``, ``RuntimeError``), so ``except ValueError`` in a notebook keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LovaszsegError",
    "LovaszsegWarning",
    "OutputError",
    "RunFolderError",
    "TrainingError",
]


class LovaszsegError(Exception):
    """Base of every error caused by the user's input (files, keys, values) rather than by a bug."""


class LovaszsegWarning(UserWarning):
    """A choice that is allowed but probably not meant (e.g. a TTA transform the data has no symmetry
    for); the CLI shows it as one yellow line and goes on."""


class ConfigError(LovaszsegError, ValueError):
    """A configuration file, override or command option is invalid; the message names the key and value."""


class DataError(LovaszsegError, ValueError):
    """A dataset or image folder is missing or its content unusable; the message names the file."""


class CheckpointError(LovaszsegError, ValueError):
    """A checkpoint, exported model or run folder cannot be read as one; the message names the file."""


class OutputError(LovaszsegError, OSError):
    """A file or folder cannot be written (no permission, a read-only or full disk, a path under /proc);
    the message names the path and the system's reason, and what was there before is kept."""


class RunFolderError(LovaszsegError, RuntimeError):
    """A run folder cannot be written: another process holds it, or it is taken and not to be replaced."""


class TrainingError(LovaszsegError, RuntimeError):
    """Training cannot go on (non-finite loss or weights, a diverging loss); says what was kept."""
