"""Training the classifier (the residual CNN from scratch, or EfficientNet-Lite0 from ImageNet weights),
then calibrating, evaluating and carding it.

`train` runs the whole pipeline: load and preprocess every image of the given datasets, group
near-duplicates and split by group, fit the network with augmentation and early stopping on the
validation split, fit the temperature on validation, fit the not-a-brain-MRI gate (distance and
modality head, `core.training.gate_fit`), measure on the held-out test split, and write the model,
its card and the split manifest. Files the not-brain-MRI manifest lists (head CT filed as MRI in
the collections) keep their place in the split manifest, so the splits never move, but no MRI
class learns from them, calibration and the metrics leave them out, and the gate learns them as
what they are.
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
from core.model.gate import DEFAULT_PASS_PERCENTILE, PHYSICAL_FEATURES, physical_inputs
from core.scans.intake import load_scan
from core.scans.preprocess import prepare_image
from core.scans.statistics import image_statistics
from core.training.dataset import LabelledFile, find_labelled_files, read_not_mri_manifest
from core.training.gate_fit import COLLECTION_SOURCE, DRAWING, SYNTHETIC_SOURCE, Negatives, fit_modality_head
from core.training.metrics import classification_report
from core.training.nonmri import DEVELOPMENT_SEED
from core.training.split import ManifestRow, assign_splits, group_near_duplicates, thumbnail_vectors, write_manifest

MODEL_VERSION = "1.0.0"
# The smallest input side a network is built or read at: EfficientNet-Lite0 halves it five times.
MIN_IMAGE_SIZE = 32
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
# The drawn categories of the development non-MRI set that the gate's modality head learns from
# (see negative_examples); its photographs are left out.
TRAINING_NEGATIVE_CATEGORIES = ("drawn", "medical_lookalike")


def _prepare_file(task: tuple[str, int, bool]) -> tuple[np.ndarray, str, np.ndarray | None]:
    """One file -> (model tensor, sha256, physical inputs or None), through the serving decode and preprocessing."""
    path, image_size, with_physical = task
    data = Path(path).read_bytes()
    scan = load_scan(data, Path(path).name)
    physical = physical_inputs(image_statistics(scan.image), scan.colourfulness) if with_physical else None
    return prepare_image(scan.image, image_size), hashlib.sha256(data).hexdigest(), physical


def load_prepared(files: list[LabelledFile] | list[Path], image_size: int, workers: int | None = None,
                  description: str = "preprocessing", with_physical: bool = False):
    """Preprocess files with the serving path -> (N, S, S, 1) float32 tensors and their sha256 digests.

    With `with_physical`, also the gate's physical inputs (N, P) float64 (`core.model.gate.physical_inputs`).
    """
    paths = [str(getattr(item, "path", item)) for item in files]
    tasks = [(path, image_size, with_physical) for path in paths]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(tasks) > 64:
        with Pool(workers) as pool:
            results = list(progress(pool.imap(_prepare_file, tasks, chunksize=32), total=len(tasks), description=description))
    else:
        results = [_prepare_file(task) for task in progress(tasks, total=len(tasks), description=description)]
    tensors = np.stack([tensor for tensor, _, _ in results]).astype(np.float32)
    digests = [digest for _, digest, _ in results]
    if not with_physical:
        return tensors, digests
    return tensors, digests, np.stack([physical for _, _, physical in results])


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

    # Only whole batches: with TensorFlow 2.21 on this CPU, a last, partial batch of odd size
    # (39 slices in batches of 16, say) corrupted the heap inside model.fit and aborted the process
    # (measured; even sizes and whole batches never did). Each epoch's shuffle leaves out other slices.
    whole_batches = len(train_x) >= batch_size
    train_data = (
        tf.data.Dataset.from_tensor_slices((train_x, keras.utils.to_categorical(train_y, class_count)))
        .shuffle(len(train_x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=whole_batches)
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
    steps_per_epoch = len(train_x) // batch_size if whole_batches else 1
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


def negative_examples(image_size: int, non_mri_train: Path | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images that are not brain MRI, for the gate's modality head: (tensors, physical inputs, kinds, sources).

    The drawn images of the non-MRI development set (`core.training.nonmri`; its photographs are
    left out, since the evaluation set starts from the same originals) and, when given, every image
    of `non_mri_train` (a folder of kind subfolders such as ../shared/datasets/non-mri-train). A
    file the intake refuses outright never reaches the network, so it teaches the gate nothing.
    """
    from core.errors import ScanRejected
    from core.training.gate_fit import negative_folder_files
    from core.training.nonmri import build_nonmri_set, category_of

    tensors, physical, kinds, sources = [], [], [], []

    def add(data: bytes, name: str, kind: str, source: str) -> None:
        try:
            scan = load_scan(data, name)
        except ScanRejected:
            return
        tensors.append(prepare_image(scan.image, image_size))
        physical.append(physical_inputs(image_statistics(scan.image), scan.colourfulness))
        kinds.append(kind)
        sources.append(source)

    for name, data in build_nonmri_set(DEVELOPMENT_SEED):
        if category_of(name) in TRAINING_NEGATIVE_CATEGORIES:
            add(data, name, DRAWING, f"{SYNTHETIC_SOURCE} {category_of(name)}")
    if non_mri_train is not None:
        if not Path(non_mri_train).is_dir():
            from core.errors import DatasetError

            raise DatasetError(f"{non_mri_train} is not a folder (--non-mri-train names a folder of kind subfolders)")
        files = negative_folder_files(Path(non_mri_train))
        if not files:
            from core.errors import DatasetError

            raise DatasetError(f"{non_mri_train} holds no images in kind subfolders (e.g. head_ct/)")
        for path, kind, source in progress(files, total=len(files), description="non-MRI training images"):
            add(path.read_bytes(), path.name, kind, source)
    if not tensors:
        return (np.zeros((0, image_size, image_size, 1), np.float32), np.zeros((0, len(PHYSICAL_FEATURES))),
                np.array([], str), np.array([], str))
    return np.stack(tensors).astype(np.float32), np.stack(physical), np.array(kinds), np.array(sources)


