"""The batched core of every Lovász loss: Lovász weights for many independent rows at once.

A Lovász loss sorts the errors of one "row" (an image, a class of an image, or a class over the
batch), turns the sorted ground truth into the gradient of the Lovász extension of the Jaccard loss,
and takes the dot product with the (transformed) errors. The reference implementation loops in
Python over rows. Here all rows are processed together: every kept element gets the key
``(row, -error)``, one sort orders them row by row, and segmented cumulative sums give each row's
weights. The weights are piecewise constant in the errors, so they are computed without autograd
and the loss is ``sum(f(errors) * weights)``: the same value and gradient as the reference, with a
backward pass that is elementwise instead of going through the sort.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lovasz_row_weights"]

_INT32_MAGNITUDE = 0x7FFFFFFF


def _descending_order(values: Tensor, rows: Tensor) -> Tensor:
    """Permutation that groups elements by ascending ``rows`` and sorts each group by descending value.

    float32 values become order-preserving 32-bit integers packed under the row index into one int64
    key, so a single 1-D integer sort does the work (on CPU, PyTorch radix-sorts such keys, which is
    faster than a comparison sort of the floats). float64 values cannot be packed without losing
    order, so they take two stable sorts instead.
    """
    if values.dtype == torch.float32:
        bits = values.view(torch.int32).to(torch.int64)
        # Flip the magnitude bits of negative floats: the integers then order like the floats.
        ordered = bits ^ ((bits >> 31) & _INT32_MAGNITUDE)
        descending = _INT32_MAGNITUDE - ordered  # in [0, 2**32): fits under the row index
        keys = (rows << 32) | descending
        return torch.sort(keys).indices
    by_value = torch.sort(values, descending=True, stable=True).indices
    by_row = torch.sort(rows[by_value], stable=True).indices
    return by_value[by_row]


def lovasz_row_weights(errors: Tensor, foreground: Tensor, valid: Tensor, keep: Tensor | None = None) -> Tensor:
    """Lovász-extension weights of the Jaccard loss for each row of ``errors``.

    For each row, the kept elements are sorted by decreasing error and the weight of the element at
    sorted position ``k`` is ``J(k) - J(k-1)``, where ``J(k)`` is the Jaccard loss of predicting the
    first ``k`` elements as errors (Berman et al., 2018, Alg. 1). ``loss_row = sum(f(errors) * weights)``.

    Args:
        errors: Per-element errors, float32 or float64.
        foreground: Ground-truth membership of each element (bool).
        valid: Elements that take part in the row (``False`` for ignored pixels); their weight is 0.
        keep: Subset of ``valid`` elements to sort. Elements outside it must come after every kept
            element of their row in the sorted order (e.g. non-positive hinge errors), so they
            cannot change the weights of the kept ones; their own weight is 0. Defaults to ``valid``.

    Returns:
        Weights with the shape and dtype of ``errors``, without gradient.

    Shape:
        - errors, foreground, valid, keep: ``[R, N]`` (R rows of N elements; broadcastable masks).
    """
    with torch.no_grad():
        num_rows, row_len = errors.shape
        valid = valid.expand(num_rows, row_len)
        foreground = foreground.expand(num_rows, row_len) & valid
        keep = valid if keep is None else keep.expand(num_rows, row_len)
        weights = torch.zeros(num_rows * row_len, dtype=errors.dtype, device=errors.device)

        # The Jaccard counts use every valid foreground element, kept or not.
        fg_total = foreground.sum(1)
        flat_keep = keep.reshape(-1)
        index = flat_keep.nonzero().squeeze(1)
        if index.numel() == 0:
            return weights.view(num_rows, row_len)
        rows = torch.div(index, row_len, rounding_mode="floor")
        order = _descending_order(errors.reshape(-1)[index], rows)
        index, rows = index[order], rows[order]
        fg_sorted = foreground.reshape(-1)[index].to(torch.int64)

        # Segmented cumulative sums: global cumsum minus the total of the rows before.
        kept_per_row = keep.sum(1)
        row_start = torch.cumsum(kept_per_row, 0) - kept_per_row
        fg_kept_per_row = (foreground & keep).sum(1)
        fg_before_row = torch.cumsum(fg_kept_per_row, 0) - fg_kept_per_row
        position = torch.arange(index.numel(), device=errors.device) - row_start[rows]  # 0-based
        fg_seen = torch.cumsum(fg_sorted, 0) - fg_before_row[rows]
        bg_seen = position + 1 - fg_seen
        gts = fg_total[rows]
        # Integer counts keep the ratios exact (a float32 cumsum is not past 2**24 elements).
        intersection = (gts - fg_seen).to(errors.dtype)
        union = (gts + bg_seen).to(errors.dtype)
        jaccard = 1.0 - intersection / union
        previous = torch.roll(jaccard, 1)
        previous[position == 0] = 0.0
        weights[index] = jaccard - previous
        return weights.view(num_rows, row_len)
