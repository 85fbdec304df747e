"""Loading a model with its card and running calibrated inference on prepared tensors.

`Classifier.load` checks the model against its card (sha256, classes, input shape) and refuses a
mismatch. Inference goes through one compiled TensorFlow function with a fixed input signature,
warmed up at load, so a request never pays tracing or `model.predict` set-up costs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import config
from core.calibration import softmax
from core.card import ModelCard, check_model_matches_card, load_card
from core.errors import ModelContractError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass(frozen=True)
class BatchOutput:
    """Calibrated probabilities (N, C) float64, raw logits (N, C) and pooled features (N, D)."""

    probabilities: np.ndarray
    logits: np.ndarray
    features: np.ndarray


class Classifier:
    """A loaded model, its card and its out-of-distribution gate; safe to share between threads."""

    def __init__(self, model, card: ModelCard, gate=None):
        import tensorflow as tf

        from core.model import FEATURES_LAYER

        self.model = model
        self.card = card
        self.gate = gate
        self.image_size = card.image_size
        self.classes = card.classes
        self._lock = threading.Lock()
        extractor = _keras().Model(model.inputs, [model.get_layer(FEATURES_LAYER).output, model.outputs[0]])
        self._extractor = extractor
        signature = [tf.TensorSpec([None, self.image_size, self.image_size, 1], tf.float32)]
        self._infer = tf.function(lambda images: extractor(images, training=False), input_signature=signature)
        self._infer(tf.zeros([1, self.image_size, self.image_size, 1]))  # Trace and warm up once, at load.

    @classmethod
    def load(cls, model_path: Path | None = None) -> "Classifier":
        """Load model, card and gate; raise `ModelContractError` saying what is wrong."""
        model_path = Path(model_path or config.model_path())
        card = load_card(model_path)
        try:
            model = _keras().models.load_model(model_path, compile=False)
        except Exception as error:  # Keras raises many types for a damaged file; all mean the same here.
            raise ModelContractError(f"model file {model_path.name} could not be loaded: {error}") from None
        check_model_matches_card(card, int(model.outputs[0].shape[-1]), tuple(model.inputs[0].shape))
        gate = None
        if card.ood_path is not None:
            from core.ood import MahalanobisGate

            gate = MahalanobisGate.load(card.ood_path)
        return cls(model, card, gate)

    @property
    def version(self) -> str:
        return f"{self.card.name} {self.card.version}"

    def predict_tensors(self, tensors: np.ndarray) -> BatchOutput:
        """Prepared tensors (N, S, S, 1) float32 -> calibrated probabilities, logits and features."""
        tensors = np.ascontiguousarray(tensors, dtype=np.float32)
        if tensors.ndim != 4 or tensors.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"expected (N, {self.image_size}, {self.image_size}, 1) tensors, got {tensors.shape}")
        with self._lock:
            features, logits = self._infer(tensors)
        logits = logits.numpy()
        return BatchOutput(softmax(logits, self.card.temperature), logits, features.numpy())


def _keras():
    import keras

    return keras
