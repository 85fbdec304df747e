"""From uploaded bytes to a reviewable result: intake, screening, preprocessing, inference, gate.

This is the one path the CLI and the app share. Every failure a user can cause ends as a result
with status "rejected" and a message; nothing raises past `analyse_bytes`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from core.errors import ScanRejected
from core.model.gate import GateVerdict, physical_inputs
from core.scans.intake import Scan, load_scan
from core.scans.preprocess import prepare_image
from core.scans.statistics import ImageStatistics, image_statistics

NOT_MRI_MESSAGE = "not recognised as a brain MRI slice - review manually"
# Colour photographs have strong chroma; greyscale MRI exports have almost none.
MAX_COLOURFULNESS = 12.0
MIN_CONTRAST = 4.0  # standard deviation of grey levels under which an image is blank
# The model-free checks of shape (aspect, dark border, one region, head-shaped outline, inner
# variation) that stood here before the gate learnt from real negatives were dropped: on the
# development negatives (non-mri-train/, the MRI collections' head CT and the drawn set) they
# caught nothing the modality head let through, and they refused 22 of the training split's MRI
# slices (python -m core calibrate prints the gate's cross-validation). Colour and blankness stay:
# they need no model and say exactly what is wrong.


# The sha256 of a file that could not be read: none is known, and the digest of no bytes would
# claim the file was empty.
UNREAD = ""


@dataclass(frozen=True)
class ScanResult:
    """The outcome for one file. `label` is None unless status is "ok"; `sha256` is `UNREAD` ("") if unread."""

    filename: str
    sha256: str
    status: str  # "ok" or "rejected"
    message: str = ""
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    ood_distance: float | None = None
    scan: Scan | None = None
    # Where a rejected scan was stopped: "intake" (not decoded), "screen" (colour, blank) or "gate".
    refused_by: str | None = None
    # What the gate says a refused picture looks like (a `core.model.gate.LOOKS_LIKE` name), when it can tell.
    looks_like: str | None = None
    not_mri_score: float | None = None
    # The model input, kept by `analyse_bytes` so the page need not prepare it again for Grad-CAM.
    tensor: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Each class's activation map (h, w, C) from the same forward pass, when the runtime gives it: the heat map's
    # source, so the page runs no second inference for it.
    class_maps: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def confidence(self) -> float | None:
        return self.probabilities[self.label] if self.label else None


def screen(scan: Scan, statistics: ImageStatistics | None = None) -> str | None:
    """Checks that need no model: why the image cannot be a brain MRI slice (colour, blank), or None."""
    if scan.colourfulness > MAX_COLOURFULNESS:
        return "the image is in colour; MRI slices are greyscale"
    statistics = statistics or image_statistics(scan.image)
    if statistics.contrast < MIN_CONTRAST:
        return "the image is blank or nearly uniform"
    return None


def refusal_message(looks_like: str | None, reason: str | None = None) -> str:
    """The reader's message for a picture that is not read: what it looks like and why, where known."""
    details = "; ".join(part for part in (f"it looks like {looks_like}" if looks_like else None, reason) if part)
    return f"{NOT_MRI_MESSAGE} ({details})" if details else NOT_MRI_MESSAGE


def gate_verdicts(classifier, features: np.ndarray, physical: np.ndarray) -> list[GateVerdict | None]:
    """Per row of a batch's features (N, D) and physical inputs (N, P): the gate's verdict, or None without a gate."""
    if classifier.gate is None:
        return [None] * len(features)
    return classifier.gate.assess(features, physical)


def result_from_output(filename: str, digest: str, scan: Scan, probabilities: np.ndarray,
                       verdict: GateVerdict | None, classifier, screen_reason: str | None = None) -> ScanResult:
    """Build the result of one inferred scan from the model-free checks' verdict and the gate's (see `gate_verdicts`).

    A scan either stops is "rejected" with no label, but keeps the model's probabilities for the
    record (and so that evaluation scores the model on every decodable MRI slice).
    """
    named = {name: float(value) for name, value in zip(classifier.classes, probabilities)}
    distance = verdict.distance if verdict is not None else None
    score = verdict.not_mri_score if verdict is not None else None
    passes = verdict.passes if verdict is not None else True
    looks_like = verdict.looks_like if verdict is not None else None
    if screen_reason or not passes:
        return ScanResult(filename, digest, "rejected", refusal_message(looks_like, screen_reason), None, named,
                          distance, scan, refused_by="screen" if screen_reason else "gate", looks_like=looks_like,
                          not_mri_score=score)
    label = classifier.classes[int(np.argmax(probabilities))]
    return ScanResult(filename, digest, "ok", "", label, named, distance, scan, not_mri_score=score)


