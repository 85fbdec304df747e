"""Tiny synthetic scans and models for tests: nothing here comes from a real dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.classes import CLASS_NAMES, DISPLAY_NAMES

TINY_IMAGE_SIZE = 32


def synthetic_slice(seed: int = 0, size: int = 96, lesion_class: int = 0) -> np.ndarray:
    """A head-like greyscale slice (size, size) uint8: a bright skull ring, grey brain, one blob."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    centre = (size // 2, size // 2)
    axes = (int(size * 0.38), int(size * 0.44))
    cv2.ellipse(image, centre, axes, 0, 0, 360, 200, -1)
    cv2.ellipse(image, centre, (axes[0] - 4, axes[1] - 4), 0, 0, 360, 90, -1)
    blob_centre = (int(rng.integers(size // 3, 2 * size // 3)), int(rng.integers(size // 3, 2 * size // 3)))
    cv2.circle(image, blob_centre, 3 + 2 * lesion_class, 240, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, extension: str = ".png") -> bytes:
    """Encode an image array with OpenCV (".png" or ".jpg")."""
    ok, buffer = cv2.imencode(extension, image)
    assert ok
    return buffer.tobytes()


def write_class_folders(root: Path, names: tuple[str, ...] = ("glioma", "meningioma", "pituitary", "notumor"),
                        per_class: int = 6, size: int = 64) -> Path:
    """Write a tiny dataset of class folders under `root` and return `root`."""
    for index, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for item in range(per_class):
            (folder / f"{name}_{item}.png").write_bytes(encode(synthetic_slice(1000 * index + item, size, index)))
    return root


def make_tiny_model(folder: Path, name: str = "tiny", seed: int = 0, with_gate: bool = True) -> Path:
    """Build, save and card an untrained tiny model in `folder`; return the `.keras` path."""
    import keras

    from core.model.card import file_sha256, write_card
    from core.model.gate import MahalanobisGate
    from core.model.network import build_model

    keras.utils.set_random_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(TINY_IMAGE_SIZE, width=8, dropout=0.0)
    model_path = folder / f"{name}.keras"
    model.save(model_path)
    card = {
        "name": name,
        "version": "0.0.1-test",
        "classes": list(CLASS_NAMES),
        "display_names": {key: DISPLAY_NAMES[key] for key in CLASS_NAMES},
        "input": {"image_size": TINY_IMAGE_SIZE, "color_mode": "grayscale", "value_range": [0.0, 1.0]},
        "temperature": 1.5,
        "metrics": {"test": {"accuracy": 0.25, "macro_f1": 0.25, "ece": 0.1, "n": 8,
                             "per_class": {key: {"precision": 0.25, "recall": 0.25, "f1": 0.25, "support": 2}
                                           for key in CLASS_NAMES},
                             "confusion_matrix": [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]]}},
        "training": {"command": "tests/synthetic.py make_tiny_model", "data": [], "split_counts": {}},
    }
    if with_gate:
        features = model.get_layer("features").output.shape[-1]
        gate = MahalanobisGate(np.zeros((len(CLASS_NAMES), features)), np.eye(features), threshold=float("inf"))
        gate_path = folder / f"{name}.ood.npz"
        gate.save(gate_path)
        card["ood"] = {"file": gate_path.name, "sha256": file_sha256(gate_path), "threshold": "inf"}
    write_card(model_path, card)
    return model_path
