"""The committed default model and its card agree, and the app can serve it."""

import json

from core.classes import CLASS_NAMES
from core.config import DEFAULT_MODEL_PATH
from core.model.card import file_sha256, load_card
from core.model.inference import Classifier
from core.pipeline import analyse_bytes
from tests.synthetic import encode, synthetic_slice


def test_default_model_matches_its_card_and_classifies():
    card = load_card(DEFAULT_MODEL_PATH)  # verifies the sha256 and the class list
    assert card.classes == CLASS_NAMES
    classifier = Classifier.load(DEFAULT_MODEL_PATH)  # verifies output and input shapes too
    assert classifier.image_size == card.data["input"]["image_size"]
    assert card.data["input"]["color_mode"] == "grayscale"
    assert 0.05 < card.temperature < 20
    result = analyse_bytes(classifier, encode(synthetic_slice(3, 200)), "synthetic.png")
    assert set(result.probabilities) == set(CLASS_NAMES)


def test_card_metrics_and_manifest_are_present_and_consistent():
    card = load_card(DEFAULT_MODEL_PATH).data
    test = card["metrics"]["test"]
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "n"):
        assert key in test
    assert sum(map(sum, test["confusion_matrix"])) == test["n"]
    manifest = DEFAULT_MODEL_PATH.parent / card["training"]["split_manifest"]
    assert file_sha256(manifest) == card["training"]["split_manifest_sha256"]
    test_rows = sum(1 for line in manifest.read_text().splitlines()[1:] if line.endswith(",test"))
    assert test_rows == test["n"]
    json.dumps(card)  # serialisable as the app reads it
