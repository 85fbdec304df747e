"""What serving the network in bfloat16 would change: speed, answers and the gate, against float32.

Not what the app does (it serves float32, checked against TensorFlow at every load); this measures
a lever for issue 28's batch floor. OpenVINO's CPU plugin runs a network in bf16 when the CPU has
bf16 units (AVX512_BF16 or AMX) and it is asked to; this compiles the cached converted network both
ways and compares, on the **validation** split of the model's manifest (never the test split) and
on a folder of pictures that are not brain MRI, which the gate must refuse:

    python bench/precision.py --data ../shared/datasets/sartaj-brain-mri \\
        --data ../shared/datasets/nickparvar-brain-mri --non-mri ../shared/datasets/non-mri
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def network_time(engine, tensors: np.ndarray, repeats: int = 2) -> float:
    """Milliseconds a scan, batches of the engine's chunk, after one warm-up pass."""
    engine.run(tensors)
    started = time.perf_counter()
    for _ in range(repeats):
        engine.run(tensors)
    return (time.perf_counter() - started) / (repeats * len(tensors)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="the model's dataset folders (repeatable)")
    parser.add_argument("--non-mri", help="a folder of pictures that are not brain MRI (subfolders are kinds)")
    parser.add_argument("--model", help="model file (default: the configured model)")
    parser.add_argument("--precision", default="bf16", help="the precision to compare with f32 (default bf16)")
    arguments = parser.parse_args()

    import openvino

    from bench.levels import SUFFIXES
    from core import config
    from core.model.inference import Classifier, _cache_folder, _OpenVinoEngine
    from core.pipeline import analyse_many
    from core.training.train import calibration_data

    served = Classifier.load(Path(arguments.model) if arguments.model else config.model_path(), runtime="openvino")
    card = served.card
    network = openvino.Core().read_model(_cache_folder(card) / "network.xml")
    lowered = Classifier(_OpenVinoEngine(network, card.image_size, served._engine.head_kernel, arguments.precision),
                         card, served.gate)
    data = calibration_data(card.model_path.parent / card.data["training"]["split_manifest"],
                            [Path(folder) for folder in arguments.data], card.image_size)
    rows = data.mask("validation")
    tensors, labels, physical = data.tensors[rows], data.label_indices[rows], data.physical[rows]
    print(f"model {card.name} {card.version}; validation split: {len(tensors)} brain MRI slices; "
          f"compared: f32 and {arguments.precision}")

    outputs = {}
    for name, classifier in (("f32", served), (arguments.precision, lowered)):
        batches = [classifier.predict_tensors(tensors[start:start + 16]) for start in range(0, len(tensors), 16)]
        probabilities = np.concatenate([batch.probabilities for batch in batches])
        features = np.concatenate([batch.features for batch in batches])
        passes = np.array([verdict.passes for verdict in classifier.gate.assess(features, physical)])
        outputs[name] = (probabilities, passes, network_time(classifier._engine, tensors[:256]))
    (reference, reference_passes, _), (candidate, candidate_passes, _) = outputs.values()
    difference = np.abs(reference - candidate)
    for name, (probabilities, passes, milliseconds) in outputs.items():
        accuracy = float((probabilities.argmax(1) == labels).mean())
        print(f"{name:>5}: network {milliseconds:.2f} ms a scan (both passes); validation accuracy {accuracy:.4f}; "
              f"gate passes {passes.mean():.4f} of the MRI slices")
    print(f"same class on {int((reference.argmax(1) == candidate.argmax(1)).sum())} of {len(tensors)}; "
          f"largest probability difference {difference.max():.4f}, mean {difference.mean():.5f}; "
          f"gate decisions differ on {int((reference_passes != candidate_passes).sum())}")

    if arguments.non_mri:
        folder = Path(arguments.non_mri)
        files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in SUFFIXES)
        items = [(str(path), path.read_bytes) for path in files]
        kinds = Counter(path.relative_to(folder).parts[0] for path in files)
        for name, classifier in (("f32", served), (arguments.precision, lowered)):
            results = list(analyse_many(classifier, items))
            refused = Counter(Path(result.filename).relative_to(folder).parts[0] for result in results
                              if result.status == "rejected")
            print(f"{name:>5}: refused {sum(refused.values())} of {len(files)} pictures that are not brain MRI ("
                  + ", ".join(f"{kind} {refused[kind]}/{count}" for kind, count in sorted(kinds.items())) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
