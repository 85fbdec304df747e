"""Finding labelled images in dataset folders of either public naming scheme."""

from __future__ import annotations

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
