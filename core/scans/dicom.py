"""DICOM intake: one frame of a DICOM file -> windowed 8-bit greyscale `Scan`, with no patient data.

The chosen frame goes through the display pipeline of DICOM PS3.3 C.11: modality LUT (or rescale
slope/intercept), then the VOI LUT or a window (the file's own unless the reviewer picks another),
then MONOCHROME1 inversion. Enhanced multi-frame files keep rescale and window per frame in
functional group sequences; those are read too.

Privacy: the parsed dataset never leaves this module. A `Scan` carries only the pixels and the
fields named in `METADATA_FIELDS`, none of which identifies a patient; names, IDs, dates,
addresses, accession numbers, institutions, physicians and every private tag are never read.
"""

from __future__ import annotations

import io
import re

import numpy as np

from core.errors import ScanRejected
from core.scans.scan import SUPPORTED_FORMATS_TEXT, Scan, check_pixel_count, greyscale_scan

# (centre, width) of the common "brain" window; in Hounsfield units for CT, and a sensible
# narrow starting point for other modalities the reviewer can widen.
BRAIN_WINDOW = (40.0, 80.0)

# The only dataset fields copied out of a DICOM file: (keyword, label shown to the reviewer).
METADATA_FIELDS = (
    ("Modality", "Modality"),
    ("BodyPartExamined", "Body part"),
    ("SeriesDescription", "Series"),
    ("SliceThickness", "Slice thickness (mm)"),
    ("PixelSpacing", "Pixel spacing (mm)"),
    ("Rows", "Rows"),
    ("Columns", "Columns"),
    ("PhotometricInterpretation", "Photometric interpretation"),
    # The device, never the patient: what the Performance page groups a department's figures by.
    ("Manufacturer", "Manufacturer"),
    ("ManufacturerModelName", "Scanner model"),
)
_MAX_METADATA_LENGTH = 64
_PLAUSIBLE_DICOM_KEYWORDS = ("SOPClassUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "Rows")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


# Modality codes (PS3.3 C.7.3.1.1.1) a reader recognises, for the refusal message.
_MODALITY_NAMES = {
    "CT": "a CT image", "PT": "a PET image", "NM": "a nuclear medicine image", "US": "an ultrasound image",
    "CR": "an X-ray image (CR)", "DX": "an X-ray image (DX)", "RG": "an X-ray image (RG)", "XA": "an angiography image",
    "RF": "a fluoroscopy image", "MG": "a mammogram", "IO": "an intra-oral X-ray", "PX": "a panoramic X-ray",
    "OT": "an image of modality OT (other)", "SC": "a secondary capture", "XC": "a photograph (XC)",
    "OP": "an ophthalmic photograph", "SM": "a slide microscopy image", "ES": "an endoscopy image",
    "SR": "a structured report (SR)", "DOC": "a document (DOC)", "PR": "a presentation state (PR)",
    "KO": "a key object selection (KO)", "SEG": "a segmentation (SEG)", "REG": "a registration (REG)",
    "RTSTRUCT": "a radiotherapy structure set", "RTDOSE": "a radiotherapy dose", "RTPLAN": "a radiotherapy plan",
}
# MR Image, Enhanced MR Image, Enhanced MR Color Image, Legacy Converted Enhanced MR Image Storage.
MR_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3",
                    "1.2.840.10008.5.1.4.1.1.4.4")


def load_dicom(data: bytes, frame: int | None = None, window: tuple[float, float] | None = None,
               force: bool = False) -> Scan:
    """DICOM bytes -> `Scan` of one frame, windowed to 8 bits; raise `ScanRejected` with the reason.

    `frame` is 0-based (default: the middle frame); `window` is (centre, width) in modality units
    (default: the file's VOI LUT or window, else the frame's full range). `force` reads a file
    without the "DICM" preamble, accepting it only if it holds a plausible image.
    """
    dataset = _read_dataset(data, force)
    try:
        return _scan_from_dataset(dataset, frame, window)
    except ScanRejected:
        raise
    except Exception as error:  # pydicom and its plugins raise many types on damaged files.
        raise ScanRejected(f"the DICOM file is damaged and its image could not be read ({_short(error)})") from None


