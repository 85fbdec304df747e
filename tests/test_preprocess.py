import cv2
import numpy as np
import pytest
from PIL import Image

from core.pipeline import analyse_bytes
from core.scans.intake import decode_image
from core.scans.preprocess import content_box, prepare_bytes, prepare_image
from core.training.dataset import find_labelled_files
from core.training.train import load_prepared
from tests.synthetic import encode, synthetic_slice, write_class_folders


def test_training_path_and_serving_path_give_identical_tensors(tmp_path, tiny_classifier):
    write_class_folders(tmp_path / "data", per_class=1, size=120)
    item = find_labelled_files(tmp_path / "data")[0]
    training_tensors, _ = load_prepared([item], tiny_classifier.image_size, workers=1)
    serving_tensor = prepare_bytes(item.path.read_bytes(), item.path.name, tiny_classifier.image_size)
    assert training_tensors[0].dtype == serving_tensor.dtype == np.float32
    np.testing.assert_array_equal(training_tensors[0], serving_tensor)
    # And the app's path classifies exactly that tensor.
    served = analyse_bytes(tiny_classifier, item.path.read_bytes(), item.path.name)
    direct = tiny_classifier.predict_tensors(serving_tensor[np.newaxis]).probabilities[0]
    assert [served.probabilities[name] for name in tiny_classifier.classes] == pytest.approx(direct, abs=1e-7)


def test_channel_order_cannot_change_the_tensor(tmp_path):
    """The demo's RGB/BGR bug: a grey slice saved as RGB, as BGR or as greyscale gives one tensor."""
    grey = synthetic_slice(4, 100)
    as_grey_png = encode(grey)
    as_colour_png = encode(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    buffer = tmp_path / "pil.png"
    Image.fromarray(grey).convert("RGB").save(buffer)  # written by PIL in RGB order
    reference = prepare_bytes(as_grey_png)
    np.testing.assert_array_equal(prepare_bytes(as_colour_png), reference)
    np.testing.assert_array_equal(prepare_bytes(buffer.read_bytes()), reference)


def test_colour_images_become_one_grey_channel_of_the_model_size():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    grey = decode_image(encode(colour))
    assert grey.shape == (70, 90) and grey.dtype == np.uint8
    tensor = prepare_image(grey, 64)
    assert tensor.shape == (64, 64, 1) and tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_crop_removes_wide_black_margins():
    head = synthetic_slice(1, 100)
    framed = np.zeros((300, 300), np.uint8)
    framed[100:200, 100:200] = head
    top, bottom, left, right = content_box(framed)
    assert 90 <= top <= 110 and 190 <= bottom <= 210 and 90 <= left <= 110 and 190 <= right <= 210
    # Framing differences mostly vanish: far closer than resizing the whole frame would be.
    reference = prepare_image(head, 64)
    cropped_difference = np.abs(prepare_image(framed, 64) - reference).mean()
    whole_frame = cv2.resize(framed, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    whole_frame = (whole_frame / np.percentile(whole_frame, 99.5)).clip(0, 1)[:, :, np.newaxis]
    assert cropped_difference < 0.5 * np.abs(whole_frame - reference).mean()


def test_blank_image_keeps_the_whole_frame():
    blank = np.zeros((80, 80), np.uint8)
    assert content_box(blank) == (0, 80, 0, 80)
    assert prepare_image(blank, 32).max() == 0.0


def test_prepare_image_refuses_wrong_input_types():
    with pytest.raises(ValueError):
        prepare_image(np.zeros((10, 10, 3), np.uint8))
