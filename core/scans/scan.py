"""The decoded scan and the checks every decoder shares: size, shape and the 8-bit greyscale conversion.

Both `core.scans.intake` (ordinary image formats) and `core.scans.dicom` build `Scan`s with these
functions, so neither needs the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from core import config
from core.errors import ScanRejected

MIN_SIDE = 32
# Brain slices are roughly square; a strip this elongated is a banner, a screenshot or a crop error.
MAX_ASPECT_RATIO = 4.0
# 16-bit and floating-point images are stretched so these intensity percentiles span 0..255.
STRETCH_PERCENTILES = (0.5, 99.5)

SUPPORTED_FORMATS_TEXT = "JPEG, PNG, BMP, GIF, TIFF, WebP or DICOM"


@dataclass(frozen=True)
class Scan:
    """A decoded scan: `image` is the upright 2-D uint8 greyscale picture the model and reviewer see.

    `metadata` holds display fields that cannot identify a patient (an allow-list; see
    `core.scans.dicom.METADATA_FIELDS`). For DICOM, `default_window` is the file's own window and
    `window` the one applied, both (centre, width) in the file's modality units, and
    `value_range` the (min, max) of the chosen frame in those units, for sizing sliders.
    """

    image: np.ndarray
    source_format: str
    colourfulness: float = 0.0  # mean absolute chroma of the source, 0-255 units; 0 for greyscale
    metadata: dict[str, str] = field(default_factory=dict)  # non-identifying fields only
    frame_count: int = 1
    frame: int = 0
    default_window: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    value_range: tuple[float, float] | None = None
    # The decoded 8-bit colour picture (H, W, 3) in RGB order, for a colour source whose channels
    # differ; None otherwise. The scan archive keeps it, so a colour upload reads back as colour.
    colour: np.ndarray | None = field(default=None, compare=False, repr=False)


def check_shape(image: np.ndarray) -> None:
    """Raise `ScanRejected` if a decoded image is too small or too elongated to be a slice."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ScanRejected(
            f"the image is {width}x{height} pixels, too small to read (each side needs at least {MIN_SIDE})"
        )
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ScanRejected(
            f"the image is {width}x{height} pixels, too elongated to be a brain slice "
            f"(sides differ by more than {MAX_ASPECT_RATIO:g}:1)"
        )


def check_pixel_count(width: int, height: int, what: str = "image") -> None:
    """Raise `ScanRejected` before decoding when a header declares an empty or oversized picture."""
    if width <= 0 or height <= 0:
        raise ScanRejected(f"the {what} declares an empty picture ({width}x{height} pixels)")
    if width * height > config.max_pixels():
        raise ScanRejected(
            f"the {what} declares {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the "
            f"{config.max_pixels() / 1e6:.3g} megapixel limit; it was refused before decoding"
        )


def mean_chroma(image: np.ndarray, bgr: bool) -> float:
    """Mean absolute chroma of an 8-bit colour image (BGR or RGB), in 0-255 units; near 0 for grey pictures."""
    conversion = cv2.COLOR_BGR2YCrCb if bgr else cv2.COLOR_RGB2YCrCb
    chroma = cv2.cvtColor(image, conversion)[:, :, 1:].astype(np.float32) - 128.0
    return float(np.abs(chroma).mean())


def greyscale_scan(image: np.ndarray, source_format: str, bgr: bool) -> Scan:
    """Any decoded array (grey/colour/with alpha; uint8, uint16 or float) -> 8-bit greyscale `Scan`.

    Alpha is composited onto black; deeper than 8-bit data is stretched by percentile, the same
    stretch applied to every channel so the colour measure stays meaningful.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ScanRejected(f"the {source_format} image has {image.shape[2]} channels, which is not supported")
    if image.ndim not in (2, 3):
        raise ScanRejected(f"the {source_format} image has an unsupported layout")
    eight_bit = image.dtype == np.uint8
    full_scale = 255.0 if eight_bit else 65535.0 if image.dtype == np.uint16 else None
    values = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.ndim == 3 and values.shape[2] == 4:
        alpha = values[:, :, 3:] / (full_scale or max(float(values[:, :, 3].max()), 1.0))
        values = values[:, :, :3] * alpha
    conversion = cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY
    if eight_bit:
        colour = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        grey = colour if colour.ndim == 2 else cv2.cvtColor(colour, conversion)
    else:
        # The stretch is set on the greyscale picture, so that it spans 0..255, and the same
        # stretch applied to the colour channels keeps the colour measure comparable.
        grey_values = values if values.ndim == 2 else cv2.cvtColor(values, conversion)
        low, high = stretch_limits(grey_values)
        grey = stretch_to_uint8(grey_values, low, high)
        colour = grey if values.ndim == 2 else stretch_to_uint8(values, low, high)
    colourfulness = 0.0 if colour.ndim == 2 else mean_chroma(colour, bgr=bgr)
    return Scan(image=grey, source_format=source_format, colourfulness=colourfulness,
                colour=distinct_colour(colour, bgr))


def distinct_colour(colour: np.ndarray, bgr: bool) -> np.ndarray | None:
    """An 8-bit three-channel picture in RGB order, or None when it is greyscale (all channels equal) or 2-D."""
    if colour.ndim != 3 or (np.array_equal(colour[:, :, 0], colour[:, :, 1])
                            and np.array_equal(colour[:, :, 1], colour[:, :, 2])):
        return None
    return np.ascontiguousarray(colour[:, :, ::-1] if bgr else colour)


def stretch_limits(values: np.ndarray) -> tuple[float, float]:
    """The (low, high) values `stretch_to_uint8` maps to 0 and 255: `STRETCH_PERCENTILES`, else min and max."""
    values = np.asarray(values, dtype=np.float64)
    low, high = (float(value) for value in np.percentile(values, STRETCH_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return low, high


def stretch_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Any numeric array -> uint8 of the same shape, `low` mapped to 0 and `high` to 255 (default: `stretch_limits`)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if low is None or high is None:
        low, high = stretch_limits(values)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
