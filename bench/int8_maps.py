"""How far the int8 network's heat maps are from the f32 network's, on the validation split.

    python bench/int8_maps.py --data ../shared/datasets/sartaj-brain-mri --data ../shared/datasets/nickparvar-brain-mri
        [--model M.keras] [--every 4]

Loads the model twice, as the card serves it (its int8 network, where this CPU reproduces it) and
in f32, and for every `--every`-th brain-MRI slice of the validation split
computes the class activation map of the f32 network's class in both (the map the Review page
draws, before upsampling: ReLU of the last activations weighted by that class's dense weights).
Prints the Pearson correlation between the two maps over the slices (median, 5th percentile,
lowest) and on how many slices the two give the same class. Exits 1 when this machine does not
serve the int8 network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    parser.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    parser.add_argument("--every", type=int, default=4, help="take every N-th validation slice (default 4)")
    arguments = parser.parse_args(argv)

    from core import config
    from core.model.card import load_card
    from core.model.inference import Classifier
    from core.training.quantize import _brain_mri, _split_files

    model_path = Path(arguments.model or config.model_path())
    card = load_card(model_path)
    files = _split_files(model_path.parent / card.data["training"]["split_manifest"],
                         [Path(path) for path in arguments.data], "validation")
    tensors, _ = _brain_mri(files[::arguments.every], card.image_size)
    served = Classifier.load(model_path)
    if served.precision != "int8":
        print(f"this machine serves {model_path.name} in {served.precision}, not int8: nothing to compare")
        return 1
    full = Classifier.load(model_path, precision="f32")
    correlations, same = [], 0
    for tensor in tensors:
        int8_logits, int8_maps = served.class_activation_maps(tensor)
        f32_logits, f32_maps = full.class_activation_maps(tensor)
        chosen = int(np.argmax(f32_logits))
        same += chosen == int(np.argmax(int8_logits))
        a, b = np.maximum(int8_maps[..., chosen], 0).ravel(), np.maximum(f32_maps[..., chosen], 0).ravel()
        if a.std() > 0 and b.std() > 0:
            correlations.append(float(np.corrcoef(a, b)[0, 1]))
    values = np.array(correlations)
    print(f"{card.name} {card.version}: {len(tensors)} validation slices (every {arguments.every}th); same class "
          f"{same} of {len(tensors)}; heat-map correlation int8 vs f32 over {len(values)} slices with a map: "
          f"median {np.median(values):.4f}, 5th percentile {np.percentile(values, 5):.4f}, lowest {values.min():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
