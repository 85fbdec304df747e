"""Training the classifier (the residual CNN from scratch, or EfficientNet-Lite0 from ImageNet weights),
then calibrating, evaluating and carding it.

`train` runs the whole pipeline: load and preprocess every image of the given datasets, group
near-duplicates and split by group, fit the network with augmentation and early stopping on the
validation split, fit the temperature on validation, fit the out-of-distribution gate (distance
and outlier head), measure on the held-out test split, and write the model, its card and the
split manifest.
"""

from __future__ import annotations

import datetime as _datetime
import hashlib
import os
import platform
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from core import config
from core.classes import CLASS_NAMES, DISPLAY_NAMES, class_index
from core.model.calibration import fit_temperature, softmax
from core.model.card import card_path_for, file_sha256, load_card, write_card
from core.model.inference import MIRROR_MEAN
from core.progress import progress
from core.scans.preprocess import prepare_bytes
from core.training.dataset import LabelledFile, find_labelled_files
from core.training.metrics import classification_report
from core.model.gate import DEFAULT_PASS_PERCENTILE
from core.training.nonmri import DEVELOPMENT_SEED
from core.training.outlier import DEFAULT_PASS_RATE, fit_outlier_head, pseudo_head_cts
from core.training.split import ManifestRow, assign_splits, group_near_duplicates, thumbnail_vectors, write_manifest

MODEL_VERSION = "1.0.0"
RESIDUAL_CNN = "residual-cnn"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
# The first version a run from scratch (or from ImageNet weights) gets, per architecture: a new
# architecture is a new major version of the default model.
FIRST_VERSION = {RESIDUAL_CNN: MODEL_VERSION, EFFICIENTNET_LITE0: "2.0.0"}
ARCHITECTURE_NAMES = {
    RESIDUAL_CNN: "residual CNN from scratch",
    EFFICIENTNET_LITE0: "EfficientNet-Lite0, ImageNet-pretrained (core.training.pretrained), fine-tuned",
}
# Fine-tuning moves the pretrained network's activations; batch norm's ImageNet momentum (0.99)
# would trail them for hundreds of steps, so fine-tuning uses the residual CNN's 0.9.
FINE_TUNE_BATCH_NORM_MOMENTUM = 0.9
# The non-MRI categories the gate's outlier head learns from (see negative_tensors).
TRAINING_NEGATIVE_CATEGORIES = ("drawn", "medical_lookalike")


def _prepare_file(task: tuple[str, int]) -> tuple[np.ndarray, str]:
    path, image_size = task
    data = Path(path).read_bytes()
    return prepare_bytes(data, Path(path).name, image_size), hashlib.sha256(data).hexdigest()


def load_prepared(files: list[LabelledFile] | list[Path], image_size: int, workers: int | None = None,
                  description: str = "preprocessing") -> tuple[np.ndarray, list[str]]:
    """Preprocess files with the serving path -> (N, S, S, 1) float32 tensors and their sha256 digests."""
    paths = [str(getattr(item, "path", item)) for item in files]
    tasks = [(path, image_size) for path in paths]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(tasks) > 64:
        with Pool(workers) as pool:
            results = list(progress(pool.imap(_prepare_file, tasks, chunksize=32), total=len(tasks), description=description))
    else:
        results = [_prepare_file(task) for task in progress(tasks, total=len(tasks), description=description)]
    tensors = np.stack([tensor for tensor, _ in results]).astype(np.float32)
    return tensors, [digest for _, digest in results]


def _augmenter(seed: int):
    import keras
    from keras import layers

    # Slices arrive mirrored, slightly rotated, zoomed and with varying contrast from different
    # scanners and exports; vertical flips are left out because no export shows the head upside down.
    # Augmentation stays in float32 under a mixed-precision policy: it works on the images, not the network.
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed, dtype="float32"),
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1, dtype="float32"),
            layers.RandomZoom((-0.12, 0.12), fill_mode="constant", seed=seed + 2, dtype="float32"),
            layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 3, dtype="float32"),
            layers.RandomContrast(0.25, seed=seed + 4, dtype="float32"),
            layers.RandomBrightness(0.12, value_range=(0.0, 1.0), seed=seed + 5, dtype="float32"),
        ],
        name="augmentation",
    )


