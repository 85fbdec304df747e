"""DICOM intake: the display pipeline, compressed and multi-frame files, and that no patient data leaks."""

from __future__ import annotations

import csv
import io
import re

import cv2
import numpy as np
import pytest
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from core.errors import ScanRejected
from core.scans.dicom import BRAIN_WINDOW, apply_window
from core.scans.intake import load_scan
from tests.synthetic import synthetic_slice

IDENTIFYING = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "PID-99812734",
    "PatientBirthDate": "19610417",
    "PatientAddress": "12 Quarry Lane, Millbrook",
    "AccessionNumber": "ACC-55501982",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "PerformingPhysicianName": "Grey^Meredith",
    "InstitutionAddress": "1 Hospital Road, Springfield",
    "OtherPatientIDs": "OTHER-4471",
}
PRIVATE_VALUE = "PRIVATE-SECRET-7781"


def make_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", preamble: bool = True,
               syntax=uid.ExplicitVRLittleEndian, **elements) -> bytes:
    """A minimal MR image storage file around `pixels` (frames, rows, columns) or (rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = uid.MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = uid.generate_uid()
    dataset.SeriesInstanceUID = uid.generate_uid()
    dataset.Modality = "MR"
    frames = pixels if pixels.ndim == 3 else pixels[np.newaxis]
    if pixels.ndim == 3:
        dataset.NumberOfFrames = len(frames)
    dataset.Rows, dataset.Columns = frames.shape[1:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = dataset.BitsStored = 16 if pixels.dtype.itemsize == 2 else 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()


def identifying_dicom(pixels: np.ndarray | None = None, **elements) -> bytes:
    """An MR file carrying every kind of patient-identifying tag, a private tag, and display fields."""
    pixels = synthetic_slice(5, 96) if pixels is None else pixels
    data = make_dicom(pixels, BodyPartExamined="HEAD", SeriesDescription="AX T1 POST", SliceThickness="5.0",
                      PixelSpacing=["0.45", "0.45"], WindowCenter="128", WindowWidth="256", StudyDate="20240102",
                      **IDENTIFYING, **elements)
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    block = dataset.private_block(0x0011, "ACME HOSPITAL PACS", create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def everything_said_about(scan) -> str:
    return repr(scan) + repr(scan.metadata) + str(vars(scan) if hasattr(scan, "__dict__") else "")


# ---------------------------------------------------------------- privacy


def test_no_identifying_tag_reaches_the_scan():
    data = identifying_dicom()
    assert IDENTIFYING["PatientName"].encode() in data and PRIVATE_VALUE.encode() in data  # the file does carry them
    scan = load_scan(data, "scan.dcm")
    said = everything_said_about(scan)
    for keyword, value in IDENTIFYING.items():
        for part in value.replace("^", " ").split():
            if len(part) > 3:
                assert part not in said, keyword
    assert PRIVATE_VALUE not in said and "ACME" not in said
    assert "20240102" not in said and "19610417" not in said


def test_metadata_panel_shows_only_the_allowed_fields():
    scan = load_scan(identifying_dicom(), "scan.dcm")
    assert scan.metadata["Modality"] == "MR"
    assert scan.metadata["Body part"] == "HEAD"
    assert scan.metadata["Series"] == "AX T1 POST"
    assert scan.metadata["Slice thickness (mm)"] == "5"
    assert scan.metadata["Pixel spacing (mm)"] == "0.45 x 0.45"
    allowed = {"Modality", "Body part", "Series", "Slice thickness (mm)", "Pixel spacing (mm)", "Rows", "Columns",
               "Photometric interpretation", "Frames", "Transfer syntax", "Manufacturer", "Scanner model"}
    assert set(scan.metadata) <= allowed


def test_cli_csv_carries_no_identifying_tag(tiny_model_path, tmp_path):
    from core import cli

    path = tmp_path / "IM0001"  # no extension: recognised by the DICM preamble
    path.write_bytes(identifying_dicom())
    out = tmp_path / "out.csv"
    cli.main(["predict", str(path), "--model", str(tiny_model_path), "--csv", str(out)])
    text = out.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["status"] == "ok", rows[0]["message"]
    for value in list(IDENTIFYING.values()) + [PRIVATE_VALUE]:
        for part in value.replace("^", " ").split():
            if len(part) > 3:
                assert part not in text


# ---------------------------------------------------------------- the display pipeline


def test_file_window_is_the_default_and_is_reported():
    pixels = np.tile(np.arange(0, 400, 4, dtype=np.uint16), (100, 1))
    scan = load_scan(make_dicom(pixels, WindowCenter="200", WindowWidth="200"), "a.dcm")
    assert scan.default_window == (200.0, 200.0) and scan.window == (200.0, 200.0)
    assert scan.value_range == (0.0, 396.0)
    row = scan.image[0].astype(int)
    assert row[:25].max() == 0 and row[76:].min() == 255  # below 100 black, above 300 white
    assert abs(row[50] - 128) <= 2


def test_rescale_slope_and_intercept_put_the_window_in_modality_units():
    # Stored 0..2000 with intercept -1024: stored 1064 is 40 HU, the centre of the brain window.
    stored = np.full((64, 64), 1064, np.uint16)
    stored[:, :16] = 0
    stored[:, 48:] = 2000
    data = make_dicom(stored, RescaleSlope="1", RescaleIntercept="-1024")
    scan = load_scan(data, "ct.dcm", window=BRAIN_WINDOW)
    assert scan.window == BRAIN_WINDOW == (40.0, 80.0)
    assert abs(int(scan.image[0, 32]) - 128) <= 2
    assert scan.image[0, 0] == 0 and scan.image[0, 63] == 255
    assert scan.value_range == (-1024.0, 976.0)


def test_without_a_window_the_full_range_is_shown():
    pixels = np.tile(np.linspace(1000, 3000, 80).astype(np.uint16), (80, 1))
    scan = load_scan(make_dicom(pixels), "a.dcm")
    assert scan.default_window == (2000.0, 2000.0)
    assert scan.image.min() == 0 and scan.image.max() == 255


def test_monochrome1_is_inverted():
    pixels = synthetic_slice(2, 80)
    normal = load_scan(make_dicom(pixels), "a.dcm").image
    inverted = load_scan(make_dicom(pixels, photometric="MONOCHROME1"), "b.dcm").image
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))


def test_voi_lut_sequence_is_applied():
    pixels = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    lut = Dataset()
    lut.LUTDescriptor = [64, 0, 8]
    lut.add_new(0x00283006, "US", [255 - value * 4 for value in range(64)])  # LUT Data: reverses the ramp
    data = make_dicom(pixels, VOILUTSequence=Sequence([lut]))
    image = load_scan(data, "a.dcm").image
    assert image[0, 0] == 255 and image[0, 63] == 3
    assert np.all(np.diff(image[0].astype(int)) < 0)


def test_window_functions_follow_the_standard():
    values = np.array([-100.0, 0.0, 39.5, 100.0, 200.0])
    linear = apply_window(values, 40, 80)
    assert linear[0] == 0 and linear[-1] == 255 and abs(int(linear[2]) - 128) <= 1
    sigmoid = apply_window(values, 40, 80, function="SIGMOID")
    assert np.all(np.diff(sigmoid.astype(int)) >= 0) and sigmoid[-1] >= 250


def test_invalid_window_is_rejected():
    with pytest.raises(ScanRejected, match="width must be positive"):
        load_scan(make_dicom(synthetic_slice(1, 64)), "a.dcm", window=(40, 0))


def test_signed_pixels_are_read_with_their_sign():
    pixels = np.full((64, 64), -500, np.int16)
    pixels[:, 32:] = 500
    scan = load_scan(make_dicom(pixels), "a.dcm")
    assert scan.value_range == (-500.0, 500.0)
    assert scan.image[0, 0] == 0 and scan.image[0, 63] == 255


# ---------------------------------------------------------------- frames and compression


def test_multi_frame_defaults_to_the_middle_frame_and_any_frame_can_be_picked():
    frames = np.stack([np.full((64, 64), level, np.uint8) for level in (10, 120, 230)])
    data = make_dicom(frames, WindowCenter="127.5", WindowWidth="256")
    scan = load_scan(data, "multi.dcm")
    assert scan.frame_count == 3 and scan.frame == 1 and abs(int(scan.image[32, 32]) - 120) <= 1
    assert abs(int(load_scan(data, "multi.dcm", frame=2).image[32, 32]) - 230) <= 1
    assert abs(int(load_scan(data, "multi.dcm", frame=0).image[32, 32]) - 10) <= 1
    with pytest.raises(ScanRejected, match="frame 4 was requested"):
        load_scan(data, "multi.dcm", frame=3)


def test_enhanced_multi_frame_rescale_is_read_per_frame():
    frames = np.stack([np.full((64, 64), 100, np.uint16)] * 2)
    per_frame = Sequence()
    for intercept in ("0", "1000"):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", intercept, "US"
        group = Dataset()
        group.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(group)
    data = make_dicom(frames, PerFrameFunctionalGroupsSequence=per_frame)
    assert load_scan(data, "a.dcm", frame=0).value_range == (100.0, 100.0)
    assert load_scan(data, "a.dcm", frame=1).value_range == (1100.0, 1100.0)


def _compressed(pixels: np.ndarray, syntax) -> bytes:
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
    dataset.compress(syntax, np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEG2000Lossless])
def test_losslessly_compressed_files_decode_to_the_same_image(syntax):
    pixels = synthetic_slice(3, 96)
    plain = load_scan(make_dicom(pixels), "a.dcm").image
    compressed = _compressed(pixels, syntax)
    scan = load_scan(compressed, "a.dcm")
    assert np.array_equal(scan.image, plain)
    assert scan.metadata["Transfer syntax"] == syntax.name


def test_compressed_multi_frame_decodes_the_chosen_frame():
    frames = np.stack([synthetic_slice(seed, 64) for seed in (1, 2, 3)])
    data = _compressed(frames, uid.RLELossless)
    plain = load_scan(make_dicom(frames[2]), "a.dcm").image
    assert np.array_equal(load_scan(data, "a.dcm", frame=2).image, plain)


def test_jpeg_baseline_dicom_decodes():
    from pydicom.encaps import encapsulate

    pixels = synthetic_slice(4, 96)
    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
    dataset.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    dataset.PixelData = encapsulate([jpeg.tobytes()])
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    scan = load_scan(buffer.getvalue(), "a.dcm")
    plain = load_scan(make_dicom(pixels), "a.dcm").image
    assert np.abs(scan.image.astype(int) - plain).mean() < 3


def test_unsupported_compression_is_rejected_naming_the_syntax():
    import pydicom
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(synthetic_slice(1, 64))))
    dataset.file_meta.TransferSyntaxUID = uid.MPEG4HP41
    dataset.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(60)])
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ScanRejected) as caught:
        load_scan(buffer.getvalue(), "a.dcm")
    assert "MPEG-4 AVC/H.264 High Profile" in caught.value.reason and "cannot decode" in caught.value.reason


# ---------------------------------------------------------------- damaged and odd files


def test_dicom_without_pixel_data_is_rejected():
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(synthetic_slice(1, 64))))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ScanRejected, match="the DICOM file has no pixel data"):
        load_scan(buffer.getvalue(), "report.dcm")


def test_dicom_without_preamble_is_read_when_named_dcm():
    pixels = synthetic_slice(6, 64)
    bare = make_dicom(pixels, preamble=False)
    assert bare[128:132] != b"DICM"
    scan = load_scan(bare, "slice.dcm")
    assert scan.source_format == "DICOM"
    assert np.array_equal(scan.image, load_scan(make_dicom(pixels), "a.dcm").image)


def test_garbage_named_dcm_is_not_mistaken_for_dicom():
    with pytest.raises(ScanRejected, match="could not be read as DICOM"):
        load_scan(bytes(range(256)) * 8, "slice.dcm")


def test_dicom_bomb_is_refused_before_decoding():
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(synthetic_slice(1, 64))))
    dataset.Rows = dataset.Columns = 30000
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ScanRejected, match="refused before decoding"):
        load_scan(buffer.getvalue(), "a.dcm")


def test_pixel_data_shorter_than_declared_is_rejected():
    data = make_dicom(synthetic_slice(1, 64))
    dataset_bytes = bytearray(data)
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(bytes(dataset_bytes)))
    dataset.PixelData = dataset.PixelData[:1000]
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ScanRejected, match="DICOM file is damaged"):
        load_scan(buffer.getvalue(), "a.dcm")


def test_colour_dicom_becomes_greyscale_with_its_colour_measured():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 220
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(synthetic_slice(1, 64))))
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.PixelData = rgb.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    scan = load_scan(buffer.getvalue(), "a.dcm")
    assert scan.image.shape == (64, 64) and scan.colourfulness > 30


# ---------------------------------------------------------------- the pipeline and the Review page


def test_analyse_bytes_classifies_the_chosen_frame_and_window(tiny_classifier):
    from core.pipeline import analyse_bytes

    frames = np.stack([synthetic_slice(seed, 96) for seed in (1, 2, 3)])
    data = make_dicom(frames)
    default = analyse_bytes(tiny_classifier, data, "a.dcm")
    chosen = analyse_bytes(tiny_classifier, data, "a.dcm", frame=0, window=(100.0, 120.0))
    assert default.status == chosen.status == "ok"
    assert default.scan.frame == 1 and chosen.scan.frame == 0 and chosen.scan.window == (100.0, 120.0)
    assert default.sha256 == chosen.sha256  # the same file, another view of it
    assert default.probabilities != chosen.probabilities
    assert "frame 9 was requested" in analyse_bytes(tiny_classifier, data, "a.dcm", frame=8).message


def _page_text(app) -> str:
    parts = [str(element.value) for kind in ("markdown", "caption", "metric", "info", "warning", "error", "success")
             for element in getattr(app, kind)]
    parts += [element.value.to_string() for element in app.dataframe]
    return "\n".join(parts)


def test_review_page_dicom_controls_show_details_frames_and_window_without_patient_data(tiny_model_path, tmp_path,
                                                                                       monkeypatch):
    import hashlib
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BRAINSCAN_MODEL", str(tiny_model_path))
    monkeypatch.setenv("BRAINSCAN_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    frames = np.stack([synthetic_slice(seed, 96) for seed in (1, 2, 3)])
    data = identifying_dicom(frames, NumberOfFrames=3)
    key = hashlib.sha256(data).hexdigest()[:16]
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "streamlit_app.py"), default_timeout=60)
    app.run()
    app.file_uploader(key="review_uploads_0").set_value(("series.dcm", data, "application/dicom")).run()
    assert not app.exception, app.exception
    text = _page_text(app)
    assert "AX T1 POST" in text and "HEAD" in text  # the details panel
    for value in list(IDENTIFYING.values()) + [PRIVATE_VALUE]:
        for part in value.replace("^", " ").split():
            if len(part) > 3:
                assert part not in text
    assert app.slider(key=f"review_dicom_frame_{key}").value == 2  # the middle frame by default
    assert app.slider(key=f"review_dicom_centre_{key}").value == 128.0  # the file's own window
    assert app.slider(key=f"review_dicom_width_{key}").value == 256.0

    app.slider(key=f"review_dicom_frame_{key}").set_value(3).run()
    assert not app.exception, app.exception
    assert "Showing and classifying frame 3" in _page_text(app)
    from tests.navigate import shown_class

    assert shown_class(app) is not None  # the chosen frame was classified

    app.button(key=f"review_dicom_brain_{key}").click().run()
    assert app.slider(key=f"review_dicom_centre_{key}").value == 40.0
    assert app.slider(key=f"review_dicom_width_{key}").value == 80.0
    app.button(key=f"review_dicom_default_{key}").click().run()
    assert app.slider(key=f"review_dicom_width_{key}").value == 256.0
    assert not app.exception, app.exception


# ---------------------------------------------------------------- what the file says it is


@pytest.mark.parametrize(("elements", "named"), [
    ({"Modality": "CT"}, "a CT image; this model reads MRI"),
    ({"Modality": "cr"}, "an X-ray image (CR)"),
    ({"Modality": "US"}, "an ultrasound image"),
    ({"Modality": "PR"}, "a presentation state (PR)"),
    ({"Modality": "ZZ"}, "an object of modality ZZ"),
    ({"SOPClassUID": uid.SecondaryCaptureImageStorage}, "a Secondary Capture Image Storage object, not an MR image"),
    ({"SOPClassUID": uid.CTImageStorage, "Modality": "MR"}, "a CT Image Storage object"),
])
def test_a_dicom_file_that_says_it_is_not_an_mr_image_is_refused_naming_what_it_is(elements, named):
    with pytest.raises(ScanRejected, match=re.escape(named)):
        load_scan(make_dicom(synthetic_slice(1, 32), **elements), "other.dcm")


def test_an_mr_localizer_is_refused_as_a_planning_view_and_other_image_types_are_read():
    localizer = make_dicom(synthetic_slice(1, 32), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(ScanRejected, match="a localizer \\(scout\\) image"):
        load_scan(localizer, "scout.dcm")
    for image_type in (["ORIGINAL", "PRIMARY", "M", "ND"], ["DERIVED", "SECONDARY", "MPR"], "ORIGINAL"):
        assert load_scan(make_dicom(synthetic_slice(1, 32), ImageType=image_type), "t1.dcm").source_format == "DICOM"


def test_an_mr_file_of_each_mr_image_class_and_one_that_says_nothing_are_read():
    for sop_class in (uid.MRImageStorage, uid.EnhancedMRImageStorage):
        assert load_scan(make_dicom(synthetic_slice(1, 32), SOPClassUID=sop_class), "mr.dcm").source_format == "DICOM"
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(synthetic_slice(1, 32))))
    del dataset.Modality, dataset.SOPClassUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    assert load_scan(buffer.getvalue(), "silent.dcm").source_format == "DICOM"  # The gate judges it instead.


def test_a_ct_or_a_report_is_refused_before_any_network_runs(tiny_classifier, monkeypatch):
    from core.pipeline import analyse_bytes

    def no_network(*arguments, **options):
        raise AssertionError("the network ran on a file that says it is not an MR image")

    for name in ("predict_tensors",):
        if hasattr(tiny_classifier, name):
            monkeypatch.setattr(tiny_classifier, name, no_network)
    report = make_dicom(synthetic_slice(1, 32), Modality="SR")
    dataset = pydicom.dcmread(io.BytesIO(report))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    for data, named in ((make_dicom(synthetic_slice(1, 32), Modality="CT"), "a CT image"),
                        (buffer.getvalue(), "a structured report (SR)")):
        result = analyse_bytes(tiny_classifier, data, "x.dcm")
        assert result.status == "rejected" and result.message.startswith(named), result.message
