"""The model card: the JSON file beside a `.keras` model that states its whole contract.

The card is the single source of truth for class order, display names, input size, colour mode,
value range, temperature and the out-of-distribution gate. `load_card` refuses a card that does
not belong to its model file (sha256 mismatch) or names classes the project does not know.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from core.classes import CLASS_NAMES, NON_CLASS_NAMES
from core.errors import ModelContractError

CARD_SUFFIX = ".card.json"
REQUIRED_KEYS = ("version", "model_sha256", "classes", "display_names", "input", "temperature")


def card_path_for(model_path: Path) -> Path:
    """The card path of a model: `models/x.keras` -> `models/x.card.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """A validated card; `data` keeps the whole JSON for display."""

    model_path: Path
    data: dict

    @property
    def name(self) -> str:
        return str(self.data.get("name", self.model_path.stem))

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.data["classes"])

    @property
    def display_names(self) -> dict[str, str]:
        return dict(self.data["display_names"])

    @property
    def label_names(self) -> dict[str, str]:
        """Display names of every final label a reader may give: the classes', then the non-class answers'."""
        return {**self.display_names, **NON_CLASS_NAMES}

    @property
    def image_size(self) -> int:
        return int(self.data["input"]["image_size"])

    @property
    def temperature(self) -> float:
        return float(self.data["temperature"])

    @property
    def ood_path(self) -> Path | None:
        ood = self.data.get("ood")
        return self.model_path.parent / ood["file"] if ood else None


def write_card(model_path: Path, data: dict) -> Path:
    """Write `data` as the card of `model_path`, filling in the model file's sha256."""
    data = dict(data)
    data["model_file"] = Path(model_path).name
    data["model_sha256"] = file_sha256(model_path)
    path = card_path_for(model_path)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_card(model_path: Path) -> ModelCard:
    """Read and validate the card of `model_path`; raise `ModelContractError` with the reason."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelContractError(f"model file {model_path} does not exist")
    path = card_path_for(model_path)
    if not path.is_file():
        raise ModelContractError(f"model card {path.name} is missing next to {model_path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelContractError(f"model card {path.name} is not valid JSON: {error}") from None
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ModelContractError(f"model card {path.name} lacks {', '.join(missing)}")
    actual = file_sha256(model_path)
    if actual != data["model_sha256"]:
        raise ModelContractError(
            f"model file {model_path.name} does not match its card: sha256 {actual[:12]}... "
            f"but the card says {str(data['model_sha256'])[:12]}... (was the model replaced?)"
        )
    classes = list(data["classes"])
    if sorted(classes) != sorted(CLASS_NAMES) or len(classes) != len(CLASS_NAMES):
        raise ModelContractError(
            f"model card {path.name} lists classes {classes}; this app knows {list(CLASS_NAMES)}"
        )
    if set(data["display_names"]) != set(classes):
        raise ModelContractError(f"model card {path.name} has display names for other classes than it lists")
    ood = data.get("ood")
    if ood:
        ood_path = model_path.parent / ood["file"]
        if not ood_path.is_file() or file_sha256(ood_path) != ood.get("sha256"):
            raise ModelContractError(f"out-of-distribution file {ood['file']} is missing or does not match the card")
    return ModelCard(model_path, data)


def check_model_matches_card(card: ModelCard, output_size: int, input_shape: tuple) -> None:
    """Raise `ModelContractError` when the loaded network's shapes disagree with its card."""
    if output_size != len(card.classes):
        raise ModelContractError(
            f"the model has {output_size} outputs but its card lists {len(card.classes)} classes"
        )
    expected = (card.image_size, card.image_size, 1)
    if tuple(input_shape[1:]) != expected:
        raise ModelContractError(f"the model takes input {tuple(input_shape[1:])} but its card says {expected}")