@dataclass(frozen=True)
class FitSettings:
    """How one training run fits the network (everything but the data and the folder for its logs)."""

    image_size: int
    width: int
    epochs: int
    batch_size: int
    seed: int
    learning_rate: float = 1e-3
    init_from: Path | None = None
    precision: str = "float32"
    mixup_alpha: float = 0.0
    scanner_augment: bool = False
    architecture: str = RESIDUAL_CNN
    pretrained: Path | None = None  # an ImageNet backbone written by `python -m core import-weights`
    freeze_epochs: int = 0  # epochs that train only the new head before every layer is fine-tuned


def build_network(settings: FitSettings):
    """The untrained network of `settings.architecture` at `settings.image_size`, ending in logits."""
    if settings.architecture == EFFICIENTNET_LITE0:
        from core.model.efficientnet import build_efficientnet_lite0

        return build_efficientnet_lite0(settings.image_size, num_classes=len(CLASS_NAMES),
                                        batch_norm_momentum=FINE_TUNE_BATCH_NORM_MOMENTUM)
    from core.model.network import build_model

    return build_model(settings.image_size, width=settings.width)


def _fit(train_x, train_y, validation_x, validation_y, settings: FitSettings, work_dir: Path):
    import keras

    keras.utils.set_random_seed(settings.seed)
    keras.mixed_precision.set_global_policy(settings.precision)
    try:
        trained, epochs_run = _fit_with_policy(train_x, train_y, validation_x, validation_y, settings, work_dir)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return _as_float32(trained, settings), epochs_run


def mixup(images, labels, alpha: float, seed: int):
    """Blend each image and its one-hot label with another of the batch (mixup, Zhang et al. 2018).

    The share of the image's own content is max(l, 1 - l) with l ~ Beta(alpha, alpha), so every
    blend stays mostly the slice it started as and keeps that slice's class as its largest label
    (Keras weights classes by the largest label). Works on tensors; used inside tf.data.
    """
    import tensorflow as tf

    labels = tf.cast(labels, images.dtype)
    count = tf.shape(images)[0]
    first = tf.random.gamma([count], alpha, seed=seed)
    second = tf.random.gamma([count], alpha, seed=seed + 1)
    share = first / (first + second + 1e-12)
    share = tf.maximum(share, 1.0 - share)
    partner = tf.random.shuffle(tf.range(count), seed=seed + 2)
    image_share = tf.reshape(share, [-1, 1, 1, 1])
    label_share = tf.reshape(share, [-1, 1])
    images = image_share * images + (1.0 - image_share) * tf.gather(images, partner)
    labels = label_share * labels + (1.0 - label_share) * tf.gather(labels, partner)
    return images, labels


def scanner_variation(images, seed: int):
    """Vary a batch of [0, 1] slices the way other scanners and exports differ: gamma, resolution, noise.

    Per slice, a gamma from 0.6 to 1.6 (log-uniform): the model input is the image divided by its
    99.5th percentile, and (x / p) ** k is what dividing x ** k by its own percentile gives, so this
    is the same as a gamma applied to the exported image. Per batch, with probability one half,
    the slices are shrunk to 50-100% of their side and enlarged back (a lower-resolution
    acquisition or export). Per slice, Gaussian noise with a standard deviation of up to 0.03.
    Works on tensors; used inside tf.data.
    """
    import tensorflow as tf

    count = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    log_gamma = tf.random.uniform([count, 1, 1, 1], np.log(0.6), np.log(1.6), seed=seed)
    images = tf.pow(tf.maximum(images, 1e-6), tf.exp(log_gamma))
    factor = tf.random.uniform([], 0.5, 1.0, seed=seed + 1)
    smaller = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
    shrunk = tf.image.resize(tf.image.resize(images, smaller, method="area"), size, method="bilinear")
    images = tf.cond(tf.random.uniform([], seed=seed + 2) < 0.5, lambda: shrunk, lambda: images)
    noise_level = tf.random.uniform([count, 1, 1, 1], 0.0, 0.03, seed=seed + 3)
    images = images + noise_level * tf.random.normal(tf.shape(images), seed=seed + 4)
    return tf.clip_by_value(images, 0.0, 1.0)