def _read_dataset(data: bytes, force: bool):
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=force)
        present = [keyword for keyword in _PLAUSIBLE_DICOM_KEYWORDS if keyword in dataset]
    except Exception:  # A damaged file can fail anywhere in parsing; all mean the same here.
        dataset, present = None, []
    if dataset is None or (force and not present):
        if force:
            raise ScanRejected(f"the file is not in a supported image format ({SUPPORTED_FORMATS_TEXT}) "
                               "and could not be read as DICOM either")
        raise ScanRejected("the DICOM file is damaged: its data elements could not be read")
    return dataset


def _check_modality(dataset) -> None:
    """Refuse, naming what it is, a DICOM object that says it is not an MR image (Modality, then SOP class).

    An object that says neither (hand-made files often omit both) goes on to the gate like any picture.
    """
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    if modality and modality != "MR":
        what = _MODALITY_NAMES.get(modality, f"an object of modality {modality[:16]}")
        raise ScanRejected(f"{what}; this model reads MRI (the DICOM file's Modality is {modality[:16]})")
    sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
    if sop_class and sop_class not in MR_IMAGE_STORAGE:
        from pydicom.uid import UID

        name = UID(sop_class).name if UID(sop_class).is_valid else sop_class[:64]
        raise ScanRejected(f"a {name} object, not an MR image; this model reads MRI")


def _check_image_kind(dataset) -> None:
    """Refuse a localizer (scout): an MR image, but a planning view of the head, never a slice to read."""
    image_type = dataset.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)  # one value, or a MultiValue
    if "LOCALIZER" in {str(value).strip().upper() for value in values}:
        raise ScanRejected("a localizer (scout) image, a planning view rather than a diagnostic slice (its "
                           "ImageType says LOCALIZER); this model reads diagnostic brain slices")


