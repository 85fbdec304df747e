"""The training pipeline end to end on a tiny synthetic dataset (seconds, not the real model)."""

import json
import os

import numpy as np
import pytest

from core import config
from core.errors import DatasetError
from core.model.card import card_path_for, load_card
from core.training.train import calibrate, train
from tests.synthetic import encode


def write_class_folders(root, per_class, seed=0):
    """Distinct random-texture images (thumbnails must not correlate, or the split groups them)."""
    rng = np.random.default_rng(seed)
    for name in ("glioma", "meningioma", "pituitary", "notumor"):
        (root / name).mkdir(parents=True)
        for item in range(per_class):
            image = (rng.random((48, 48)) * 255).astype(np.uint8)
            (root / name / f"{name}_{item}.png").write_bytes(encode(image))
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "ROOT", folder)  # training logs go to ROOT/runs
        data = write_class_folders(folder / "data", per_class=16)
        model_path = train([data], folder / "first", name="tiny", image_size=32, epochs=2, batch_size=16, width=8)
    return data, model_path


def test_train_writes_a_model_whose_card_loads_and_names_the_split(tiny_run):
    _, model_path = tiny_run
    data = load_card(model_path).data
    assert data["training"]["epochs_run"] == 2
    assert data["training"]["continued_from"] is None
    assert set(data["metrics"]) == {"validation", "test"}
    assert (model_path.parent / data["training"]["split_manifest"]).is_file()


def test_continuing_records_the_first_run_and_keeps_its_split(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "ROOT", tmp_path)
    data, first = tiny_run
    second = train([data], tmp_path / "second", name="tiny", epochs=2, batch_size=16, init_from=first)
    first_card = json.loads(card_path_for(first).read_text())
    second_card = json.loads(card_path_for(second).read_text())
    assert second_card["training"]["continued_from"]["sha256"] == first_card["model_sha256"]
    assert second_card["training"]["split_manifest_sha256"] == first_card["training"]["split_manifest_sha256"]
    assert second_card["input"]["image_size"] == 32  # taken from the first run, not the default
    assert (first_card["version"], second_card["version"]) == ("1.0.0", "1.1.0")
    load_card(second)


def test_continuing_on_other_data_is_refused(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "ROOT", tmp_path)
    _, first = tiny_run
    other = write_class_folders(tmp_path / "other", per_class=16, seed=1)
    manifest = first.with_name("tiny.split.csv")
    before = manifest.read_bytes()
    with pytest.raises(DatasetError, match="different split"):
        train([other], first.parent, name="tiny", epochs=1, batch_size=16, init_from=first)
    assert manifest.read_bytes() == before  # the refused run left the first model's files alone
    load_card(first)


def test_continuing_at_another_size_in_bfloat16_keeps_the_split_and_saves_float32(tiny_run, tmp_path, monkeypatch):
    import keras

    monkeypatch.setattr(config, "ROOT", tmp_path)
    data, first = tiny_run
    second = train([data], tmp_path / "larger", name="tiny", image_size=40, epochs=1, batch_size=16, init_from=first,
                   precision="mixed_bfloat16", mixup_alpha=0.2, scanner_augment=True, version="1.7.0",
                   training_seed=99)
    first_card, second_card = load_card(first).data, load_card(second).data
    assert second_card["version"] == "1.7.0"  # named by the caller, not the next minor (1.1.0)
    # Another training seed trains differently on the same split (the manifest check above passed).
    assert (second_card["training"]["seed"], second_card["training"]["training_seed"]) == (1234, 99)
    assert second_card["training"]["split_manifest_sha256"] == first_card["training"]["split_manifest_sha256"]
    assert second_card["input"]["image_size"] == 40
    assert second_card["training"]["precision"] == "mixed_bfloat16"
    assert second_card["training"]["mixup_alpha"] == 0.2 and second_card["training"]["scanner_augment"] is True
    model = keras.models.load_model(second, compile=False)
    assert model.input_shape == (None, 40, 40, 1)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # the run put the policy back