def _as_float32(model, settings: FitSettings):
    """The same weights in a float32 model: what is saved and served, whatever the training precision."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    served = build_network(settings)
    served.set_weights(model.get_weights())
    return served


def _fit_head_only(model, train_data, validation_data, settings: FitSettings, class_weight: dict) -> None:
    """Train only the new classification head for `settings.freeze_epochs`, the pretrained layers frozen.

    A randomly initialised head sends large, random gradients into the pretrained layers on the
    first steps; training it alone first (batch norm frozen too, in inference mode) means the
    fine-tuning of every layer that follows starts from a sensible classifier.
    """
    import keras

    from core.model.network import LOGITS_LAYER

    for layer in model.layers:
        layer.trainable = layer.name == LOGITS_LAYER
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.05),
                  metrics=["accuracy"])
    model.fit(train_data, validation_data=validation_data, epochs=settings.freeze_epochs, class_weight=class_weight,
              verbose=2 if not sys.stdout.isatty() else 1)
    for layer in model.layers:
        layer.trainable = True


def _fit_with_policy(train_x, train_y, validation_x, validation_y, settings: FitSettings, work_dir: Path):
    import keras
    import tensorflow as tf

    image_size, epochs, batch_size, seed = settings.image_size, settings.epochs, settings.batch_size, settings.seed
    learning_rate, init_from = settings.learning_rate, settings.init_from
    class_count = len(CLASS_NAMES)
    counts = np.bincount(train_y, minlength=class_count)
    class_weight = {index: float(len(train_y) / (class_count * counts[index])) for index in range(class_count)}
    augmenter = _augmenter(seed)

    def augment(images, labels):
        images = tf.clip_by_value(augmenter(images, training=True), 0.0, 1.0)
        if settings.scanner_augment:
            images = scanner_variation(images, seed + 20)
        if settings.mixup_alpha > 0:
            images, labels = mixup(images, labels, settings.mixup_alpha, seed + 10)
        return images, labels

    train_data = (
        tf.data.Dataset.from_tensor_slices((train_x, keras.utils.to_categorical(train_y, class_count)))
        .shuffle(len(train_x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
    validation_data = tf.data.Dataset.from_tensor_slices(
        (validation_x, keras.utils.to_categorical(validation_y, class_count))
    ).batch(128)
    model = build_network(settings)
    if init_from is None and settings.pretrained is not None:
        from core.training.pretrained import copy_backbone_weights

        copied = copy_backbone_weights(model, settings.pretrained)
        print(f"initialised {copied} layers from the ImageNet backbone {settings.pretrained}", flush=True)
        if settings.freeze_epochs > 0:
            _fit_head_only(model, train_data, validation_data, settings, class_weight)
    if init_from is not None:
        # Another cosine cycle from an earlier run's weights (same split, checked by the caller).
        # The network is fully convolutional up to global pooling, so the weights carry over to
        # another input size; copying them also puts them under this run's precision policy.
        model.set_weights(keras.models.load_model(init_from, compile=False).get_weights())
    steps_per_epoch = int(np.ceil(len(train_x) / batch_size))
    warmup_epochs = 2 if init_from is None else 1
    # Warm-up, then cosine decay to zero: the last epochs run at a small learning rate, where
    # batch-norm statistics and weights settle and validation stops swinging.
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate / 10, decay_steps=max(1, epochs - warmup_epochs) * steps_per_epoch, warmup_target=learning_rate,
        warmup_steps=warmup_epochs * steps_per_epoch,
    )
    # The weights evaluated, checkpointed and kept are an exponential moving average of the
    # trained ones (horizon about five epochs): from scratch, single-epoch weights made
    # validation accuracy swing by several points between neighbouring epochs.
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=3e-4, use_ema=True,
                                         ema_momentum=1.0 - 1.0 / (5 * steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.05),
        metrics=["accuracy"],
    )
    best_path = work_dir / "best.keras"
    # Early stopping only ends a run that has stalled for a third of the schedule; the weights kept
    # are the averaged ones of the epoch with the lowest validation loss (SwapEMAWeights must come
    # before the checkpoint so that the checkpoint holds the averaged weights).
    callbacks = [
        keras.callbacks.SwapEMAWeights(swap_on_epoch=True),
        _batch_norm_refresh(train_x, batch_size, seed),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=max(10, epochs // 3)),
        keras.callbacks.CSVLogger(str(work_dir / "history.csv")),
    ]
    history = model.fit(
        train_data, validation_data=validation_data, epochs=epochs, class_weight=class_weight,
        callbacks=callbacks, verbose=2 if not sys.stdout.isatty() else 1,
    )
    return keras.models.load_model(best_path, compile=False), len(history.history["loss"])


def _batch_norm_refresh(images: np.ndarray, batch_size: int, seed: int):
    """A callback that re-estimates batch-norm statistics for the averaged weights (see below)."""
    import keras

    class BatchNormRefresh(keras.callbacks.Callback):
        """Re-estimate batch-norm statistics for the averaged weights before each evaluation.

        The optimizer averages only trainable weights; the moving mean and variance still describe
        the last trained weights, which drift away from their average while the learning rate is
        high (validation accuracy fell to 0.65 in a trial). Running a few clean training batches
        through the averaged weights in training mode brings the statistics in line. Training is
        unaffected: in training mode batch norm uses each batch's own statistics.
        """

        def __init__(self, images: np.ndarray, batch_size: int, seed: int, batches: int = 30):
            super().__init__()
            self._images, self._batch_size, self._batches = images, batch_size, batches
            self._rng = np.random.default_rng(seed)

        def on_test_begin(self, logs=None):
            for _ in range(self._batches):
                chosen = self._rng.choice(len(self._images), size=min(self._batch_size, len(self._images)), replace=False)
                self.model(self._images[np.sort(chosen)], training=True)

    return BatchNormRefresh(images, batch_size, seed)


def feature_and_logit_model(model):
    """A Keras model sharing `model`'s weights that returns (pooled features, logits)."""
    import keras

    from core.model.network import FEATURES_LAYER

    return keras.Model(model.inputs, [model.get_layer(FEATURES_LAYER).output, model.outputs[0]])


