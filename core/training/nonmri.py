"""A set of images that are not brain MRI slices, for measuring the out-of-distribution gate.

Nothing is downloaded: the material is scikit-image's bundled sample pictures (photographs,
microscopy, astronomy, documents, a CT head phantom), their crops, rotations and greyscale
copies, and images drawn here: noise, gradients, checkerboards, stripes, text, documents, charts,
screenshots, shapes, and imitations of other medical images (chest and hand radiographs, an
ultrasound fan, an abdominal CT slice, an axial head CT slice). The last group and the head phantom are deliberately hard:
dark backgrounds and body-like outlines, as MRI slices have.

`build_nonmri_set(seed)` is deterministic for a seed. Keep one seed for developing the gate
(`DEVELOPMENT_SEED`) and report on another (`EVALUATION_SEED`); the photographs themselves are
shared by both, only their crops, rotations and the drawn images differ.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

DEVELOPMENT_SEED = 0
EVALUATION_SEED = 1

# scikit-image samples that load without a download (checked with scikit-image 0.26).
_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)
_HARD_CATEGORIES = ("medical_lookalike", "head_phantom")
_WORDS = ("REPORT", "Patient", "invoice", "Total", "scan", "PAGE 2", "lorem ipsum", "DRAFT", "Figure 3",
          "results", "42.7 mg", "SUMMARY", "hello", "2024-05-01", "Q3 sales")


def build_nonmri_set(seed: int = EVALUATION_SEED, variants_per_photo: int = 4,
                     drawn_per_kind: int = 10) -> list[tuple[str, bytes]]:
    """(name, encoded image bytes) pairs of non-MRI images; the name starts with its category.

    Each photograph contributes its original (and a greyscale copy if in colour) plus
    `variants_per_photo` random crops/rotations; each drawing kind contributes `drawn_per_kind`
    images. Files are PNG or JPEG, as a reviewer's upload would be.
    """
    rng = np.random.default_rng(seed)
    items: list[tuple[str, np.ndarray]] = []
    for name, photo in _photos().items():
        category = "head_phantom" if name == "shepp_logan_phantom" else "photo"
        items.append((f"{category}/{name}", photo))
        if photo.ndim == 3:
            items.append((f"{category}/{name}-grey", cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)))
        for index in range(variants_per_photo):
            variant = _random_variant(photo, rng)
            if rng.random() < 0.5 and variant.ndim == 3:
                variant = cv2.cvtColor(variant, cv2.COLOR_BGR2GRAY)
            items.append((f"{category}/{name}-variant{index}", variant))
    for kind, draw in _DRAWINGS.items():
        category = "medical_lookalike" if kind in _MEDICAL_LOOKALIKES else "drawn"
        for index in range(drawn_per_kind):
            items.append((f"{category}/{kind}-{index}", draw(rng)))
    encoded = [(f"{name}{extension}", data) for name, image in items for extension, data in [_encode(image, rng)]]
    # Kinds added later draw from generators of their own, so every earlier image (and so every
    # earlier measurement on the set) stays byte for byte what it was.
    for kind, draw in _LATER_DRAWINGS.items():
        later = np.random.default_rng([seed, len(kind)] + [ord(letter) for letter in kind])
        for index in range(drawn_per_kind):
            extension, data = _encode(draw(later), later)
            encoded.append((f"medical_lookalike/{kind}-{index}{extension}", data))
    return encoded


def category_of(name: str) -> str:
    """The category a `build_nonmri_set` name starts with ("photo", "drawn", "medical_lookalike", ...)."""
    return name.split("/", 1)[0]


def is_hard_category(category: str) -> bool:
    """True for the categories built to resemble a head scan (dark background, body outline)."""
    return category in _HARD_CATEGORIES


def _encode(image: np.ndarray, rng: np.random.Generator) -> tuple[str, bytes]:
    extension = ".png" if rng.random() < 0.5 else ".jpg"
    ok, buffer = cv2.imencode(extension, image)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {extension}")
    return extension, buffer.tobytes()


def _photos() -> dict[str, np.ndarray]:
    """The bundled scikit-image samples as uint8 greyscale or BGR arrays."""
    try:
        import skimage.data as samples
    except ImportError:
        raise ImportError("the non-MRI set needs scikit-image (pip install -r requirements-dev.txt)") from None
    photos = {}
    for name in _PHOTOS:
        image = getattr(samples, name)()
        photos[name] = _to_uint8_bgr(image)
    left, _, _ = samples.stereo_motorcycle()
    photos["stereo_motorcycle"] = _to_uint8_bgr(left)
    faces = samples.lfw_subset()
    for index in (0, 50, 120, 199):
        photos[f"face{index}"] = cv2.resize(_to_uint8_bgr(faces[index]), (200, 200), interpolation=cv2.INTER_CUBIC)
    return photos


def _to_uint8_bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(np.asarray(image, dtype=np.float64) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return image[:, :, ::-1].copy() if image.ndim == 3 else image


def _random_variant(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (40-90% of each side), sometimes rotated by a right angle or a small angle."""
    height, width = image.shape[:2]
    crop_height = int(height * rng.uniform(0.4, 0.9))
    crop_width = int(min(width, max(crop_height * rng.uniform(0.7, 1.4), width * 0.3)))
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    variant = image[top: top + crop_height, left: left + crop_width]
    turn = rng.random()
    if turn < 0.3:
        variant = np.rot90(variant, int(rng.integers(1, 4)))
    elif turn < 0.6:
        rows, columns = variant.shape[:2]
        matrix = cv2.getRotationMatrix2D((columns / 2, rows / 2), float(rng.uniform(-30, 30)), 1.0)
        variant = cv2.warpAffine(variant, matrix, (columns, rows), borderMode=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(variant)


# ---------------------------------------------------------------- drawn images


def _size(rng: np.random.Generator) -> tuple[int, int]:
    side = int(rng.integers(160, 400))
    return side, int(side * rng.uniform(0.75, 1.33))


def _noise(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    choice = rng.integers(0, 3)
    if choice == 0:
        return rng.integers(0, 256, (height, width), dtype=np.uint8)
    if choice == 1:
        return np.clip(rng.normal(rng.uniform(60, 190), rng.uniform(10, 60), (height, width)), 0, 255).astype(np.uint8)
    image = np.full((height, width), int(rng.integers(0, 256)), np.uint8)
    mask = rng.random((height, width))
    image[mask < 0.05] = 0
    image[mask > 0.95] = 255
    return image


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    field = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), float(rng.uniform(3, 20)))
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    return (field * 255).astype(np.uint8)


