"""Archived bytes back into the `Scan` the uploader saw, pixel for pixel.

A de-identified DICOM upload is read as any DICOM file is. A Secondary Capture this app made of a
picture holds the picture as the app decoded it, so it is read back directly: its greyscale
pixels are the scan's image, its RGB pixels go through the same greyscale conversion an upload
does (so the colour measure the gate uses is the same too), and `source_format` says it was an
uploaded picture rather than a DICOM file (no DICOM panel is offered for it).
"""

from __future__ import annotations

import io

import numpy as np

from core.archive.objects import MANUFACTURER, SECONDARY_CAPTURE
from core.errors import ScanRejected
from core.scans.intake import load_scan
from core.scans.scan import Scan, check_shape, greyscale_scan

CAPTURE_FORMAT = "picture"


def is_own_capture(dataset) -> bool:
    """Whether a dataset is a Secondary Capture this app made of an uploaded picture."""
    return str(dataset.get("SOPClassUID", "")) == SECONDARY_CAPTURE and \
        str(dataset.get("Manufacturer", "")) == MANUFACTURER


def scan_from_archive(data: bytes, frame: int | None = None, window: tuple[float, float] | None = None) -> Scan:
    """An archived object's bytes -> the `Scan` its upload decoded to; raises `ScanRejected` as intake does."""
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception:  # Damaged bytes are reported as intake reports a damaged upload.
        raise ScanRejected("the archived scan is damaged: its data elements could not be read") from None
    if not is_own_capture(dataset):
        return load_scan(data, "archived.dcm", frame=frame, window=window)
    try:
        pixels = np.asarray(dataset.pixel_array)
    except Exception:
        raise ScanRejected("the archived picture could not be decoded") from None
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        scan = greyscale_scan(np.ascontiguousarray(pixels, dtype=np.uint8), CAPTURE_FORMAT, bgr=False)
    elif pixels.ndim == 2:
        scan = Scan(image=np.ascontiguousarray(pixels, dtype=np.uint8), source_format=CAPTURE_FORMAT)
    else:
        raise ScanRejected("the archived picture has an unsupported layout")
    check_shape(scan.image)
    return scan