def model_outputs(model, tensors: np.ndarray, mirror: bool = False, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), logits (N, C)) as served; with `mirror`, logits averaged with the mirror image's.

    Mirror averaging makes the answer independent of the left-right display convention and was a
    little more accurate here (test accuracy 0.918 -> 0.924), but doubles inference time, which
    took single-scan and batch speed under the product's floors; it is therefore a choice recorded
    in the card, off by default. Features, used by the gate, always come from the slice as given.
    """
    extractor = feature_and_logit_model(model)
    features, logits = extractor.predict(tensors, batch_size=batch_size, verbose=0)
    logits = np.asarray(logits)
    if mirror:
        _, mirrored = extractor.predict(np.ascontiguousarray(tensors[:, :, ::-1]), batch_size=batch_size, verbose=0)
        logits = (logits + np.asarray(mirrored)) / 2.0
    return np.asarray(features), logits


def negative_tensors(image_size: int) -> np.ndarray:
    """The drawn images of the non-MRI development set (`core.training.nonmri`) as model inputs (N, S, S, 1).

    Its photographs are left out: the evaluation set starts from the same originals, so the gate
    would otherwise be measured on pictures it was fitted on. Images the intake refuses outright
    never reach the network, so they teach the gate nothing.
    """
    from core.errors import ScanRejected
    from core.training.nonmri import build_nonmri_set, category_of

    tensors = []
    for name, data in build_nonmri_set(DEVELOPMENT_SEED):
        if category_of(name) not in TRAINING_NEGATIVE_CATEGORIES:
            continue
        try:
            tensors.append(prepare_bytes(data, name, image_size))
        except ScanRejected:
            continue
    return np.stack(tensors).astype(np.float32) if tensors else np.zeros((0, image_size, image_size, 1), np.float32)


def _calibrate_and_measure(model, tensors, label_indices, splits, out_dir: Path, name: str,
                           mirror: bool = False) -> dict:
    """Fit temperature (validation) and gate (train/validation); measure on validation and test.

    Returns the card fields that depend on the trained weights: temperature, test-time
    augmentation, the out-of-distribution gate, and the metrics.
    """
    from core.model.gate import fit_gate

    masks = {split_name: splits == split_name for split_name in ("train", "validation", "test")}
    outputs = {split_name: model_outputs(model, tensors[mask], mirror) for split_name, mask in masks.items()}
    temperature = fit_temperature(outputs["validation"][1], label_indices[masks["validation"]])
    gate = fit_gate(outputs["train"][0], label_indices[masks["train"]], outputs["validation"][0], len(CLASS_NAMES))
    negatives = negative_tensors(int(tensors.shape[1]))
    pseudo_cts = pseudo_head_cts(tensors[masks["train"]])
    examples = [batch for batch in (negatives, pseudo_cts) if len(batch)]
    outlier_threshold = None
    if examples:
        negative_features = np.vstack([model_outputs(model, batch)[0] for batch in examples])
        weights, bias, outlier_threshold = fit_outlier_head(outputs["train"][0], negative_features,
                                                            outputs["validation"][0])
        gate = replace(gate, outlier_weights=weights, outlier_bias=bias, outlier_threshold=outlier_threshold)
    ood_path = out_dir / f"{name}.ood.npz"
    gate.save(ood_path)

    metrics = {}
    for split_name in ("validation", "test"):
        features, logits = outputs[split_name]
        truth = label_indices[masks[split_name]]
        report = classification_report(truth, softmax(logits, temperature), CLASS_NAMES)
        report["ece_uncalibrated"] = classification_report(truth, softmax(logits), CLASS_NAMES)["ece"]
        report["ood_pass_rate_gate_only"] = float(gate.is_in_distribution(features).mean())
        metrics[split_name] = report
    test = metrics["test"]
    print(
        f"test: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, ECE {test['ece_uncalibrated']:.4f} -> "
        f"{test['ece']:.4f} at T={temperature:.3f}, n={test['n']}",
        flush=True,
    )
    return {
        "temperature": temperature,
        "test_time_augmentation": MIRROR_MEAN if mirror else None,
        "ood": {
            "method": "class-conditional Mahalanobis distance on pooled penultimate features",
            "file": ood_path.name,
            "sha256": file_sha256(ood_path),
            "threshold": gate.threshold,
            "threshold_rule": f"{DEFAULT_PASS_PERCENTILE:g}th percentile of the validation split's distances",
            "outlier_head": None if outlier_threshold is None else {
                "method": "logistic 'not a brain MRI' score on the pooled features (outlier exposure)",
                "negatives": f"the drawn images of core.training.nonmri.build_nonmri_set(seed={DEVELOPMENT_SEED}) "
                f"({len(negatives)}; not its photographs) and {len(pseudo_cts)} pseudo head CTs "
                "(core.training.outlier.pseudo_head_ct of every 8th training slice)",
                "threshold": outlier_threshold,
                "threshold_rule": f"{DEFAULT_PASS_RATE:.1%} of the validation split's slices score under it",
            },
        },
        "metrics": metrics,
        "metrics_data": "held-out test split of the manifest (files whose split is 'test'), "
        "model outputs without the intake's cheap not-an-MRI checks",
    }


def calibrate(model_path: Path, data_dirs: list[Path], command: str | None = None, mirror: bool = False) -> Path:
    """Re-fit temperature and gate and re-measure an already trained model from its split manifest.

    Reads the manifest named in the model's card, preprocesses the manifest's files found under
    `data_dirs`, and rewrites the card's weight-dependent fields; everything else is kept.
    """
    import json

    import keras

    from core.errors import DatasetError
    from core.training.split import read_manifest

    model_path = Path(model_path)
    card = json.loads(card_path_for(model_path).read_text(encoding="utf-8"))
    rows = {row.path: row for row in read_manifest(model_path.parent / card["training"]["split_manifest"])}
    files = [item for data_dir in data_dirs for item in find_labelled_files(Path(data_dir)) if item.relative_path in rows]
    if len(files) != len(rows):
        raise DatasetError(f"found {len(files)} of the manifest's {len(rows)} files under {', '.join(map(str, data_dirs))}")
    tensors, _ = load_prepared(files, int(card["input"]["image_size"]))
    label_indices = np.array([class_index(item.label) for item in files])
    splits = np.array([rows[item.relative_path].split for item in files])
    model = keras.models.load_model(model_path, compile=False)
    card.update(_calibrate_and_measure(model, tensors, label_indices, splits, model_path.parent, model_path.stem, mirror))
    # Calibration and metrics now come from this command, not from the training run's own last step.
    card["calibration_command"] = command or "python -m core calibrate " + " ".join(f"--data {d}" for d in data_dirs)
    write_card(model_path, card)
    return model_path


def _check_training_packages() -> None:
    """Refuse before any work when a package the last steps need is missing (requirements-train.txt)."""
    import importlib.util

    from core.errors import DatasetError

    missing = [package for package in ("sklearn", "skimage") if importlib.util.find_spec(package) is None]
    if missing:
        raise DatasetError(f"training needs {', '.join(missing)}: pip install -r requirements-train.txt")


def _next_minor(version: str) -> str:
    """'1.0.0' -> '1.1.0': a continued run keeps the architecture and input contract, new weights."""
    parts = str(version).split(".")
    if len(parts) == 3 and all(part.isdigit() for part in parts):
        return f"{parts[0]}.{int(parts[1]) + 1}.0"
    return f"{version}+continued"


def train(
    data_dirs: list[Path],
    out_dir: Path,
    name: str = "brainscan-default",
    image_size: int | None = None,
    epochs: int = 28,
    batch_size: int = 64,
    width: int = 32,
    seed: int = 1234,
    command: str | None = None,
    learning_rate: float = 1e-3,
    init_from: Path | None = None,
    precision: str = "float32",
    mixup_alpha: float = 0.0,
    scanner_augment: bool = False,
    architecture: str = RESIDUAL_CNN,
    pretrained: Path | None = None,
    freeze_epochs: int = 0,
) -> Path:
    """Train, calibrate, evaluate and card a model; return the path of the written `.keras` file.

    With `init_from` (a carded model trained by this function on the same data and seed), training
    continues from its weights for another cosine cycle; its width is used, its input size unless
    `image_size` is given, and its split manifest must equal the one derived here, so no held-out
    file was ever trained on. `precision` "mixed_bfloat16" computes in bfloat16 with float32
    weights (on this 2-core CPU with AVX-512 BF16, half the time per step at 160 px, no gain at
    128 px); the saved model is float32 either way. `mixup_alpha` > 0 trains on blends of two
    slices and their labels (see `mixup`), a regulariser against memorising the training slices.
    `scanner_augment` adds gamma, resolution and noise changes (see `scanner_variation`).
    `architecture` "efficientnet-lite0" fine-tunes EfficientNet-Lite0 from the ImageNet backbone
    `pretrained` (written by `python -m core import-weights`), training only the new head for
    `freeze_epochs` first.
    """
    from core.errors import DatasetError

    _check_training_packages()
    if architecture not in ARCHITECTURE_NAMES:
        raise DatasetError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURE_NAMES)}")
    if pretrained is not None and architecture != EFFICIENTNET_LITE0:
        raise DatasetError(f"--pretrained is an EfficientNet-Lite0 backbone; it does not fit the {architecture}")
    # The card of the model to continue from, after load_card's sha256 and class checks.
    previous = load_card(Path(init_from)).data if init_from is not None else None
    if previous is not None:
        width = previous["architecture"].get("width", width)
        continued = previous["architecture"].get("name", RESIDUAL_CNN)
        if architecture not in (RESIDUAL_CNN, continued) or pretrained is not None:
            raise DatasetError(f"{init_from} is a {continued}; a continued run keeps its network and weights "
                               "(leave out --architecture and --pretrained)")
        architecture = continued
        image_size = image_size or previous["input"]["image_size"]
    pretrained_record = None
    if architecture == EFFICIENTNET_LITE0 and previous is None:
        from core.training.pretrained import read_import_record

        if pretrained is None:
            raise DatasetError("--architecture efficientnet-lite0 needs --pretrained BACKBONE "
                               "(python -m core import-weights writes one)")
        pretrained_record = read_import_record(Path(pretrained))
    image_size = image_size or config.IMAGE_SIZE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(config.ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    files: list[LabelledFile] = []
    for data_dir in data_dirs:
        files.extend(find_labelled_files(Path(data_dir)))
    tensors, digests = load_prepared(files, image_size)
    labels = [item.label for item in files]
    label_indices = np.array([class_index(label) for label in labels])

    split_tensors = tensors if image_size == config.SPLIT_IMAGE_SIZE else load_prepared(
        files, config.SPLIT_IMAGE_SIZE, description="preprocessing for the split")[0]
    groups = group_near_duplicates(thumbnail_vectors(split_tensors), digests)
    del split_tensors
    splits = np.array(assign_splits(groups, labels, seed=seed))
    relative = [item.relative_path for item in files]
    manifest_rows = [
        ManifestRow(path, digest, label, int(group), split)
        for path, digest, label, group, split in zip(relative, digests, labels, groups, splits)
    ]
    # Written beside the run's logs first: a refused continuation must not overwrite the manifest
    # of the model it names (often in the same folder).
    manifest_sha256 = write_manifest(manifest_rows, work_dir / f"{name}.split.csv")
    split_counts = {
        split: dict(Counter(label for label, chosen in zip(labels, splits) if chosen == split))
        for split in ("train", "validation", "test")
    }
    print(f"groups: {groups.max() + 1}; split counts: {split_counts}", flush=True)
    if previous is not None and previous["training"]["split_manifest_sha256"] != manifest_sha256:
        raise DatasetError(f"{init_from} was trained on a different split (its manifest digest differs from this "
                           "data's); continue only on the same data folders and seed")
    manifest_path = out_dir / f"{name}.split.csv"
    shutil.copyfile(work_dir / f"{name}.split.csv", manifest_path)

    is_train, is_validation = splits == "train", splits == "validation"
    settings = FitSettings(image_size, width, epochs, batch_size, seed, learning_rate,
                           Path(init_from) if init_from is not None else None, precision, mixup_alpha,
                           scanner_augment, architecture, Path(pretrained) if pretrained else None, freeze_epochs)
    model, epochs_run = _fit(tensors[is_train], label_indices[is_train], tensors[is_validation],
                             label_indices[is_validation], settings, work_dir)
    # Everything is written beside the run's logs first and moved into `out_dir` only once the card
    # is complete: a run that fails at its last step must not leave a model without its card there.
    model_path = work_dir / f"{name}.keras"
    model.save(model_path)

    card = {
        "name": name,
        "version": FIRST_VERSION[architecture] if previous is None else _next_minor(previous["version"]),
        "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASS_NAMES),
        "display_names": {key: DISPLAY_NAMES[key] for key in CLASS_NAMES},
        "input": {
            "image_size": image_size,
            "color_mode": config.COLOR_MODE,
            "value_range": list(config.VALUE_RANGE),
            "preprocessing": "core.scans.preprocess.prepare_image: decode to greyscale, crop to the head, "
            "resize to image_size x image_size, scale the 99.5th intensity percentile to 1.0",
        },
        "output": "logits; probabilities = softmax(logits / temperature), logits averaged with the mirror "
        "image's when test_time_augmentation says so",
        "architecture": {
            "name": architecture, "type": ARCHITECTURE_NAMES[architecture], "parameters": int(model.count_params()),
            **({"width": width} if architecture == RESIDUAL_CNN else {}),
            **({"pretrained": pretrained_record} if pretrained_record else {}),
            **({"pretrained": previous["architecture"]["pretrained"]}
               if previous is not None and "pretrained" in previous["architecture"] else {}),
        },
        "training": {
            "data": [
                {"folder": Path(data_dir).name, "images": sum(1 for item in files if item.source == Path(data_dir).name)}
                for data_dir in data_dirs
            ],
            "split_manifest": manifest_path.name,
            "split_manifest_sha256": manifest_sha256,
            "split_rule": "groups of near-duplicates (16x16 thumbnail correlation > 0.95 or equal sha256) "
            "never straddle splits; stratified by group majority label",
            "split_counts": split_counts,
            "near_duplicate_groups": int(groups.max() + 1),
            "seed": seed,
            "epochs_max": epochs,
            "epochs_run": epochs_run,
            "batch_size": batch_size,
            "peak_learning_rate": learning_rate,
            "precision": precision,
            "mixup_alpha": mixup_alpha,
            "scanner_augment": scanner_augment,
            "freeze_epochs": freeze_epochs,
            "weight_averaging": "exponential moving average of the weights, horizon about 5 epochs",
            "command": command or "python -m core train " + " ".join(f"--data {d}" for d in data_dirs) + f" --out {out_dir}",
            "duration_seconds": round(time.time() - started),
            "continued_from": None if previous is None else {
                "sha256": previous["model_sha256"],
                "command": previous["training"]["command"],
                "epochs_run": previous["training"]["epochs_run"],
                "duration_seconds": previous["training"]["duration_seconds"],
                "continued_from": previous["training"].get("continued_from"),
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        },
        "intended_use": "A review aid: shows a trained classifier's opinion on single 2-D brain MRI slices "
        "so a qualified reviewer can confirm or override it. Not a diagnostic device.",
        "limitations": [
            "Trained on two public Kaggle collections of JPEG slices (T1, T1 contrast, T2, FLAIR; axial, "
            "coronal and sagittal); accuracy on other scanners, sequences and sites is unknown until measured.",
            "Four classes only: any other finding (haemorrhage, stroke, metastasis, ...) is forced into one of them.",
            "Labels in the source data are not perfectly clean; some near-identical slices carry different labels.",
            "Works on one slice at a time, with no patient context or volume information.",
        ],
    }
    card.update(_calibrate_and_measure(model, tensors, label_indices, splits, work_dir, name))
    write_card(model_path, card)
    for produced in (model_path, card_path_for(model_path), work_dir / card["ood"]["file"]):
        shutil.copyfile(produced, out_dir / produced.name)
    return out_dir / model_path.name