def _gradient(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        field = rows * np.sin(angle) + columns * np.cos(angle)
    else:
        centre = (rng.uniform(0, height), rng.uniform(0, width))
        field = np.hypot(rows - centre[0], columns - centre[1])
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    image = (field * 255).astype(np.uint8)
    if rng.random() < 0.4:
        tint = rng.uniform(0.3, 1.0, 3)
        image = np.dstack([(image * channel).astype(np.uint8) for channel in tint])
    return image


def _checkerboard(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    square = int(rng.integers(4, 48))
    rows, columns = np.mgrid[0:height, 0:width]
    board = ((rows // square + columns // square) % 2).astype(np.uint8)
    low, high = sorted(int(value) for value in rng.integers(0, 256, 2))
    return np.where(board == 1, high, low).astype(np.uint8)


def _stripes(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    period = rng.uniform(4, 40)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * (rows * np.sin(angle) + columns * np.cos(angle)) / period)
    return ((wave + 1) * 127.5).astype(np.uint8)


def _put_lines(image: np.ndarray, rng: np.random.Generator, colour, lines: int, scale: float) -> None:
    height, width = image.shape[:2]
    for line in range(lines):
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
        origin = (int(rng.integers(5, max(width // 4, 6))), int((line + 1) * height / (lines + 1)))
        cv2.putText(image, words, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, int(scale * 2)), cv2.LINE_AA)


def _text(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    dark_background = rng.random() < 0.5
    image = np.full((height, width), 0 if dark_background else 255, np.uint8)
    _put_lines(image, rng, 255 if dark_background else 0, int(rng.integers(1, 6)), float(rng.uniform(0.6, 1.6)))
    return image


def _document(rng: np.random.Generator) -> np.ndarray:
    height = int(rng.integers(300, 500))
    width = int(height * rng.uniform(0.7, 0.8))
    image = np.full((height, width), int(rng.integers(225, 256)), np.uint8)
    _put_lines(image, rng, 20, int(rng.integers(8, 20)), 0.4)
    if rng.random() < 0.5:  # a table
        top = int(height * 0.6)
        for row in range(5):
            cv2.line(image, (10, top + row * 15), (width - 10, top + row * 15), 60, 1)
        for column in range(4):
            x = 10 + column * (width - 20) // 3
            cv2.line(image, (x, top), (x, top + 60), 60, 1)
    return image


def _chart(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    image = np.full((height, width, 3), 255, np.uint8)
    bars = int(rng.integers(3, 9))
    for bar in range(bars):
        colour = tuple(int(value) for value in rng.integers(0, 230, 3))
        left = 20 + bar * (width - 40) // bars
        top = int(rng.integers(20, height - 30))
        cv2.rectangle(image, (left, top), (left + (width - 40) // bars - 6, height - 20), colour, -1)
    cv2.line(image, (18, height - 20), (width - 10, height - 20), (0, 0, 0), 2)
    cv2.line(image, (18, 10), (18, height - 20), (0, 0, 0), 2)
    if rng.random() < 0.5:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return image


def _screenshot(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    dark = rng.random() < 0.4
    image = np.full((height, width, 3), 40 if dark else 240, np.uint8)
    cv2.rectangle(image, (0, 0), (width, 24), (90, 60, 30) if rng.random() < 0.5 else (200, 200, 200), -1)
    for _ in range(int(rng.integers(3, 8))):
        left, top = int(rng.integers(0, width - 60)), int(rng.integers(30, height - 30))
        shade = tuple(int(value) for value in rng.integers(60, 220, 3))
        cv2.rectangle(image, (left, top), (left + int(rng.integers(40, 160)), top + int(rng.integers(16, 60))), shade, -1)
    _put_lines(image, rng, (230, 230, 230) if dark else (20, 20, 20), 4, 0.5)
    return image


def _shapes(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    background = int(rng.choice([0, 0, 128, 255]))
    image = np.full((height, width), background, np.uint8)
    for _ in range(int(rng.integers(2, 12))):
        shade = int(rng.integers(0, 256))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(image, centre, int(rng.integers(5, 80)), shade, -1)
        elif kind == 1:
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.rectangle(image, centre, corner, shade, -1)
        else:
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, centre, corner, shade, int(rng.integers(1, 10)))
    return image


def _blank(rng: np.random.Generator) -> np.ndarray:
    height, width = _size(rng)
    level = int(rng.integers(0, 256))
    image = np.full((height, width), level, np.uint8)
    if rng.random() < 0.5:
        image = np.clip(image + rng.normal(0, 1.0, image.shape), 0, 255).astype(np.uint8)
    return image


def _chest_radiograph(rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(256, 420))
    image = np.full((size, size), int(rng.integers(150, 200)), np.float32)  # soft tissue fills the frame
    for side in (-1, 1):  # dark lungs
        centre = (int(size / 2 + side * size * 0.2), int(size * 0.48))
        cv2.ellipse(image, centre, (int(size * 0.15), int(size * 0.3)), 0, 0, 360, float(rng.uniform(30, 70)), -1)
    cv2.ellipse(image, (size // 2, int(size * 0.5)), (int(size * 0.08), int(size * 0.35)), 0, 0, 360, 230, -1)
    for rib in range(8):  # ribs across the lungs
        y = int(size * (0.22 + rib * 0.07))
        cv2.ellipse(image, (size // 2, y), (int(size * 0.36), int(size * 0.06)), 0, 180, 360, 210, 3)
    image = cv2.GaussianBlur(image, (0, 0), 2.0) + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _hand_radiograph(rng: np.random.Generator) -> np.ndarray:
    height, width = int(rng.integers(280, 420)), int(rng.integers(220, 320))
    image = np.zeros((height, width), np.float32)
    palm = (width // 2, int(height * 0.7))
    cv2.ellipse(image, palm, (int(width * 0.28), int(height * 0.2)), 0, 0, 360, 90, -1)
    for finger in range(5):
        angle = np.deg2rad(-60 + finger * 30 + rng.uniform(-5, 5))
        tip = (int(palm[0] + np.sin(angle) * height * 0.55), int(palm[1] - np.cos(angle) * height * 0.55))
        cv2.line(image, palm, tip, 90, int(width * 0.09))
        cv2.line(image, palm, tip, 200, int(width * 0.03))  # bone inside soft tissue
    image = cv2.GaussianBlur(image, (0, 0), 1.5) + rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _ultrasound(rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(256, 400))
    image = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    apex = (size // 2, int(size * 0.05))
    cv2.ellipse(mask, apex, (int(size * 0.9), int(size * 0.9)), 90, -35, 35, 1, -1)
    speckle = rng.rayleigh(40, (size, size)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), 1.2)
    cv2.ellipse(speckle, (size // 2, int(size * 0.55)), (int(size * 0.15), int(size * 0.1)), 0, 0, 360, 10, -1)
    image[mask == 1] = speckle[mask == 1]
    image = np.clip(image, 0, 255).astype(np.uint8)
    _put_lines(image, rng, 255, 1, 0.4)  # the scanner's caption
    return image


def _abdominal_ct(rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(256, 420))
    image = np.zeros((size, size), np.float32)
    centre = (size // 2, size // 2)
    cv2.ellipse(image, centre, (int(size * 0.42), int(size * 0.3)), 0, 0, 360, 110, -1)  # body, wider than tall
    cv2.ellipse(image, centre, (int(size * 0.42), int(size * 0.3)), 0, 0, 360, 60, 6)  # fat rim
    cv2.ellipse(image, (int(size * 0.36), int(size * 0.47)), (int(size * 0.13), int(size * 0.1)), 0, 0, 360, 140, -1)
    cv2.circle(image, (size // 2, int(size * 0.66)), int(size * 0.04), 250, -1)  # vertebra
    for side in (-1, 1):
        cv2.ellipse(image, (int(size / 2 + side * size * 0.16), int(size * 0.6)), (18, 26), 0, 0, 360, 150, -1)
    for _ in range(int(rng.integers(4, 10))):  # bowel gas
        point = (int(rng.integers(size * 0.35, size * 0.65)), int(rng.integers(size * 0.35, size * 0.55)))
        cv2.circle(image, point, int(rng.integers(4, 12)), 5, -1)
    cv2.rectangle(image, (0, int(size * 0.85)), (size, size), 160, -1)  # the table
    image = cv2.GaussianBlur(image, (0, 0), 1.0) + rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _head_ct(rng: np.random.Generator) -> np.ndarray:
    """An axial head CT slice: what CT shows and MRI does not is a bright, closed bone ring around a
    mid-grey, nearly uniform brain (brain window), or a bright ring around a dark brain (bone window)."""
    size = int(rng.integers(256, 512))
    image = np.zeros((size, size), np.float32)
    centre = (int(size * rng.uniform(0.46, 0.54)), int(size * rng.uniform(0.44, 0.52)))
    half_width, half_height = int(size * rng.uniform(0.3, 0.4)), int(size * rng.uniform(0.36, 0.44))
    angle = float(rng.uniform(-10, 10))
    window = rng.choice(["brain", "brain", "brain", "bone", "enhanced"])
    brain_level = {"brain": rng.uniform(95, 135), "bone": rng.uniform(25, 45), "enhanced": rng.uniform(110, 150)}[window]
    bone_level = 255.0 if window != "bone" else rng.uniform(200, 255)
    skull = max(3, int(size * rng.uniform(0.015, 0.045)))
    scalp = max(2, int(size * rng.uniform(0.008, 0.02)))
    cv2.ellipse(image, centre, (half_width + skull + scalp, half_height + skull + scalp), angle, 0, 360,
                float(brain_level * 0.9), -1)  # scalp: soft tissue, a little darker than brain
    cv2.ellipse(image, centre, (half_width + skull, half_height + skull), angle, 0, 360, float(bone_level), -1)
    cv2.ellipse(image, centre, (half_width, half_height), angle, 0, 360, float(brain_level), -1)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 60)
    inside = np.zeros((size, size), np.uint8)
    cv2.ellipse(inside, centre, (half_width, half_height), angle, 0, 360, 1, -1)
    contrast = 10.0 if window != "enhanced" else 25.0
    image += inside * texture / max(float(np.abs(texture).max()), 1e-6) * contrast
    if rng.random() < 0.8:  # ventricles: cerebrospinal fluid is dark on CT
        for side in (-1, 1):
            ventricle = (int(centre[0] + side * half_width * rng.uniform(0.08, 0.18)), int(centre[1] - half_height * 0.05))
            axes = (int(half_width * rng.uniform(0.05, 0.12)), int(half_height * rng.uniform(0.15, 0.3)))
            cv2.ellipse(image, ventricle, axes, float(side * rng.uniform(5, 25)), 0, 360, float(brain_level * 0.45), -1)
    if rng.random() < 0.35:  # a skull-base slice: petrous bone and the orbits' air and fat
        for side in (-1, 1):
            petrous = (int(centre[0] + side * half_width * 0.45), int(centre[1] + half_height * 0.2))
            cv2.ellipse(image, petrous, (int(half_width * 0.3), int(half_height * 0.08)), float(side * 35), 0, 360,
                        float(bone_level), -1)
            orbit = (int(centre[0] + side * half_width * 0.4), int(centre[1] - half_height * 0.75))
            cv2.circle(image, orbit, int(half_width * 0.18), 10.0, -1)
    if rng.random() < 0.5:  # the scanner table, an arc under the head
        cv2.ellipse(image, (centre[0], int(centre[1] + half_height * 1.1)), (int(size * 0.48), int(size * 0.12)), 0,
                    0, 180, float(rng.uniform(120, 220)), max(2, size // 120))
    image = cv2.GaussianBlur(image, (0, 0), 0.8) + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


_MEDICAL_LOOKALIKES = ("chest_radiograph", "hand_radiograph", "ultrasound", "abdominal_ct", "head_ct")
_DRAWINGS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "noise": _noise,
    "smooth_noise": _smooth_noise,
    "gradient": _gradient,
    "checkerboard": _checkerboard,
    "stripes": _stripes,
    "text": _text,
    "document": _document,
    "chart": _chart,
    "screenshot": _screenshot,
    "shapes": _shapes,
    "blank": _blank,
    "chest_radiograph": _chest_radiograph,
    "hand_radiograph": _hand_radiograph,
    "ultrasound": _ultrasound,
    "abdominal_ct": _abdominal_ct,
}
_LATER_DRAWINGS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {"head_ct": _head_ct}
