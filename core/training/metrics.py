"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, confusion, calibration error."""

from __future__ import annotations

import numpy as np


def confusion_matrix(true_indices: np.ndarray, predicted_indices: np.ndarray, class_count: int) -> np.ndarray:
    """(class_count, class_count) int counts; rows are true classes, columns predicted classes."""
    matrix = np.zeros((class_count, class_count), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_indices, dtype=int), np.asarray(predicted_indices, dtype=int)), 1)
    return matrix


def expected_calibration_error(probabilities: np.ndarray, true_indices: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the sample-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(true_indices)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 joins the first.
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for index in range(bins):
        in_bin = bin_of == index
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def classification_report(
    true_indices: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> dict:
    """Metrics dict with keys accuracy, macro_f1, per_class, confusion_matrix, ece, n."""
    true_indices = np.asarray(true_indices, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(true_indices, predicted, len(class_names))
    per_class = {}
    f1_scores = []
    for index, name in enumerate(class_names):
        true_positive = matrix[index, index]
        predicted_total = matrix[:, index].sum()
        actual_total = matrix[index, :].sum()
        precision = true_positive / predicted_total if predicted_total else 0.0
        recall = true_positive / actual_total if actual_total else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(actual_total),
        }
        f1_scores.append(f1)
    count = len(true_indices)
    return {
        "accuracy": float((predicted == true_indices).mean()) if count else 0.0,
        "macro_f1": float(np.mean(f1_scores)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "ece": expected_calibration_error(probabilities, true_indices),
        "n": int(count),
    }


def present_recalls(report: dict) -> dict[str, float]:
    """{class: recall} from a `classification_report`, for the classes that occur in its data."""
    return {name: row["recall"] for name, row in report["per_class"].items() if row["support"]}
