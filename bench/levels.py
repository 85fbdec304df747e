"""The histogram percentiles (core.scans.levels) on real images: the same statistics and model inputs as
NumPy's percentiles give, and how much faster.

    python bench/levels.py --data ../shared/datasets/nickparvar-brain-mri --data ../shared/datasets/non-mri

Exit status 1 if any image's `ImageStatistics` or model tensor differs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The picture and DICOM files read from a folder (bench/precision.py reads folders by the same list).
SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="a folder of images (repeatable)")
    parser.add_argument("--per-folder", type=int, default=400, help="evenly spaced images per folder (default 400)")
    parser.add_argument("--image-size", type=int, default=160, help="model input side (default 160)")
    arguments = parser.parse_args()

    import core.scans.statistics as statistics
    from core.errors import ScanRejected
    from core.scans.intake import load_scan
    from core.scans.preprocess import prepare_image
    from tests.test_levels import prepare_as_before

    images = []
    for folder in arguments.data:
        files = sorted(path for path in Path(folder).rglob("*") if path.is_file() and path.suffix.lower() in SUFFIXES)
        for path in files[::max(1, len(files) // arguments.per_folder)]:
            try:
                images.append(load_scan(path.read_bytes(), path.name).image)
            except ScanRejected:
                pass

    def numpy_statistics(grey):
        saved = statistics.levels_percentile, statistics.levels_median
        statistics.levels_percentile = lambda levels, q, dtype=None: np.percentile(
            np.asarray(levels).astype(dtype or np.asarray(levels).dtype), q)
        statistics.levels_median = lambda levels, dtype=None: np.median(
            np.asarray(levels).astype(dtype or np.asarray(levels).dtype))
        try:
            return statistics.image_statistics(grey)
        finally:
            statistics.levels_percentile, statistics.levels_median = saved

    differ = sum(statistics.image_statistics(grey) != numpy_statistics(grey)
                 or not np.array_equal(prepare_image(grey, arguments.image_size),
                                       prepare_as_before(grey, arguments.image_size)) for grey in images)
    timings = {}
    for name, function in (("image_statistics, NumPy percentiles", numpy_statistics),
                           ("image_statistics, histogram", statistics.image_statistics),
                           ("prepare_image, NumPy percentiles", lambda grey: prepare_as_before(grey, arguments.image_size)),
                           ("prepare_image, histogram", lambda grey: prepare_image(grey, arguments.image_size))):
        started = time.perf_counter()
        for grey in images:
            function(grey)
        timings[name] = (time.perf_counter() - started) / len(images) * 1000
    print(f"{len(images)} images from {', '.join(arguments.data)}: {differ} differ")
    for name, milliseconds in timings.items():
        print(f"  {name}: {milliseconds:.2f} ms an image")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
