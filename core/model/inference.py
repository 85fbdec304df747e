"""Loading a model with its card and running calibrated inference on prepared tensors.

`Classifier.load` checks the model against its card (sha256, classes, input shape) and refuses a
mismatch. The `.keras` file is the only source of truth; two runtimes execute it:

- "openvino": the network converted to OpenVINO IR, compiled once with fixed shapes: batch 1 for
  single scans and a small fixed batch for folders. On this project's 2-core CPU it answers a
  single scan about twice as fast as TensorFlow and, loaded from its cache, starts without
  importing TensorFlow at all (about 0.4 s and 150 MB instead of 4 s and 650 MB).
- "tensorflow": compiled `tf.function`s with fixed input signatures (batch 1 and any batch),
  traced and warmed up at load, so a request never pays tracing or `model.predict` set-up costs.

`$BRAINSCAN_RUNTIME` (auto, openvino, tensorflow) picks one for every load that does not name it.
The conversion is cached in `data/runtime-cache/` (or `$BRAINSCAN_RUNTIME_CACHE`), keyed by the
model file's sha256, together with reference outputs that TensorFlow computed from the `.keras`
file for a few probe tensors. Every load runs the probes through the converted network and uses
it only if its calibrated probabilities agree with the reference within `TOLERANCE` and its
features, logits and activations within `activation_tolerance(card)` (relative); otherwise, or when OpenVINO is not installed, it falls back to TensorFlow. The Keras model itself
is loaded lazily, on the first call that needs it, and then kept.

A card may ask for test-time augmentation (`test_time_augmentation`, written by `core.training.train`): the
served logits are then the mean of the slice's and its left-right mirror's, while the features
for the gate come from the slice as given. Both runtimes compute the two passes inside one call.

For Grad-CAM the converted network also returns the activations of `core.model.LAST_CONV_LAYER`.
When the model's head is global average pooling, dropout and a linear dense layer (as
`core.model.build_model` makes it), the gradient of a logit with respect to those activations is
the dense kernel's column divided by the number of cells, exactly, so `class_activation_maps`
gives `core.model.explain` the Grad-CAM maps with no TensorFlow in the process.

A card may also name an int8 network (`serving`, written by `core.training.quantize`): the same
network quantized by NNCF, bundled beside the model with outputs it gave on the probe tensors.
OpenVINO serves it when its files match the card's sha256 and this machine reproduces those outputs
within `INT8_TOLERANCE`; otherwise, or with `$BRAINSCAN_PRECISION=f32`, the model is served in f32
as above, and a warning says why. `Classifier.precision` says which one answers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import config
from core.errors import ModelContractError
from core.model.calibration import softmax
from core.model.card import ModelCard, check_model_matches_card, load_card

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "openvino", "tensorflow")
# $BRAINSCAN_PRECISION: "auto" serves a card's int8 network where it is usable, "f32" never does.
PRECISIONS = ("auto", "f32")
# Largest difference allowed between the converted network and TensorFlow on the probe tensors,
# for features, logits and probabilities alike (measured differences are about 1e-6).
# What the reviewer sees, the calibrated probabilities, must agree within TOLERANCE, and so must
# features, logits and activations (relative to their size). A deep network (EfficientNet-Lite0,
# 16 blocks) sums in another order on each runtime, which moved its last activations by 1.1e-4
# relative, harmless for the gate and the heat-map: for it they may differ by DEEP_NETWORK_TOLERANCE.
TOLERANCE = 1e-4
DEEP_NETWORK_TOLERANCE = 1e-3
# An ensemble (core.training.ensemble) holds deep members.
DEEP_NETWORKS = ("efficientnet-lite0", "ensemble")


def activation_tolerance(card) -> float:
    """How far (relative) a converted network's features, logits and activations may stray for this card's model."""
    architecture = card.data.get("architecture")
    name = architecture.get("name") if isinstance(architecture, dict) else None
    return DEEP_NETWORK_TOLERANCE if name in DEEP_NETWORKS else TOLERANCE


# How far the int8 network may stray from the outputs it gave where it was quantized. A CPU with
# 8-bit dot-product units (VNNI, AMX) computes the quantized layers in exact integers: on session
# 16's AVX-512 VNNI machine the outputs were identical on 1 and 2 cores. Without them (oneDNN's
# AVX2 and AVX-512 paths, ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE) they moved by 1.2 relative in
# the features and 0.036 in probabilities, and the validation split lost 5 slices (849 of 871
# against 854): there the check fails and the f32 network serves. The files are pinned by sha256.
INT8_TOLERANCE = 0.01
INT8_PROBABILITY_TOLERANCE = 0.005
_CACHE_FORMAT = 3
# The card's `test_time_augmentation` values this module knows how to serve (see `core.training.train`).
MIRROR_MEAN = "mean of logits over the slice and its left-right mirror"
_CACHE_ENTRIES_KEPT = 8  # older conversions (of replaced or test models) are deleted
# What follows the model's name in a cache folder's name (see `_cache_folder`): its sha256 prefix and the rest.
_CACHE_ENTRY_NAME = re.compile(r"-[0-9a-f]{16}(-mirror)?-openvino-.*$")
_PROBE_COUNT = 4


@dataclass(frozen=True)
class BatchOutput:
    """Calibrated probabilities (N, C) float64, raw logits (N, C), pooled features (N, D), and maybe class maps.

    `maps` (N, h, w, C) are the class activation maps of the same pass (see
    `Classifier.class_activation_maps`), when they were asked for and the runtime gives them.
    """

    probabilities: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    maps: np.ndarray | None = None


def single_threaded_blas() -> None:
    """Make NumPy's BLAS (OpenBLAS) compute in the calling thread only, for this whole process.

    The products here are small (one scan's 1,280 features against the gate's 1,280 x 1,280
    precision matrix: 0.5 ms). With its default two threads OpenBLAS wakes a worker for each
    of them, and that worker then spins, waiting for more work, for about 0.1 s of CPU: with
    it every upload cost the app server ~100 ms of CPU on the second core, where the products
    themselves cost 2 ms (bench/README.md, "Where an upload's server CPU went"). Inference has
    its own threads (OpenVINO), and the batch path decodes in threads of its own, so nothing
    here needs BLAS threads. threadpoolctl finds the BLAS library NumPy loaded and sets its
    thread count through its own API (openblas_set_num_threads); an environment variable would
    be too late, since Streamlit imports NumPy before the app's code runs.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class Classifier:
    """A loaded model, its card and its out-of-distribution gate; safe to share between threads."""

    def __init__(self, engine, card: ModelCard, gate=None, model=None):
        self.card = card
        self.gate = gate
        self.image_size = card.image_size
        self.classes = card.classes
        self.mirror = mirror_averaged(card)
        self.runtime = engine.name
        self.precision = engine.precision
        # How many threads the batch path should decode in beside this runtime's inference.
        self.decode_workers = engine.decode_workers
        self._engine = engine
        self._model = model
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()

    @classmethod
    def load(cls, model_path: Path | None = None, runtime: str | None = None,
             precision: str | None = None) -> "Classifier":
        """Load model, card and gate; raise `ModelContractError` saying what is wrong.

        `runtime` is "auto" (OpenVINO when it reproduces TensorFlow, else TensorFlow), "openvino"
        (raise `ModelContractError` if it cannot be used) or "tensorflow"; None reads
        $BRAINSCAN_RUNTIME, default "auto". `precision` is "auto" (the card's int8 network where this
        machine reproduces it) or "f32"; None reads $BRAINSCAN_PRECISION, default "auto".
        """
        runtime = runtime or os.environ.get("BRAINSCAN_RUNTIME") or "auto"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        precision = precision or os.environ.get("BRAINSCAN_PRECISION") or "auto"
        if precision not in PRECISIONS:
            raise ValueError(f"precision (BRAINSCAN_PRECISION) must be one of {PRECISIONS}, got {precision!r}")
        single_threaded_blas()
        model_path = Path(model_path or config.model_path())
        card = load_card(model_path)
        gate = None
        if card.ood_path is not None:
            from core.model.gate import MahalanobisGate

            gate = MahalanobisGate.load(card.ood_path)
        mirror = mirror_averaged(card)
        engine, model = None, None
        if runtime != "tensorflow":
            engine, model = _openvino_engine(card, required=runtime == "openvino", int8=precision == "auto")
        if engine is None:
            model = model or _load_keras_model(model_path)
            _check_keras_model(card, model)
            engine = _TensorFlowEngine(model, card.image_size, mirror)
        return cls(engine, card, gate, model)

    @property
    def version(self) -> str:
        """What history rows name the model by: name, version and the weights' sha256 prefix.

        The sha256 makes two models that share a name and version (a retrained file whose card
        was not bumped) different models in the audit trail, so a verdict about one is never
        shown as the saved verdict for the other.
        """
        return f"{self.card.name} {self.card.version} ({str(self.card.data['model_sha256'])[:8]})"

    def class_activation_maps(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """One tensor (S, S, 1) -> logits (C,) and per-class maps (h, w, C) float32, or None.

        Map c is sum_k A_k * W[k, c], with A the last convolutional activations and W the dense
        head's kernel: Grad-CAM's weighted sum before its ReLU, up to the positive factor 1/(h*w).
        With mirror averaging, A is the mean of the slice's activations and the mirror's, flipped
        back, which is what the gradient of the averaged logit weights.
        None when the runtime cannot give it directly; `core.model.explain` then uses gradients.
        """
        if self._engine.name != "openvino" or self._engine.head_kernel is None:
            return None
        tensor = np.ascontiguousarray(tensor, dtype=np.float32).reshape(1, self.image_size, self.image_size, 1)
        with self._lock:
            logits, activations = self._engine.run_with_activations(tensor)
        return logits[0], activations[0] @ self._engine.head_kernel

    @property
    def model(self):
        """The Keras model of the `.keras` file, loaded on first use (imports TensorFlow)."""
        with self._model_lock:
            if self._model is None:
                self._model = _load_keras_model(self.card.model_path)
            return self._model

    def predict_tensors(self, tensors: np.ndarray, with_maps: bool = False) -> BatchOutput:
        """Prepared tensors (N, S, S, 1) float32 -> calibrated probabilities, logits and features.

        With `with_maps`, also each class's activation map from the same forward pass, where the
        runtime gives them (OpenVINO and a pooled dense head; else `maps` is None): the heat map
        then needs no second inference.
        """
        tensors = np.ascontiguousarray(tensors, dtype=np.float32)
        if tensors.ndim != 4 or tensors.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"expected (N, {self.image_size}, {self.image_size}, 1) tensors, got {tensors.shape}")
        if len(tensors) == 0:
            empty = np.zeros((0, len(self.classes)), np.float32)
            return BatchOutput(empty.astype(np.float64), empty, np.zeros((0, 0), np.float32))
        maps = None
        # One request at a time: each already uses every core, and queueing keeps memory flat.
        with self._lock:
            if with_maps and self._engine.name == "openvino" and self._engine.head_kernel is not None:
                features, logits, activations = self._engine.run_with_features_and_activations(tensors)
                maps = activations @ self._engine.head_kernel
            else:
                features, logits = self._engine.run(tensors)
        return BatchOutput(softmax(logits, self.card.temperature), logits, features, maps)