@dataclass(frozen=True)
class PreparedData:
    """Every file of a run, in manifest order: tensors (N, S, S, 1), physical inputs (N, P), class
    indices (N,), split names (N,), near-duplicate groups (N,), and the not-brain-MRI kind of each
    file ("" for a brain MRI slice)."""

    tensors: np.ndarray
    physical: np.ndarray
    label_indices: np.ndarray
    splits: np.ndarray
    groups: np.ndarray
    not_mri_kinds: np.ndarray

    def mask(self, split: str, mri: bool = True) -> np.ndarray:
        """(N,) bool: this split's brain MRI slices (or, with `mri` False, its listed not-MRI files)."""
        return (self.splits == split) & ((self.not_mri_kinds == "") == mri)


def not_mri_kinds(digests: list[str]) -> np.ndarray:
    """(N,) str: the not-brain-MRI manifest's kind of each digest, "" for files it does not list."""
    listed = read_not_mri_manifest()
    return np.array([listed[digest].kind if digest in listed else "" for digest in digests], dtype=object).astype(str)


def _not_mri_record(data: PreparedData) -> dict:
    """The card's account of the not-brain-MRI manifest: which file, and how many files it took out per split."""
    path = config.not_mri_manifest_path()
    counts = {split: int(data.mask(split, mri=False).sum()) for split in ("train", "validation", "test")}
    return {"file": path.name if path.is_file() else None,
            "sha256": file_sha256(path) if path.is_file() else None,
            "left_out_of_the_mri_classes": counts,
            "rule": "listed files keep their split; no MRI class is trained, calibrated or measured on them, and "
                    "the gate learns the training split's as what they are"}


