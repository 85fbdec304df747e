"""Turning uploaded bytes into a greyscale image, or a clear reason why not.

The format is recognised by its leading bytes, never by the file name. Image dimensions are read
from the header and checked against `config.max_pixels()` before any pixel is decoded, so a small
file that declares a huge picture (a decompression bomb) costs nothing.

Ordinary 8-bit JPEG and PNG files go through exactly the path the model was trained on:
`cv2.imdecode(..., IMREAD_COLOR)` (which applies the EXIF orientation and expands greyscale,
palette and 1-bit images) then `cv2.cvtColor(BGR2GRAY)`. Only files that path would get wrong
take another route: 16-bit images are stretched to 8 bits by percentile instead of losing their
low byte, transparent images are composited onto black (the background of an MRI slice) instead
of dropping the alpha channel, CMYK JPEGs are converted by Pillow, and BMP, GIF, TIFF and WebP
are decoded by Pillow. DICOM files are handed to `core.scans.dicom`; the `Scan` type and the checks both
share live in `core.scans.scan`.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from core import config
from core.errors import ScanRejected
from core.scans.dicom import load_dicom
from core.scans.scan import (
    SUPPORTED_FORMATS_TEXT,
    Scan,
    check_pixel_count,
    check_shape,
    distinct_colour,
    greyscale_scan,
    mean_chroma,
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}

# Formats that are recognised but are not raster images this product reads: the message says what
# the file is, so the reviewer knows what to export instead.
_NOT_AN_IMAGE = {
    "pdf": "this is a PDF document, not an image; export the slice as PNG, JPEG or DICOM",
    "zip": "this is a ZIP archive (or an Office document), not an image; unpack it and upload the scans themselves",
    "gzip": "this is a gzip-compressed file, not an image; decompress it first",
    "ole": "this is an old-style Office document, not an image",
    "rtf": "this is a rich-text document, not an image",
    "html": "this is a web page (HTML), not an image",
    "svg": "this is an SVG vector drawing, not a scan image; export the slice as PNG, JPEG or DICOM",
    "xml": "this is an XML file, not an image",
    "json": "this is a JSON text file, not an image",
    "text": "this is a text file, not an image",
    "heif": "HEIC/HEIF and AVIF images are not supported; export the slice as PNG, JPEG or DICOM",
    "jpeg2000": "stand-alone JPEG 2000 files are not supported; export the slice as PNG, JPEG or DICOM",
    "jpegxl": "JPEG XL files are not supported; export the slice as PNG, JPEG or DICOM",
    "psd": "Photoshop documents are not supported; export the slice as PNG, JPEG or DICOM",
    "nifti": "NIfTI volumes are not supported; export single slices as PNG, JPEG or DICOM",
}
_PILLOW_FORMATS = {"bmp": "BMP", "gif": "GIF", "tiff": "TIFF", "webp": "WebP"}


def sniff_format(data: bytes) -> str:
    """The file's format from its leading bytes: "jpeg", "png", "dicom", "pdf", ..., or "unknown"."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
        return "bmp"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if head.startswith(b"{\\rtf"):
        return "rtf"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"):
        return "heif"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "jpeg2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "jpegxl"
    if head.startswith(b"8BPS"):
        return "psd"
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    return _sniff_text(data)


