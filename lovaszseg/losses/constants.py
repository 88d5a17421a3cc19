"""Task modes understood by the losses (as in smp: binary, multi-class, multi-label)."""

__all__ = ["BINARY_MODE", "MODES", "MULTICLASS_MODE", "MULTILABEL_MODE"]

BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
MULTILABEL_MODE = "multilabel"
MODES = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)
