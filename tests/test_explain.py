"""Grad-CAM points at the region that drives a class, and the overlay puts it on the right pixels."""

from __future__ import annotations

import numpy as np
import pytest

from core.classes import CLASS_NAMES, DISPLAY_NAMES
from core.explain import _gradient_functions, gradcam, overlay
from core.inference import Classifier
from core.preprocess import content_box, prepare_image
from tests.synthetic import TINY_IMAGE_SIZE, synthetic_slice

SIZE = 32


@pytest.fixture(scope="module")
def brightness_classifier(tmp_path_factory) -> Classifier:
    """A hand-made model whose glioma logit is +10x and meningioma logit -10x the mean of `last_conv`.

    `last_conv` is the input averaged over 4x4 blocks (8x8 cells), so the only place that can argue
    for glioma is where the image is bright, and nothing argues for meningioma.
    """
    import keras
    from keras import layers

    from core.card import write_card

    inputs = keras.Input((SIZE, SIZE, 1), name="scan")
    pooled = layers.AveragePooling2D(4, name="pool")(inputs)
    activations = layers.Activation("linear", name="last_conv")(pooled)
    features = layers.GlobalAveragePooling2D(name="features")(activations)
    logits = layers.Dense(4, name="logits")(features)
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.array([[10.0, -10.0, 0.0, 0.0]], np.float32), np.zeros(4, np.float32)])
    folder = tmp_path_factory.mktemp("brightness-model")
    path = folder / "brightness.keras"
    model.save(path)
    write_card(path, {
        "name": "brightness", "version": "0-test", "classes": list(CLASS_NAMES),
        "display_names": {name: DISPLAY_NAMES[name] for name in CLASS_NAMES},
        "input": {"image_size": SIZE, "color_mode": "grayscale", "value_range": [0.0, 1.0]}, "temperature": 1.0,
    })
    return Classifier.load(path, runtime="tensorflow")


def _tensor_with_lesion(rows: slice, columns: slice) -> np.ndarray:
    tensor = np.full((SIZE, SIZE, 1), 0.1, np.float32)
    tensor[rows, columns] = 1.0
    return tensor


def test_heatmap_is_hottest_where_the_lesion_is(brightness_classifier):
    # Top-right, off the diagonal, so a transposed or flipped map would put the peak elsewhere.
    tensor = _tensor_with_lesion(slice(4, 8), slice(24, 28))
    heatmap = gradcam(brightness_classifier, tensor, class_index=0)
    row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert 3 <= row <= 8 and 23 <= column <= 28, (row, column)
    assert heatmap[4:8, 24:28].mean() > 0.6  # bilinear upsampling softens the 4x4 cell's edges
    assert heatmap[20:, :12].mean() < 0.2  # far from the lesion it is cool


def test_heatmap_follows_the_lesion_when_it_moves(brightness_classifier):
    left = gradcam(brightness_classifier, _tensor_with_lesion(slice(20, 28), slice(2, 10)), class_index=0)
    right = gradcam(brightness_classifier, _tensor_with_lesion(slice(20, 28), slice(22, 30)), class_index=0)
    assert left[20:28, 2:10].mean() > left[20:28, 22:30].mean() + 0.5
    assert right[20:28, 22:30].mean() > right[20:28, 2:10].mean() + 0.5


def test_class_with_no_supporting_region_gets_an_empty_map(brightness_classifier):
    tensor = _tensor_with_lesion(slice(4, 8), slice(24, 28))
    assert not gradcam(brightness_classifier, tensor, class_index=1).any()


def test_default_class_is_the_predicted_one(brightness_classifier):
    tensor = _tensor_with_lesion(slice(4, 8), slice(24, 28))
    probabilities = brightness_classifier.predict_tensors(tensor[np.newaxis]).probabilities[0]
    assert int(np.argmax(probabilities)) == 0
    np.testing.assert_array_equal(gradcam(brightness_classifier, tensor), gradcam(brightness_classifier, tensor, 0))


def test_real_architecture_gives_a_normalised_map_and_builds_once(tiny_classifier):
    tensor = prepare_image(synthetic_slice(5, 96, 2), TINY_IMAGE_SIZE)
    first = gradcam(tiny_classifier, tensor)
    function = _gradient_functions[tiny_classifier]
    second = gradcam(tiny_classifier, tensor, class_index=3)
    assert _gradient_functions[tiny_classifier] is function
    for heatmap in (first, second):
        assert heatmap.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) and heatmap.dtype == np.float32
        assert np.isfinite(heatmap).all() and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_bad_arguments_are_refused(tiny_classifier):
    with pytest.raises(ValueError, match="tensor"):
        gradcam(tiny_classifier, np.zeros((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), np.float32))
    with pytest.raises(ValueError, match="class_index"):
        gradcam(tiny_classifier, np.zeros((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 1), np.float32), class_index=4)


def _framed_scan() -> np.ndarray:
    """A 160x240 picture: black margins around a bright 'head' in the box rows 40-120, columns 60-200."""
    grey = np.zeros((160, 240), np.uint8)
    grey[40:120, 60:200] = 120
    return grey


def test_overlay_lines_up_with_the_head_box():
    grey = _framed_scan()
    top, bottom, left, right = content_box(grey)
    assert (top, bottom, left, right) != (0, 160, 0, 240)  # the crop is real, so mapping matters
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    heatmap[:SIZE // 4, -SIZE // 4:] = 1.0  # the top-right quarter of the model's view
    picture = overlay(grey, heatmap, opacity=0.6)
    assert picture.shape == (160, 240, 3) and picture.dtype == np.uint8
    tinted = np.any(picture != grey[:, :, np.newaxis], axis=2)
    rows, columns = np.nonzero(tinted)
    assert rows.min() >= top and rows.max() < top + (bottom - top) // 2
    assert columns.min() >= left + (right - left) // 2 and columns.max() < right
    assert not tinted[:top].any() and not tinted[:, :left].any()


def test_overlay_without_heat_is_the_plain_scan():
    grey = _framed_scan()
    picture = overlay(grey, np.zeros((SIZE, SIZE), np.float32))
    np.testing.assert_array_equal(picture, np.repeat(grey[:, :, np.newaxis], 3, axis=2))
    with pytest.raises(ValueError, match="opacity"):
        overlay(grey, np.zeros((SIZE, SIZE), np.float32), opacity=1.5)
