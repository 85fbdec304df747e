"""The histogram percentiles must be NumPy's numbers exactly: the gate's statistics and the model's
input scaling were measured with np.percentile, and a scan must not read differently after a speed-up."""

import numpy as np
import pytest

from core.scans.levels import levels_median, levels_percentile
from core.scans.preprocess import prepare_image
from core.scans.statistics import image_statistics
from tests.synthetic import synthetic_slice

QS = (0, 1.3, 25, 50, 75, 99, 99.5, 99.9, 100, [25, 50, 75], [99.0])


def same(expected, got) -> bool:
    return (type(expected) is type(got) and np.asarray(expected).dtype == np.asarray(got).dtype
            and np.array_equal(expected, got))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_percentiles_and_medians_equal_numpys_to_the_bit(dtype):
    rng = np.random.default_rng(7)
    for trial in range(400):
        levels = rng.integers(0, 256, int(rng.integers(1, 3000))).astype(np.uint8)
        if trial % 3 == 0:  # few distinct levels: ties everywhere, as in a dark background
            levels = np.minimum(levels, rng.integers(1, 256)).astype(np.uint8)
        as_numpy = levels.astype(dtype)
        for q in QS:
            assert same(np.percentile(as_numpy, q), levels_percentile(levels, q, dtype)), (trial, q, levels.size)
        assert same(np.median(as_numpy), levels_median(levels, dtype)), (trial, levels.size)


def test_edge_cases_and_other_inputs_fall_back_to_numpy():
    for levels in (np.array([7], np.uint8), np.full(10, 255, np.uint8), np.zeros((3, 4), np.uint8)):
        assert same(np.percentile(levels.astype(np.float32), 99.5), levels_percentile(levels, 99.5, np.float32))
        assert same(np.median(levels), levels_median(levels))
    values = np.array([0.5, 2.25, 9.0])
    assert same(np.percentile(values, 40), levels_percentile(values, 40, np.float64))
    assert same(np.median(values), levels_median(values, np.float64))
    with pytest.raises(IndexError):  # no values: NumPy's own error, as before
        levels_percentile(np.array([], np.uint8), 50)


def with_numpy_percentiles(function, *args):
    """`function(*args)` with NumPy's percentiles put back: the reference the histogram version must equal."""
    import core.scans.preprocess as preprocess
    import core.scans.statistics as statistics

    modules = (statistics, preprocess)
    saved = [(module, module.__dict__.get("levels_percentile"), module.__dict__.get("levels_median")) for module in modules]
    for module in modules:
        module.levels_percentile = lambda levels, q, dtype=np.uint8: np.percentile(np.asarray(levels).astype(dtype), q)
        module.levels_median = lambda levels, dtype=np.uint8: np.median(np.asarray(levels).astype(dtype))
    try:
        return function(*args)
    finally:
        for module, percentile, median in saved:
            module.levels_percentile = percentile
            if median is None:
                del module.levels_median
            else:
                module.levels_median = median


def test_statistics_and_model_input_unchanged_on_slices():
    rng = np.random.default_rng(3)
    pictures = [synthetic_slice(label, size) for label in range(4) for size in (90, 224, 300)]
    pictures += [rng.integers(0, 256, (200, 130)).astype(np.uint8), np.zeros((40, 40), np.uint8)]
    for grey in pictures:
        assert image_statistics(grey) == with_numpy_percentiles(image_statistics, grey)
        for size in (64, 160):
            np.testing.assert_array_equal(prepare_image(grey, size), with_numpy_percentiles(prepare_image, grey, size))
