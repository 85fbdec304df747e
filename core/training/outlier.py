"""The gate's outlier head: a linear "not a brain MRI" classifier on the network's pooled features.

Outlier exposure (Hendrycks et al., 2019): besides the training MRI slices, the head sees
negatives: the drawn images of `core.training.nonmri`'s development set (drawings and imitations
of other medical images; not its photographs, whose originals the evaluation set shares), and
pseudo head CTs made from training MRI slices by `pseudo_head_ct`. A
distance in feature space does not tell a head CT from an MRI slice (same anatomy, same outline);
what CT shows and MRI does not is a closed, saturated bone ring around a nearly uniform, mid-grey
brain (brain window) or a dark one (bone window), and the pseudo CTs show exactly that on real
anatomy. The threshold is set on MRI alone: the score that `pass_rate` of the validation split's
slices stay under. The evaluation seed of the non-MRI set and the real images of
`ood-eval --non-mri` are never used here.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.scans.preprocess import prepare_image

# On a split of the validation slices (threshold fitted on one half, measured on the other; the
# test split not used), 0.999 let 99.8% of the other half through and still flagged every
# development negative, against 99.6% at 0.995.
DEFAULT_PASS_RATE = 0.999
PSEUDO_CT_EVERY = 8  # one pseudo head CT per this many training slices


def pseudo_head_ct(tensor: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A prepared MRI slice (S, S, 1) in [0, 1] rendered as a head CT of that head, prepared again; None if no head.

    The head's outline gets a closed bone ring (2-5% of the side, saturated in a brain window), the
    brain inside becomes a narrow band of mid-grey (brain window), dark grey (bone window) or a
    contrast-enhanced band, and fluid that is bright on T2 turns dark half the time. The picture is
    drawn as an 8-bit export with a margin (and sometimes the scanner table under the head), then
    goes through `core.scans.preprocess.prepare_image` like any uploaded scan.
    """
    grey = tensor[..., 0].astype(np.float32)
    size = grey.shape[0]
    mask = (cv2.GaussianBlur(grey, (5, 5), 0) > 0.08).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea)
    head = np.zeros((size, size), np.uint8)
    cv2.drawContours(head, [cv2.convexHull(outline) if rng.random() < 0.7 else outline], -1, 1, -1)
    depth = cv2.distanceTransform(head, cv2.DIST_L2, 5)
    scalp, bone = size * rng.uniform(0.0, 0.02), size * rng.uniform(0.015, 0.05)
    ring = (depth > scalp) & (depth <= scalp + bone)
    brain = depth > scalp + bone
    if not brain.any():
        return None
    inner = 1.0 - grey if rng.random() < 0.5 else grey.copy()
    inner = cv2.GaussianBlur(inner, (0, 0), rng.uniform(0.5, 2.0))
    low, high = np.percentile(inner[brain], [5, 95])
    inner = np.clip((inner - low) / max(high - low, 1e-3), 0.0, 1.0)
    window = rng.choice(["brain", "brain", "brain", "bone", "enhanced"])
    level, spread = {"brain": (rng.uniform(0.35, 0.55), rng.uniform(0.06, 0.15)),
                     "bone": (rng.uniform(0.08, 0.2), rng.uniform(0.02, 0.06)),
                     "enhanced": (rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.3))}[window]
    slice_ = np.zeros((size, size), np.float32)
    slice_[head.astype(bool)] = level * 0.9
    slice_[brain] = level - spread / 2 + spread * inner[brain]
    slice_[ring] = 1.0 if window != "bone" else rng.uniform(0.8, 1.0)
    margin = int(size * rng.uniform(0.1, 0.3))
    picture = np.zeros((size + 2 * margin, size + 2 * margin), np.float32)
    picture[margin:margin + size, margin:margin + size] = slice_
    if rng.random() < 0.4:  # the scanner table: an arc under the head, in the margin
        cv2.ellipse(picture, (picture.shape[1] // 2, margin + size), (int(size * 0.55), int(margin * 0.8)), 0, 0, 180,
                    float(rng.uniform(0.4, 0.8)), max(1, size // 80))
    picture = np.clip(picture + rng.normal(0, 0.01, picture.shape).astype(np.float32), 0.0, 1.0)
    return prepare_image(np.round(picture * 255).astype(np.uint8), size)


def pseudo_head_cts(tensors: np.ndarray, seed: int = 0, every: int = PSEUDO_CT_EVERY) -> np.ndarray:
    """Pseudo head CTs (M, S, S, 1) of every `every`-th of the (N, S, S, 1) training tensors (M may be 0)."""
    rng = np.random.default_rng(seed)
    made = [image for image in (pseudo_head_ct(tensor, rng) for tensor in tensors[::every]) if image is not None]
    return np.stack(made).astype(np.float32) if made else np.zeros((0, *tensors.shape[1:]), np.float32)


def fit_outlier_head(mri_features: np.ndarray, negative_features: np.ndarray, validation_features: np.ndarray,
                     pass_rate: float = DEFAULT_PASS_RATE) -> tuple[np.ndarray, float, float]:
    """(weights (D,), bias, threshold) of a logistic "not a brain MRI" score on raw pooled features.

    Classes are weighted equally however many negatives there are; features are standardised for
    the fit and the scaling folded into the returned weights, so serving needs one dot product.
    """
    from sklearn.linear_model import LogisticRegression

    features = np.vstack([mri_features, negative_features]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(mri_features)), np.ones(len(negative_features))])
    mean = features.mean(axis=0)
    spread = features.std(axis=0)
    # A feature that barely varies in training must not get a huge weight: a rounding difference
    # between runtimes in it would then move the score across the threshold.
    scale = np.maximum(spread, 1e-3 * float(np.median(spread)) + 1e-6)
    model = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000)
    model.fit((features - mean) / scale, labels)
    weights = model.coef_[0] / scale
    bias = float(model.intercept_[0] - np.sum(model.coef_[0] * mean / scale))
    scores = np.asarray(validation_features, np.float64) @ weights + bias
    threshold = float(np.quantile(scores, pass_rate))
    return weights, bias, threshold
