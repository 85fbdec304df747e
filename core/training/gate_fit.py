"""Fitting the not-a-brain-MRI gate (`core.model.gate`) on real negatives, and cross-validating it by source.

The modality head learns brain MRI (the training split's slices, less those the not-brain-MRI
manifest lists) against real images that are not brain MRI: the folders of `non-mri-train/`, one
kind each (head_ct/, xray/, ...), the head CT that the MRI collections file as MRI (listed in
`models/not-brain-mri.csv`, training split only) and the drawn images of `core.training.nonmri`'s
development seed (charts, documents, shapes, imitations of other medical images; not its
photographs, whose originals its evaluation seed shares). Its threshold keeps `DEFAULT_PASS_RATE`
of the validation split's MRI slices, and nothing else: `non-mri/` and the evaluation seed are
never read here.

Cross-validation holds out whole sources (the repositories of `non-mri-train/SOURCES.md`, by file
name prefix or its manifest) so that a figure says how the head does on a source it has never
seen, as it will at another hospital: a look memorised from one repository cannot help it there.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.model.gate import MRI, ModalityHead

# One MRI slice in a hundred of the validation split may be refused: a refused slice goes to a
# reader unclassified, a CT passed gets a tumour class. At 99.5% the cross-validated head CT
# detection on unseen sources fell from 98.6% to 96.8% (python -m core calibrate prints both).
DEFAULT_PASS_RATE = 0.99
# Inverse L2 strength of the logistic regression on standardised inputs. Chosen by the
# source-held-out cross-validation below among 0.01, 0.05 and 0.2 (0.05 detected the most
# unseen-source head CT, 340 of 345, and kept the most held-out MRI).
DEFAULT_REGULARISATION = 0.05
DRAWING = "drawing"
SYNTHETIC_SOURCE = "core.training.nonmri"
COLLECTION_SOURCE = "mri collections (not-brain-mri manifest)"
FOLDS = 5


@dataclass(frozen=True)
class Negatives:
    """Images that are not brain MRI: network features (N, D), physical inputs (N, P), kind and source of each."""

    features: np.ndarray
    physical: np.ndarray
    kinds: np.ndarray
    sources: np.ndarray

    @staticmethod
    def join(parts: list["Negatives"]) -> "Negatives":
        """All parts' rows, in order (parts may be empty)."""
        parts = [part for part in parts if len(part.kinds)]
        if not parts:
            raise ValueError("the gate needs at least one negative image")
        return Negatives(np.vstack([part.features for part in parts]), np.vstack([part.physical for part in parts]),
                         np.concatenate([part.kinds for part in parts]), np.concatenate([part.sources for part in parts]))


def negative_folder_files(folder: Path) -> list[tuple[Path, str, str]]:
    """(file, kind, source) of a folder of kind subfolders (non-mri-train/ layout), sorted.

    The source is the manifest.csv's `source_tag` where the folder has one, else the file name's
    prefix before the first underscore (the folder's naming rule), else the kind itself.
    """
    folder = Path(folder)
    tags = {}
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8") as handle:
            tags = {row["file"]: row["source_tag"] for row in csv.DictReader(handle) if row.get("source_tag")}
    files = []
    for kind_folder in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        for file in sorted(path for path in kind_folder.iterdir() if path.is_file() and not path.name.startswith(".")):
            relative = f"{kind_folder.name}/{file.name}"
            source = tags.get(relative) or (file.name.split("_", 1)[0] if "_" in file.name else kind_folder.name)
            files.append((file, kind_folder.name, f"{source}:{kind_folder.name}"))
    return files


def standardised_fit(inputs: np.ndarray, kinds: np.ndarray, regularisation: float = DEFAULT_REGULARISATION
                     ) -> ModalityHead:
    """A multinomial logistic head over `kinds` (N,) on inputs (N, D + P); its threshold is NaN until `with_threshold`.

    Kinds are weighted equally however many images each has, so the hundreds of MRI slices per
    negative do not drown the rare kinds. Inputs are standardised for the fit and the scaling is
    folded into the weights.
    """
    from sklearn.linear_model import LogisticRegression

    inputs = np.asarray(inputs, dtype=np.float64)
    mean = inputs.mean(axis=0)
    spread = inputs.std(axis=0)
    # An input that barely varies in training must not get a huge weight: a rounding difference
    # between runtimes in it would then move the score across the threshold.
    scale = np.maximum(spread, 1e-3 * float(np.median(spread)) + 1e-6)
    model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=5000)
    model.fit((inputs - mean) / scale, kinds)
    kinds_fitted = tuple(str(kind) for kind in model.classes_)
    if MRI not in kinds_fitted:
        raise ValueError("the gate's modality head needs brain MRI examples")
    coefficients = model.coef_ if len(kinds_fitted) > 2 else np.vstack([-model.coef_[0], model.coef_[0]]) / 2
    intercepts = model.intercept_ if len(kinds_fitted) > 2 else np.array([-model.intercept_[0], model.intercept_[0]]) / 2
    weights = (coefficients / scale).T
    bias = intercepts - (coefficients * (mean / scale)).sum(axis=1)
    return ModalityHead(kinds_fitted, weights, bias, float("nan"))


def with_threshold(head: ModalityHead, validation_inputs: np.ndarray, pass_rate: float = DEFAULT_PASS_RATE
                   ) -> ModalityHead:
    """The head with its threshold: the score under which `pass_rate` of the validation MRI inputs fall."""
    scores = head.not_mri_scores(validation_inputs)
    return ModalityHead(head.kinds, head.weights, head.bias, float(np.quantile(scores, pass_rate)))


