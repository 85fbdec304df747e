"""Fuzzing intake: random and mutated bytes in, only `ScanRejected` (or a valid `Scan`) out.

Seeds are small valid files of every accepted format; hypothesis flips bits, truncates, inserts,
deletes and overwrites header fields. Any exception other than `ScanRejected`, or a `Scan` that
breaks the contract (2-D uint8, big enough, not too elongated), fails the test.
"""

from __future__ import annotations

import io
import struct
from datetime import timedelta

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import uid

from core.errors import ScanRejected
from core.scans.intake import load_scan
from core.scans.scan import MAX_ASPECT_RATIO, MIN_SIDE, Scan
from tests.synthetic import encode, synthetic_slice
from tests.test_dicom import _compressed, make_dicom

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=5),  # generous for a slow machine; a hang still shows as a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _pillow(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    grey = synthetic_slice(1, 48)
    colour = np.dstack([grey, np.roll(grey, 3, axis=1), np.roll(grey, 5, axis=0)])
    rgba = np.dstack([colour, np.full_like(grey, 200)])
    exif_image = Image.fromarray(grey)
    exif = exif_image.getexif()
    exif[0x0112] = 6
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    return {
        "png_grey": encode(grey),
        "png_colour": encode(colour),
        "png_16bit": encode(grey.astype(np.uint16) * 64),
        "png_rgba": encode(rgba),
        "png_palette": _pillow(Image.fromarray(grey).convert("P"), "PNG"),
        "jpeg": encode(colour, ".jpg"),
        "jpeg_progressive": cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "jpeg_exif": _pillow(exif_image, "JPEG", exif=exif.tobytes()),
        "jpeg_cmyk": _pillow(Image.fromarray(colour).convert("CMYK"), "JPEG"),
        "gif": _pillow(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _pillow(Image.fromarray(colour), "BMP"),
        "tiff": _pillow(Image.fromarray(grey.astype(np.uint16) * 200), "TIFF"),
        "webp": _pillow(Image.fromarray(colour), "WEBP", lossless=True),
        "dicom": make_dicom(grey.astype(np.uint16) * 10, WindowCenter="1000", WindowWidth="2000",
                            RescaleSlope="1", RescaleIntercept="-100"),
        "dicom_bare": make_dicom(grey, preamble=False),
        "dicom_multiframe": make_dicom(np.stack([grey, 255 - grey])),
        "dicom_rle": _compressed(grey, uid.RLELossless),
    }


SEEDS = _seeds()
NAMES = ["scan.png", "scan.jpg", "scan.dcm", "scan", "scan.gif"]


def check_contract(data: bytes, filename: str, **options) -> None:
    """Load `data`; fail unless it is a valid `Scan` or a `ScanRejected` with a reason."""
    try:
        scan = load_scan(data, filename, **options)
    except ScanRejected as rejection:
        assert isinstance(rejection.reason, str) and rejection.reason
        return
    assert isinstance(scan, Scan)
    assert scan.image.ndim == 2 and scan.image.dtype == np.uint8
    height, width = scan.image.shape
    assert min(height, width) >= MIN_SIDE and max(height, width) <= MAX_ASPECT_RATIO * min(height, width)
    assert 0 <= scan.frame < scan.frame_count
    assert np.isfinite(scan.colourfulness)


@st.composite
def mutated(draw) -> bytes:
    """A seed file with a few random mutations: bit flips, overwrites, insertions, deletions, truncation."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "header"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if not data:
            break
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[position: position + len(chunk)] = chunk
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position: position + draw(st.integers(1, 64))]
        elif operation == "truncate":
            del data[position:]
        else:
            # Header fields (sizes, depths, counts, lengths) live in the first few hundred bytes.
            offset = draw(st.integers(0, min(len(data), 400) - 1))
            value = draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[offset: offset + 4] = struct.pack(draw(st.sampled_from([">I", "<I"])), value)
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=2048), filename=st.sampled_from(NAMES))
def test_random_bytes_only_ever_raise_scan_rejected(data, filename):
    check_contract(data, filename)


@FUZZ
@given(prefix=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00", b"BM", b"RIFF",
                               bytes(128) + b"DICM", b"\x08\x00", b"\x02\x00"]),
       rest=st.binary(max_size=1024), filename=st.sampled_from(NAMES))
def test_random_bytes_behind_a_valid_signature_only_raise_scan_rejected(prefix, rest, filename):
    check_contract(prefix + rest, filename)


@settings(FUZZ, max_examples=300)
@given(data=mutated(), filename=st.sampled_from(NAMES))
def test_mutated_valid_files_only_raise_scan_rejected(data, filename):
    check_contract(data, filename)


@FUZZ
@given(data=mutated(), frame=st.one_of(st.none(), st.integers(-2, 4)),
       window=st.one_of(st.none(), st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True))))
def test_mutated_files_with_any_frame_and_window_only_raise_scan_rejected(data, frame, window):
    check_contract(data, "scan.dcm", frame=frame, window=window)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_is_a_valid_scan(name):
    # The mutations start from files intake accepts, so they probe the decoders, not the sniffing.
    scan = load_scan(SEEDS[name], "seed")
    assert scan.image.shape == (48, 48)
