"""The fast inference paths give the model's own answers, from any thread, and refuse to drift."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelContractError
from core.model.calibration import softmax
from core.model.card import card_path_for
from core.model.inference import MIRROR_MEAN, Classifier, cache_root, outputs_agree, probe_tensors
from core.scans.preprocess import prepare_image
from tests.synthetic import TINY_IMAGE_SIZE, make_tiny_model, synthetic_slice

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tensors() -> np.ndarray:
    """Six prepared synthetic scans (6, S, S, 1) float32, as the pipeline would feed them."""
    return np.stack([prepare_image(synthetic_slice(seed, 96, seed % 4), TINY_IMAGE_SIZE) for seed in range(6)])


@pytest.fixture(scope="module")
def classifiers(tiny_model_path) -> dict[str, Classifier]:
    return {runtime: Classifier.load(tiny_model_path, runtime=runtime) for runtime in ("tensorflow", "openvino")}


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty conversion cache for this test only."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("BRAINSCAN_RUNTIME_CACHE", str(folder))
    return folder


@pytest.fixture
def model_copy(tiny_model_path, tmp_path):
    """A private copy of the tiny model, card and gate."""
    folder = tmp_path / "model"
    folder.mkdir()
    for source in tiny_model_path.parent.iterdir():
        if source.is_file():
            shutil.copy(source, folder / source.name)
    return folder / tiny_model_path.name


def _reference(classifier: Classifier, tensors: np.ndarray) -> np.ndarray:
    """What the plain Keras model says: softmax(model(x) / T), float64 (N, C)."""
    logits = np.asarray(classifier.model(tensors, training=False))
    return softmax(logits, classifier.card.temperature)


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_fast_path_equals_the_keras_model(classifiers, tensors, runtime):
    classifier = classifiers[runtime]
    assert classifier.runtime == runtime
    expected = _reference(classifier, tensors)
    batch = classifier.predict_tensors(tensors)
    singles = np.concatenate([classifier.predict_tensors(tensor[np.newaxis]).probabilities for tensor in tensors])
    np.testing.assert_allclose(batch.probabilities, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(singles, expected, atol=1e-5, rtol=0)
    assert batch.logits.shape == (6, 4) and batch.features.shape[0] == 6
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, atol=1e-9)


def test_runtimes_give_the_same_features_for_the_gate(classifiers, tensors):
    tensorflow = classifiers["tensorflow"].predict_tensors(tensors)
    openvino = classifiers["openvino"].predict_tensors(tensors)
    np.testing.assert_allclose(openvino.features, tensorflow.features, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(openvino.logits, tensorflow.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_concurrent_threads_get_the_serial_answers(classifiers, tensors, runtime):
    classifier = classifiers[runtime]
    # Mixed batch sizes, so the single-scan and the batch functions run at the same time.
    jobs = [tensors[index % 6:index % 6 + 1 + index % 3] for index in range(24)]
    serial = [classifier.predict_tensors(job).probabilities for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda job: classifier.predict_tensors(job).probabilities, jobs))
    for expected, actual in zip(serial, concurrent):
        np.testing.assert_array_equal(actual, expected)


def test_wrong_tensor_shape_is_refused(tiny_classifier):
    with pytest.raises(ValueError, match="expected"):
        tiny_classifier.predict_tensors(np.zeros((1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), np.float32))
    with pytest.raises(ValueError, match="expected"):
        tiny_classifier.predict_tensors(np.zeros((1, 8, 8, 1), np.float32))


def test_empty_batch_gives_empty_output(tiny_classifier):
    output = tiny_classifier.predict_tensors(np.zeros((0, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 1), np.float32))
    assert output.probabilities.shape == (0, 4)


def test_conversion_is_cached_and_ignored_by_git(model_copy, private_cache):
    first = Classifier.load(model_copy, runtime="openvino")
    entries = [path for path in private_cache.iterdir() if path.is_dir()]
    assert len(entries) == 1 and (entries[0] / "network.xml").is_file()
    assert (private_cache / ".gitignore").read_text().strip() == "*"
    written = (entries[0] / "network.bin").stat().st_mtime_ns
    second = Classifier.load(model_copy, runtime="openvino")
    assert (entries[0] / "network.bin").stat().st_mtime_ns == written  # reused, not converted again
    probes = probe_tensors(TINY_IMAGE_SIZE)
    np.testing.assert_array_equal(second.predict_tensors(probes).probabilities,
                                  first.predict_tensors(probes).probabilities)


def test_a_drifted_conversion_falls_back_to_tensorflow(model_copy, private_cache):
    Classifier.load(model_copy, runtime="openvino")
    (entry,) = [path for path in private_cache.iterdir() if path.is_dir()]
    with np.load(entry / "reference.npz") as stored:
        saved = dict(stored)
    saved["logits"] = saved["logits"] + 1e-3  # as if the converted network had drifted from the model
    np.savez(entry / "reference.npz", **saved)
    assert Classifier.load(model_copy, runtime="auto").runtime == "tensorflow"
    with pytest.raises(ModelContractError, match="differs"):
        Classifier.load(model_copy, runtime="openvino")


def test_a_damaged_cache_falls_back_to_tensorflow(model_copy, private_cache):
    Classifier.load(model_copy, runtime="openvino")
    (entry,) = [path for path in private_cache.iterdir() if path.is_dir()]
    (entry / "network.bin").write_bytes(b"\0" * 16)
    classifier = Classifier.load(model_copy, runtime="auto")
    assert classifier.runtime == "tensorflow"
    assert classifier.predict_tensors(probe_tensors(TINY_IMAGE_SIZE)).probabilities.shape == (4, 4)


@pytest.fixture
def mirror_model(model_copy):
    """The tiny model whose card asks for logits averaged over the slice and its left-right mirror."""
    card = card_path_for(model_copy)
    data = json.loads(card.read_text())
    data["test_time_augmentation"] = MIRROR_MEAN
    card.write_text(json.dumps(data))
    return model_copy


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_mirror_averaging_serves_the_mean_of_both_logits(mirror_model, private_cache, tensors, runtime):
    classifier = Classifier.load(mirror_model, runtime=runtime)
    assert classifier.mirror and classifier.runtime == runtime
    plain = np.asarray(classifier.model(tensors, training=False))
    mirrored = np.asarray(classifier.model(np.ascontiguousarray(tensors[:, :, ::-1]), training=False))
    expected = softmax((plain + mirrored) / 2.0, classifier.card.temperature)
    assert np.abs(expected - softmax(plain, classifier.card.temperature)).max() > 1e-4  # 10x the tolerance below
    batch = classifier.predict_tensors(tensors)
    singles = np.concatenate([classifier.predict_tensors(tensor[np.newaxis]).probabilities for tensor in tensors])
    np.testing.assert_allclose(batch.probabilities, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(singles, expected, atol=1e-5, rtol=0)
    # The gate's features are those of the slice as given.
    plain_classifier = Classifier.load(mirror_model, runtime="tensorflow")
    features = plain_classifier.model.get_layer("features").output
    import keras

    expected_features = np.asarray(keras.Model(plain_classifier.model.inputs[0], features)(tensors, training=False))
    np.testing.assert_allclose(batch.features, expected_features, atol=1e-5, rtol=1e-5)


def test_unknown_test_time_augmentation_is_refused(model_copy, private_cache):
    card = card_path_for(model_copy)
    data = json.loads(card.read_text())
    data["test_time_augmentation"] = "mean over eight rotations"
    card.write_text(json.dumps(data))
    for runtime in ("tensorflow", "openvino", "auto"):
        with pytest.raises(ModelContractError, match="test-time augmentation"):
            Classifier.load(model_copy, runtime=runtime)


def test_agreement_check_catches_a_small_difference():
    rng = np.random.default_rng(0)
    features, logits = rng.random((4, 16), dtype=np.float32), rng.normal(size=(4, 4)).astype(np.float32)
    assert outputs_agree((features, logits), (features + 1e-6, logits - 1e-6), 1.0) is not None
    assert outputs_agree((features, logits), (features, logits + 5e-4), 1.0) is None
    assert outputs_agree((features, logits), (features + 5e-4, logits), 1.0) is None
    # A deep network may differ more in its activations (rounding over 16 blocks), never in what is shown:
    assert outputs_agree((features, logits), (features + 5e-4, logits), 1.0, 1e-3) is not None
    assert outputs_agree((features, logits), (features + 5e-3, logits), 1.0, 1e-3) is None
    nudged = logits.copy()
    nudged[:, 0] += 8e-4  # within the activations' 1e-3, but the probability moves by about 2e-4
    assert outputs_agree((features, logits), (features, nudged), 1.0, 1e-3) is None


def test_default_cache_lives_in_the_ignored_data_folder(monkeypatch):
    from core import config

    monkeypatch.delenv("BRAINSCAN_RUNTIME_CACHE", raising=False)
    assert cache_root().parent == config.DATA_DIR


def test_pruning_keeps_the_newest_conversion_of_every_model(tmp_path):
    import os

    from core.model.inference import _prune_cache

    names = ["brainscan-default-1483b2f3713c1d5e-mirror-openvino-2026.4.1-v3",  # the app's, converted first
             "brainscan-default-0000000000000000-mirror-openvino-2026.4.1-v3"]  # an older one of the same name
    names += [f"tiny-{index:016x}-openvino-2026.4.1-v3" for index in range(12)]  # a test run's throwaway models
    for age, name in enumerate(names):  # the first name is the oldest, the last the newest
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1_000_000 + age, 1_000_000 + age))
    os.utime(tmp_path / names[1], (999_000, 999_000))
    newest = tmp_path / names[-1]
    _prune_cache(tmp_path, keep=newest)
    left = sorted(path.name for path in tmp_path.iterdir())
    assert names[0] in left  # the app's conversion survives a test run
    assert names[1] not in left  # an older conversion of the same model does not
    assert len(left) == 8 + 1 and newest.name in left


def test_a_cached_model_classifies_and_explains_without_tensorflow(tiny_model_path):
    # What keeps the app's cold start and memory small: TensorFlow is never imported.
    Classifier.load(tiny_model_path, runtime="openvino")  # makes sure the cache exists
    code = (
        "import sys, numpy as np\n"
        "from core.model.inference import Classifier\n"
        "from core.model.explain import gradcam\n"
        f"classifier = Classifier.load({str(tiny_model_path)!r})\n"
        "tensor = np.random.default_rng(0).random((classifier.image_size, classifier.image_size, 1), np.float32)\n"
        "print(classifier.runtime, classifier.predict_tensors(tensor[None]).probabilities.shape,\n"
        "      gradcam(classifier, tensor).shape, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    environment.pop("BRAINSCAN_RUNTIME", None)
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              env=environment, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    size = TINY_IMAGE_SIZE
    assert finished.stdout.split("\n")[0] == f"openvino (1, 4) ({size}, {size}) False False"


def test_unknown_runtime_is_refused(tiny_model_path):
    with pytest.raises(ValueError, match="runtime"):
        Classifier.load(tiny_model_path, runtime="cuda")


def test_models_sharing_name_and_version_are_told_apart_in_the_history(tmp_path):
    # A retrained file whose card keeps the old name and version must not inherit the verdicts
    # saved about the old weights: history rows name the model with its sha256 prefix.
    first = Classifier.load(make_tiny_model(tmp_path / "a", name="tiny", seed=0), runtime="tensorflow")
    second = Classifier.load(make_tiny_model(tmp_path / "b", name="tiny", seed=1), runtime="tensorflow")
    assert (first.card.name, first.card.version) == (second.card.name, second.card.version)
    assert first.version != second.version
    assert first.version.startswith(f"tiny {first.card.version} (")


def test_loading_a_model_leaves_numpy_blas_one_thread(tiny_model_path):
    """OpenBLAS's second thread spun ~0.1 s of CPU after every small product (each upload's gate)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # as a fresh process starts on two cores
        Classifier.load(tiny_model_path)
        blas = [entry for entry in threadpool_info() if entry["user_api"] == "blas"]
        assert blas and all(entry["num_threads"] == 1 for entry in blas), blas
