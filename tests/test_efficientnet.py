"""EfficientNet-Lite0 in Keras (core.model.efficientnet): weight mapping, the greyscale contract, and a
fine-tuning run from a saved backbone - all without PyTorch, which only `import-weights` needs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import config
from core.model.card import file_sha256, load_card
from core.model.efficientnet import build_efficientnet_lite0, import_lite0_weights
from tests.test_train import write_class_folders


def as_state_dict(model) -> dict[str, np.ndarray]:
    """The model's weights laid out as the PyTorch reference's state dict (OIHW convolutions, (out, in) dense)."""
    from core.model.efficientnet import _weight_plan

    state = {}
    for name, (kind, prefix) in _weight_plan(model).items():
        weights = model.get_layer(name).get_weights()
        if kind == "conv":
            state[f"{prefix}.weight"] = weights[0].transpose(3, 2, 0, 1)
        elif kind == "dwconv":
            state[f"{prefix}.weight"] = weights[0].transpose(2, 3, 0, 1)
        elif kind == "bn":
            for key, value in zip(("weight", "bias", "running_mean", "running_var"), weights):
                state[f"{prefix}.{key}"] = value
            state[f"{prefix}.num_batches_tracked"] = np.array(0)
        elif kind == "dense":
            state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weights[0].T, weights[1]
    return state


def randomise(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) if w.ndim > 1 or "variance" not in
                               v.path else rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w, v in zip(weights, layer.weights)])


def test_weights_travel_through_the_reference_layout_unchanged():
    source = build_efficientnet_lite0(64, greyscale_input=False, include_imagenet_head=True)
    randomise(source)
    state = as_state_dict(source)
    target = build_efficientnet_lite0(64, greyscale_input=False, include_imagenet_head=True)
    assert import_lite0_weights(target, state) == []
    images = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    assert np.allclose(source(images, training=False), target(images, training=False), atol=1e-5)


def test_a_missing_or_misshapen_tensor_is_refused():
    model = build_efficientnet_lite0(32, greyscale_input=False, include_imagenet_head=True)
    state = as_state_dict(model)
    del state["_conv_stem.weight"]
    with pytest.raises(KeyError, match="_conv_stem.weight"):
        import_lite0_weights(model, state)
    state = as_state_dict(model)
    state["_conv_head.weight"] = state["_conv_head.weight"][:10]
    with pytest.raises(ValueError, match="top_conv"):
        import_lite0_weights(model, state)


def test_a_grey_slice_is_read_as_the_same_grey_in_all_three_channels():
    grey = build_efficientnet_lite0(64, greyscale_input=True, include_imagenet_head=True)
    rgb = build_efficientnet_lite0(64, greyscale_input=False, include_imagenet_head=True)
    randomise(grey)
    import_lite0_weights(rgb, as_state_dict(grey))
    image = np.random.default_rng(2).random((1, 64, 64, 1), dtype=np.float32)
    assert np.allclose(grey(image, training=False), rgb(np.repeat(image, 3, -1), training=False), atol=1e-5)
    assert grey.get_layer("last_conv") and grey.get_layer("features").output.shape[-1] == 1280


def test_fine_tuning_from_a_saved_backbone_writes_a_version_2_card(tmp_path, monkeypatch):
    from core.training.train import train

    monkeypatch.setattr(config, "ROOT", tmp_path)
    backbone = build_efficientnet_lite0(32, greyscale_input=True)
    backbone_path = tmp_path / "backbone.keras"
    backbone.save(backbone_path)
    record = {"source_package": "test", "max_logit_difference": 0.0, "backbone_sha256": file_sha256(backbone_path)}
    backbone_path.with_suffix(".json").write_text(json.dumps(record))
    data = write_class_folders(tmp_path / "data", per_class=12)
    model_path = train([data], tmp_path / "out", name="lite", image_size=32, epochs=1, batch_size=16,
                       architecture="efficientnet-lite0", pretrained=backbone_path, freeze_epochs=1)
    card = load_card(model_path).data
    assert card["version"] == "2.0.0" and card["architecture"]["name"] == "efficientnet-lite0"
    assert card["architecture"]["pretrained"]["source_package"] == "test"
    assert card["training"]["freeze_epochs"] == 1
    assert card["ood"]["modality_head"]["training_data"]["negatives"]["drawing"]["n"] > 0


def test_fine_tuning_refuses_a_backbone_that_is_not_the_one_its_record_describes(tmp_path, monkeypatch):
    from core.training.pretrained import PretrainedWeightsError
    from core.training.train import train

    monkeypatch.setattr(config, "ROOT", tmp_path)
    backbone_path = tmp_path / "backbone.keras"
    build_efficientnet_lite0(32, greyscale_input=True).save(backbone_path)
    backbone_path.with_suffix(".json").write_text(json.dumps({"backbone_sha256": "0" * 64}))
    data = write_class_folders(tmp_path / "data", per_class=4)
    with pytest.raises(PretrainedWeightsError, match="sha256"):
        train([data], tmp_path / "out", image_size=32, epochs=1, architecture="efficientnet-lite0",
              pretrained=backbone_path)


def test_the_backbone_reaches_the_model_and_the_head_only_phase_leaves_it_untouched(tmp_path):
    import keras
    import tensorflow as tf

    from core.training.pretrained import copy_backbone_weights
    from core.training.train import FitSettings, _fit_head_only, build_network

    backbone = build_efficientnet_lite0(32, greyscale_input=True)
    randomise(backbone, seed=3)
    backbone.save(tmp_path / "backbone.keras")
    settings = FitSettings(32, 0, 1, 8, 0, architecture="efficientnet-lite0", freeze_epochs=1)
    model = build_network(settings)
    assert copy_backbone_weights(model, tmp_path / "backbone.keras") == sum(1 for layer in backbone.layers
                                                                           if layer.weights)
    for name in ("stem_conv", "block4b_bn", "top_bn"):
        for mine, theirs in zip(model.get_layer(name).get_weights(), backbone.get_layer(name).get_weights()):
            assert np.array_equal(mine, theirs)
    before = {layer.name: [weight.copy() for weight in layer.get_weights()] for layer in model.layers if layer.weights}
    rng = np.random.default_rng(0)
    images = rng.random((16, 32, 32, 1), dtype=np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 4, 16), 4)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    _fit_head_only(model, data, data, settings, {index: 1.0 for index in range(4)})
    for layer in model.layers:
        if layer.weights:
            same = all(np.array_equal(old, new) for old, new in zip(before[layer.name], layer.get_weights()))
            assert same == (layer.name != "logits"), layer.name  # batch-norm statistics included
        assert layer.trainable  # every layer is fine-tuned afterwards
