import json
import shutil

import pytest

from core.errors import ModelContractError
from core.model.card import card_path_for, load_card
from core.model.inference import Classifier


@pytest.fixture
def model_copy(tiny_model_path, tmp_path):
    """A private copy of the tiny model, card and gate that a test may damage."""
    for source in tiny_model_path.parent.iterdir():
        shutil.copy(source, tmp_path / source.name)
    return tmp_path / tiny_model_path.name


def _edit_card(model_path, change):
    path = card_path_for(model_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_valid_model_and_card_load(model_copy):
    classifier = Classifier.load(model_copy)
    assert classifier.classes == ("glioma", "meningioma", "pituitary", "no_tumor")
    assert classifier.card.display_names["no_tumor"] == "No tumour"


def test_model_file_that_does_not_match_its_card_is_refused(model_copy):
    with open(model_copy, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ModelContractError, match="does not match its card"):
        Classifier.load(model_copy)


def test_missing_card_is_refused(model_copy):
    card_path_for(model_copy).unlink()
    with pytest.raises(ModelContractError, match="card .* is missing"):
        load_card(model_copy)


def test_card_with_unknown_classes_is_refused(model_copy):
    _edit_card(model_copy, lambda data: data.update(classes=["glioma", "meningioma", "pituitary", "astrocytoma"]))
    with pytest.raises(ModelContractError, match="astrocytoma"):
        Classifier.load(model_copy)


def test_card_listing_more_classes_than_the_model_outputs_is_refused(tmp_path):
    import keras

    from core.model.card import write_card

    inputs = keras.Input((32, 32, 1))
    features = keras.layers.GlobalAveragePooling2D(name="features")(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(features))
    path = tmp_path / "three.keras"
    model.save(path)
    write_card(path, {"version": "x", "classes": ["glioma", "meningioma", "pituitary", "no_tumor"],
                      "display_names": {"glioma": "G", "meningioma": "M", "pituitary": "P", "no_tumor": "N"},
                      "input": {"image_size": 32}, "temperature": 1.0})
    with pytest.raises(ModelContractError, match="3 outputs"):
        Classifier.load(path)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelContractError, match="does not exist"):
        Classifier.load(tmp_path / "absent.keras")


def test_damaged_gate_file_is_refused(model_copy):
    gate = model_copy.parent / json.loads(card_path_for(model_copy).read_text())["ood"]["file"]
    gate.write_bytes(b"not a gate")
    with pytest.raises(ModelContractError, match="out-of-distribution"):
        Classifier.load(model_copy)