def test_the_training_seed_seeds_the_fit_and_the_split_seed_the_split(tiny_run, tmp_path, monkeypatch):
    import core.training.train as training

    monkeypatch.setattr(config, "ROOT", tmp_path)
    data, first = tiny_run
    seen = []

    class Stop(Exception):
        pass

    def fit(train_x, train_y, validation_x, validation_y, settings, work_dir):
        seen.append(settings.seed)
        raise Stop

    monkeypatch.setattr(training, "_fit", fit)
    for training_seed in (None, 7):
        with pytest.raises(Stop):
            train([data], tmp_path / f"seed-{training_seed}", name="tiny", image_size=32, epochs=1, batch_size=16,
                  width=8, training_seed=training_seed)
    assert seen == [1234, 7]
    manifests = [(tmp_path / f"seed-{seed}" / "tiny.split.csv").read_bytes() for seed in (None, 7)]
    assert manifests[0] == manifests[1] == first.with_name("tiny.split.csv").read_bytes()


def test_calibrating_at_another_side_rebuilds_the_same_weights_and_serves_that_side(tiny_run, tmp_path, monkeypatch):
    import shutil

    import keras

    from core.model.inference import Classifier

    monkeypatch.setattr(config, "ROOT", tmp_path)
    data, first = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(first.parent, copy)
    model_path = copy / first.name
    with pytest.raises(DatasetError, match="too small"):
        calibrate(model_path, [data], image_size=8)
    # A run that fails while measuring (here: no such folder of negatives) leaves the model and its card as they were.
    before = model_path.read_bytes()
    with pytest.raises(DatasetError):
        calibrate(model_path, [data], image_size=40, non_mri_train=tmp_path / "no-such-folder")
    assert model_path.read_bytes() == before and not list(copy.glob(".*resized*"))
    load_card(model_path)
    calibrate(model_path, [data], image_size=40, version="1.7.0")
    card = load_card(model_path).data
    assert (card["input"]["image_size"], card["input"]["trained_image_size"]) == (40, 32)
    assert card["version"] == "1.7.0" and "robustness" not in card
    model, original = (keras.models.load_model(path, compile=False) for path in (model_path, first))
    assert model.input_shape == (None, 40, 40, 1)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), original.get_weights()))
    classifier = Classifier.load(model_path)
    assert classifier.image_size == 40
    assert classifier.predict_tensors(np.zeros((2, 40, 40, 1), np.float32)).probabilities.shape == (2, 4)


def test_mixup_blends_each_slice_mostly_with_itself_and_blends_labels_alike():
    import tensorflow as tf

    from core.training.train import mixup

    count = 64
    images = np.eye(count, dtype=np.float32).reshape(count, count, 1, 1)  # image i is one bright pixel at i
    labels = np.eye(4)[np.arange(count) % 4]  # float64, as keras.utils.to_categorical gives them
    mixed_images, mixed_labels = (np.asarray(t) for t in mixup(tf.constant(images), tf.constant(labels), 0.2, seed=3))

    pixels = mixed_images.reshape(count, count)
    np.testing.assert_allclose(pixels.sum(axis=1), 1.0, atol=1e-5)
    own_share = pixels[np.arange(count), np.arange(count)]
    assert own_share.min() >= 0.5 - 1e-6  # every blend is mostly the slice it started as
    assert own_share.max() - own_share.min() > 0.05  # shares vary: it did blend
    partner = np.where(own_share < 1.0 - 1e-6, np.argsort(pixels, axis=1)[:, -2], np.arange(count))
    expected = own_share[:, None] * labels + (1.0 - own_share[:, None]) * labels[partner]
    np.testing.assert_allclose(mixed_labels, expected, atol=1e-5)  # labels blended with the same share
    assert (np.argmax(mixed_labels, axis=1) == np.argmax(labels, axis=1)).all()


