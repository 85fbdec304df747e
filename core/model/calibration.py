"""Temperature scaling: one scalar T so that softmax(logits / T) is calibrated on held-out data."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (N, C) logits divided by `temperature`; float64 (N, C) summing to 1."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, true_indices: np.ndarray, temperature: float) -> float:
    """Mean cross-entropy of the true classes under softmax(logits / temperature)."""
    probabilities = softmax(logits, temperature)
    picked = probabilities[np.arange(len(true_indices)), np.asarray(true_indices, dtype=int)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, true_indices: np.ndarray) -> float:
    """Temperature in [0.05, 20] minimising validation NLL (log-spaced grid, then a finer one)."""
    candidates = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    losses = [negative_log_likelihood(logits, true_indices, value) for value in candidates]
    best = int(np.argmin(losses))
    low = candidates[max(best - 1, 0)]
    high = candidates[min(best + 1, len(candidates) - 1)]
    fine = np.linspace(low, high, 200)
    fine_losses = [negative_log_likelihood(logits, true_indices, value) for value in fine]
    return float(fine[int(np.argmin(fine_losses))])