def _scan_from_dataset(dataset, frame: int | None, window: tuple[float, float] | None) -> Scan:
    _check_modality(dataset)  # Before any pixel is decoded: a CT is refused as a CT, not judged by the gate.
    _check_image_kind(dataset)
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise ScanRejected("the DICOM file has no pixel data (it may be a report, a structured document or a DICOMDIR)")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    check_pixel_count(columns, rows, what="DICOM file")
    _ensure_transfer_syntax(dataset)
    _check_decodable(dataset)
    frame_count = max(int(dataset.get("NumberOfFrames", 1) or 1), 1)
    if frame is None:
        chosen = frame_count // 2
    elif 0 <= frame < frame_count:
        chosen = int(frame)
    else:
        raise ScanRejected(f"frame {frame + 1} was requested but the DICOM file has {frame_count} frame(s)")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise ScanRejected("the DICOM image uses palette colour, which is not a greyscale MRI slice")

    from pydicom.pixels import pixel_array

    pixels = pixel_array(dataset, index=chosen if frame_count > 1 else None)
    metadata = _metadata(dataset, frame_count)
    if pixels.ndim == 3:  # RGB (pydicom has converted YBR): no windowing applies to colour.
        scan = greyscale_scan(np.ascontiguousarray(pixels), "DICOM", bgr=False)
        return Scan(scan.image, "DICOM", scan.colourfulness, metadata, frame_count, chosen)
    values = _modality_values(pixels, dataset, chosen)
    value_range = (float(np.nanmin(values)), float(np.nanmax(values)))
    default_window = _file_window(dataset, chosen) or _range_window(value_range)
    if window is not None:
        centre, width = float(window[0]), float(window[1])
        if not (np.isfinite(centre) and np.isfinite(width)) or width <= 0:
            raise ScanRejected(f"the window (centre {window[0]}, width {window[1]}) is not valid; width must be positive")
        image = apply_window(values, centre, width)
        applied = (centre, width)
    elif dataset.get("VOILUTSequence") and "ModalityLUTSequence" not in dataset and _is_integer(pixels):
        image = _apply_voi_lut(pixels, dataset)
        applied = default_window
    else:
        function = str(_frame_value(dataset, chosen, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
        image = apply_window(values, *default_window, function=function)
        applied = default_window
    if photometric == "MONOCHROME1":
        image = 255 - image  # MONOCHROME1 shows the lowest value as white.
    return Scan(image=np.ascontiguousarray(image), source_format="DICOM", colourfulness=0.0, metadata=metadata,
                frame_count=frame_count, frame=chosen, default_window=default_window, window=applied,
                value_range=value_range)


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Modality values -> uint8 display values through a DICOM window (PS3.3 C.11.2.1.2).

    LINEAR follows the standard's half-pixel convention, LINEAR_EXACT maps centre +- width/2
    exactly, SIGMOID uses the logistic curve.
    """
    values = np.asarray(values, dtype=np.float64)
    function = function.strip().upper()
    if function == "SIGMOID":
        scaled = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (values - centre) / width, -50, 50)))
    elif function == "LINEAR_EXACT":
        scaled = ((values - centre) / width + 0.5) * 255.0
    else:
        width = max(width, 1.0)
        scaled = ((values - (centre - 0.5)) / max(width - 1.0, 1e-9) + 0.5) * 255.0
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)


def _apply_voi_lut(pixels: np.ndarray, dataset) -> np.ndarray:
    from pydicom.pixels import apply_voi

    output = apply_voi(pixels, dataset, index=0)
    depth = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
    return np.clip(np.rint(output.astype(np.float64) * 255.0 / (2**depth - 1)), 0, 255).astype(np.uint8)


def _is_integer(pixels: np.ndarray) -> bool:
    return np.issubdtype(pixels.dtype, np.integer)


def _modality_values(pixels: np.ndarray, dataset, frame: int) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units) through the modality LUT or rescale."""
    if dataset.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    slope = _frame_value(dataset, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _frame_value(dataset, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    values = pixels.astype(np.float64)
    if slope is not None and float(slope) != 0.0:
        values *= float(slope)
    if intercept is not None:
        values += float(intercept)
    return values


def _frame_value(dataset, frame: int, sequence: str, keyword: str):
    """A value from the frame's functional group, else the shared group, else the top level."""
    for container, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = dataset.get(container)
        if groups and index < len(groups):
            items = groups[index].get(sequence)
            if items and keyword in items[0]:
                return items[0][keyword].value
    return dataset.get(keyword)


def _file_window(dataset, frame: int) -> tuple[float, float] | None:
    """The file's first (centre, width) window, or None when it has none or a useless one."""
    centre = _frame_value(dataset, frame, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_value(dataset, frame, "FrameVOILUTSequence", "WindowWidth")
    if centre is None or width is None:
        return None
    centre = centre[0] if _is_multi(centre) else centre
    width = width[0] if _is_multi(width) else width
    try:
        centre, width = float(centre), float(width)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(centre) and np.isfinite(width)) or width <= 0:
        return None
    return centre, width


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _range_window(value_range: tuple[float, float]) -> tuple[float, float]:
    low, high = value_range
    width = max(high - low, 1.0)
    return low + width / 2.0, width


def _ensure_transfer_syntax(dataset) -> None:
    """Give a file read without its meta header the transfer syntax its elements were read with."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(dataset, "original_encoding", (True, True))
    if meta is None:
        dataset.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def _check_decodable(dataset) -> None:
    """Reject, naming the syntax, pixel data compressed in a way no installed plugin decodes."""
    from pydicom.pixels import get_decoder

    syntax = dataset.file_meta.TransferSyntaxUID
    name = f"{syntax.name} ({syntax})" if syntax.is_valid and syntax.name != str(syntax) else str(syntax)
    try:
        decoder = get_decoder(syntax)
        available = decoder.is_available
    except Exception:  # NotImplementedError for syntaxes with no decoder, ValueError for unknown UIDs.
        available = False
    if not available:
        raise ScanRejected(f"the DICOM pixel data is compressed as {name}, which this installation cannot decode; "
                           "export it uncompressed or as JPEG, JPEG 2000 or RLE")


def _metadata(dataset, frame_count: int) -> dict[str, str]:
    """The allow-listed, non-identifying fields, as short printable strings."""
    metadata: dict[str, str] = {}
    for keyword, label in METADATA_FIELDS:
        try:
            value = dataset.get(keyword)
        except Exception:  # A damaged value is simply not shown.
            continue
        if value is None or value == "":
            continue
        text = " x ".join(_format_number(item) for item in value) if _is_multi(value) else _format_number(value)
        text = re.sub(r"[^\x20-\x7e]", "", text).strip()[:_MAX_METADATA_LENGTH]
        if text:
            metadata[label] = text
    if frame_count > 1:
        metadata["Frames"] = str(frame_count)
    syntax = dataset.file_meta.TransferSyntaxUID
    metadata["Transfer syntax"] = syntax.name if syntax.is_valid else str(syntax)[:_MAX_METADATA_LENGTH]
    return metadata


def _format_number(value) -> str:
    if isinstance(value, float) or type(value).__name__ in ("DSfloat", "DSdecimal"):
        return f"{float(value):g}"
    return str(value)


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:120]