def test_scanner_variation_keeps_shape_and_range_and_changes_contrast_per_slice():
    import tensorflow as tf

    from core.training.train import scanner_variation

    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))[None, :, :, None]
    images = np.repeat(ramp, 16, axis=0)  # sixteen identical slices
    varied = np.asarray(scanner_variation(tf.constant(images), seed=7))
    assert varied.shape == images.shape and varied.dtype == np.float32
    assert varied.min() >= 0.0 and varied.max() <= 1.0
    middle = varied[:, 28:36, 28:36, 0].mean(axis=(1, 2))  # grey level ~0.5 under each slice's gamma
    assert middle.max() - middle.min() > 0.05  # each slice got its own curve
    assert (0.5 ** 1.6 - 0.08 < middle).all() and (middle < 0.5 ** 0.6 + 0.08).all()  # within the gamma range


def test_files_the_not_mri_manifest_lists_leave_the_mri_classes_and_teach_the_gate(tmp_path, monkeypatch):
    """Listed files keep their split but no MRI class is fitted or measured on them; the gate learns them as CT."""
    import csv
    import hashlib

    from core.model.inference import Classifier
    from core.training.dataset import write_not_mri_manifest

    monkeypatch.setattr(config, "ROOT", tmp_path)
    data = write_class_folders(tmp_path / "data", per_class=16, seed=3)
    listed = sorted((data / "notumor").iterdir())[:6]
    manifest = tmp_path / "not-brain-mri.csv"
    write_not_mri_manifest([{"path": f"data/notumor/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                             "kind": "head_ct"} for path in listed], manifest)
    monkeypatch.setenv("BRAINSCAN_NOT_MRI_MANIFEST", str(manifest))
    negatives = tmp_path / "non-mri-train"
    rng = np.random.default_rng(5)
    for kind in ("head_ct", "xray"):
        (negatives / kind).mkdir(parents=True)
        for index in range(5):
            picture = np.zeros((64, 64), np.uint8)
            picture[8:56, 8:56] = (rng.random((48, 48)) * 120 + (120 if kind == "xray" else 0)).astype(np.uint8)
            (negatives / kind / f"src{index % 2}_{index}.png").write_bytes(encode(picture))
    model_path = train([data], tmp_path / "out", name="tiny", image_size=32, epochs=2, batch_size=16, width=8,
                       non_mri_train=negatives)
    card = load_card(model_path).data
    left_out = card["not_mri_manifest"]["left_out_of_the_mri_classes"]
    assert sum(left_out.values()) == 6
    rows = list(csv.DictReader((model_path.parent / card["training"]["split_manifest"]).open()))
    assert len(rows) == 64  # the split manifest keeps every file
    assert card["metrics"]["test"]["n"] == sum(row["split"] == "test" for row in rows) - left_out["test"]
    head = card["ood"]["modality_head"]
    assert head["training_data"]["negatives"]["head_ct"]["n"] == 5 + left_out["train"]
    assert head["training_data"]["negatives"]["xray"]["n"] == 5
    assert head["training_data"]["mri"]["n"] == sum(row["split"] == "train" for row in rows) - left_out["train"]
    assert set(head["cross_validation"]["by_kind"]) == {"head_ct", "xray", "drawing"}
    classifier = Classifier.load(model_path)
    assert classifier.gate.head is not None and "mri" in classifier.gate.head.kinds
    # The monitoring reference: every validation slice the gate scored, the listed ones left out.
    from core.cli import main

    assert main(["monitor-reference", "--data", str(data), "--model", str(model_path),
                 "--json", str(tmp_path / "reference.json")]) == 0
    reference = json.loads((tmp_path / "reference.json").read_text())
    validation = sum(row["split"] == "validation" for row in rows)
    assert reference["left_out_not_brain_mri"] == left_out["validation"]
    assert reference["n"] == sum(reference["gate_score_bins"].values()) == validation - left_out["validation"]
    # Calibrating again fits a new gate and temperature: what the model answers changed, so a new version.
    calibrate(model_path, [data], non_mri_train=negatives)
    assert load_card(model_path).data["version"] == "1.1.0"


def test_quantize_writes_an_int8_network_that_serves_only_while_it_is_the_one_the_card_names(tiny_run, tmp_path,
                                                                                           monkeypatch, caplog):
    import shutil

    from core.model.card import write_card
    from core.model.inference import Classifier, int8_files
    from core.training.quantize import quantize_model

    monkeypatch.setattr(config, "ROOT", tmp_path)
    monkeypatch.setenv("BRAINSCAN_RUNTIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BRAINSCAN_PRECISION", raising=False)
    data, first = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(first.parent, copy)
    model_path = copy / first.name
    model_bytes = model_path.read_bytes()
    serving = quantize_model(model_path, [data], "test", slices=24)
    assert model_path.read_bytes() == model_bytes  # the model itself is untouched
    card = load_card(model_path)
    assert card.data["serving"] == serving and serving["precision"] == "int8"
    assert serving["source_model_sha256"] == card.data["model_sha256"]
    assert serving["calibration"]["split"] == "train" and serving["calibration"]["slices"] == 24
    validation = serving["validation"]
    assert validation["f32"]["n"] == validation["int8"]["n"] > 0
    assert 0 <= validation["same_class"] <= validation["f32"]["n"]
    files = int8_files(card, serving)
    assert all(path.is_file() for path in files.values())

    tensors = np.random.default_rng(3).random((5, 32, 32, 1), dtype=np.float32)
    int8 = Classifier.load(model_path)
    assert (int8.runtime, int8.precision) == ("openvino", "int8")
    # The batch path splits the cores between int8 inference and decoding (f32 decodes in 2 threads beside all).
    cores = len(os.sched_getaffinity(0))
    assert int8.decode_workers == max(1, cores - max(1, cores // 2))
    output = int8.predict_tensors(tensors, with_maps=True)
    assert output.probabilities.shape == (5, 4) and np.allclose(output.probabilities.sum(1), 1.0)
    assert output.maps is not None and int8.class_activation_maps(tensors[0]) is not None
    monkeypatch.setenv("BRAINSCAN_PRECISION", "f32")
    assert Classifier.load(model_path).precision == "f32"
    monkeypatch.delenv("BRAINSCAN_PRECISION")

    def served_after(change) -> str:
        """Precision served once `change` has been applied to a fresh copy of the quantized model's folder."""
        folder = tmp_path / f"case-{len(list(tmp_path.glob('case-*')))}"
        shutil.copytree(copy, folder)
        change(folder / model_path.name)
        caplog.clear()
        return Classifier.load(folder / model_path.name).precision

    def damage_weights(path):
        weights = int8_files(load_card(path), serving)["weights"]
        raw = bytearray(weights.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        weights.write_bytes(bytes(raw))

    assert served_after(damage_weights) == "f32" and "sha256 differs" in caplog.text

    def other_outputs(path):
        # What another CPU's 8-bit arithmetic looks like to the check: recorded outputs it does not reproduce.
        reference = int8_files(load_card(path), serving)["reference"]
        with np.load(reference) as stored:
            arrays = dict(stored)
        arrays["features"] = arrays["features"] * 1.5 + 0.5
        np.savez(reference, **arrays)
        from core.model.card import file_sha256

        card_data = load_card(path).data
        write_card(path, {**card_data, "serving": {**serving, "reference_sha256": file_sha256(reference)}})

    assert served_after(other_outputs) == "f32" and "differ from the recorded ones" in caplog.text
    # Remembered for this CPU: the next load of that network does not compile and check it again.
    last = sorted(tmp_path.glob("case-*"))[-1] / model_path.name
    caplog.clear()
    assert Classifier.load(last).precision == "f32" and "when last checked" in caplog.text

    def another_model(path):
        write_card(path, {**load_card(path).data, "serving": {**serving, "source_model_sha256": "0" * 64}})

    assert served_after(another_model) == "f32" and "another model file" in caplog.text
    assert served_after(lambda path: int8_files(load_card(path), serving)["network"].unlink()) == "f32"
    assert "missing" in caplog.text

    def mirror_now(path):
        from core.model.inference import MIRROR_MEAN

        write_card(path, {**load_card(path).data, "test_time_augmentation": MIRROR_MEAN})

    assert served_after(mirror_now) == "f32" and "other test-time augmentation" in caplog.text
    # Recalibrating changes temperature, gate and perhaps the mirror pass: the int8 network and its figures go.
    calibrate(model_path, [data], mirror=True)
    assert "serving" not in load_card(model_path).data and Classifier.load(model_path).precision == "f32"
