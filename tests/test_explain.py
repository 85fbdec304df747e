"""Grad-CAM points at the region that drives a class, and the overlay puts it on the right pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.classes import CLASS_NAMES, DISPLAY_NAMES
from core.model.explain import _gradient_functions, gradcam, overlay
from core.model.inference import MIRROR_MEAN, Classifier
from core.scans.preprocess import content_box, prepare_image
from tests.synthetic import TINY_IMAGE_SIZE, synthetic_slice

SIZE = 32


@pytest.fixture(scope="module")
def brightness_model(tmp_path_factory):
    """A hand-made model whose glioma logit is +10x and meningioma logit -10x the mean of `last_conv`.

    `last_conv` is the input averaged over 4x4 blocks (8x8 cells), so the only place that can argue
    for glioma is where the image is bright, and nothing argues for meningioma.
    """
    import keras
    from keras import layers

    from core.model.card import write_card

    inputs = keras.Input((SIZE, SIZE, 1), name="scan")
    pooled = layers.AveragePooling2D(4, name="pool")(inputs)
    activations = layers.Activation("linear", name="last_conv")(pooled)
    features = layers.GlobalAveragePooling2D(name="features")(activations)
    logits = layers.Dense(4, name="logits")(features)
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.array([[10.0, -10.0, 0.0, 0.0]], np.float32), np.zeros(4, np.float32)])
    folder = tmp_path_factory.mktemp("brightness-model")
    paths = {}
    for mirror in (False, True):
        path = folder / f"brightness{'-mirror' if mirror else ''}.keras"
        model.save(path)
        write_card(path, {
            "name": path.stem, "version": "0-test", "classes": list(CLASS_NAMES),
            "display_names": {name: DISPLAY_NAMES[name] for name in CLASS_NAMES},
            "input": {"image_size": SIZE, "color_mode": "grayscale", "value_range": [0.0, 1.0]}, "temperature": 1.0,
            **({"test_time_augmentation": MIRROR_MEAN} if mirror else {}),
        })
        paths[mirror] = path
    return paths


@pytest.fixture(scope="module", params=[("tensorflow", False), ("openvino", False), ("tensorflow", True),
                                        ("openvino", True)], ids=["tf", "ov", "tf-mirror", "ov-mirror"])
def brightness_classifier(request, brightness_model) -> Classifier:
    """The hand-made model through either runtime (gradients / direct maps), with and without mirror averaging."""
    runtime, mirror = request.param
    classifier = Classifier.load(brightness_model[mirror], runtime=runtime)
    assert classifier.runtime == runtime and classifier.mirror == mirror
    return classifier


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
    assert heatmap[4:8, 4:8].mean() < 0.2  # and so is the lesion's mirror image (mirror maps are flipped back)


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


def test_the_inference_gives_the_heat_maps_source_in_the_same_pass(brightness_classifier):
    """One forward pass for the answer and the heat map (OpenVINO); TensorFlow gives no maps and the page asks again."""
    tensor = _tensor_with_lesion(slice(4, 8), slice(24, 28))
    plain = brightness_classifier.predict_tensors(tensor[np.newaxis])
    output = brightness_classifier.predict_tensors(tensor[np.newaxis], with_maps=True)
    np.testing.assert_array_equal(output.logits, plain.logits)
    np.testing.assert_array_equal(output.features, plain.features)
    if brightness_classifier.runtime == "tensorflow":
        assert output.maps is None
        return
    np.testing.assert_allclose(output.maps[0], brightness_classifier.class_activation_maps(tensor)[1], rtol=1e-5)
    for class_index in (0, 1):
        np.testing.assert_allclose(gradcam(brightness_classifier, tensor, class_index, class_maps=output.maps[0]),
                                   gradcam(brightness_classifier, tensor, class_index), atol=1e-6)
    with pytest.raises(ValueError, match="class_index"):
        gradcam(brightness_classifier, tensor, class_maps=output.maps[0])


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "mirror"])
def both_runtimes(request, tiny_model_path, tmp_path_factory) -> dict[str, Classifier]:
    path = tiny_model_path
    if request.param:
        path = _with_mirror_averaging(tiny_model_path, tmp_path_factory.mktemp("tiny-mirror"))
    return {runtime: Classifier.load(path, runtime=runtime) for runtime in ("tensorflow", "openvino")}


def _with_mirror_averaging(model_path, folder):
    """A copy of a model whose card asks for logits averaged with the left-right mirror."""
    import json
    import shutil

    from core.model.card import card_path_for

    for source in model_path.parent.iterdir():
        if source.is_file():
            shutil.copy(source, folder / source.name)
    card = card_path_for(folder / model_path.name)
    data = json.loads(card.read_text())
    data["test_time_augmentation"] = MIRROR_MEAN
    card.write_text(json.dumps(data))
    return folder / model_path.name


def test_real_architecture_gives_a_normalised_map_and_builds_once(both_runtimes):
    classifier = both_runtimes["tensorflow"]
    tensor = prepare_image(synthetic_slice(5, 96, 2), TINY_IMAGE_SIZE)
    first = gradcam(classifier, tensor)
    function = _gradient_functions[classifier]
    second = gradcam(classifier, tensor, class_index=3)
    assert _gradient_functions[classifier] is function
    for heatmap in (first, second):
        assert heatmap.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) and heatmap.dtype == np.float32
        assert np.isfinite(heatmap).all() and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


@pytest.mark.parametrize("class_index", [None, 0, 1, 2, 3])
def test_direct_maps_equal_the_gradient_maps(both_runtimes, class_index):
    assert both_runtimes["openvino"].class_activation_maps(np.zeros((TINY_IMAGE_SIZE,) * 2 + (1,))) is not None
    for seed in range(3):
        tensor = prepare_image(synthetic_slice(seed, 96, seed), TINY_IMAGE_SIZE)
        gradients = gradcam(both_runtimes["tensorflow"], tensor, class_index)
        direct = gradcam(both_runtimes["openvino"], tensor, class_index)
        np.testing.assert_allclose(direct, gradients, atol=1e-5)


def test_only_a_pooled_linear_head_counts_as_direct(tiny_classifier):
    import keras
    from keras import layers

    from core.model.inference import dense_head_kernel

    assert dense_head_kernel(tiny_classifier.model).shape == (tiny_classifier.model.get_layer("features").output.shape[-1], 4)
    inputs = keras.Input((SIZE, SIZE, 1))
    activations = layers.Activation("linear", name="last_conv")(layers.Conv2D(4, 3)(inputs))
    pooled = layers.GlobalAveragePooling2D(name="features")(activations)
    assert dense_head_kernel(keras.Model(inputs, layers.Dense(4, activation="relu")(pooled))) is None
    assert dense_head_kernel(keras.Model(inputs, layers.Dense(4)(layers.Dense(8)(pooled)))) is None
    assert dense_head_kernel(keras.Model(inputs, layers.Dense(4)(layers.GlobalMaxPooling2D()(activations)))) is None


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
    change = np.abs(picture.astype(int) - grey[:, :, np.newaxis]).sum(axis=2)
    # Nothing outside the head's box; the tint's weight sits in the quarter the heat-map named.
    outside = np.ones(grey.shape, bool)
    outside[top:bottom, left:right] = False
    assert not change[outside].any()
    rows, columns = np.indices(grey.shape)
    centre_row, centre_column = (rows * change).sum() / change.sum(), (columns * change).sum() / change.sum()
    assert top <= centre_row < top + (bottom - top) / 2 and left + (right - left) / 2 <= centre_column < right
    peak_row, peak_column = np.unravel_index(np.argmax(change), change.shape)
    assert top <= peak_row < top + (bottom - top) / 2 and left + (right - left) / 2 <= peak_column < right


def test_the_heat_is_smooth_and_fades_out_before_the_box_edge():
    from core.model.explain import heat_over

    grey = np.full((400, 400), 120, np.uint8)
    box = (0, 400, 0, 400)
    coarse = np.random.default_rng(3).random((5, 5)).astype(np.float32)  # a last-layer grid, as small as it gets
    blocky = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    heat = heat_over(grey.shape, blocky, box)
    assert heat.max() > 0.5
    # No step from one grid cell to the next: neighbouring pixels differ by far less than a cell's jump.
    cell_jump = np.abs(np.diff(coarse, axis=0)).max()
    assert np.abs(np.diff(heat, axis=0)).max() < cell_jump / 10 and np.abs(np.diff(heat, axis=1)).max() < cell_jump / 10
    # The box's edge never shows as a line: the heat there is nothing.
    assert heat[0].max() < 0.05 and heat[-1].max() < 0.05 and heat[:, 0].max() < 0.05 and heat[:, -1].max() < 0.05


def test_a_flat_heat_map_is_no_heat_not_a_solid_square():
    from core.model.explain import heat_is_flat

    grey = _framed_scan()
    nearly_even = np.full((SIZE, SIZE), 0.97, np.float32)
    nearly_even[0, 0] = 1.0
    assert heat_is_flat(nearly_even)
    np.testing.assert_array_equal(overlay(grey, nearly_even), np.repeat(grey[:, :, np.newaxis], 3, axis=2))
    assert not heat_is_flat(np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE))


def test_a_colour_picture_keeps_its_colours_where_there_is_no_heat():
    colour = np.zeros((160, 240, 3), np.uint8)
    colour[40:120, 60:200] = (200, 40, 90)
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    heatmap[SIZE // 2:, :SIZE // 4] = 1.0
    picture = overlay(colour, heatmap, opacity=0.5)
    assert picture.shape == colour.shape
    np.testing.assert_array_equal(picture[45, 190], colour[45, 190])  # far from the heat: untouched, in colour
    assert (picture[:40] == 0).all()


def test_overlay_without_heat_is_the_plain_scan():
    grey = _framed_scan()
    picture = overlay(grey, np.zeros((SIZE, SIZE), np.float32))
    np.testing.assert_array_equal(picture, np.repeat(grey[:, :, np.newaxis], 3, axis=2))
    with pytest.raises(ValueError, match="opacity"):
        overlay(grey, np.zeros((SIZE, SIZE), np.float32), opacity=1.5)
