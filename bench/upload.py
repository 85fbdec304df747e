"""Where one upload's server time goes: each stage of the Review page's path, timed in process, against the whole.

    python bench/upload.py --data ../shared/datasets/nickparvar-brain-mri [--scans 60] [--model M.keras]

For each scan the bench runs the path an upload takes on the server, stage by stage, with the same
functions the page calls: the sha256 of the bytes, decoding (`core.scans.intake.load_scan`), the
crop and preprocessing, the model-free image statistics, inference with calibration, the gate, the
heat map, building the archive object (a DICOM Secondary Capture of a picture) and storing it in a
scan folder (written, fsynced, renamed), and recording the upload in a SQLite history (one
transaction: archive event, prediction, worklist entry). The baseline in the same run is the whole
path as the page runs it (`take_upload`, then `record_taken`, then the heat map), so the stages'
shares are of a figure measured beside them. Page rendering is `bench/page.py`'s and `bench/app.py`'s.

Without --data it writes synthetic slices (the bundled gate refuses them, which skips nothing here:
a refused scan is still decoded, inferred and gated). Prints one table; exits 1 when the stages'
sum is off the whole by more than a third (a stage left out, or timed twice).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scan_files(data: list[Path], count: int, scratch: Path) -> list[Path]:
    """`count` evenly spaced image files of the given folders, or synthetic PNG slices written to `scratch`."""
    from core.training.dataset import IMAGE_SUFFIXES

    files = sorted(path for folder in data for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if files:
        step = max(1, len(files) // count)
        return files[::step][:count]
    from tests.synthetic import encode, synthetic_slice

    written = []
    for seed in range(count):
        path = scratch / f"synthetic-{seed}.png"
        path.write_bytes(encode(synthetic_slice(seed, 256)))
        written.append(path)
    return written


def timed(clock: dict[str, list[float]], name: str, function, *arguments, **keywords):
    """Call `function`, add its wall time in ms to `clock[name]`, return what it returned."""
    start = time.perf_counter()
    value = function(*arguments, **keywords)
    clock.setdefault(name, []).append((time.perf_counter() - start) * 1000.0)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", default=[], help="a folder of MRI slices (repeatable)")
    parser.add_argument("--scans", type=int, default=60, help="how many scans to time (default 60)")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the configured model)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the scan folder and the history go (default: a temporary folder; give one on the "
                             "disk the app writes to, since fsync costs what that disk costs)")
    arguments = parser.parse_args()

    from core.archive.folder import FolderArchive
    from core.archive.objects import object_for_upload
    from core.model import explain
    from core.model.inference import Classifier
    from core.pipeline import gate_verdicts, physical_inputs, result_from_output, screen
    from core.review.store import HistoryStore
    from core.review.uploads import record_taken, take_upload
    from core.review.worklist import item_from_result
    from core.scans.intake import load_scan
    from core.scans.preprocess import prepare_image
    from core.scans.statistics import image_statistics

    classifier = Classifier.load(arguments.model)
    with tempfile.TemporaryDirectory(dir=arguments.scratch) as scratch_name:
        scratch = Path(scratch_name)
        files = scan_files(arguments.data, arguments.scans, scratch)
        staged_archive, whole_archive = FolderArchive(scratch / "staged"), FolderArchive(scratch / "whole")
        staged_store = HistoryStore(scratch / "staged.sqlite3")
        whole_store = HistoryStore(scratch / "whole.sqlite3")
        # Warm every path once (runtime compile, the first SQLite connection, the first fsync of each folder).
        warm = files[0].read_bytes()
        record_taken(HistoryStore(scratch / "warm.sqlite3"), take_upload(classifier, FolderArchive(scratch / "warm"),
                                                                          warm, "warm.png"),
                     session_id="w" * 32, owner="bench", reviewer="bench", model_version=classifier.version)
        explain.gradcam(classifier, prepare_image(load_scan(warm, "warm.png").image, classifier.image_size))

        clock: dict[str, list[float]] = {}
        for number, path in enumerate(files):
            data = path.read_bytes()
            # The whole path, as the Review page runs it for an upload (the baseline).
            start = time.perf_counter()
            taken = take_upload(classifier, whole_archive, data, path.name)
            record_taken(whole_store, taken, session_id="b" * 32, owner="bench", reviewer="bench",
                         model_version=classifier.version)
            item = item_from_result(taken.result, classifier.version, classifier.image_size)
            if taken.result.status == "ok":
                explain.gradcam(classifier, item.tensor, classifier.classes.index(item.label))
            clock.setdefault("whole path", []).append((time.perf_counter() - start) * 1000.0)

            # The same, stage by stage, into a history and a folder of their own.
            digest = timed(clock, "sha256 of the bytes", lambda: hashlib.sha256(data).hexdigest())
            scan = timed(clock, "decode", load_scan, data, path.name)
            tensor = timed(clock, "crop and preprocess", prepare_image, scan.image, classifier.image_size)
            measured = timed(clock, "image statistics (model-free checks)", image_statistics, scan.image)
            output = timed(clock, "inference and calibration", classifier.predict_tensors, tensor[np.newaxis])
            physical = physical_inputs(measured, scan.colourfulness)[np.newaxis]
            verdict = timed(clock, "gate", gate_verdicts, classifier, output.features, physical)[0]
            result = result_from_output(path.name, digest, scan, output.probabilities[0], verdict, classifier,
                                        screen(scan, measured))
            archived = timed(clock, "archive object (de-identified copy or capture)", object_for_upload, data, scan,
                             digest)
            timed(clock, "archive store (write, fsync, rename)", staged_archive.store, archived)
            timed(clock, "history record (one transaction)", staged_store.record_upload, session_id="s" * 32,
                  owner="bench", reviewer="bench", file_name=path.name, sha256=digest,
                  model_version=classifier.version, predicted_class=result.label,
                  probabilities=result.probabilities,
                  refusal_reason=None if result.status == "ok" else result.message,
                  archived=archived.reference.to_detail())
            kept = timed(clock, "worklist item (thumbnail)", item_from_result, replace(result, tensor=tensor),
                         classifier.version, classifier.image_size)
            if result.status == "ok":
                timed(clock, "heat map", explain.gradcam, classifier, kept.tensor,
                      classifier.classes.index(result.label))
            else:
                clock.setdefault("heat map", []).append(0.0)
            if number == 0:
                print(f"{len(files)} scans from {', '.join(map(str, arguments.data)) or 'synthetic slices'}; model "
                      f"{classifier.version}; runtime {classifier.runtime}; scratch {scratch}", file=sys.stderr)

    whole = statistics.median(clock.pop("whole path"))
    medians = {name: statistics.median(values) for name, values in clock.items()}
    total = sum(medians.values())
    print(f"| stage of one upload (median of {len(files)}) | ms | share of the whole path |")
    print("| --- | ---: | ---: |")
    for name, value in sorted(medians.items(), key=lambda entry: -entry[1]):
        print(f"| {name} | {value:.2f} | {value / whole:.0%} |")
    print(f"| sum of the stages | {total:.2f} | {total / whole:.0%} |")
    print(f"| **whole path, as the page runs it (baseline)** | **{whole:.2f}** | 100% |")
    return 0 if abs(total - whole) <= whole / 3 else 1


if __name__ == "__main__":
    sys.exit(main())
