"""Finding images of another modality filed as brain MRI in the collections (head CT under "no tumour").

`python -m core modality-audit` ranks every slice of the MRI collections by how much it looks like
the real examples of one kind (head CT by default) in a non-MRI training folder, and writes the
ranking and a numbered contact sheet to check by eye. What the eye confirms goes into the
not-brain-MRI manifest (`models/not-brain-mri.csv`, `core.training.dataset`), which training,
calibration and evaluation read; this module never writes it.

The ranking is a logistic regression of that kind against the MRI slices on the network's pooled
features and the physical measurements of `core.scans.statistics`. The MRI collections' own CT
would teach it that CT is MRI, so slices whose outer band is bone-bright (`rim_bright_share` over
`RIM_SUSPECT`, which about 20 in 21 head CT and few MRI slices exceed) are left out of its MRI side.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.model.gate import PHYSICAL_FEATURES

RIM_SUSPECT = 0.2
CANDIDATE_SCORE = 0.01  # slices scoring over this probability are listed for the eye
_TILE = 96
_COLUMNS = 16


def audit(classifier, files: list, negative_folder: Path, kind: str = "head_ct") -> list[dict]:
    """Rows (path, sha256, score, rim_bright_share, listed) of the MRI `files` most like `kind`, best first."""
    from core.training.dataset import read_not_mri_manifest
    from core.training.gate_fit import negative_folder_files
    from core.training.train import load_prepared

    examples = [path for path, found, _ in negative_folder_files(Path(negative_folder)) if found == kind]
    if not examples:
        from core.errors import DatasetError

        raise DatasetError(f"{negative_folder} has no {kind}/ images to learn the kind from")
    size = classifier.image_size
    mri_tensors, digests, mri_physical = load_prepared(files, size, with_physical=True, description="MRI slices")
    kind_tensors, _, kind_physical = load_prepared(examples, size, with_physical=True, description=f"{kind} examples")
    mri_inputs = np.hstack([_features(classifier, mri_tensors), mri_physical])
    kind_inputs = np.hstack([_features(classifier, kind_tensors), kind_physical])
    rim = mri_physical[:, PHYSICAL_FEATURES.index("rim_bright_share")]
    clean = rim <= RIM_SUSPECT
    scores = _fit_and_score(np.vstack([mri_inputs[clean], kind_inputs]),
                            np.concatenate([np.zeros(int(clean.sum())), np.ones(len(kind_inputs))]), mri_inputs)
    listed = read_not_mri_manifest()
    order = np.argsort(-scores)
    return [{"rank": rank, "path": files[index].relative_path, "sha256": digests[index],
             "score": round(float(scores[index]), 4), "rim_bright_share": round(float(rim[index]), 4),
             "listed": "yes" if digests[index] in listed else "no", "file": files[index].path}
            for rank, index in enumerate(order) if scores[index] > CANDIDATE_SCORE or digests[index] in listed]


def _features(classifier, tensors: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.vstack([classifier.predict_tensors(tensors[start:start + batch]).features
                      for start in range(0, len(tensors), batch)])


def _fit_and_score(inputs: np.ndarray, labels: np.ndarray, scored: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, class_weight="balanced", max_iter=5000))
    model.fit(inputs, labels)
    return model.predict_proba(scored)[:, 1]


def write_audit(rows: list[dict], csv_path: Path, sheet_path: Path) -> None:
    """The ranking as CSV and its contact sheet as PNG: tile N is rank N, in rows of 16."""
    import cv2

    from core.scans.intake import load_scan

    with Path(csv_path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=("rank", "path", "sha256", "score", "rim_bright_share", "listed"),
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tiles = []
    for row in rows:
        grey = load_scan(Path(row["file"]).read_bytes(), Path(row["file"]).name).image
        tile = cv2.cvtColor(cv2.resize(grey, (_TILE, _TILE), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        colour = (0, 200, 255) if row["listed"] == "yes" else (0, 255, 0)
        cv2.putText(tile, str(row["rank"]), (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
        tiles.append(tile)
    if not tiles:
        tiles.append(np.zeros((_TILE, _TILE, 3), np.uint8))
    while len(tiles) % _COLUMNS:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[start:start + _COLUMNS]) for start in range(0, len(tiles), _COLUMNS)])
    cv2.imwrite(str(sheet_path), sheet)
