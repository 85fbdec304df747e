"""A weight average of a tiny model and its continuation (python -m core soup)."""

import numpy as np
import pytest

from core import config
from core.cli import main
from core.errors import DatasetError
from core.model.card import load_card
from core.training.ensemble import averaged_weights
from core.training.train import train
from tests.test_train import write_class_folders


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A residual CNN at 32 px and its continuation (one more cycle, the same split)."""
    folder = tmp_path_factory.mktemp("soup")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "ROOT", folder)
        data = write_class_folders(folder / "data", per_class=16)
        first = train([data], folder / "first", name="tiny", image_size=32, epochs=1, batch_size=16, width=8)
        second = train([data], folder / "second", name="tiny", image_size=32, epochs=1, batch_size=16, init_from=first)
    return folder, data, first, second


def test_the_soup_holds_the_members_mean_weights_and_a_card_that_says_so(members):
    import keras

    folder, data, first, second = members
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "ROOT", folder)
        code = main(["soup", "--member", str(first), "--member", str(second), "--share", "0.25", "--share", "0.75",
                     "--data", str(data), "--out", str(folder / "soup"), "--name", "tiny-soup", "--mirror"])
    assert code == 0
    path = folder / "soup" / "tiny-soup.keras"
    soup, a, b = (keras.models.load_model(p, compile=False) for p in (path, first, second))
    # Every weight, the batch-norm statistics included, is the shares' mix of the members'.
    for mixed, one, two in zip(soup.weights, a.weights, b.weights):
        np.testing.assert_allclose(mixed.numpy(), 0.25 * one.numpy() + 0.75 * two.numpy(), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(one.numpy(), two.numpy()) for one, two in zip(a.weights, b.weights))
    card = load_card(path).data
    average = card["architecture"]["weight_average"]
    assert [member["sha256"] for member in average["members"]] == [load_card(first).data["model_sha256"],
                                                                   load_card(second).data["model_sha256"]]
    assert average["shares"] == [0.25, 0.75] and card["version"] == "1.2.0"
    assert card["test_time_augmentation"] and set(card["metrics"]) == {"validation", "test"}
    assert "robustness" not in card and "monitoring" not in card  # they measured another network
    assert card["training"]["split_manifest_sha256"] == load_card(first).data["training"]["split_manifest_sha256"]
    assert (path.parent / card["training"]["split_manifest"]).is_file() and (path.parent / card["ood"]["file"]).is_file()
    assert not list((folder / "soup").glob(".*building"))
    # It serves like any model: OpenVINO agrees with TensorFlow on it.
    from core.model.inference import Classifier

    slices = np.random.default_rng(2).random((3, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(Classifier.load(path, runtime="openvino").predict_tensors(slices).probabilities,
                               Classifier.load(path, runtime="tensorflow").predict_tensors(slices).probabilities,
                               atol=1e-4)


def test_models_of_another_split_or_architecture_and_bad_shares_are_refused(members, tmp_path, monkeypatch, capsys):
    import keras

    folder, data, first, second = members
    monkeypatch.setattr(config, "ROOT", tmp_path)
    other_data = write_class_folders(tmp_path / "other", per_class=16, seed=5)
    other = train([other_data], tmp_path / "other-model", name="other", image_size=32, epochs=1, batch_size=16, width=8)
    assert main(["soup", "--member", str(first), "--member", str(other), "--data", str(other_data),
                 "--out", str(tmp_path / "refused")]) == 2
    assert "different splits" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    small, large = (keras.models.load_model(p, compile=False) for p in (first, second))
    with pytest.raises(DatasetError, match="shares"):
        averaged_weights([small, large], [0.5, 0.6])
    wider = train([data], tmp_path / "wider", name="wider", image_size=32, epochs=1, batch_size=16, width=12)
    with pytest.raises(DatasetError, match="one architecture"):
        averaged_weights([small, keras.models.load_model(wider, compile=False)])
