"""Finding labelled images in dataset folders of either public naming scheme."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from core.classes import _FOLDER_ALIASES, canonical_class
from core.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}


@dataclass(frozen=True)
class LabelledFile:
    """One image file and its canonical class."""

    path: Path
    label: str
    source: str  # dataset folder name, e.g. "sartaj-brain-mri", for reporting

    @property
    def relative_path(self) -> str:
        """Path from the dataset folder's parent, e.g. 'sartaj-brain-mri/Training/glioma_tumor/g1.jpg'."""
        parts = self.path.parts
        return "/".join(parts[len(parts) - 1 - parts[::-1].index(self.source):])


def _is_class_folder(path: Path) -> bool:
    return path.name.strip().lower().replace("-", "_").replace(" ", "_") in _FOLDER_ALIASES


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def find_labelled_files(root: Path) -> list[LabelledFile]:
    """All images under `root`, which holds class folders directly or split folders holding them.

    Raises `DatasetError` for an unknown class folder beside known ones, or when no image is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    subfolders = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if any(_is_class_folder(folder) for folder in subfolders):
        class_folders = subfolders
    else:
        class_folders = []
        for split_folder in subfolders:
            children = sorted(
                path for path in split_folder.iterdir() if path.is_dir() and not path.name.startswith(".")
            )
            class_folders.extend(children)
    files: list[LabelledFile] = []
    for folder in class_folders:
        label = canonical_class(folder.name)  # raises DatasetError naming the unknown folder
        files.extend(LabelledFile(path, label, root.name) for path in _image_files(folder))
    if not files:
        raise DatasetError(
            f"no images found in {root}: expected class folders such as glioma/, meningioma/, "
            "pituitary/, no_tumor/ (directly or inside Training/ and Testing/)"
        )
    return files


# The not-brain-MRI manifest: files of the MRI collections that are not brain MRI at all (axial head
# CT filed under "no tumour", ...), found by `python -m core modality-audit` and checked by eye.
NOT_MRI_COLUMNS = ("path", "sha256", "kind", "collection", "class_folder", "split", "note")


@dataclass(frozen=True)
class NotMriFile:
    """One manifest row: the file's path from its dataset folder's parent, sha256 and what it is (e.g. head_ct)."""

    path: str
    sha256: str
    kind: str
    split: str = ""
    note: str = ""


def read_not_mri_manifest(path: Path | None = None) -> dict[str, NotMriFile]:
    """The not-brain-MRI manifest keyed by sha256 (empty when the file does not exist).

    Files are matched by content, so a renamed or copied file is still recognised; raises
    `DatasetError` for a file without the manifest's columns.
    """
    from core import config

    path = Path(path) if path is not None else config.not_mri_manifest_path()
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "sha256", "kind"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path} is not a not-brain-MRI manifest: it lacks {', '.join(sorted(missing))}")
        rows = [NotMriFile(row["path"], row["sha256"], row["kind"], row.get("split") or "", row.get("note") or "")
                for row in reader]
    return {row.sha256: row for row in rows}


def write_not_mri_manifest(rows: list[dict], path: Path) -> None:
    """Write manifest rows (dicts with `NOT_MRI_COLUMNS` keys), sorted by path."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=NOT_MRI_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda item: item["path"]):
            writer.writerow({column: row.get(column, "") for column in NOT_MRI_COLUMNS})
