"""The histogram percentiles must be NumPy's numbers exactly: the gate's statistics and the model's
input scaling were measured with np.percentile, and a scan must not read differently after a speed-up."""

import numpy as np
import pytest

from core.scans.levels import level_counts, levels_median, levels_percentile
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


def test_level_counts_equal_bincount_below_and_above_opencvs_exact_range():
    rng = np.random.default_rng(11)
    for size in (1, 2, 999, 65536):
        flat = rng.integers(0, 256, size).astype(np.uint8)
        assert np.array_equal(level_counts(flat), np.bincount(flat, minlength=256))
        assert np.array_equal(level_counts(flat, 64), np.bincount(flat // 4, minlength=64))
    # Past 2 ** 24 pixels one level can hold more than float32 counts exactly (16,777,217 ones here, which
    # OpenCV's float32 histogram counts as 16,777,216).
    flat = np.ones((1 << 24) + 6, np.uint8)
    flat[:5] = 200
    counts = level_counts(flat)
    assert counts.dtype == np.int64 and counts[1] == (1 << 24) + 1 and counts[200] == 5
    assert levels_percentile(flat, 0) == 1 and levels_percentile(flat, 100) == 200


def test_edge_cases_and_other_inputs_fall_back_to_numpy():
    for levels in (np.array([7], np.uint8), np.full(10, 255, np.uint8), np.zeros((3, 4), np.uint8)):
        assert same(np.percentile(levels.astype(np.float32), 99.5), levels_percentile(levels, 99.5, np.float32))
        assert same(np.median(levels), levels_median(levels))
    values = np.array([0.5, 2.25, 9.0])
    assert same(np.percentile(values, 40), levels_percentile(values, 40, np.float64))
    assert same(np.median(values), levels_median(values, np.float64))
    with pytest.raises(IndexError):  # no values: NumPy's own error, as before
        levels_percentile(np.array([], np.uint8), 50)


# image_statistics of two drawn slices as the code before core.scans.levels computed them (np.percentile and
# np.median on the arrays it built): the callers must pass the dtypes that code used.
BEFORE = {
    (3, 224): (0.0, 0.47343351403061223, 1.0, 0.9939026643509109, 0.7812472768466611, 0.3639809787273407, 1.0,
               53.74208842325184, 0.47681281618887017, 0.0843488825890063, 0.9873417721518988, 0.43478260869565216,
               0.043478260869565216, 0.9198105321816662, 7.363499134788851e-05, 0.5360430190392624),
    (8, 150): (0.0, 0.4666222222222222, 1.0, 0.9914694994366651, 0.7799936688825577, 0.4203251302242279, 1.0,
               57.78796980711171, 0.6875, 0.12039036877049836, 0.9794019933554817, 0.430622009569378,
               0.0430622009569378, 0.9198220940016829, 7.999360051195904e-05, 0.5635654607583791),
}


def prepare_as_before(grey: np.ndarray, image_size: int) -> np.ndarray:
    """`prepare_image` as it was written before, with NumPy's percentiles (its model input must not change)."""
    import cv2

    height, width = grey.shape
    blurred = cv2.GaussianBlur(grey, (5, 5), 0)
    threshold = max(8.0, 0.12 * float(np.percentile(blurred, 99)))
    mask = cv2.morphologyEx((blurred > threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8),
                            iterations=2)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    top, bottom, left, right = 0, height, 0, width
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h, _ = stats[largest]
        if w * h >= 0.04 * height * width:
            margin = int(round(0.02 * max(height, width)))
            top, bottom = max(0, y - margin), min(height, y + h + margin)
            left, right = max(0, x - margin), min(width, x + w + margin)
    crop = grey[top:bottom, left:right]
    shrinking = crop.shape[0] > image_size or crop.shape[1] > image_size
    resized = cv2.resize(crop, (image_size, image_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    scaled = resized.astype(np.float32)
    scaled /= max(float(np.percentile(scaled, 99.5)), 1.0)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    return scaled[:, :, np.newaxis]


def test_statistics_and_model_input_unchanged_on_slices():
    import dataclasses

    for (seed, size), expected in BEFORE.items():
        assert dataclasses.astuple(image_statistics(synthetic_slice(seed, size))) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(3)
    pictures = [synthetic_slice(seed, size) for seed in range(4) for size in (90, 224, 300)]
    pictures += [rng.integers(0, 256, (200, 130)).astype(np.uint8), np.zeros((40, 40), np.uint8)]
    for grey in pictures:
        for size in (64, 160):
            np.testing.assert_array_equal(prepare_image(grey, size), prepare_as_before(grey, size))


def test_numpy_scalars_other_dtypes_and_bad_q_behave_as_numpy():
    levels = np.random.default_rng(5).integers(0, 256, 999).astype(np.uint8)
    assert same(np.percentile(levels.astype(np.float32), np.float64(99)), levels_percentile(levels, np.float64(99),
                                                                                           np.float32))
    assert same(np.percentile(levels, (10, 90)), levels_percentile(levels, (10, 90)))
    assert same(np.percentile(levels, 37.5), levels_percentile(levels, 37.5))  # dtype None: the levels' own
    wide = levels.astype(np.uint16) * 200
    assert same(np.percentile(wide, 50), levels_percentile(wide, 50))  # not uint8: NumPy's answer, not truncated
    assert same(np.median(wide), levels_median(wide))
    for bad in (101, -1, [50, 120]):
        with pytest.raises(ValueError):
            levels_percentile(levels, bad)
