"""Intake: every kind of file a reviewer's system may export either decodes right or gets a specific reason."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import ScanRejected
from core.scans import intake
from core.scans.intake import decode_image, load_scan, sniff_format, unique_by_sha256
from tests.synthetic import encode, synthetic_slice


def training_path_grey(data: bytes) -> np.ndarray:
    """The decode the model was trained with: IMREAD_COLOR then BGR2GRAY."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)


def colour_slice(seed: int = 3, size: int = 96) -> np.ndarray:
    """A BGR image whose channels differ, so a wrong channel order or grey formula would show."""
    grey = synthetic_slice(seed, size)
    return np.dstack([grey, np.roll(grey, 5, axis=1), np.roll(grey, 9, axis=0)])


def pillow_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rejection(data: bytes, filename: str = "scan.png", **options) -> str:
    with pytest.raises(ScanRejected) as caught:
        load_scan(data, filename, **options)
    return caught.value.reason


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# ---------------------------------------------------------------- the training path is unchanged


@pytest.mark.parametrize("extension", [".jpg", ".png"])
@pytest.mark.parametrize("colour", [False, True])
def test_ordinary_jpeg_and_png_decode_exactly_as_in_training(extension, colour):
    image = colour_slice() if colour else synthetic_slice(5, 80)
    data = encode(image, extension)
    scan = load_scan(data, "x" + extension)
    assert scan.image.dtype == np.uint8 and scan.image.ndim == 2
    assert np.array_equal(scan.image, training_path_grey(data))
    assert np.array_equal(decode_image(data, "x" + extension), scan.image)


def test_grey_photo_has_no_colour_and_colour_photo_has_some():
    assert load_scan(encode(synthetic_slice(1, 64))).colourfulness == 0.0
    red = np.zeros((64, 64, 3), np.uint8)
    red[:, :, 2] = 200
    assert load_scan(encode(red)).colourfulness > 30


def test_format_is_recognised_by_content_not_by_name():
    png = encode(synthetic_slice(2, 64))
    scan = load_scan(png, "scan.jpg")
    assert scan.source_format == "PNG"
    assert sniff_format(encode(synthetic_slice(2, 64), ".jpg")) == "jpeg"


# ---------------------------------------------------------------- files that are not images


def test_empty_file_is_rejected():
    assert rejection(b"") == "the file is empty (0 bytes)"


def test_file_over_the_upload_limit_is_rejected(monkeypatch):
    monkeypatch.setenv("BRAINSCAN_MAX_UPLOAD_MB", "0.01")
    reason = rejection(encode(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)))
    assert "over the 0.01 MB upload limit" in reason


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n", "PDF document"),
        (b"patient notes: nothing to see here\nsecond line\n", "text file"),
        (b"<!DOCTYPE html><html><body>scan</body></html>", "web page"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "ZIP archive"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40), "HEIC"),
    ],
)
def test_documents_renamed_png_are_named_for_what_they_are(data, expected):
    assert expected in rejection(data, "scan.png")


def test_unknown_binary_is_rejected_naming_the_supported_formats():
    reason = rejection(bytes(range(7, 250)) * 3, "scan.png")
    assert "not in a supported image format" in reason and "although it is named .png" in reason
    assert "DICOM" in reason


# ---------------------------------------------------------------- damaged images


