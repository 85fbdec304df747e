"""An ensemble of two tiny trained models joined into one network (core.training.ensemble)."""

import numpy as np
import pytest

from core import config
from core.cli import main
from core.errors import DatasetError
from core.model.card import load_card
from core.training.train import train
from tests.test_train import write_class_folders


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two members on one split: a residual CNN at 32 px and its continuation at 40 px."""
    folder = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "ROOT", folder)
        data = write_class_folders(folder / "data", per_class=16)
        first = train([data], folder / "first", name="tiny", image_size=32, epochs=1, batch_size=16, width=8)
        second = train([data], folder / "second", name="tiny", image_size=40, epochs=1, batch_size=16, init_from=first)
    return folder, data, first, second


@pytest.fixture(scope="module")
def ensemble(members):
    folder, data, first, second = members
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "ROOT", folder)
        code = main(["ensemble", "--member", str(first), "--member", str(second), "--data", str(data),
                     "--out", str(folder / "joined"), "--name", "tiny-ensemble", "--mirror"])
    assert code == 0
    return folder / "joined" / "tiny-ensemble.keras"


def test_the_card_lists_every_member_and_the_split_is_theirs(members, ensemble):
    _, _, first, second = members
    card = load_card(ensemble)
    data = card.data
    listed = data["architecture"]["members"]
    assert [member["sha256"] for member in listed] == [load_card(first).data["model_sha256"],
                                                       load_card(second).data["model_sha256"]]
    assert [member["version"] for member in listed] == ["1.0.0", "1.1.0"]
    assert [member["image_size"] for member in listed] == [32, 40]
    assert data["architecture"]["name"] == "ensemble" and data["version"] == "3.0.0"
    assert card.image_size == 40  # the largest member's side
    assert data["training"]["split_manifest_sha256"] == load_card(first).data["training"]["split_manifest_sha256"]
    assert (ensemble.parent / data["training"]["split_manifest"]).is_file()
    assert (ensemble.parent / data["ood"]["file"]).is_file()
    assert data["test_time_augmentation"] and set(data["metrics"]) == {"validation", "test"}
    assert data["architecture"]["activation_grid"] == 6  # the members' grids are 2 x 2 and 3 x 3


def test_its_logits_are_the_mean_of_the_members_logits_however_it_is_called(members, ensemble):
    import keras

    _, _, first, second = members
    joined = keras.models.load_model(ensemble, compile=False)
    small = keras.models.load_model(first, compile=False)
    large = keras.models.load_model(second, compile=False)
    slices = np.random.default_rng(3).random((5, 40, 40, 1)).astype(np.float32)
    expected = (np.asarray(small(keras.layers.Resizing(32, 32)(slices), training=False))
                + np.asarray(large(slices, training=False))) / 2
    # Called without `training`, as Keras' own tools do, a nested member must still run as in inference.
    for outputs in (joined(slices), joined(slices, training=False), joined.predict(slices, verbose=0)):
        np.testing.assert_allclose(np.asarray(outputs), expected, atol=1e-4)


def test_openvino_serves_it_and_the_heat_map_is_the_ensemble_logits_own(ensemble):
    from core.model.inference import Classifier

    classifier = Classifier.load(ensemble, runtime="openvino")
    reference = Classifier.load(ensemble, runtime="tensorflow")
    slices = np.random.default_rng(4).random((3, 40, 40, 1)).astype(np.float32)
    served, expected = classifier.predict_tensors(slices), reference.predict_tensors(slices)
    np.testing.assert_allclose(served.logits, expected.logits, atol=1e-3)
    assert served.features.shape == (3, expected.features.shape[1])
    logits, maps = classifier.class_activation_maps(slices[0])
    assert maps.shape[:2] == (6, 6)
    # Each class's map averages to its logit less the dense bias: the map explains that logit.
    bias = np.asarray(classifier.model.get_layer("logits").bias.numpy())
    np.testing.assert_allclose(maps.mean(axis=(0, 1)), logits - bias, atol=1e-3)


def test_members_of_different_splits_and_continuing_an_ensemble_are_refused(members, ensemble, tmp_path, monkeypatch,
                                                                             capsys):
    folder, _, first, _ = members
    monkeypatch.setattr(config, "ROOT", tmp_path)
    other_data = write_class_folders(tmp_path / "other", per_class=16, seed=5)
    other = train([other_data], tmp_path / "other-model", name="other", image_size=32, epochs=1, batch_size=16, width=8)
    assert main(["ensemble", "--member", str(first), "--member", str(other), "--data", str(other_data),
                 "--out", str(tmp_path / "refused")]) == 2
    assert "different splits" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    with pytest.raises(DatasetError, match="not one trained network"):
        train([folder / "data"], tmp_path / "continued", name="tiny-ensemble", epochs=1, init_from=ensemble)
