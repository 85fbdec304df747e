"""The not-a-brain-MRI gate: is this image something the classifier reads (an axial brain MRI slice)?

Two tests on every scan, both fitted with the model and saved beside it (`MahalanobisGate.save`):

- **The modality head** (outlier exposure, Hendrycks et al., 2019): a multinomial logistic
  regression over "brain MRI" and the kinds of image that are not (head CT, body CT, X-ray,
  mammography, ultrasound, photographs, histology, MRI of other body parts, drawings), on the
  network's pooled features and a few physical measurements of the picture
  (`core.scans.statistics.ImageStatistics`: the bone-bright rim CT has and MRI lacks, how flat the
  brain tissue's grey band is, ...). Its "not a brain MRI" score is the log-odds of every other kind
  against brain MRI; a scan over the threshold is refused, and the most likely kind names what it
  looks like when one kind holds most of the probability. Trained by `core.training.gate_fit` on
  real negatives (`non-mri-train/`); the threshold is set on the validation split's MRI alone.
- **The distance** (Lee et al., 2018): the class-conditional Mahalanobis distance on the pooled
  features, means per class and one shared covariance fitted on the training split, refused over
  a high percentile of the validation split's distances. It is a wide backstop for pictures unlike
  anything either side of the head was fitted on, where a linear score could extrapolate either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from core.errors import ModelContractError
from core.scans.statistics import ImageStatistics

# The share of validation MRI the distance lets through: a backstop, not the main test, so it
# costs about one slice in a thousand (the modality head caught every development negative it did).
DEFAULT_PASS_PERCENTILE = 99.9
MRI = "mri"
# The physical measurements the modality head reads beside the network's features, in this order.
PHYSICAL_FEATURES = (*ImageStatistics.__dataclass_fields__, "colourfulness")
# What each kind of refused picture is called on the page. Kinds that a reader would name alike
# share a name (a head CT and a body CT are both "a CT image").
LOOKS_LIKE = {
    "head_ct": "a CT image",
    "ct_body": "a CT image",
    "xray": "an X-ray (radiograph)",
    "mammography": "a mammogram",
    "ultrasound": "an ultrasound image",
    "photo_or_dermoscopy": "a photograph",
    "histopathology": "a microscope image of tissue (histology)",
    "spine_or_body_mri": "an MRI of another part of the body",
    "drawing": "a drawing, chart or document",
}
# A refused picture is said to look like something only when the head finds it more likely not a
# brain MRI than one (score over 0: a threshold under 0 refuses some pictures the head still
# thinks are more likely MRI, and naming those "a CT image" would mislead) and that name holds at
# least this share of the probability of the not-brain-MRI kinds; otherwise the page says only
# that it was not recognised.
NAMING_SHARE = 0.6
_FORMAT = 2
REFIT_COMMAND = "python -m core calibrate --data ... --non-mri-train DIR"


def physical_inputs(statistics: ImageStatistics, colourfulness: float) -> np.ndarray:
    """One scan's physical measurements as the modality head reads them: (P,) float64, `PHYSICAL_FEATURES` order."""
    values = [getattr(statistics, name) for name in ImageStatistics.__dataclass_fields__]
    return np.array([*values, colourfulness], dtype=np.float64)


