"""An ensemble of carded models as one Keras network: the mean of the members' logits, one card.

`build_ensemble` loads two or more models that were trained on the same split manifest (so no
member ever learnt from a slice another one is measured on) and joins them into a single network
with the serving contract of any other model here:

    scan (S, S, 1) -> per member: resized to its own input side (bilinear) -> its last convolutional
    activations -> nearest-neighbour upsampling to a common grid (G = the least common multiple of
    the members' grids) -> concatenated ("last_conv") -> global average pooling ("features") ->
    one dense layer ("logits")

The dense layer holds every member's own dense weights, each divided by the number of members,
so its logits are exactly the mean of the members' logits: nearest-neighbour upsampling by a
whole factor leaves a map's average unchanged. Because the head is still "last convolution ->
average pooling -> dense", everything downstream works unchanged: OpenVINO serves it as one
network, the heat map is the class activation map of the ensemble's own logit (the members'
maps, each weighted by its share of that logit), and the not-a-brain-MRI gate is fitted on the
concatenated pooled features. S is the largest member's side, so no member sees a slice at less
than its own resolution than it would alone.

Temperature, gate and metrics are then fitted and measured exactly as for a trained model
(`core.training.train.calibrate`'s steps), on the manifest's validation and test splits.
"""

from __future__ import annotations

import datetime as _datetime
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from core.classes import CLASS_NAMES
from core.errors import DatasetError
from core.model.card import card_path_for, load_card, write_card

ENSEMBLE = "ensemble"
ENSEMBLE_TYPE = "mean of the members' logits (one network; each member sees the slice at its own input side)"


def _member_head(model) -> tuple[np.ndarray, np.ndarray]:
    """The member's dense head (kernel (K, C), bias (C,)); refuse a member whose head is not pooling -> dense."""
    from core.model.inference import dense_head_kernel

    kernel = dense_head_kernel(model)
    if kernel is None:
        raise DatasetError(f"{model.name}: only networks that end in global average pooling and one dense layer "
                           "can be joined (the ensemble's heat map needs that head)")
    dense = model.outputs[0]._keras_history.operation
    return kernel, np.asarray(dense.bias.numpy(), dtype=np.float32)