def cross_validate(mri_inputs: np.ndarray, mri_groups: np.ndarray, negative_inputs: np.ndarray, negatives: Negatives,
                   validation_inputs: np.ndarray, regularisation: float = DEFAULT_REGULARISATION,
                   pass_rate: float = DEFAULT_PASS_RATE, folds: int = FOLDS) -> dict:
    """Source-held-out cross-validation of the head: what it refuses from sources it never saw.

    Negative sources are dealt to `folds` folds (each source whole in one fold), MRI slices by
    their near-duplicate group. Each fold's head is fitted on the other folds, its threshold set
    on the validation MRI as in serving, and then scores its held-out fold.
    """
    sources = sorted(set(negatives.sources.tolist()))
    negative_fold = {source: index % folds for index, source in enumerate(sources)}
    unique_groups = np.unique(mri_groups)
    order = np.random.default_rng(0).permutation(len(unique_groups))
    group_fold = {unique_groups[position]: rank % folds for rank, position in enumerate(order)}
    mri_folds = np.array([group_fold[group] for group in mri_groups])
    negative_folds = np.array([negative_fold[source] for source in negatives.sources])
    mri_held = np.zeros(len(mri_inputs), bool)
    refused = np.zeros(len(negatives.kinds), bool)
    for fold in range(folds):
        train_mri, train_negative = mri_folds != fold, negative_folds != fold
        head = standardised_fit(np.vstack([mri_inputs[train_mri], negative_inputs[train_negative]]),
                                np.concatenate([np.full(int(train_mri.sum()), MRI), negatives.kinds[train_negative]]),
                                regularisation)
        head = with_threshold(head, validation_inputs, pass_rate)
        mri_held[~train_mri] = head.not_mri_scores(mri_inputs[~train_mri]) <= head.threshold
        if (~train_negative).any():
            refused[~train_negative] = head.not_mri_scores(negative_inputs[~train_negative]) > head.threshold
    by_kind, by_source = defaultdict(Counter), defaultdict(Counter)
    for kind, source, caught in zip(negatives.kinds, negatives.sources, refused):
        for table, key in ((by_kind, kind), (by_source, source)):
            table[key]["n"] += 1
            table[key]["refused"] += int(caught)
    return {
        "folds": folds,
        "rule": "each negative source held out whole; MRI by near-duplicate group; each fold's threshold from "
                "the validation split's MRI",
        "mri_held_out_pass_rate": float(mri_held.mean()), "mri_n": int(len(mri_held)),
        "by_kind": {key: dict(value) for key, value in sorted(by_kind.items())},
        "by_source": {key: dict(value) for key, value in sorted(by_source.items())},
        "negatives_refused": int(refused.sum()), "negatives_n": int(len(refused)),
    }


def fit_modality_head(mri_inputs: np.ndarray, mri_groups: np.ndarray, validation_inputs: np.ndarray,
                      negatives: Negatives, regularisation: float = DEFAULT_REGULARISATION,
                      pass_rate: float = DEFAULT_PASS_RATE, cross_validation: bool = True
                      ) -> tuple[ModalityHead, dict]:
    """The served head (fitted on every example, threshold from validation MRI) and its card record."""
    negative_inputs = np.hstack([negatives.features, negatives.physical])
    head = standardised_fit(np.vstack([mri_inputs, negative_inputs]),
                            np.concatenate([np.full(len(mri_inputs), MRI), negatives.kinds]), regularisation)
    head = with_threshold(head, validation_inputs, pass_rate)
    counts = Counter(negatives.kinds.tolist())
    sources = defaultdict(set)
    for kind, source in zip(negatives.kinds, negatives.sources):
        sources[kind].add(str(source).split(":", 1)[0])
    record = {
        "method": "multinomial logistic regression over kinds of image (brain MRI and what is not) on the "
                  "network's pooled features and physical measurements of the picture; the not-brain-MRI score "
                  "is the log-odds of every other kind against brain MRI",
        "kinds": list(head.kinds),
        "training_data": {
            "mri": {"n": int(len(mri_inputs)), "data": "training split, less the not-brain-MRI manifest's files"},
            "negatives": {kind: {"n": counts[kind], "sources": sorted(sources[kind])} for kind in sorted(counts)},
        },
        "regularisation": regularisation,
        "threshold": head.threshold,
        "threshold_rule": f"{pass_rate:.0%} of the validation split's MRI slices (n={len(validation_inputs)}, the "
                          "not-brain-MRI manifest's files left out) score under it",
    }
    if cross_validation:
        record["cross_validation"] = cross_validate(mri_inputs, mri_groups, negative_inputs, negatives,
                                                    validation_inputs, regularisation, pass_rate)
    return head, record


def format_cross_validation(report: dict) -> str:
    """Plain-text lines of `cross_validate`'s report."""
    lines = [f"cross-validation ({report['folds']} folds, each source held out whole): held-out MRI passed "
             f"{report['mri_held_out_pass_rate']:.4f} of {report['mri_n']}; negatives refused "
             f"{report['negatives_refused']}/{report['negatives_n']}"]
    lines += [f"  {kind:<22}{row['refused']:>5}/{row['n']:<5}" for kind, row in report["by_kind"].items()]
    missed = [f"{source} {row['refused']}/{row['n']}" for source, row in report["by_source"].items()
              if row["refused"] < row["n"]]
    if missed:
        lines.append("  sources not wholly refused: " + ", ".join(missed))
    return "\n".join(lines)
