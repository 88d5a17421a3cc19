"""The batched core of every Lovász loss: Lovász weights for many independent rows at once.

A Lovász loss sorts the errors of one "row" (an image, a class of an image, or a class over the
batch), turns the sorted ground truth into the gradient of the Lovász extension of the Jaccard loss,
and takes the dot product with the (transformed) errors. The reference implementation loops in
Python over rows. Here one sort orders all rows at once and cumulative sums along the sorted rows
give every weight. The weights are piecewise constant in the errors, so they are computed without
autograd and the loss is ``sum(f(errors) * weights)``: the reference's value and gradient, with an
elementwise backward pass instead of one through the sort.

With ``p`` the 1-based sorted position, ``c_p`` the foreground count among the first ``p`` elements and
``G`` the row's foreground total, the Jaccard loss of the first ``p`` elements is
``J_p = 1 - (G - c_p) / (G + p - c_p) = p / (G + p - c_p)`` and the weight is ``J_p - J_{p-1}``.

Full-size temporaries are kept few and updated in place: on CPU each fresh multi-megabyte buffer
costs page faults that can exceed the arithmetic done in it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lovasz_row_weights"]

# Below this fraction of active elements, compacting them before the sort beats sorting whole rows.
_COMPACT_BELOW = 0.5
_INT32_MAX = 0x7FFFFFFF


def _descending_key32(values: Tensor) -> Tensor:
    """int32 keys whose ascending order is the descending order of the float32 ``values``."""
    bits = values.neg().view(torch.int32)
    # Flip the magnitude bits of negative floats: the integers then order like the floats.
    return bits.bitwise_xor_((bits >> 31).bitwise_and_(_INT32_MAX))


def _sort_by_row_then_key(keys32: Tensor, row_base: Tensor) -> Tensor:
    """Permutation sorting by row, then by key, through one sort of ``row * 2**32 + key + 2**31``.

    PyTorch radix-sorts 1-D integer tensors on CPU, which beats a comparison sort of the floats.
    The key is built with arithmetic: int64 shifts and ors are not vectorised on CPU.
    """
    wide = torch.empty(keys32.shape, dtype=torch.int64, device=keys32.device)
    return torch.sort(wide.copy_(keys32).add_(row_base).view(-1)).indices


def _weights_from_counts(fg_count: Tensor, position: Tensor, fg_total: Tensor, row_first: Tensor | None) -> Tensor:
    """``J_p - J_{p-1}`` from cumulative foreground counts; overwrites ``fg_count``.

    Dense rows are ``[R, N]``; compacted rows are 1-D with ``row_first`` marking each row's start.
    """
    denominator = fg_count.neg_().add_(position).add_(fg_total)
    jaccard = torch.div(position, denominator, out=denominator)
    weights = torch.empty_like(jaccard)
    if row_first is None:
        weights[:, 0] = jaccard[:, 0]
        torch.sub(jaccard[:, 1:], jaccard[:, :-1], out=weights[:, 1:])
        return weights
    weights[0] = jaccard[0]
    torch.sub(jaccard[1:], jaccard[:-1], out=weights[1:])
    return torch.where(row_first, jaccard, weights)


def _dense_weights(errors: Tensor, foreground: Tensor, valid: Tensor | None, fg_total: Tensor) -> Tensor:
    """Sort whole rows; ignored elements are pushed behind every valid one of their row."""
    num_rows, row_len = errors.shape
    count_dtype = errors.dtype if row_len <= 2**24 else torch.float64  # exact integer counts
    rows = torch.arange(num_rows, device=errors.device)
    if errors.dtype == torch.float32:
        keys32 = _descending_key32(errors)
        if valid is not None:
            keys32.masked_fill_(~valid, _INT32_MAX)
        order = _sort_by_row_then_key(keys32, rows[:, None] * 2**32 + 2**31)
    else:
        ranked = errors if valid is None else errors.masked_fill(~valid, -torch.inf)
        row_order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
        order = row_order.add_(rows[:, None] * row_len).view(-1)
    fg_sorted = foreground.to(count_dtype).view(-1).index_select(0, order).view(num_rows, row_len)
    position = torch.arange(1, row_len + 1, device=errors.device, dtype=count_dtype)
    weights_sorted = _weights_from_counts(fg_sorted.cumsum_(1), position, fg_total[:, None].to(count_dtype), None)
    if valid is not None:
        weights_sorted.masked_fill_(~valid.reshape(-1).index_select(0, order).view(num_rows, row_len), 0.0)
    weights = torch.empty(num_rows * row_len, dtype=errors.dtype, device=errors.device)
    return weights.index_copy_(0, order, weights_sorted.view(-1).to(errors.dtype)).view(num_rows, row_len)


def _compact_weights(errors: Tensor, foreground: Tensor, active: Tensor, fg_total: Tensor) -> Tensor:
    """Sort only the active elements, all rows in one sort, with segmented cumulative sums."""
    num_rows, row_len = errors.shape
    index = active.reshape(-1).nonzero().squeeze(1)
    rows = torch.div(index, row_len, rounding_mode="floor")
    values = errors.reshape(-1).index_select(0, index)
    if errors.dtype == torch.float32:
        order = _sort_by_row_then_key(_descending_key32(values), rows * 2**32 + 2**31)
    else:
        by_value = torch.sort(values, descending=True, stable=True).indices
        order = by_value.index_select(0, torch.sort(rows.index_select(0, by_value), stable=True).indices)
    index, rows = index.index_select(0, order), rows.index_select(0, order)
    # Segmented cumulative sums: the running total minus its value where the row starts.
    active_per_row = active.sum(1)
    row_start = (torch.cumsum(active_per_row, 0) - active_per_row).index_select(0, rows)
    position = torch.arange(index.numel(), device=errors.device) - row_start
    fg_count = foreground.reshape(-1).index_select(0, index).to(torch.int64).cumsum_(0)
    fg_count -= torch.cat([fg_count.new_zeros(1), fg_count]).index_select(0, row_start)
    weights_sorted = _weights_from_counts(
        fg_count.to(torch.float64),
        position.add(1).to(torch.float64),
        fg_total.index_select(0, rows).to(torch.float64),
        position == 0,
    )
    weights = torch.zeros(num_rows * row_len, dtype=errors.dtype, device=errors.device)
    return weights.index_copy_(0, index, weights_sorted.to(errors.dtype)).view(num_rows, row_len)


def lovasz_row_weights(
    errors: Tensor, foreground: Tensor, valid: Tensor | None = None, active: Tensor | None = None
) -> Tensor:
    """Lovász-extension weights of the Jaccard loss for each row of ``errors``.

    For each row, the valid elements are sorted by decreasing error and the element at sorted position
    ``p`` gets ``J_p - J_{p-1}`` (Berman et al., 2018, Alg. 1), so ``loss_row = sum(f(errors) * weights)``.

    Args:
        errors: Per-element errors, float32 or float64.
        foreground: Ground-truth membership of each element (bool).
        valid: Elements that take part (``False`` for ignored pixels; weight 0), or ``None`` for all.
        active: Valid elements whose weight matters, for a transform ``f`` that is zero elsewhere and
            where inactive errors sort after every active one of their row (relu of hinge errors: the
            non-positive ones). Then only the active errors need sorting when they are few; inactive
            elements get unspecified weights. ``None``: every valid element is active.

    Returns:
        Weights with the shape and dtype of ``errors``, without gradient.

    Shape:
        - errors: ``[R, N]`` (R rows of N elements); foreground, valid, active: broadcastable to it.
    """
    with torch.no_grad():
        num_rows, row_len = errors.shape
        foreground = foreground.expand(num_rows, row_len)
        if valid is not None:
            valid = valid.expand(num_rows, row_len)
            foreground = foreground & valid
        # The Jaccard counts use every valid foreground element, active or not.
        fg_total = foreground.sum(1)
        if active is not None:
            active = active.expand(num_rows, row_len)
            num_active = int(active.sum())  # the one host synchronisation: it picks the cheaper path
            if num_active == 0:
                return torch.zeros_like(errors)
            if num_active < _COMPACT_BELOW * num_rows * row_len:
                return _compact_weights(errors, foreground, active, fg_total)
        return _dense_weights(errors, foreground, valid, fg_total)