def _sniff_text(data: bytes) -> str:
    sample = data[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut off at the end of the sample is still text.
        if error.start < len(sample) - 4:
            return "unknown"
        text = sample[: error.start].decode("utf-8")
    if not text or any(ord(character) < 32 and character not in "\t\n\r\f" for character in text):
        return "unknown"
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith("<svg") or "<svg" in lowered[:1024]:
        return "svg"
    if lowered.startswith(("<!doctype html", "<html")):
        return "html"
    if lowered.startswith("<?xml"):
        return "xml"
    if lowered.startswith(("{", "[")):
        return "json"
    return "text"


def load_scan(data: bytes, filename: str = "", frame: int | None = None,
              window: tuple[float, float] | None = None) -> Scan:
    """Decode an uploaded file into a `Scan`; raise `ScanRejected` with a specific reason on bad input.

    `frame` picks the frame of a multi-frame DICOM, GIF or TIFF (default: the middle one for
    DICOM, the first otherwise); `window` is a DICOM (centre, width) in modality units (default:
    the file's own). Both are ignored for single-frame and non-DICOM files respectively.
    """
    if not data:
        raise ScanRejected("the file is empty (0 bytes)")
    if len(data) > config.max_upload_bytes():
        # Both sizes in MiB, the unit BRAINSCAN_MAX_UPLOAD_MB is read in.
        raise ScanRejected(
            f"the file is {len(data) / 2**20:.1f} MB, over the {config.max_upload_bytes() / 2**20:.3g} MB upload limit"
        )
    kind = sniff_format(data)
    if kind == "jpeg":
        scan = _load_jpeg(data)
    elif kind == "png":
        scan = _load_png(data)
    elif kind in _PILLOW_FORMATS:
        scan = _load_with_pillow(data, _PILLOW_FORMATS[kind], frame)
    elif kind == "dicom" or (kind == "unknown" and _may_be_bare_dicom(data, filename)):
        scan = load_dicom(data, frame=frame, window=window, force=kind != "dicom")
    elif kind in _NOT_AN_IMAGE:
        raise ScanRejected(_NOT_AN_IMAGE[kind])
    else:
        suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        named = f" although it is named .{suffix}" if suffix else ""
        raise ScanRejected(f"the file is not in a supported image format ({SUPPORTED_FORMATS_TEXT}){named}")
    check_shape(scan.image)
    return scan


def decode_image(data: bytes, filename: str = "") -> np.ndarray:
    """Decode file bytes to the 2-D uint8 greyscale image the model sees; raise `ScanRejected` on bad input."""
    return load_scan(data, filename).image


def unique_by_sha256(items: Iterable[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """(name, bytes) pairs -> (the first pair of each distinct content, {later duplicate's name: first's name}).

    A batch may hold the same file twice (uploaded twice, or copied under another name); it is
    classified once and the duplicates point at the first copy.
    """
    first_name_by_digest: dict[str, str] = {}
    unique: list[tuple[str, bytes]] = []
    duplicates: dict[str, str] = {}
    for name, data in items:
        digest = hashlib.sha256(data).hexdigest()
        if digest in first_name_by_digest:
            duplicates[name] = first_name_by_digest[digest]
        else:
            first_name_by_digest[digest] = name
            unique.append((name, data))
    return unique, duplicates


def duplicates_by_digest(items: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """(name, sha256 hex or None) pairs -> {name of a later duplicate: name of the first with that digest}.

    A None digest (an unreadable file) is never a duplicate.
    """
    first_name_by_digest: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for name, digest in items:
        if digest is None:
            continue
        if digest in first_name_by_digest:
            duplicates[name] = first_name_by_digest[digest]
        else:
            first_name_by_digest[digest] = name
    return duplicates


def _may_be_bare_dicom(data: bytes, filename: str) -> bool:
    """True for a DICOM file without its 128-byte preamble: named .dcm, or starting with a group 0002/0008 tag."""
    return filename.lower().endswith(_DICOM_SUFFIXES) or data[:2] in (b"\x02\x00", b"\x08\x00")


# ---------------------------------------------------------------- JPEG


def _load_jpeg(data: bytes) -> Scan:
    header = _pillow_header(data, "JPEG")
    check_pixel_count(*header.size, what="JPEG file")
    if header.mode == "CMYK":
        # OpenCV's CMYK conversion is off by about one grey level; Pillow's handles the Adobe
        # inverted-CMYK convention exactly.
        return _load_with_pillow(data, "JPEG", None, opened=header)
    image = _imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ScanRejected(_jpeg_failure(data))
    return _scan_from_bgr(image, "JPEG")


def _jpeg_failure(data: bytes) -> str:
    """Why OpenCV could not decode a JPEG whose header was readable."""
    if not _jpeg_has_end_marker(data):
        return "the JPEG file is truncated (it ends before the image data is complete); upload it again"
    return "the JPEG file is damaged and could not be decoded"


def _jpeg_has_end_marker(data: bytes) -> bool:
    # An end-of-image marker inside an embedded thumbnail does not count: only the last few bytes do.
    return b"\xff\xd9" in data[-64:]


# ---------------------------------------------------------------- PNG


@dataclass(frozen=True)
class _PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    has_transparency: bool
    complete: bool  # an IEND chunk was reached
    exif: bytes | None
    overrun: bool = False  # a chunk claims more bytes than the file has left


def _read_png_header(data: bytes) -> _PngHeader:
    """Parse the IHDR chunk and walk the chunk list without decompressing anything."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ScanRejected("the PNG file is damaged: its header (IHDR) is missing or truncated")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    has_transparency, complete, exif, overrun = False, False, None, False
    position = 8
    while position + 8 <= len(data):
        length = struct.unpack_from(">I", data, position)[0]
        kind = data[position + 4: position + 8]
        if position + 12 + length > len(data):
            overrun = True
            break
        if kind == b"tRNS":
            has_transparency = True
        elif kind == b"eXIf":
            exif = data[position + 8: position + 8 + length]
        elif kind == b"IEND":
            complete = True
            break
        position += 12 + length
    return _PngHeader(width, height, bit_depth, colour_type, has_transparency, complete, exif, overrun)


def _load_png(data: bytes) -> Scan:
    header = _read_png_header(data)
    check_pixel_count(header.width, header.height, what="PNG file")
    if header.overrun:
        # Refused before decoding: OpenCV allocates whatever a chunk claims, so a 2 KB file whose
        # image-data chunk claims 4 GB took 4 GB of memory and 9 s before failing.
        raise ScanRejected(_png_failure(header))
    has_alpha = header.colour_type in (4, 6) or (header.colour_type in (2, 3) and header.has_transparency)
    if header.bit_depth <= 8 and not has_alpha:
        image = _imdecode(data, cv2.IMREAD_COLOR)
        if image is None:
            raise ScanRejected(_png_failure(header))
        return _scan_from_bgr(image, "PNG")
    image = _imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ScanRejected(_png_failure(header))
    # IMREAD_UNCHANGED ignores the EXIF orientation that IMREAD_COLOR would have applied.
    image = _apply_orientation(image, _exif_orientation(header.exif))
    description = "PNG" + (" 16-bit" if header.bit_depth == 16 else "") + (" with transparency" if has_alpha else "")
    return greyscale_scan(image, description, bgr=True)


def _png_failure(header: _PngHeader) -> str:
    if header.overrun or not header.complete:
        return "the PNG file is truncated (it ends before the image data is complete); upload it again"
    return "the PNG file is damaged and could not be decoded"


# ---------------------------------------------------------------- Pillow formats


def _pillow_header(data: bytes, name: str):
    """Open an image with Pillow, which reads the header only; raise `ScanRejected` if it cannot."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ScanRejected(
            f"the {name} file declares an image too large to decode safely; it was refused before decoding"
        ) from None
    except Exception:  # Pillow raises many types for damaged headers; all mean the same here.
        raise ScanRejected(f"the {name} file is damaged: its header could not be read") from None


def _load_with_pillow(data: bytes, name: str, frame: int | None, opened=None) -> Scan:
    """Decode BMP, GIF, TIFF, WebP (and CMYK JPEG) with Pillow, with the same size checks as the rest."""
    from PIL import ImageOps

    image = opened if opened is not None else _pillow_header(data, name)
    check_pixel_count(*image.size, what=f"{name} file")
    try:
        frame_count = int(getattr(image, "n_frames", 1) or 1)
    except Exception:  # Counting frames walks the file; a damaged frame table ends the same way.
        raise ScanRejected(f"the {name} file is damaged: its frames could not be counted") from None
    chosen = _choose_frame(frame, frame_count, default=0)
    try:
        if chosen:
            image.seek(chosen)
            check_pixel_count(*image.size, what=f"{name} file")
        image.load()
        image = ImageOps.exif_transpose(image)
        array = _pillow_to_array(image)
    except ScanRejected:
        raise
    except Exception as error:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        truncated = "truncated" in str(error).lower()
        reason = "is truncated (it ends before the image data is complete)" if truncated else "is damaged and could not be decoded"
        raise ScanRejected(f"the {name} file {reason}") from None
    scan = greyscale_scan(array, name, bgr=False)
    return Scan(scan.image, scan.source_format, scan.colourfulness, frame_count=frame_count, frame=chosen,
                colour=scan.colour)


def _pillow_to_array(image) -> np.ndarray:
    """A Pillow image -> uint8/uint16/float32 array: (H, W), (H, W, 3) RGB or (H, W, 4) RGBA."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.asarray(image.convert("F") if mode != "F" else image, dtype=np.float32)
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------- shared helpers


def _imdecode(data: bytes, flags: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        return None


def _choose_frame(frame: int | None, frame_count: int, default: int) -> int:
    """Validate a requested frame index (0-based) against the file's frame count."""
    if frame is None:
        return default
    if not 0 <= frame < frame_count:
        raise ScanRejected(f"frame {frame + 1} was requested but the file has {frame_count} frame(s)")
    return int(frame)


def _exif_orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    from PIL import Image

    try:
        parsed = Image.Exif()
        parsed.load(exif)
        return int(parsed.get(0x0112, 1))
    except Exception:  # A damaged EXIF block only loses the orientation hint.
        return 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an array as EXIF orientation 1-8 asks, so the picture is upright."""
    operations = {
        2: lambda array: array[:, ::-1],
        3: lambda array: array[::-1, ::-1],
        4: lambda array: array[::-1],
        5: lambda array: np.swapaxes(array, 0, 1),
        6: lambda array: np.rot90(array, -1),
        7: lambda array: np.rot90(array, 1)[::-1],
        8: lambda array: np.rot90(array, 1),
    }
    operation = operations.get(orientation)
    return np.ascontiguousarray(operation(image)) if operation else image


def _scan_from_bgr(image: np.ndarray, source_format: str) -> Scan:
    """The training path: 8-bit BGR from IMREAD_COLOR -> BGR2GRAY, plus the chroma measure."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return Scan(image=grey, source_format=source_format, colourfulness=mean_chroma(image, bgr=True),
                colour=distinct_colour(image, bgr=True))
