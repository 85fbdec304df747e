"""The four canonical classes, their display names, and the folder names datasets use for them."""

from __future__ import annotations

from core.errors import DatasetError

# Class order is the order of the model's outputs. Never reorder: the card records it and
# loading refuses a card whose order differs from the one the model was trained with.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "pituitary", "no_tumor")

DISPLAY_NAMES: dict[str, str] = {
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "pituitary": "Pituitary tumour",
    "no_tumor": "No tumour",
}

# Folder names seen in the public datasets (Sartaj: glioma_tumor ...; Nickparvar: glioma, notumor ...).
_FOLDER_ALIASES: dict[str, str] = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "glioma_tumour": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningioma_tumour": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_tumour": "pituitary",
    "no_tumor": "no_tumor",
    "no_tumour": "no_tumor",
    "notumor": "no_tumor",
    "notumour": "no_tumor",
    "normal": "no_tumor",
}


def canonical_class(folder_name: str) -> str:
    """Map a dataset folder name (any known naming scheme, any case) to its canonical class."""
    key = folder_name.strip().lower().replace("-", "_").replace(" ", "_")
    try:
        return _FOLDER_ALIASES[key]
    except KeyError:
        known = ", ".join(sorted(_FOLDER_ALIASES))
        raise DatasetError(
            f"unknown class folder {folder_name!r}: expected one of {known}"
        ) from None


def class_index(name: str) -> int:
    """Index of a canonical class name in the model's output vector."""
    return CLASS_NAMES.index(name)


def display_name(name: str) -> str:
    """Human-readable name of a canonical class."""
    return DISPLAY_NAMES[name]