def test_truncated_jpeg_is_named_truncated():
    data = encode(colour_slice(), ".jpg")
    assert "JPEG file is truncated" in rejection(data[: len(data) * 2 // 3], "scan.jpg")


def test_truncated_png_is_named_truncated():
    data = encode(np.random.default_rng(1).integers(0, 255, (96, 96), dtype=np.uint8))
    assert "PNG file is truncated" in rejection(data[: len(data) // 2])


def test_png_chunk_claiming_more_bytes_than_the_file_has_is_refused_before_decoding(monkeypatch):
    # Found by the fuzz test: OpenCV allocates what the image-data chunk claims, here about 4 GB
    # for a file of a few KB, and took 9 s and 4 GB of memory before failing.
    data = bytearray(encode(synthetic_slice(2, 64)))
    idat = data.index(b"IDAT") - 4
    struct.pack_into(">I", data, idat, 0xFFFF0000)
    monkeypatch.setattr(intake, "_imdecode", lambda *_: pytest.fail("the damaged file reached the decoder"))
    assert "PNG file is truncated" in rejection(bytes(data))


def test_damaged_webp_header_is_named_once():
    data = bytearray(encode(synthetic_slice(2, 64), ".webp"))
    struct.pack_into("<I", data, 16, 0xFFFFFF00)  # the first chunk's size
    reason = rejection(bytes(data), "scan.webp")
    assert reason.startswith("the WebP file is damaged") and "file file" not in reason


def test_jpeg_with_damaged_header_is_rejected():
    data = encode(colour_slice(), ".jpg")
    assert "JPEG file is damaged" in rejection(data[:40], "scan.jpg")


# ---------------------------------------------------------------- other raster formats


@pytest.mark.parametrize("fmt, name", [("BMP", "BMP"), ("GIF", "GIF"), ("TIFF", "TIFF"), ("WEBP", "WebP")])
def test_other_raster_formats_decode_to_the_same_greyscale(fmt, name):
    grey = synthetic_slice(4, 72)
    options = {"lossless": True} if fmt == "WEBP" else {}
    scan = load_scan(pillow_bytes(Image.fromarray(grey), fmt, **options), "scan.bin")
    assert scan.source_format == name
    assert np.array_equal(scan.image, grey)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG"])
def test_rgb_in_other_formats_uses_the_training_grey_formula(fmt):
    bgr = colour_slice()
    data = pillow_bytes(Image.fromarray(bgr[:, :, ::-1]), fmt)
    assert np.array_equal(load_scan(data).image, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_animated_gif_frames_can_be_picked():
    frames = [Image.fromarray(np.full((48, 48), level, np.uint8)) for level in (10, 120, 230)]
    data = pillow_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert load_scan(data).frame_count == 3
    assert int(load_scan(data, frame=2).image.mean()) == 230
    assert "frame 4 was requested" in rejection(data, frame=3)


# ---------------------------------------------------------------- bit depths and colour modes


def test_16_bit_png_is_stretched_not_truncated():
    # A 12-bit scanner range stored in 16 bits: keeping only the high byte would give values 0..15.
    gradient = np.tile(np.linspace(0, 4095, 128), (64, 1)).astype(np.uint16)
    scan = load_scan(encode(gradient))
    assert scan.image.dtype == np.uint8
    assert scan.image.max() == 255 and scan.image.min() == 0
    assert np.all(np.diff(scan.image[0].astype(int)) >= 0)  # order of intensities is kept
    assert abs(int(scan.image[0, 64]) - 128) <= 3


def test_16_bit_colour_png_is_stretched_too():
    colour = (colour_slice().astype(np.uint16) * 16)
    scan = load_scan(encode(colour))
    expected = cv2.cvtColor(colour_slice(), cv2.COLOR_BGR2GRAY)
    assert np.corrcoef(scan.image.ravel(), expected.ravel())[0, 1] > 0.99
    assert scan.image.max() >= 250


def test_one_bit_png_is_black_and_white():
    bits = (synthetic_slice(6, 64) > 100).astype(np.uint8) * 255
    scan = load_scan(pillow_bytes(Image.fromarray(bits).convert("1"), "PNG"))
    assert set(np.unique(scan.image)) == {0, 255}
    assert np.array_equal(scan.image, bits)


def test_palette_png_decodes_to_the_palette_greys():
    grey = synthetic_slice(8, 64)
    palette_image = Image.fromarray(grey).convert("P")
    scan = load_scan(pillow_bytes(palette_image, "PNG"))
    assert np.array_equal(scan.image, np.asarray(palette_image.convert("L")))


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_transparent_pixels_become_black_background(mode):
    grey = np.full((64, 64), 200, np.uint8)
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 255
    image = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]).convert(mode)
    scan = load_scan(pillow_bytes(image, "PNG"))
    assert scan.image[0, 0] == 0  # transparent white-ish -> black, as an MRI background
    assert scan.image[32, 32] == 200  # opaque pixels keep their value
    assert scan.source_format.startswith("PNG") and "transparency" in scan.source_format


def test_half_transparent_pixels_are_composited_onto_black():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 128
    scan = load_scan(pillow_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert abs(int(scan.image[5, 5]) - 100) <= 1


def test_cmyk_jpeg_comes_out_like_its_rgb_source():
    bgr = colour_slice(11, 96)
    rgb_image = Image.fromarray(bgr[:, :, ::-1])
    data = pillow_bytes(rgb_image.convert("CMYK"), "JPEG", quality=98)
    scan = load_scan(data, "scan.jpg")
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(int)
    assert np.abs(scan.image.astype(int) - expected).mean() < 3.0
    inverted = 255 - expected  # the classic Adobe-CMYK mistake would come out as a negative
    assert np.abs(scan.image.astype(int) - inverted).mean() > 40


def _upright_marker_image() -> np.ndarray:
    image = np.zeros((60, 90), np.uint8)
    image[5:25, 5:35] = 255  # a bright block at the top left of the upright picture
    return image


def test_exif_rotated_jpeg_is_shown_upright():
    upright = _upright_marker_image()
    # Orientation 6 means "rotate the stored pixels 90 degrees clockwise to display": store them
    # rotated the other way, as a camera held sideways does.
    stored = Image.fromarray(np.rot90(upright, 1))
    exif = stored.getexif()
    exif[0x0112] = 6
    data = pillow_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95)
    scan = load_scan(data, "scan.jpg")
    assert scan.image.shape == upright.shape
    assert np.abs(scan.image.astype(int) - upright).mean() < 8


@pytest.mark.parametrize("fmt", ["PNG-RGBA", "WEBP"])
def test_exif_rotation_applies_on_the_other_decode_paths_too(fmt):
    upright = _upright_marker_image()
    stored = Image.fromarray(np.rot90(upright, 1))
    exif = stored.getexif()
    exif[0x0112] = 6
    if fmt == "PNG-RGBA":
        data = pillow_bytes(stored.convert("RGBA"), "PNG", exif=exif.tobytes())
    else:
        data = pillow_bytes(stored, "WEBP", exif=exif.tobytes(), lossless=True)
    scan = load_scan(data)
    assert scan.image.shape == upright.shape
    assert np.abs(scan.image.astype(int) - upright).mean() < 2


# ---------------------------------------------------------------- sizes


def test_tiny_image_is_rejected():
    assert "too small to read" in rejection(encode(np.full((20, 40), 90, np.uint8)))


def test_extreme_aspect_ratio_is_rejected_and_four_to_one_is_not():
    assert "too elongated" in rejection(encode(synthetic_slice(1, 200)[:40, :]))
    assert load_scan(encode(np.random.default_rng(0).integers(0, 255, (40, 160), dtype=np.uint8))).image.shape == (40, 160)


def png_declaring(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares width x height 1-bit pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 64)  # only the first rows are present
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def test_png_decompression_bomb_is_refused_before_decoding(monkeypatch):
    def must_not_decode(*_arguments):
        raise AssertionError("the bomb reached the decoder")

    monkeypatch.setattr(intake, "_imdecode", must_not_decode)
    data = png_declaring(30000, 30000)
    assert len(data) < 2000
    reason = rejection(data)
    assert "30000x30000" in reason and "refused before decoding" in reason


def test_jpeg_decompression_bomb_is_refused_before_decoding(monkeypatch):
    data = bytearray(encode(synthetic_slice(3, 64), ".jpg"))
    start = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, start + 5, 30000, 30000)  # the frame header's height and width
    monkeypatch.setattr(intake, "_imdecode", lambda *_: pytest.fail("the bomb reached the decoder"))
    assert "refused before decoding" in rejection(bytes(data), "scan.jpg")


def test_pixel_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("BRAINSCAN_MAX_PIXELS", "5000")
    assert "over the 0.005 megapixel limit" in rejection(encode(synthetic_slice(1, 96)))
    monkeypatch.setenv("BRAINSCAN_MAX_PIXELS", str(96 * 96))
    assert load_scan(encode(synthetic_slice(1, 96))).image.shape == (96, 96)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_bombs_in_other_formats_are_refused_before_decoding(fmt, monkeypatch):
    monkeypatch.setenv("BRAINSCAN_MAX_PIXELS", "1000")
    data = pillow_bytes(Image.fromarray(synthetic_slice(1, 64)), fmt)
    assert "refused before decoding" in rejection(data)


# ---------------------------------------------------------------- duplicates


def test_unique_by_sha256_keeps_the_first_of_identical_files():
    first, other = encode(synthetic_slice(1, 64)), encode(synthetic_slice(2, 64))
    unique, duplicates = unique_by_sha256([("a.png", first), ("b.png", other), ("copy of a.png", first)])
    assert [name for name, _ in unique] == ["a.png", "b.png"]
    assert duplicates == {"copy of a.png": "a.png"}


def test_cli_predict_classifies_a_duplicate_once(tiny_model_path, tmp_path, monkeypatch):
    import csv

    from core import cli
    from core.model.inference import Classifier

    folder = tmp_path / "batch"
    folder.mkdir()
    scan = encode(synthetic_slice(4, 96))
    (folder / "a.png").write_bytes(scan)
    (folder / "b_copy.png").write_bytes(scan)
    (folder / "c_empty.png").write_bytes(b"")
    (folder / "d_empty.png").write_bytes(b"")
    calls = []
    original = Classifier.predict_tensors
    monkeypatch.setattr(Classifier, "predict_tensors", lambda self, tensors: calls.append(len(tensors)) or original(self, tensors))
    out = tmp_path / "out.csv"
    exit_code = cli.main(["predict", str(folder), "--model", str(tiny_model_path), "--csv", str(out)])
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(out.open(encoding="utf-8"))}
    assert sum(calls) == 1  # two identical files, one inference
    assert rows["a.png"]["status"] == "ok"
    # The status column is "ok" or "rejected" only; the copy says whose copy it is.
    assert rows["b_copy.png"]["status"] == "ok" and "identical to" in rows["b_copy.png"]["message"]
    assert "a.png" in rows["b_copy.png"]["message"]
    assert rows["b_copy.png"]["predicted_class"] == rows["a.png"]["predicted_class"]
    assert rows["b_copy.png"]["p_glioma"] == rows["a.png"]["p_glioma"]
    assert rows["c_empty.png"]["status"] == "rejected" and "empty" in rows["c_empty.png"]["message"]
    # A copy of a rejected file is rejected too, with the reason and whose copy it is.
    assert rows["d_empty.png"]["status"] == "rejected" and "empty" in rows["d_empty.png"]["message"]
    assert "c_empty.png" in rows["d_empty.png"]["message"]
    assert exit_code == 1


# ---------------------------------------------------------------- a bad file never stops a batch


def test_a_batch_with_every_kind_of_bad_file_goes_on(tiny_classifier):
    from core.pipeline import analyse_many

    good = encode(synthetic_slice(9, 96))
    batch = {
        "empty.png": b"",
        "notes.png": b"just some text\n",
        "doc.png": b"%PDF-1.4 whatever",
        "cut.jpg": encode(colour_slice(), ".jpg")[:300],
        "tiny.png": encode(np.zeros((8, 8), np.uint8)),
        "bomb.png": png_declaring(30000, 30000),
        "good.png": good,
    }
    results = list(analyse_many(tiny_classifier, [(name, lambda data=data: data) for name, data in batch.items()]))
    by_name = {result.filename: result for result in results}
    assert len(results) == len(batch)
    assert by_name["good.png"].status == "ok"
    for name in batch:
        if name != "good.png":
            assert by_name[name].status == "rejected" and by_name[name].message, name
    assert len({by_name[name].message for name in batch if name != "good.png"}) == len(batch) - 1
