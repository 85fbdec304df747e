"""The one preprocessing path: file bytes -> greyscale image -> model tensor.

Training, evaluation, the CLI and the app all call `prepare_bytes` (or `prepare_image` on an
already decoded greyscale image), so the tensor a scan becomes cannot differ between training
and serving. Colour never reaches the model: every image is reduced to one greyscale channel at
decode time, which makes RGB/BGR channel-order mistakes impossible by construction.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.config import IMAGE_SIZE
from core.scans.levels import levels_percentile

# Pixels brighter than this fraction of the image's bright level count as anatomy, not background.
_FOREGROUND_FRACTION = 0.12
# A detected head smaller than this fraction of the frame is not trusted; the whole frame is used.
_MIN_CONTENT_FRACTION = 0.04
_MARGIN_FRACTION = 0.02


def content_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; exclusive ends) of the largest bright region.

    Scans from different sites frame the head with very different margins; cropping to the head
    makes the model see the anatomy at the same scale whatever the export's framing was.
    """
    height, width = grey.shape
    blurred = cv2.GaussianBlur(grey, (5, 5), 0)
    bright_level = float(levels_percentile(blurred, 99))
    threshold = max(8.0, _FOREGROUND_FRACTION * bright_level)
    mask = (blurred > threshold).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8), iterations=2)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return 0, height, 0, width
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, box_width, box_height, _ = stats[largest]
    if box_width * box_height < _MIN_CONTENT_FRACTION * height * width:
        return 0, height, 0, width
    margin = int(round(_MARGIN_FRACTION * max(height, width)))
    return (
        max(0, top - margin),
        min(height, top + box_height + margin),
        max(0, left - margin),
        min(width, left + box_width + margin),
    )


def prepare_image(grey: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Greyscale uint8 image (H, W) -> model input float32 (image_size, image_size, 1) in [0, 1].

    Steps: crop to the head, resize (area interpolation when shrinking), and scale so the 99.5th
    percentile of the head's intensities maps to 1.0, which evens out exposure and windowing
    differences between scanners while keeping the background at 0.
    """
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"prepare_image needs a 2-D uint8 image, got {grey.dtype} {grey.shape}")
    top, bottom, left, right = content_box(grey)
    crop = grey[top:bottom, left:right]
    shrinking = crop.shape[0] > image_size or crop.shape[1] > image_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (image_size, image_size), interpolation=interpolation)
    scaled = resized.astype(np.float32)
    bright_level = float(levels_percentile(resized, 99.5, np.float32))
    scaled /= max(bright_level, 1.0)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    return scaled[:, :, np.newaxis]


def prepare_bytes(data: bytes, filename: str = "", image_size: int = IMAGE_SIZE) -> np.ndarray:
    """File bytes -> model input; raises `ScanRejected` for anything that is not a usable scan."""
    from core.scans.intake import decode_image

    return prepare_image(decode_image(data, filename), image_size)