def _calibrate_and_measure(model, data: PreparedData, out_dir: Path, name: str, mirror: bool = False,
                           non_mri_train: Path | None = None) -> dict:
    """Fit temperature (validation) and gate (train/validation, and the negatives); measure on validation and test.

    Returns the card fields that depend on the trained weights: temperature, test-time
    augmentation, the not-a-brain-MRI gate, and the metrics.
    """
    from core.model.gate import fit_distance

    masks = {split_name: data.mask(split_name) for split_name in ("train", "validation", "test")}
    outputs = {split_name: model_outputs(model, data.tensors[mask], mirror) for split_name, mask in masks.items()}
    temperature = fit_temperature(outputs["validation"][1], data.label_indices[masks["validation"]])
    gate = fit_distance(outputs["train"][0], data.label_indices[masks["train"]], outputs["validation"][0],
                        len(CLASS_NAMES))
    negative_tensors, negative_physical, kinds, sources = negative_examples(int(data.tensors.shape[1]), non_mri_train)
    listed = data.mask("train", mri=False)
    parts = [Negatives(model_outputs(model, negative_tensors)[0], negative_physical, kinds, sources),
             Negatives(model_outputs(model, data.tensors[listed])[0], data.physical[listed],
                       data.not_mri_kinds[listed], np.full(int(listed.sum()), COLLECTION_SOURCE))
             if listed.any() else Negatives(np.zeros((0, 1)), np.zeros((0, 1)), np.array([], str), np.array([], str))]
    negatives = Negatives.join(parts)
    inputs = {split_name: np.hstack([outputs[split_name][0], data.physical[mask]]) for split_name, mask in masks.items()}
    head, head_record = fit_modality_head(inputs["train"], data.groups[masks["train"]], inputs["validation"], negatives)
    if "cross_validation" in head_record:
        from core.training.gate_fit import format_cross_validation

        print(format_cross_validation(head_record["cross_validation"]), flush=True)
    gate = replace(gate, head=head)
    ood_path = out_dir / f"{name}.ood.npz"
    gate.save(ood_path)

    metrics = {}
    for split_name in ("validation", "test"):
        features, logits = outputs[split_name]
        truth = data.label_indices[masks[split_name]]
        report = classification_report(truth, softmax(logits, temperature), CLASS_NAMES)
        report["ece_uncalibrated"] = classification_report(truth, softmax(logits), CLASS_NAMES)["ece"]
        verdicts = gate.assess(features, data.physical[masks[split_name]])
        report["ood_pass_rate_gate_only"] = float(np.mean([verdict.passes for verdict in verdicts]))
        metrics[split_name] = report
    test = metrics["test"]
    print(
        f"test: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, ECE {test['ece_uncalibrated']:.4f} -> "
        f"{test['ece']:.4f} at T={temperature:.3f}, n={test['n']}; gate passes {test['ood_pass_rate_gate_only']:.4f}",
        flush=True,
    )
    head_record["physical_features"] = list(PHYSICAL_FEATURES)
    head_record["network_features"] = int(outputs["train"][0].shape[1])
    if non_mri_train is not None:
        head_record["training_data"]["non_mri_folder"] = Path(non_mri_train).name
    return {
        "temperature": temperature,
        "test_time_augmentation": MIRROR_MEAN if mirror else None,
        "ood": {
            "method": "a modality head (brain MRI against other kinds of image) and a Mahalanobis distance on the "
                      "pooled penultimate features; a scan must pass both",
            "file": ood_path.name,
            "sha256": file_sha256(ood_path),
            "threshold": gate.threshold,
            "threshold_rule": f"{DEFAULT_PASS_PERCENTILE:g}th percentile of the validation split's distances",
            "modality_head": head_record,
        },
        "metrics": metrics,
        "metrics_data": "held-out test split of the manifest (files whose split is 'test'), less the not-brain-MRI "
        "manifest's files; model outputs without the intake's model-free checks",
        "not_mri_manifest": _not_mri_record(data),
    }


