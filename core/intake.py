"""Turning uploaded bytes into a greyscale image, or a clear reason why not."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from core import config
from core.errors import ScanRejected

MIN_SIDE = 32


@dataclass(frozen=True)
class Scan:
    """A decoded scan: `image` is the upright 2-D uint8 greyscale picture the model and reviewer see."""

    image: np.ndarray
    source_format: str
    colourfulness: float = 0.0  # mean absolute chroma of the source, 0-255 units; 0 for greyscale
    metadata: dict[str, str] = field(default_factory=dict)  # non-identifying fields only
    frame_count: int = 1
    frame: int = 0


def load_scan(data: bytes, filename: str = "") -> Scan:
    """Decode an uploaded file into a `Scan`; raise `ScanRejected` with a specific reason on bad input."""
    if not data:
        raise ScanRejected("the file is empty (0 bytes)")
    if len(data) > config.max_upload_bytes():
        raise ScanRejected(
            f"the file is {len(data) / 1e6:.1f} MB, over the {config.max_upload_bytes() / 1e6:.0f} MB limit"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies the EXIF orientation and expands greyscale, palette and 1-bit images;
    # the grey conversion below is then the same for every source.
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise ScanRejected("the file could not be decoded as an image")
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if min(grey.shape) < MIN_SIDE:
        raise ScanRejected(f"the image is {grey.shape[1]}x{grey.shape[0]} pixels, too small to read")
    chroma = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)[:, :, 1:].astype(np.float32) - 128.0
    return Scan(image=grey, source_format="image", colourfulness=float(np.abs(chroma).mean()))


def decode_image(data: bytes, filename: str = "") -> np.ndarray:
    """Decode file bytes to the 2-D uint8 greyscale image the model sees; raise `ScanRejected` on bad input."""
    return load_scan(data, filename).image
