"""How the classifier holds up when slices look as other scanners and exports make them.

Each perturbation changes the decoded greyscale image, before the shared preprocessing, the way a
different acquisition or export does: another contrast curve (gamma), a lower resolution, blur,
noise, heavy JPEG compression, or a larger matrix. Accuracy is measured per perturbation on the
same labelled files, through the same preprocessing and inference as every other path.
`python -m core robustness` prints the table; the report is a dict like `evaluate`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from core.classes import class_index
from core.errors import DatasetError, ScanRejected
from core.progress import progress
from core.scans.preprocess import prepare_image
from core.training.dataset import LabelledFile
from core.training.metrics import classification_report, present_recalls

Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def gamma(value: float) -> Perturbation:
    """Another contrast curve: grey level g -> 255 (g / 255) ** value."""
    table = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** value), 0, 255).astype(np.uint8)
    return lambda image, rng: table[image]


def resolution(longer_side: int) -> Perturbation:
    """A lower-resolution acquisition: shrink so the longer side is `longer_side` px, then enlarge back."""

    def perturb(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = image.shape
        scale = longer_side / max(height, width)
        if scale >= 1.0:
            return image
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)

    return perturb


def blur(sigma: float) -> Perturbation:
    """A softer reconstruction kernel: Gaussian blur of `sigma` pixels."""
    return lambda image, rng: cv2.GaussianBlur(image, (0, 0), sigma)


def noise(sigma: float) -> Perturbation:
    """A noisier acquisition: Gaussian noise of `sigma` grey levels."""
    return lambda image, rng: np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)


def jpeg(quality: int) -> Perturbation:
    """A heavily compressed export: JPEG at `quality`."""

    def perturb(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) if ok else image

    return perturb


def enlarged(factor: float) -> Perturbation:
    """A larger matrix or an upsampled export: bicubic enlargement by `factor`."""
    return lambda image, rng: cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


PERTURBATIONS: dict[str, Perturbation] = {
    "gamma 0.6": gamma(0.6),
    "gamma 1.6": gamma(1.6),
    "resolution 96 px": resolution(96),
    "resolution 64 px": resolution(64),
    "blur, sigma 1.5 px": blur(1.5),
    "noise, sigma 8 grey levels": noise(8.0),
    "JPEG quality 20": jpeg(20),
    "enlarged 2.5x": enlarged(2.5),
}


def robustness_report(classifier, files: list[LabelledFile], seed: int = 0, batch_size: int = 64) -> dict:
    """Accuracy and per-class recall of `classifier` on `files`, clean and under each perturbation.

    Returns {"n", "clean": {...}, "perturbations": {name: {...}}, "mean_perturbed_accuracy",
    "rejected"}; each {...} holds accuracy, macro_f1 and recall per class. Files the intake
    rejects are left out of every figure and listed. Noise draws from `seed`, so two models meet
    the same noise. The decoded images are held in memory: meant for evaluation splits of a few
    thousand slices.
    """
    from core.scans.intake import decode_image

    images, truths, rejected = [], [], []
    for item in progress(files, total=len(files), description="decoding"):
        try:
            images.append(decode_image(item.path.read_bytes(), item.path.name))
            truths.append(class_index(item.label))
        except (ScanRejected, OSError) as error:
            rejected.append({"file": str(item.path), "reason": getattr(error, "reason", str(error))})
    if not images:
        raise DatasetError("no file could be decoded")
    truths = np.array(truths)

    def measure(perturb: Perturbation | None) -> dict:
        rng = np.random.default_rng(seed)
        probabilities = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            tensors = np.stack([prepare_image(image if perturb is None else perturb(image, rng), classifier.image_size)
                                for image in chunk])
            probabilities.append(classifier.predict_tensors(tensors).probabilities)
        report = classification_report(truths, np.concatenate(probabilities), classifier.classes)
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                "recall": present_recalls(report)}

    results = {name: measure(perturb) for name, perturb in
               progress(PERTURBATIONS.items(), total=len(PERTURBATIONS), description="perturbations")}
    return {
        "n": len(images),
        "clean": measure(None),
        "perturbations": results,
        "mean_perturbed_accuracy": float(np.mean([result["accuracy"] for result in results.values()])),
        "rejected": rejected,
        "model": classifier.version,
    }


def format_robustness(report: dict) -> str:
    """A plain-text table: accuracy and macro-F1, clean and per perturbation, and the change from clean."""
    clean = report["clean"]
    lines = [f"n = {report['n']}   rejected at intake: {len(report['rejected'])}", "",
             f"{'condition':<30}{'accuracy':>10}{'macro-F1':>10}{'change':>10}",
             f"{'clean':<30}{clean['accuracy']:>10.4f}{clean['macro_f1']:>10.4f}{'':>10}"]
    for name, result in report["perturbations"].items():
        change = result["accuracy"] - clean["accuracy"]
        lines.append(f"{name:<30}{result['accuracy']:>10.4f}{result['macro_f1']:>10.4f}{change:>+10.4f}")
    lines += ["", f"mean accuracy over the perturbations: {report['mean_perturbed_accuracy']:.4f}"]
    return "\n".join(lines)