def calibrate(model_path: Path, data_dirs: list[Path], command: str | None = None, mirror: bool = False,
              non_mri_train: Path | None = None, image_size: int | None = None, version: str | None = None) -> Path:
    """Re-fit temperature and gate and re-measure an already trained model from its split manifest.

    Reads the manifest named in the model's card, preprocesses the manifest's files found under
    `data_dirs`, and rewrites the card's weight-dependent fields; everything else is kept. A new
    gate or temperature changes what the model answers, so the card's version moves to the next
    minor, or to `version`. With `image_size` other than the card's, the same weights are rebuilt
    to read slices of that side (the networks are convolutional up to global pooling); the model
    file is replaced only once everything is measured, and the card's robustness figures, which
    described the other side, are dropped.
    """
    import json

    import keras

    from core.errors import DatasetError

    model_path = Path(model_path)
    card = json.loads(card_path_for(model_path).read_text(encoding="utf-8"))
    trained_size = int(card["input"]["image_size"])
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise DatasetError(f"an input side of {image_size} px is too small; read slices at {MIN_IMAGE_SIZE} px "
                           "or more")
    image_size = int(image_size or trained_size)
    architecture = card["architecture"].get("name", RESIDUAL_CNN)
    if image_size != trained_size and architecture not in ARCHITECTURE_NAMES:
        raise DatasetError(f"{model_path.name} is an {architecture}; only one trained network can be read at "
                           "another input side")
    data = calibration_data(model_path.parent / card["training"]["split_manifest"], data_dirs, image_size)
    model = keras.models.load_model(model_path, compile=False)
    resized_path = None
    if image_size != trained_size:
        settings = FitSettings(image_size, int(card["architecture"].get("width", 32)), epochs=1, batch_size=1, seed=0,
                               architecture=architecture)
        resized = build_network(settings)
        resized.set_weights(model.get_weights())
        model = resized
        # Beside the model, not over it: a run that fails while measuring must leave the model and its card matching.
        resized_path = model_path.with_name(f".{model_path.stem}.resized.keras")
        model.save(resized_path)
        card["input"] = {**card["input"], "image_size": image_size,
                         "trained_image_size": card["input"].get("trained_image_size", trained_size)}
        card.pop("robustness", None)
    try:
        card.update(_calibrate_and_measure(model, data, model_path.parent, model_path.stem, mirror, non_mri_train))
        if resized_path is not None:
            os.replace(resized_path, model_path)
    finally:
        if resized_path is not None:
            resized_path.unlink(missing_ok=True)
    card["version"] = version or _next_minor(card["version"])
    # An int8 network was quantized from the network as it was served then (mirror or not) and its figures
    # measured with the old temperature and gate: `python -m core quantize` makes a new one.
    card.pop("serving", None)
    card.pop("served_metrics", None)
    # Calibration and metrics now come from this command, not from the training run's own last step.
    card["calibration_command"] = command or "python -m core calibrate " + " ".join(f"--data {d}" for d in data_dirs)
    write_card(model_path, card)
    return model_path


def calibration_data(manifest_path: Path, data_dirs: list[Path], image_size: int) -> PreparedData:
    """Every file of a split manifest, found under `data_dirs`, prepared at `image_size` with its split and group."""
    from core.errors import DatasetError
    from core.training.split import read_manifest

    rows = {row.path: row for row in read_manifest(Path(manifest_path))}
    files = [item for data_dir in data_dirs for item in find_labelled_files(Path(data_dir)) if item.relative_path in rows]
    if len(files) != len(rows):
        raise DatasetError(f"found {len(files)} of the manifest's {len(rows)} files under {', '.join(map(str, data_dirs))}")
    tensors, digests, physical = load_prepared(files, image_size, with_physical=True)
    return PreparedData(tensors, physical, np.array([class_index(item.label) for item in files]),
                        np.array([rows[item.relative_path].split for item in files]),
                        np.array([rows[item.relative_path].group for item in files]), not_mri_kinds(digests))


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
    non_mri_train: Path | None = None,
    version: str | None = None,
    training_seed: int | None = None,
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
    `freeze_epochs` first. `non_mri_train` is a folder of real images that are not brain MRI, one
    kind per subfolder, for the gate's modality head (see `negative_examples`). `version` names the
    new model (a second network trained from ImageNet must not share the first one's version).
    `seed` chooses the split; `training_seed` (default: `seed`) the initialisation, shuffling and
    augmentation, so that a second network on the same split can be trained differently.
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
        if continued not in ARCHITECTURE_NAMES:
            raise DatasetError(f"{init_from} is an {continued}, not one trained network: train or continue its "
                               "members, then join them again (python -m core ensemble)")
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
    tensors, digests, physical = load_prepared(files, image_size, with_physical=True)
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

    data = PreparedData(tensors, physical, label_indices, splits, groups, not_mri_kinds(digests))
    is_train, is_validation = data.mask("train"), data.mask("validation")
    settings = FitSettings(image_size, width, epochs, batch_size, seed if training_seed is None else training_seed,
                           learning_rate,
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
        "version": version or (FIRST_VERSION[architecture] if previous is None else _next_minor(previous["version"])),
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
            **({"training_seed": training_seed} if training_seed is not None else {}),
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
    card.update(_calibrate_and_measure(model, data, work_dir, name, non_mri_train=non_mri_train))
    write_card(model_path, card)
    for produced in (model_path, card_path_for(model_path), work_dir / card["ood"]["file"]):
        shutil.copyfile(produced, out_dir / produced.name)
    return out_dir / model_path.name
