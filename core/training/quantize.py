"""An int8 network for serving a trained model: NNCF's post-training quantization of its OpenVINO conversion.

`quantize_model` takes the model's f32 OpenVINO network (the runtime's own conversion, made here if
this machine has none), calibrates NNCF's quantization on slices of the model's **training** split
(never validation or test: those are what the result is judged on), and writes beside the model

- `<name>.int8.xml` / `<name>.int8.bin`: the quantized network (8-bit weights and activations where
  NNCF placed quantizers, f32 elsewhere),
- `<name>.int8.npz`: its outputs on the runtime's probe tensors, which every load must reproduce
  (`core.model.inference.INT8_TOLERANCE`), and the dense head's kernel for the heat maps,

and a `serving` section in the card naming them by sha256, with the model file's sha256 they came
from, the calibration data and package versions, and the validation figures of both precisions,
measured on the same prepared slices. The card's other figures, and `evaluate`, `ood-eval`,
`robustness` and `monitor-reference` run afterwards, measure whatever the card then serves.

NNCF is OpenVINO's own quantization tool; it is needed here only (requirements-dev.txt), never by
the app, which reads the bundled files with OpenVINO alone.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

import numpy as np

from core.classes import CLASS_NAMES, class_index
from core.errors import DatasetError, ModelContractError
from core.model.calibration import softmax
from core.model.card import file_sha256, load_card, write_card
from core.training.dataset import find_labelled_files, read_not_mri_manifest
from core.training.metrics import classification_report
from core.training.split import read_manifest
from core.training.train import load_prepared

# Training-split slices NNCF collects activation ranges on (its default subset size).
CALIBRATION_SLICES = 300
CALIBRATION_SEED = 0
INT8_SUFFIX = ".int8"


def _split_files(manifest_path: Path, data_dirs: list[Path], split: str) -> list:
    """The brain-MRI files of one split of the manifest, found under `data_dirs`, in manifest order."""
    wanted = {row.path for row in read_manifest(manifest_path) if row.split == split}
    files = [item for data_dir in data_dirs for item in find_labelled_files(Path(data_dir))
             if item.relative_path in wanted]
    if len(files) != len(wanted):
        raise DatasetError(f"found {len(files)} of the {split} split's {len(wanted)} files under "
                           f"{', '.join(map(str, data_dirs))}")
    return files


def _brain_mri(files: list, image_size: int) -> tuple[np.ndarray, list]:
    """Prepared tensors of the files that the not-brain-MRI manifest does not list, and those files."""
    listed = read_not_mri_manifest()
    tensors, digests = load_prepared(files, image_size)
    keep = np.array([digest not in listed for digest in digests], dtype=bool)
    return tensors[keep], [item for item, kept in zip(files, keep) if kept]


def _figures(logits: np.ndarray, truths: np.ndarray, temperature: float, classes: tuple[str, ...]) -> dict:
    report = classification_report(truths, softmax(logits, temperature), classes)
    return {"n": report["n"], "right": int(round(report["accuracy"] * report["n"])),
            "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "ece": report["ece"]}


def quantize_model(model_path: Path, data_dirs: list[Path], command: str,
                   slices: int = CALIBRATION_SLICES, seed: int = CALIBRATION_SEED) -> dict:
    """Write the int8 network of `model_path` and its card's `serving` section; return that section."""
    try:
        import nncf
    except ImportError:
        raise ModelContractError("quantize needs NNCF (pip install -r requirements-dev.txt)") from None
    import openvino

    from core.model import inference

    model_path = Path(model_path)
    card = load_card(model_path)
    manifest = card.data.get("training", {}).get("split_manifest")
    if not manifest:
        raise ModelContractError(f"the card of {model_path.name} names no split manifest to draw calibration slices from")
    manifest_path = model_path.parent / manifest
    size = card.image_size
    network = inference.f32_network(card)

    train_files = _split_files(manifest_path, data_dirs, "train")
    order = np.random.default_rng(seed).permutation(len(train_files))
    calibration, _ = _brain_mri([train_files[index] for index in order[:slices + slices // 10]], size)
    calibration = calibration[:slices]
    if len(calibration) < min(slices, 16):
        raise DatasetError(f"only {len(calibration)} training slices to calibrate on")
    quantized = nncf.quantize(network, nncf.Dataset([tensor[np.newaxis] for tensor in calibration]),
                              subset_size=len(calibration))

    stem = model_path.stem + INT8_SUFFIX
    folder = model_path.parent
    staging = Path(tempfile.mkdtemp(prefix=".int8-", dir=folder))
    try:
        openvino.save_model(quantized, staging / f"{stem}.xml", compress_to_fp16=False)
        written = openvino.Core().read_model(staging / f"{stem}.xml")
        engine = inference._OpenVinoEngine(written, size)
        probes = inference.probe_tensors(size)
        features, logits, activations = inference.probe_outputs(engine, probes)
        head_kernel = inference.f32_head_kernel(card)
        np.savez(staging / f"{stem}.npz", probes=probes, features=features, logits=logits, activations=activations,
                 **({"head_kernel": head_kernel} if head_kernel is not None else {}))

        validation_files = _split_files(manifest_path, data_dirs, "validation")
        tensors, kept = _brain_mri(validation_files, size)
        truths = np.array([card.classes.index(CLASS_NAMES[class_index(item.label)]) for item in kept])
        f32_logits = inference._OpenVinoEngine(network, size).run(tensors)[1]
        int8_logits = engine.run(tensors)[1]
        for suffix in (".xml", ".bin", ".npz"):
            os.replace(staging / f"{stem}{suffix}", folder / f"{stem}{suffix}")
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()

    serving = {
        "precision": "int8",
        "network": f"{stem}.xml", "network_sha256": file_sha256(folder / f"{stem}.xml"),
        "weights_sha256": file_sha256(folder / f"{stem}.bin"),
        "reference": f"{stem}.npz", "reference_sha256": file_sha256(folder / f"{stem}.npz"),
        "source_model_sha256": card.data["model_sha256"],
        # The network was converted as the card serves it (with or without the mirror pass).
        "test_time_augmentation": card.data.get("test_time_augmentation"),
        "calibration": {"split": "train", "slices": int(len(calibration)), "seed": seed,
                        "method": "nncf.quantize, default (performance) preset, fast bias correction"},
        "validation": {
            "data": [Path(path).name for path in data_dirs],
            "f32": _figures(f32_logits, truths, card.temperature, card.classes),
            "int8": _figures(int8_logits, truths, card.temperature, card.classes),
            "same_class": int((f32_logits.argmax(1) == int8_logits.argmax(1)).sum()),
        },
        "nncf": nncf.__version__, "openvino": openvino.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    write_card(model_path, {**card.data, "serving": serving})
    return serving


def format_serving(serving: dict) -> str:
    """What `quantize` printed: the files and both precisions' validation figures."""
    validation = serving["validation"]
    lines = [f"wrote {serving['network']} (+ .bin, {serving['reference']}) from "
             f"{serving['calibration']['slices']} training slices"]
    for name in ("f32", "int8"):
        figures = validation[name]
        lines.append(f"validation {name}: {figures['right']} of {figures['n']} right, accuracy {figures['accuracy']:.4f}, "
                     f"macro-F1 {figures['macro_f1']:.4f}, ECE {figures['ece']:.4f}")
    lines.append(f"same class in both: {validation['same_class']} of {validation['f32']['n']}")
    return "\n".join(lines)
