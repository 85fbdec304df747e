"""Percentiles and medians of 8-bit grey levels from their histogram, equal to NumPy's to the last bit.

`np.percentile` and `np.median` partition a copy of the array: 0.2-0.5 ms for a 256 x 256 image,
and the screening statistics and the preprocessing ask for seven of them per scan (about 40% of
`image_statistics`' time). Grey levels take only 256 values, so one histogram (`level_counts`) gives
every order statistic; the interpolation then repeats NumPy's own arithmetic ("linear" method, its
dtype rules for a Python-number `q` against a list), so the results are the same numbers, not merely close
(tests/test_levels.py compares them on random levels and drawn slices; `python bench/levels.py
--data FOLDER` on real images).
"""

from __future__ import annotations

import cv2
import numpy as np

# OpenCV's histogram counts in float32, exact while every count is under 2 ** 24; a larger picture
# (up to BRAINSCAN_MAX_PIXELS, 40 M) is counted by NumPy.
_EXACT_FLOAT32_COUNT = 1 << 24


def level_counts(flat: np.ndarray, bins: int = 256) -> np.ndarray:
    """(bins,) int64: how many of a 1-D uint8 array's values fall in each of `bins` equal bins of 0-255.

    `np.bincount` widens every value to int64 first (0.24 ms for a 256 x 256 image here);
    `cv2.calcHist` counts the bytes as they are, about five times faster, and gives the same counts.
    """
    if bins < 1 or 256 % bins:
        raise ValueError(f"bins must divide 256 evenly, got {bins}")
    if flat.size < _EXACT_FLOAT32_COUNT:
        return cv2.calcHist([flat], [0], None, [bins], [0, 256]).ravel().astype(np.int64)
    return np.bincount(flat // (256 // bins), minlength=bins)


def _order_statistics(counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The grey level at each 0-based rank of the sorted values, from the levels' counts."""
    return np.searchsorted(np.cumsum(counts), ranks, side="right")


def levels_percentile(levels: np.ndarray, q, dtype=None):
    """`np.percentile(levels.astype(dtype), q)`, exactly, for an array of grey levels (`dtype` None: its own).

    `q` is a number (the result is a NumPy scalar) or a one-dimensional sequence (an array), as for
    NumPy. Anything else (no values, levels that are not uint8, a `q` outside 0-100 or of more
    dimensions) goes to NumPy itself, which then answers or says what is wrong, as before.
    """
    flat = np.asarray(levels).ravel()
    dtype = flat.dtype if dtype is None else np.dtype(dtype)
    quantiles = np.true_divide(q, 100)
    if (flat.dtype != np.uint8 or flat.size == 0 or np.ndim(q) > 1
            or not np.all((quantiles >= 0) & (quantiles <= 1))):
        return np.percentile(flat.astype(dtype), q)
    count = flat.size
    weak = type(q) in (int, float)  # NumPy's "weak" promotion: a Python number keeps a float32 array's dtype
    virtual = (count - 1) * np.atleast_1d(quantiles)
    previous = np.floor(virtual)
    gamma = virtual - previous
    low = np.clip(previous.astype(np.intp), 0, count - 1)
    ranks = np.concatenate([low, np.minimum(low + 1, count - 1)])
    order = _order_statistics(level_counts(flat), ranks)
    kind = dtype if (weak and dtype.kind == "f") else np.dtype(np.float64)
    below, above = order[:len(low)].astype(kind), order[len(low):].astype(kind)
    difference = above - below
    result = np.where(gamma >= 0.5, above - difference * (1 - gamma).astype(kind),
                      below + difference * gamma.astype(kind))
    if dtype.kind == "f":
        result = result.astype(dtype if weak else np.result_type(dtype, np.float64))
    return result[0] if np.ndim(q) == 0 else result


def levels_median(levels: np.ndarray, dtype=None):
    """`np.median(levels.astype(dtype))`, exactly, for an array of grey levels (see `levels_percentile`)."""
    flat = np.asarray(levels).ravel()
    dtype = flat.dtype if dtype is None else np.dtype(dtype)
    if flat.dtype != np.uint8 or flat.size == 0:
        return np.median(flat.astype(dtype))
    count = flat.size
    middle = _order_statistics(level_counts(flat), np.array([(count - 1) // 2, count // 2]))
    # NumPy takes the mean of the one or two middle values, in the array's dtype (float64 for integers).
    return np.mean(middle.astype(dtype) if count % 2 == 0 else middle[1:].astype(dtype))
