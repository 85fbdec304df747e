"""From uploaded bytes to a reviewable result: intake, screening, preprocessing, inference, gate.

This is the one path the CLI and the app share. Every failure a user can cause ends as a result
with status "rejected" and a message; nothing raises past `analyse_bytes`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from core.errors import ScanRejected
from core.intake import Scan, load_scan
from core.preprocess import prepare_image

NOT_MRI_MESSAGE = "not recognised as a brain MRI slice - review manually"
# Colour photographs have strong chroma; greyscale MRI exports have almost none.
MAX_COLOURFULNESS = 12.0
MIN_CONTRAST = 4.0  # standard deviation of grey levels under which an image is blank


@dataclass(frozen=True)
class ScanResult:
    """The outcome for one file. `label` is None unless status is "ok"."""

    filename: str
    sha256: str
    status: str  # "ok" or "rejected"
    message: str = ""
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    ood_distance: float | None = None
    scan: Scan | None = None

    @property
    def confidence(self) -> float | None:
        return self.probabilities[self.label] if self.label else None


def screen(scan: Scan) -> str | None:
    """Cheap checks before the network: a reason the image is not a brain MRI slice, or None."""
    if scan.colourfulness > MAX_COLOURFULNESS:
        return f"{NOT_MRI_MESSAGE} (the image is in colour; MRI slices are greyscale)"
    if float(scan.image.std()) < MIN_CONTRAST:
        return f"{NOT_MRI_MESSAGE} (the image is blank or nearly uniform)"
    return None


def result_from_output(filename: str, digest: str, scan: Scan, probabilities: np.ndarray, features: np.ndarray,
                       classifier) -> ScanResult:
    """Build the result of one classified scan, applying the out-of-distribution gate."""
    named = {name: float(value) for name, value in zip(classifier.classes, probabilities)}
    distance = None
    if classifier.gate is not None:
        distance = float(classifier.gate.distances(features[np.newaxis])[0])
        if distance > classifier.gate.threshold:
            return ScanResult(filename, digest, "rejected", f"{NOT_MRI_MESSAGE} (unlike the training scans)",
                              None, named, distance, scan)
    label = classifier.classes[int(np.argmax(probabilities))]
    return ScanResult(filename, digest, "ok", "", label, named, distance, scan)


def analyse_bytes(classifier, data: bytes, filename: str) -> ScanResult:
    """Classify one uploaded file; bad input yields a "rejected" result, never an exception."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        scan = load_scan(data, filename)
    except ScanRejected as rejection:
        return ScanResult(filename, digest, "rejected", rejection.reason)
    reason = screen(scan)
    if reason:
        return ScanResult(filename, digest, "rejected", reason, scan=scan)
    tensor = prepare_image(scan.image, classifier.image_size)
    output = classifier.predict_tensors(tensor[np.newaxis])
    return result_from_output(filename, digest, scan, output.probabilities[0], output.features[0], classifier)


def _intake_one(item: tuple[str, Callable[[], bytes]], image_size: int):
    filename, read = item
    try:
        data = read()
    except OSError as error:
        return filename, hashlib.sha256(b"").hexdigest(), None, None, f"the file could not be read: {error.strerror}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        scan = load_scan(data, filename)
    except ScanRejected as rejection:
        return filename, digest, None, None, rejection.reason
    reason = screen(scan)
    if reason:
        return filename, digest, scan, None, reason
    return filename, digest, scan, prepare_image(scan.image, image_size), None


def analyse_many(classifier, items: Iterable[tuple[str, Callable[[], bytes]]], batch_size: int = 32,
                 workers: int = 2, keep_scans: bool = False) -> Iterator[ScanResult]:
    """Classify many files in order: (name, reader) pairs in, one `ScanResult` per pair out.

    Decoding and preprocessing run in a thread pool (OpenCV releases the GIL) while the previous
    batch is inferred; at most two batches are in flight, so memory stays bounded for any folder.
    Results drop the decoded scan unless `keep_scans`.
    """
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit_batch():
            chunk = list(islice(iterator, batch_size))
            return [pool.submit(_intake_one, item, classifier.image_size) for item in chunk]

        pending = submit_batch()
        while pending:
            upcoming = submit_batch()  # Decode the next batch while this one is inferred.
            prepared = [future.result() for future in pending]
            ready = [index for index, entry in enumerate(prepared) if entry[3] is not None]
            output = None
            if ready:
                output = classifier.predict_tensors(np.stack([prepared[index][3] for index in ready]))
            position = {index: row for row, index in enumerate(ready)}
            for index, (filename, digest, scan, tensor, reason) in enumerate(prepared):
                kept = scan if keep_scans else None
                if reason is not None:
                    yield ScanResult(filename, digest, "rejected", reason, scan=kept)
                else:
                    row = position[index]
                    result = result_from_output(filename, digest, kept, output.probabilities[row],
                                                output.features[row], classifier)
                    yield result
            pending = upcoming