def analyse_bytes(classifier, data: bytes, filename: str, *, frame: int | None = None,
                  window: tuple[float, float] | None = None) -> ScanResult:
    """Classify one uploaded file; bad input yields a "rejected" result, never an exception.

    `frame` and `window` choose a DICOM file's frame and (centre, width) window, as in `load_scan`.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        scan = load_scan(data, filename, frame=frame, window=window)
    except ScanRejected as rejection:
        return ScanResult(filename, digest, "rejected", rejection.reason, refused_by="intake")
    return analyse_scan(classifier, scan, filename, digest)


def analyse_scan(classifier, scan: Scan, filename: str, digest: str) -> ScanResult:
    """Classify a decoded scan (an upload's, or one read back from the archive) as `analyse_bytes` does."""
    tensor = prepare_image(scan.image, classifier.image_size)
    statistics = image_statistics(scan.image)
    output = classifier.predict_tensors(tensor[np.newaxis], with_maps=True)
    physical = physical_inputs(statistics, scan.colourfulness)[np.newaxis]
    result = result_from_output(filename, digest, scan, output.probabilities[0],
                                gate_verdicts(classifier, output.features, physical)[0], classifier,
                                screen(scan, statistics))
    return replace(result, tensor=tensor, class_maps=output.maps[0] if output.maps is not None else None)


# Scans per inference call in `analyse_many`; measured with bench/inference.py on 2 CPU cores.
BATCH_SIZE = 16


def _intake_one(item: tuple[str, Callable[[], bytes]], image_size: int, keep_scan: bool = True):
    """Read, decode, screen and prepare one file:
    (filename, sha256, scan, tensor or None, physical inputs or None, reason or None).

    A tensor with a reason is a scan the model-free checks stopped; no tensor means intake rejected it.

    Runs in a worker thread, so every failure becomes a reason: one bad file must not stop a folder.
    """
    filename, read = item
    try:
        data = read()
    except FileNotFoundError:
        return filename, UNREAD, None, None, None, "nothing exists at this path (no such file or folder)"
    except IsADirectoryError:
        return filename, UNREAD, None, None, None, "this is a folder, not a file"
    except OSError as error:
        return filename, UNREAD, None, None, None, f"the file could not be read: {error.strerror}"
    except Exception as error:  # A reader is caller code (a share, an archive); its failure is this file's.
        return filename, UNREAD, None, None, None, f"the file could not be read ({type(error).__name__}: {error})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        scan = load_scan(data, filename)
    except ScanRejected as rejection:
        return filename, digest, None, None, None, rejection.reason
    except Exception as error:  # A decoder bug on one odd file is that file's problem, not the batch's.
        return filename, digest, None, None, None, f"the file could not be decoded ({type(error).__name__}: {error})"
    del data  # The bytes are not needed once decoded; a folder of large files must not pile them up.
    kept = scan if keep_scan else None
    try:
        tensor = prepare_image(scan.image, image_size)
        statistics = image_statistics(scan.image)
    except Exception as error:
        return filename, digest, kept, None, None, f"the image could not be prepared ({type(error).__name__}: {error})"
    # A screened scan is still inferred: its result carries the reason and the model's probabilities.
    return (filename, digest, kept, tensor, physical_inputs(statistics, scan.colourfulness),
            screen(scan, statistics))


def analyse_many(classifier, items: Iterable[tuple[str, Callable[[], bytes]]], batch_size: int = BATCH_SIZE,
                 workers: int | None = None, keep_scans: bool = False) -> Iterator[ScanResult]:
    """Classify many files in order: (name, reader) pairs in, one `ScanResult` per pair out.

    Reading, decoding and preprocessing run in a thread pool (file reads, OpenCV and the inference
    runtimes release the GIL) while the previous batch is inferred. At most two batches are in
    flight and, unless `keep_scans`, a decoded picture is dropped as soon as its tensor exists, so
    memory stays bounded by 2 x `batch_size` small tensors for any folder.
    """
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    # The runtime says how many decoding threads suit it (`Classifier.decode_workers`); 2 otherwise.
    workers = workers or getattr(classifier, "decode_workers", 2)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    iterator = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        def submit_batch():
            chunk = list(islice(iterator, batch_size))
            return [pool.submit(_intake_one, item, classifier.image_size, keep_scans) for item in chunk]

        pending = submit_batch()
        while pending:
            upcoming = submit_batch()  # Decode the next batch while this one is inferred.
            prepared = [future.result() for future in pending]
            pending = None
            ready = [index for index, entry in enumerate(prepared) if entry[3] is not None]
            output, verdicts = None, []
            if ready:
                output = classifier.predict_tensors(np.stack([prepared[index][3] for index in ready]))
                # One product for the whole batch.
                verdicts = gate_verdicts(classifier, output.features, np.stack([prepared[index][4] for index in ready]))
            position = {index: row for row, index in enumerate(ready)}
            for index, (filename, digest, scan, tensor, _, reason) in enumerate(prepared):
                if tensor is None:
                    yield ScanResult(filename, digest, "rejected", reason, scan=scan, refused_by="intake")
                else:
                    row = position[index]
                    yield result_from_output(filename, digest, scan, output.probabilities[row], verdicts[row],
                                             classifier, reason)
            pending = upcoming
    finally:
        # A caller that stops early (or fails) must not wait for files it will never see.
        pool.shutdown(wait=True, cancel_futures=True)