@dataclass(frozen=True)
class ModalityHead:
    """Linear scores over kinds of image: weights (D + P, K) and bias (K,) on raw inputs, kinds (K,).

    The inputs are the pooled features (D) followed by the physical measurements (P); the
    standardisation used in fitting is folded into the weights, so serving is one product.
    `threshold` is on `not_mri_scores`.
    """

    kinds: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray
    threshold: float

    def log_probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Inputs (N, D + P) -> log-probabilities (N, K) float64 of each kind."""
        logits = np.asarray(inputs, dtype=np.float64) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def not_mri_scores(self, inputs: np.ndarray) -> np.ndarray:
        """Inputs (N, D + P) -> (N,) float64 log-odds that the picture is not a brain MRI slice."""
        return self._scores(self.log_probabilities(inputs))

    def _scores(self, log_probabilities: np.ndarray) -> np.ndarray:
        mri = log_probabilities[:, self.kinds.index(MRI)]
        # log(1 - p) from log p without cancellation: p is often within 1e-12 of 1 for a clear MRI slice.
        other = np.log(-np.expm1(np.minimum(mri, -1e-300)))
        return other - mri

    def looks_like(self, log_probabilities: np.ndarray) -> list[str | None]:
        """(N, K) log-probabilities -> the name of what each picture most likely is, or None (see `NAMING_SHARE`)."""
        probabilities = np.exp(log_probabilities)
        names = sorted({LOOKS_LIKE[kind] for kind in self.kinds if kind in LOOKS_LIKE})
        columns = [[index for index, kind in enumerate(self.kinds) if LOOKS_LIKE.get(kind) == name] for name in names]
        shares = np.stack([probabilities[:, column].sum(axis=1) for column in columns], axis=1)
        total = shares.sum(axis=1)
        best = np.argmax(shares, axis=1)
        return [names[choice] if total[row] > 0 and shares[row, choice] >= NAMING_SHARE * total[row] else None
                for row, choice in enumerate(best)]


@dataclass(frozen=True)
class GateVerdict:
    """One scan's gate outcome: its distance, its not-MRI score (None without a head), whether it
    passes both tests, and what it looks like (a `LOOKS_LIKE` name, or None) when it does not."""

    distance: float
    not_mri_score: float | None
    passes: bool
    looks_like: str | None = None


@dataclass(frozen=True)
class MahalanobisGate:
    """Fitted gate: class means (C, D), shared precision (D, D), the distance threshold and the modality head."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    head: ModalityHead | None = None

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> smallest squared Mahalanobis distance to any class mean, (N,) float64.

        Expanded as x'Px - 2 m'Px + m'Pm, so one product with the precision serves every class:
        with 1280 features the per-class form cost 5 ms a scan, as much as the network itself.
        """
        features = np.ascontiguousarray(features, dtype=np.float64)
        projected, means_projected, means_norms = self._expansion
        transformed = (projected @ features.T).T
        quadratic = np.einsum("nd,nd->n", transformed, features)
        return np.min(quadratic[:, np.newaxis] - 2.0 * features @ means_projected.T + means_norms, axis=1)

    @cached_property
    def _expansion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        precision = np.ascontiguousarray(self.precision, dtype=np.float64)
        means = np.asarray(self.means, dtype=np.float64)
        means_projected = means @ precision
        return precision, means_projected, np.einsum("kd,kd->k", means_projected, means)

    def assess(self, features: np.ndarray, physical: np.ndarray | None = None) -> list[GateVerdict]:
        """Features (N, D) and physical inputs (N, P) -> one `GateVerdict` per row, in one pass over the batch.

        `physical` may be None only for a gate without a modality head.
        """
        distances = self.distances(features)
        near = distances <= self.threshold
        if self.head is None:
            return [GateVerdict(float(distance), None, bool(ok)) for distance, ok in zip(distances, near)]
        if physical is None:
            raise ValueError("this gate's modality head needs the scans' physical measurements")
        inputs = np.hstack([np.asarray(features, np.float64), np.asarray(physical, np.float64).reshape(len(features), -1)])
        log_probabilities = self.head.log_probabilities(inputs)
        scores = self.head._scores(log_probabilities)
        names = self.head.looks_like(log_probabilities)
        verdicts = []
        for distance, close, score, name in zip(distances, near, scores, names):
            passes = bool(close and score <= self.head.threshold)
            named = name if not passes and score > 0.0 else None
            verdicts.append(GateVerdict(float(distance), float(score), passes, named))
        return verdicts

    def save(self, path: Path) -> None:
        """Store the gate as a small `.npz` file."""
        head = {} if self.head is None else {
            "head_kinds": np.array(self.head.kinds), "head_weights": self.head.weights, "head_bias": self.head.bias,
            "head_threshold": np.array(self.head.threshold), "head_physical": np.array(PHYSICAL_FEATURES)}
        np.savez(path, format=np.array(_FORMAT), means=self.means, precision=self.precision,
                 threshold=np.array(self.threshold), **head)

    @classmethod
    def load(cls, path: Path) -> "MahalanobisGate":
        """Read a gate saved by `save`; raise `ModelContractError` for an older format or other measurements."""
        with np.load(path) as stored:
            if "format" not in stored or int(stored["format"]) != _FORMAT:
                raise ModelContractError(f"the gate {Path(path).name} is in an older format; fit a new one with "
                                         f"{REFIT_COMMAND}")
            head = None
            if "head_kinds" in stored:
                if tuple(str(name) for name in stored["head_physical"]) != PHYSICAL_FEATURES:
                    raise ModelContractError(f"the gate {Path(path).name} reads other physical measurements than "
                                             f"this version computes; fit a new one with {REFIT_COMMAND}")
                head = ModalityHead(tuple(str(kind) for kind in stored["head_kinds"]), stored["head_weights"],
                                    stored["head_bias"], float(stored["head_threshold"]))
            return cls(stored["means"], stored["precision"], float(stored["threshold"]), head)


def fit_distance(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    class_count: int,
    pass_percentile: float = DEFAULT_PASS_PERCENTILE,
    shrinkage: float = 0.05,
) -> MahalanobisGate:
    """Fit means and a shrunk shared covariance on training features; threshold from validation. No head."""
    train_features = np.asarray(train_features, dtype=np.float64)
    train_labels = np.asarray(train_labels, dtype=int)
    means = np.stack([train_features[train_labels == index].mean(axis=0) for index in range(class_count)])
    centred = train_features - means[train_labels]
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    # Shrinking towards the mean variance keeps the inverse stable for features that barely vary.
    target = np.eye(covariance.shape[0]) * np.trace(covariance) / covariance.shape[0]
    covariance = (1.0 - shrinkage) * covariance + shrinkage * target
    precision = np.linalg.inv(covariance)
    unfitted = MahalanobisGate(means, precision, threshold=np.inf)
    threshold = float(np.percentile(unfitted.distances(validation_features), pass_percentile))
    return MahalanobisGate(means, precision, threshold)