def ensemble_network(models: list, image_size: int):
    """One Keras network whose logits are the mean of `models`' logits, on (image_size, image_size, 1) input."""
    import keras
    from keras import layers

    from core.model.network import FEATURES_LAYER, LAST_CONV_LAYER, LOGITS_LAYER

    grids = [int(model.get_layer(LAST_CONV_LAYER).output.shape[1]) for model in models]
    grid = math.lcm(*grids)
    scan = keras.Input((image_size, image_size, 1), name="scan")
    maps = []
    for index, (model, side) in enumerate(zip(models, grids), start=1):
        member_size = int(model.inputs[0].shape[1])
        seen = scan if member_size == image_size else layers.Resizing(
            member_size, member_size, interpolation="bilinear", name=f"member_{index}_input")(scan)
        body = keras.Model(model.inputs[0], model.get_layer(LAST_CONV_LAYER).output, name=f"member_{index}")
        # Always inference: a nested model called without it would run its batch norm and dropout as in training.
        activations = body(seen, training=False)
        if side != grid:
            activations = layers.UpSampling2D(grid // side, interpolation="nearest", name=f"member_{index}_grid")(activations)
        maps.append(activations)
    joined = layers.Concatenate(name=LAST_CONV_LAYER)(maps) if len(maps) > 1 else maps[0]
    pooled = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(joined)
    heads = [_member_head(model) for model in models]
    logits = layers.Dense(len(CLASS_NAMES), name=LOGITS_LAYER)(pooled)
    network = keras.Model(scan, logits, name="ensemble")
    kernel = np.concatenate([member_kernel for member_kernel, _ in heads]) / len(models)
    bias = np.mean([member_bias for _, member_bias in heads], axis=0)
    network.get_layer(LOGITS_LAYER).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return network


def _member_record(card) -> dict:
    data = card.data
    test = (data.get("metrics") or {}).get("test") or {}
    validation = (data.get("metrics") or {}).get("validation") or {}
    architecture = data.get("architecture") or {}
    return {
        "name": data.get("name"), "version": data.get("version"), "file": card.model_path.name,
        "sha256": data.get("model_sha256"), "architecture": architecture.get("name") or architecture.get("type"),
        "type": architecture.get("type"), "parameters": architecture.get("parameters"),
        "image_size": card.image_size, "created": data.get("created"),
        "training_command": (data.get("training") or {}).get("command"),
        "training": data.get("training"),
        "alone": {split: {key: figures.get(key) for key in ("accuracy", "macro_f1", "ece", "n")}
                  for split, figures in (("validation", validation), ("test", test)) if figures},
    }


def build_ensemble(member_paths: list[Path], data_dirs: list[Path], out_dir: Path, name: str = "brainscan-default",
                   version: str = "3.0.0", mirror: bool = False, non_mri_train: Path | None = None,
                   command: str | None = None) -> Path:
    """Join carded models into one ensemble model, fit its temperature and gate, measure it; write model and card.

    Refuses members with different classes or split manifests. `mirror` asks the card for
    test-time mirror averaging (the mean of the slice's and its mirror's logits).
    """
    from core.model.inference import _load_keras_model
    from core.training.train import calibration_data

    cards = _member_cards(member_paths, "an ensemble")
    started = time.time()
    models = [_load_keras_model(card.model_path) for card in cards]
    image_size = max(card.image_size for card in cards)
    network = ensemble_network(models, image_size)

    out_dir = Path(out_dir)
    first = cards[0]
    manifest_source = first.model_path.parent / first.data["training"]["split_manifest"]
    data = calibration_data(manifest_source, data_dirs, image_size)
    network, model_path = _staged(network, out_dir, name, manifest_source)
    training = dict(first.data["training"])
    for key in ("command", "duration_seconds", "continued_from", "epochs_max", "epochs_run", "batch_size",
                "peak_learning_rate", "precision", "mixup_alpha", "scanner_augment", "freeze_epochs",
                "weight_averaging", "machine"):
        training.pop(key, None)
    training.update({
        "split_manifest": f"{name}.split.csv",
        "members": "each member's own training is in architecture.members",
        "command": command or "python -m core ensemble " + " ".join(f"--member {path}" for path in member_paths),
        "duration_seconds": None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    })
    card = {
        "name": name,
        "version": version,
        "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASS_NAMES),
        "display_names": dict(first.data.get("display_names") or {}),
        "input": dict(first.data["input"], image_size=image_size),
        "output": "logits (the mean of the members' logits); probabilities = softmax(logits / temperature), logits "
                  "averaged with the mirror image's when test_time_augmentation says so",
        "architecture": {
            "name": ENSEMBLE, "type": f"ensemble of {len(cards)}: " + ENSEMBLE_TYPE,
            "parameters": int(network.count_params()),
            "members": [_member_record(card) for card in cards],
            "activation_grid": int(network.get_layer("last_conv").output.shape[1]),
        },
        "training": training,
        "intended_use": first.data.get("intended_use"),
        "limitations": first.data.get("limitations"),
    }
    return _measure_and_place(network, card, data, model_path, out_dir, mirror, non_mri_train, started)


SOUP_TYPE = "the mean of the members' weights (one network of the members' architecture)"


def averaged_weights(models: list, shares: list[float] | None = None) -> list[np.ndarray]:
    """Every weight of `models` (batch-norm statistics included), averaged with `shares` (default: equal).

    Refuses models whose weights differ in number, name or shape: only one architecture can be averaged.
    """
    shares = [1.0 / len(models)] * len(models) if shares is None else [float(share) for share in shares]
    if len(shares) != len(models) or any(share < 0 for share in shares) or not math.isclose(sum(shares), 1.0):
        raise DatasetError("the members' shares must be one non-negative number per member, adding up to 1")
    layouts = [[(variable.path, tuple(variable.shape)) for variable in model.weights] for model in models]
    if any(layout != layouts[0] for layout in layouts[1:]):
        raise DatasetError("only models of one architecture (the same weights, by name and shape) can be averaged")
    averaged = []
    for variables in zip(*(model.weights for model in models)):
        values = [np.asarray(variable.numpy()) for variable in variables]
        total = sum(share * value.astype(np.float64) for share, value in zip(shares, values))
        averaged.append(total.astype(values[0].dtype))
    return averaged


def build_soup(member_paths: list[Path], data_dirs: list[Path], out_dir: Path, name: str = "brainscan-default",
               version: str | None = None, mirror: bool = False, non_mri_train: Path | None = None,
               command: str | None = None, shares: list[float] | None = None) -> Path:
    """Average carded models of one architecture, trained on one split, into one model; calibrate and card it.

    Meant for a model and the ones fine-tuned from it (they lie in one basin of the loss, where the
    average of the weights behaves like the average of the answers, at one network's cost). The
    card is the last member's with the weights' origin in `architecture.weight_average`, and
    temperature, gate and metrics fitted and measured as `calibrate` does; the robustness figures and
    the monitoring reference are dropped, since they measured another network (`python -m core
    robustness` and `python -m core monitor-reference --write-card` measure this one).
    """
    import json

    from core.model.inference import _load_keras_model
    from core.training.train import _next_minor, calibration_data

    cards = _member_cards(member_paths, "a weight average")
    if len({card.image_size for card in cards}) != 1:
        raise DatasetError("the members take different input sizes: only one architecture can be averaged")
    started = time.time()
    models = [_load_keras_model(card.model_path) for card in cards]
    network = models[-1]
    network.set_weights(averaged_weights(models, shares))

    out_dir = Path(out_dir)
    last = cards[-1]
    manifest_source = last.model_path.parent / last.data["training"]["split_manifest"]
    network, model_path = _staged(network, out_dir, name, manifest_source)
    data = calibration_data(manifest_source, data_dirs, last.image_size)
    card = json.loads(json.dumps(last.data))
    for key in ("robustness", "monitoring", "calibration_command", "model_file", "model_sha256"):
        card.pop(key, None)
    card["name"] = name
    card["version"] = version or _next_minor(str(last.data.get("version")))
    card["created"] = _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")
    card["architecture"] = dict(card.get("architecture") or {})
    card["architecture"]["weight_average"] = {
        "type": SOUP_TYPE,
        "shares": shares or [1.0 / len(cards)] * len(cards),
        "members": [_member_record(member) for member in cards],
    }
    card["training"] = dict(card.get("training") or {}, split_manifest=f"{name}.split.csv")
    card["training"]["command"] = command or "python -m core soup " + " ".join(f"--member {p}" for p in member_paths)
    card["training"]["weight_averaging"] = "the mean of the members' weights, after their own training (a soup)"
    return _measure_and_place(network, card, data, model_path, out_dir, mirror, non_mri_train, started)


def _member_cards(member_paths: list[Path], what: str) -> list:
    """The members' cards, refused unless two or more share one split manifest and answer CLASS_NAMES in order."""
    if len(member_paths) < 2:
        raise DatasetError(f"{what} needs at least two member models")
    cards = [load_card(Path(path)) for path in member_paths]
    if len({card.data["training"]["split_manifest_sha256"] for card in cards}) != 1:
        raise DatasetError("the members were trained on different splits (their manifest digests differ): one "
                           "member's held-out slices would be another's training slices")
    if any(tuple(card.classes) != tuple(CLASS_NAMES) for card in cards):
        raise DatasetError(f"every member must answer the classes {', '.join(CLASS_NAMES)} in that order")
    return cards


def _staged(network, out_dir: Path, name: str, manifest_source: Path):
    """(the network as saved and loaded again, its path): saved in a fresh work folder in `out_dir`, with the
    split manifest beside it. What is measured next is the network as it will be served."""
    import keras

    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / f".{name}.building"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir()
    model_path = work_dir / f"{name}.keras"
    network.save(model_path)
    shutil.copyfile(manifest_source, work_dir / f"{name}.split.csv")
    return keras.models.load_model(model_path, compile=False), model_path


def _measure_and_place(network, card: dict, data, model_path: Path, out_dir: Path, mirror: bool,
                       non_mri_train: Path | None, started: float) -> Path:
    """Fit temperature and gate, measure, write the card, and move model, card, gate and manifest from the
    work folder (`model_path`'s) into `out_dir`; the work folder is removed. Returns the placed model's path."""
    from core.training.train import _calibrate_and_measure

    work_dir, name = model_path.parent, model_path.stem
    card.update(_calibrate_and_measure(network, data, work_dir, name, mirror, non_mri_train))
    card["training"]["duration_seconds"] = round(time.time() - started)
    write_card(model_path, card)
    for produced in (model_path, card_path_for(model_path), work_dir / card["ood"]["file"], work_dir / f"{name}.split.csv"):
        shutil.move(str(produced), out_dir / produced.name)
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir / model_path.name