class _TensorFlowEngine:
    """The Keras model run through two compiled functions: batch 1 and any batch size."""

    name = "tensorflow"
    precision = "f32"
    decode_workers = 2

    def __init__(self, model, image_size: int, mirror: bool = False):
        import tensorflow as tf

        served = served_function(model, mirror)

        def infer(images):
            outputs = served(images)
            return outputs["features"], outputs["logits"]

        shape = [image_size, image_size, 1]
        self._single = tf.function(infer, input_signature=[tf.TensorSpec([1, *shape], tf.float32)],
                                   autograph=False).get_concrete_function()
        self._batch = tf.function(infer, input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
                                  autograph=False).get_concrete_function()
        self.run(np.zeros([1, *shape], np.float32))  # The first calls allocate; pay for that at load.
        self.run(np.zeros([2, *shape], np.float32))

    def run(self, tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        function = self._single if len(tensors) == 1 else self._batch
        features, logits = function(tensors)
        return features.numpy(), logits.numpy()


class _OpenVinoEngine:
    """The converted network compiled for fixed shapes: batch 1, and batch `chunk` for folders."""

    name = "openvino"
    # Scans per request for batches. OpenVINO's per-scan time does not improve past small
    # batches on 2 cores (bench/inference.py); larger ones only hold more memory.
    chunk = 4

    def __init__(self, network, image_size: int, head_kernel: np.ndarray | None = None, precision: str = "f32",
                 chunk_threads: int | None = None):
        """`chunk_threads`: threads of the batch request (default: every core), for a batch path that
        decodes on the other cores at the same time (`decode_workers`)."""
        import openvino
        from concurrent.futures import ThreadPoolExecutor

        self.head_kernel = head_kernel
        # What the network computes in: the hint's precision, or "int8" for a quantized network (`_int8_engine`).
        self.precision = precision
        # Threads `core.pipeline.analyse_many` decodes in while a batch is inferred.
        self.decode_workers = 2
        core = openvino.Core()
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise lower the precision. Only
        # bench/precision.py asks for another, to measure what a lower one would change.
        properties = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}

        def compiled(batch: int):
            shaped = network.clone()
            shaped.reshape({0: [batch, image_size, image_size, 1]})
            extra = {"INFERENCE_NUM_THREADS": chunk_threads} if chunk_threads and batch > 1 else {}
            return core.compile_model(shaped, "CPU", {**properties, **extra}).create_infer_request()

        batches = sorted({1, self.chunk})
        # Side by side: compiling is mostly one thread's work (0.50 -> 0.30 s for the int8 network's two).
        with ThreadPoolExecutor(max_workers=len(batches)) as pool:
            self._requests = dict(zip(batches, pool.map(compiled, batches)))
        for batch in self._requests:  # The first calls allocate; pay for that at load.
            self._infer(np.zeros([batch, image_size, image_size, 1], np.float32), ("logits",))

    def _infer(self, tensors: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        """Run `tensors` through the fixed-shape requests (chunks, then singles); concatenated outputs."""
        pieces: list[list[np.ndarray]] = [[] for _ in outputs]
        start = 0
        while start < len(tensors):
            batch = self.chunk if len(tensors) - start >= self.chunk else 1
            request = self._requests[batch]
            request.infer([tensors[start:start + batch]])
            for piece, name in zip(pieces, outputs):
                # Copies: the request's output buffers are reused by the next call.
                piece.append(request.get_tensor(name).data.copy())
            start += batch
        return [piece[0] if len(piece) == 1 else np.concatenate(piece) for piece in pieces]

    def run(self, tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self._infer(tensors, ("features", "logits"))
        return features, logits

    def run_with_features_and_activations(self, tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pooled features, logits and last convolutional activations of one pass."""
        features, logits, activations = self._infer(tensors, ("features", "logits", "activations"))
        return features, logits, activations

    def run_with_activations(self, tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and last convolutional activations, for the Grad-CAM maps."""
        logits, activations = self._infer(tensors, ("logits", "activations"))
        return logits, activations


def _keras():
    import keras

    return keras


def _load_keras_model(model_path: Path):
    try:
        return _keras().models.load_model(model_path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged file; all mean the same here.
        raise ModelContractError(f"model file {Path(model_path).name} could not be loaded: {error}") from None


def _check_keras_model(card: ModelCard, model) -> None:
    check_model_matches_card(card, int(model.outputs[0].shape[-1]), tuple(model.inputs[0].shape))


def _extractor(model, with_activations: bool = False):
    """A model with the same input and named outputs: pooled features, logits (and activations)."""
    from core.model.network import FEATURES_LAYER, LAST_CONV_LAYER

    outputs = {"features": model.get_layer(FEATURES_LAYER).output, "logits": model.outputs[0]}
    if with_activations:
        outputs["activations"] = model.get_layer(LAST_CONV_LAYER).output
    return _keras().Model(model.inputs[0], outputs)


def mirror_averaged(card: ModelCard) -> bool:
    """Whether the card asks for logits averaged with the left-right mirror; refuse unknown requests."""
    requested = card.data.get("test_time_augmentation")
    if not requested:
        return False
    if requested == MIRROR_MEAN:
        return True
    raise ModelContractError(f"the model card asks for test-time augmentation {requested!r}, "
                             f"which this version cannot serve (it knows {MIRROR_MEAN!r})")


def served_function(model, mirror: bool, with_activations: bool = False):
    """A TensorFlow function images (N, S, S, 1) -> {"features", "logits"[, "activations"]} as served.

    With `mirror`, one forward pass runs the slices and their left-right mirrors together; the
    logits are the mean of the two, the features those of the slices as given, and the
    activations the mean of the slice's and the mirror's flipped back into the slice's frame.
    """
    import tensorflow as tf

    extractor = _extractor(model, with_activations)

    def served(images):
        if not mirror:
            return extractor(images, training=False)
        count = tf.shape(images)[0]
        outputs = extractor(tf.concat([images, tf.reverse(images, axis=[2])], axis=0), training=False)
        result = {"features": outputs["features"][:count],
                  "logits": (outputs["logits"][:count] + outputs["logits"][count:]) / 2.0}
        if with_activations:
            activations = outputs["activations"]
            result["activations"] = (activations[:count] + tf.reverse(activations[count:], axis=[2])) / 2.0
        return result

    return served


def dense_head_kernel(model) -> np.ndarray | None:
    """The (K, C) kernel of a head `last_conv -> global average pooling -> dropout* -> linear dense`, else None.

    For such a head d logit_c / d A[i, j, k] = W[k, c] / (h * w) everywhere, which makes Grad-CAM's
    channel weights the kernel's columns; any other head needs real gradients.
    """
    from core.model.network import LAST_CONV_LAYER

    keras = _keras()
    layer = model.outputs[0]._keras_history.operation
    if not isinstance(layer, keras.layers.Dense) or layer.activation is not keras.activations.linear:
        return None
    dense = layer
    layer = layer.input._keras_history.operation
    while isinstance(layer, keras.layers.Dropout):
        layer = layer.input._keras_history.operation
    if not isinstance(layer, keras.layers.GlobalAveragePooling2D) or layer.data_format != "channels_last":
        return None
    if layer.input._keras_history.operation.name != LAST_CONV_LAYER:
        return None
    return np.asarray(dense.kernel.numpy(), dtype=np.float32)


def probe_tensors(image_size: int) -> np.ndarray:
    """Fixed tensors (4, S, S, 1) float32 in [0, 1] on which runtimes must agree: blank, flat, noise, a disc."""
    rng = np.random.default_rng(20260401)
    grid = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    disc = (grid[:, None] ** 2 + grid[None, :] ** 2 < 0.6).astype(np.float32) * 0.7
    probes = [np.zeros((image_size, image_size), np.float32), np.full((image_size, image_size), 0.5, np.float32),
              rng.random((image_size, image_size), dtype=np.float32), disc]
    return np.stack(probes)[..., np.newaxis]


def outputs_agree(reference: tuple[np.ndarray, ...], candidate: tuple[np.ndarray, ...],
                  temperature: float, relative_tolerance: float = TOLERANCE,
                  probability_tolerance: float = TOLERANCE) -> float | None:
    """Largest difference between two (features, logits, ...) tuples, or None when over a tolerance.

    Arrays are compared relative to their size (difference over max(1, |value|)) within
    `relative_tolerance`; the calibrated probabilities from the logits (second item) absolutely,
    within `probability_tolerance`.
    """
    worst = 0.0
    for expected, actual in zip(reference, candidate):
        if expected.shape != actual.shape:
            return None
        scale = np.maximum(1.0, np.abs(expected))
        worst = max(worst, float(np.max(np.abs(actual - expected) / scale)))
    if worst > relative_tolerance:
        return None
    probability_gap = float(np.max(np.abs(softmax(reference[1], temperature) - softmax(candidate[1], temperature))))
    if probability_gap > probability_tolerance:
        return None
    return max(worst, probability_gap)


def cache_root() -> Path:
    """Folder of converted networks: $BRAINSCAN_RUNTIME_CACHE, else data/runtime-cache (git-ignored)."""
    value = os.environ.get("BRAINSCAN_RUNTIME_CACHE")
    return Path(value).expanduser() if value else config.DATA_DIR / "runtime-cache"


def _cache_folder(card: ModelCard) -> Path:
    import openvino

    version = openvino.__version__.split("-")[0]
    sha = str(card.data["model_sha256"])
    serving = "-mirror" if mirror_averaged(card) else ""
    return cache_root() / f"{card.model_path.stem}-{sha[:16]}{serving}-openvino-{version}-v{_CACHE_FORMAT}"


def _openvino_engine(card: ModelCard, required: bool, int8: bool = True):
    """(engine, keras model or None) for the converted network, or (None, model) to use TensorFlow.

    With `int8`, the card's int8 network comes first where it is usable (`_int8_engine`)."""
    model = None
    try:
        import openvino
    except ImportError:
        if required:
            raise ModelContractError("the openvino runtime was asked for but openvino is not installed") from None
        return None, None
    serving = quantized_serving(card) if int8 else None
    if serving is not None:
        refusal = _int8_refusal_marker(serving)
        if refusal is not None and refusal.is_file():
            logger.warning("serving %s in f32, not int8: this CPU did not reproduce its int8 network when last "
                           "checked (%s)", card.model_path.name, refusal)
        else:
            try:
                return _int8_engine(card, serving), None
            except _Int8Differs as error:
                logger.warning("serving %s in f32, not int8: %s", card.model_path.name, error)
                _remember_int8_refusal(refusal)
            except Exception as error:  # Any failure leaves the f32 network, which the card also measured.
                logger.warning("serving %s in f32, not int8: %s", card.model_path.name, error)
    folder = _cache_folder(card)
    try:
        network, model = _f32_network_and_model(card)
        probes, reference, head_kernel = recorded_outputs(folder / "reference.npz")
        engine = _OpenVinoEngine(network, card.image_size, head_kernel)
        tolerance = activation_tolerance(card)
        gap = outputs_agree(reference, probe_outputs(engine, probes), card.temperature, tolerance)
        if gap is None:
            raise ModelContractError("the converted network differs from the model by more than the tolerance "
                                     f"({TOLERANCE} in probabilities, {tolerance:g} relative elsewhere)")
        logger.info("openvino runtime for %s, largest difference from TensorFlow %.2g", card.model_path.name, gap)
        return engine, model
    except ModelContractError as error:
        if required:
            raise
        logger.warning("using TensorFlow for %s: %s", card.model_path.name, error)
    except Exception as error:  # A broken cache or an OpenVINO failure must never stop the app.
        if required:
            raise ModelContractError(f"the openvino runtime could not be prepared: {error}") from None
        logger.warning("using TensorFlow for %s: openvino failed: %s", card.model_path.name, error)
    return None, model


def f32_network(card: ModelCard):
    """The model's f32 OpenVINO network from the runtime cache, converted (with TensorFlow) if not there yet."""
    return _f32_network_and_model(card)[0]


def _f32_network_and_model(card: ModelCard):
    """(the cached f32 network, the Keras model if this call had to load it to convert it, else None)."""
    import openvino

    folder = _cache_folder(card)
    model = None
    if not (folder / "network.xml").is_file():
        model = _load_keras_model(card.model_path)
        _check_keras_model(card, model)
        _convert_to_cache(model, card, folder)
    network = openvino.Core().read_model(folder / "network.xml")
    _check_network(card, network)
    return network, model


def f32_head_kernel(card: ModelCard) -> np.ndarray | None:
    """The dense head's kernel recorded with the model's f32 conversion (None for another head)."""
    return recorded_outputs(_cache_folder(card) / "reference.npz")[2]


def recorded_outputs(path: Path) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray | None]:
    """A reference file's probe tensors, the (features, logits, activations) recorded for them, and the
    dense head's kernel (None for another head)."""
    with np.load(path) as stored:
        return (stored["probes"], (stored["features"], stored["logits"], stored["activations"]),
                stored["head_kernel"] if "head_kernel" in stored else None)


def probe_outputs(engine: "_OpenVinoEngine", probes: np.ndarray) -> tuple[np.ndarray, ...]:
    """(features, logits, activations) of `probes` through `engine`, as `recorded_outputs` holds them."""
    return engine.run_with_features_and_activations(probes)


def quantized_serving(card: ModelCard) -> dict | None:
    """The card's int8 serving section when it names one made from this very model file, else None."""
    serving = card.data.get("serving")
    if not isinstance(serving, dict) or serving.get("precision") != "int8":
        return None
    if serving.get("source_model_sha256") != card.data["model_sha256"]:
        logger.warning("the card's int8 network was made from another model file; serving %s in f32",
                       card.model_path.name)
        return None
    if serving.get("test_time_augmentation") != card.data.get("test_time_augmentation"):
        logger.warning("the card's int8 network was made for other test-time augmentation; serving %s in f32",
                       card.model_path.name)
        return None
    return serving


def int8_files(card: ModelCard, serving: dict) -> dict[str, Path]:
    """The int8 network's files named by the card's serving section: network, weights, reference outputs."""
    folder = card.model_path.parent
    network = folder / Path(str(serving["network"])).name
    return {"network": network, "weights": network.with_suffix(".bin"),
            "reference": folder / Path(str(serving["reference"])).name}


class _Int8Differs(ModelContractError):
    """This CPU computes the int8 network's outputs otherwise than where it was quantized."""


def _int8_refusal_marker(serving: dict) -> Path | None:
    """The file that remembers that this CPU (its instruction-set flags, OpenVINO and oneDNN's ISA limit)
    does not reproduce this int8 network, so later loads skip the 0.5-1 s attempt; None where unknown."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    import hashlib

    import openvino

    key = "|".join((flags, openvino.__version__, os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                    str(serving.get("weights_sha256")), str(serving.get("reference_sha256"))))
    return cache_root() / f".int8-refused-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def _remember_int8_refusal(marker: Path | None) -> None:
    if marker is None:
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("this CPU does not reproduce the int8 network's recorded outputs\n", encoding="utf-8")
    except OSError:
        pass  # Only a saving of time: without the file the next load checks again.


def _int8_engine(card: ModelCard, serving: dict) -> "_OpenVinoEngine":
    """The card's int8 network, its files checked by sha256 and its outputs against the recorded ones."""
    import openvino

    from core.model.card import file_sha256

    files = int8_files(card, serving)
    for role, path in files.items():
        if not path.is_file():
            raise ModelContractError(f"{path.name}, the card's int8 {role} file, is missing")
        if file_sha256(path) != serving.get(f"{role}_sha256"):
            raise ModelContractError(f"{path.name} is not the int8 {role} file the card names (sha256 differs)")
    network = openvino.Core().read_model(files["network"], files["weights"])
    _check_network(card, network)
    probes, reference, head_kernel = recorded_outputs(files["reference"])
    # The f32 hint is for the layers NNCF left in floating point; the quantized ones run in int8.
    # In int8 a batch's inference costs about what decoding and preprocessing it does, so the batch
    # path splits the cores between the two instead of both contending for all of them: on 2 cores
    # 4.0-4.1 ms a scan against 4.4-4.6 ms (f32, whose inference is twice as long, is slower so:
    # 8.0 against 6.3 ms, and keeps the default).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    inference_threads = max(1, cores // 2)
    engine = _OpenVinoEngine(network, card.image_size, head_kernel, chunk_threads=inference_threads)
    engine.precision = "int8"
    engine.decode_workers = max(1, cores - inference_threads)
    gap = outputs_agree(reference, probe_outputs(engine, probes), card.temperature, INT8_TOLERANCE,
                        INT8_PROBABILITY_TOLERANCE)
    if gap is None:
        raise _Int8Differs("this machine's int8 outputs differ from the recorded ones by more than the "
                           f"tolerance ({INT8_PROBABILITY_TOLERANCE} in probabilities, "
                           f"{INT8_TOLERANCE:g} relative elsewhere)")
    logger.info("openvino int8 network for %s, largest difference from its recorded outputs %.2g",
                card.model_path.name, gap)
    return engine


def _check_network(card: ModelCard, network) -> None:
    names = {name for output in network.outputs for name in output.get_names()}
    if not {"features", "logits", "activations"} <= names:
        raise ModelContractError(
            f"the cached network has outputs {sorted(names)}, not features, logits and activations")
    logits_shape = network.output("logits").get_partial_shape()
    input_shape = network.input(0).get_partial_shape()
    check_model_matches_card(card, logits_shape[-1].get_length(),
                             (None, *(dimension.get_length() for dimension in list(input_shape)[1:])))


def _convert_to_cache(model, card: ModelCard, folder: Path) -> None:
    """Convert the Keras model to OpenVINO IR with TensorFlow's reference outputs on the probes."""
    import openvino
    import tensorflow as tf

    served = served_function(model, mirror_averaged(card), with_activations=True)
    size = card.image_size
    function = tf.function(served, autograph=False,
                           input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name="scan")])
    network = openvino.convert_model(function.get_concrete_function())
    probes = probe_tensors(size)
    outputs = function(probes)
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    # The cache must never be committed, wherever $BRAINSCAN_RUNTIME_CACHE points.
    (root / ".gitignore").write_text("*\n", encoding="utf-8")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        # Full precision on disk too: save_model would otherwise halve the weights to float16.
        openvino.save_model(network, staging / "network.xml", compress_to_fp16=False)
        head_kernel = dense_head_kernel(model)
        np.savez(staging / "reference.npz", probes=probes, features=np.asarray(outputs["features"]),
                 logits=np.asarray(outputs["logits"]), activations=np.asarray(outputs["activations"]),
                 **({"head_kernel": head_kernel} if head_kernel is not None else {}))
        (staging / "source.json").write_text(json.dumps({
            "model_file": card.model_path.name, "model_sha256": card.data["model_sha256"],
            "openvino": openvino.__version__}, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        try:
            staging.rename(folder)  # Atomic: a process loading at the same time sees all or nothing.
        except OSError:
            if not (folder / "network.xml").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune_cache(root, keep=folder)


def _prune_cache(root: Path, keep: Path) -> None:
    """Delete all but the most recent conversions, so test runs and retrained models cannot fill the disk.

    The newest conversion of each model name is kept whatever its age: a test run converts a dozen
    throwaway models, and without this they pushed out the app's own conversion, which the next
    `make run` then spent 7-20 s redoing.
    """
    entries = sorted((path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")),
                     key=lambda path: path.stat().st_mtime, reverse=True)
    newest_of_model: dict[str, Path] = {}
    for path in entries:
        newest_of_model.setdefault(_CACHE_ENTRY_NAME.sub("", path.name), path)
    for path in entries[_CACHE_ENTRIES_KEPT:]:
        if path != keep and newest_of_model[_CACHE_ENTRY_NAME.sub("", path.name)] != path:
            shutil.rmtree(path, ignore_errors=True)
