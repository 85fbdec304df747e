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

# A reader's answer that is none of the model's classes: for a scan the gate refused (or one it should have), or
# a slice nobody can read. A final label, never a model output; stored as these stable values.
NOT_BRAIN_MRI, NON_DIAGNOSTIC = "not_brain_mri", "non_diagnostic"
NON_CLASS_LABELS: tuple[str, ...] = (NOT_BRAIN_MRI, NON_DIAGNOSTIC)
NON_CLASS_NAMES: dict[str, str] = {NOT_BRAIN_MRI: "Not a brain MRI slice", NON_DIAGNOSTIC: "Non-diagnostic / unreadable"}
# Every final label a read or an adjudication may give, in the order forms offer them.
READ_LABELS: tuple[str, ...] = CLASS_NAMES + NON_CLASS_LABELS
LABEL_NAMES: dict[str, str] = {**DISPLAY_NAMES, **NON_CLASS_NAMES}

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
