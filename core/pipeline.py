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
from core.scans.intake import Scan, load_scan
from core.scans.preprocess import prepare_image
from core.scans.statistics import image_statistics

NOT_MRI_MESSAGE = "not recognised as a brain MRI slice - review manually"
GATE_MESSAGE = f"{NOT_MRI_MESSAGE} (unlike the training scans)"
# Colour photographs have strong chroma; greyscale MRI exports have almost none.
MAX_COLOURFULNESS = 12.0
MIN_CONTRAST = 4.0  # standard deviation of grey levels under which an image is blank
# Limits of the model-free checks of `core.scans.statistics.image_statistics`: each is the 0.1st (or 99.9th)
# percentile of the 6727 training-split MRI slices, rounded outwards, so each check alone stops
# about 0.1% of real slices (`python -m core ood-eval --split train` prints the percentiles:
# aspect 1.60, border 0.37, largest share 0.91, solidity 0.72, extent 0.52, inner variation 0.87).
# They back up the Mahalanobis gate, catching what it passes (star fields, hand-like outlines);
# non-MRI images chose which checks exist, never where their limits lie.
MAX_SLICE_ASPECT_RATIO = 1.6
MAX_BORDER_BRIGHTNESS = 0.4
MIN_LARGEST_SHARE = 0.9
MIN_SOLIDITY = 0.7
MIN_EXTENT = 0.5
MAX_INNER_VARIATION = 0.9


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
    # The model input, kept by `analyse_bytes` so the page need not prepare it again for Grad-CAM.
    tensor: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def confidence(self) -> float | None:
        return self.probabilities[self.label] if self.label else None


def screen(scan: Scan) -> str | None:
    """Cheap checks before the network: a reason the image is not a brain MRI slice, or None."""
    if scan.colourfulness > MAX_COLOURFULNESS:
        return f"{NOT_MRI_MESSAGE} (the image is in colour; MRI slices are greyscale)"
    statistics = image_statistics(scan.image)
    if statistics.contrast < MIN_CONTRAST:
        return f"{NOT_MRI_MESSAGE} (the image is blank or nearly uniform)"
    if statistics.aspect_ratio > MAX_SLICE_ASPECT_RATIO:
        return f"{NOT_MRI_MESSAGE} (the image is {statistics.aspect_ratio:.1f} times longer than wide; slices are near square)"
    if statistics.border_brightness > MAX_BORDER_BRIGHTNESS:
        return f"{NOT_MRI_MESSAGE} (no dark background around the subject, as MRI slices have)"
    if statistics.largest_share < MIN_LARGEST_SHARE:
        return f"{NOT_MRI_MESSAGE} (the bright content is scattered, not one head)"
    if statistics.solidity < MIN_SOLIDITY or statistics.extent < MIN_EXTENT:
        return f"{NOT_MRI_MESSAGE} (the subject's outline is not head-shaped)"
    if statistics.inner_variation > MAX_INNER_VARIATION:
        return f"{NOT_MRI_MESSAGE} (the subject's brightness varies far more than brain tissue does)"
    return None


def gate_verdicts(classifier, features: np.ndarray) -> list[tuple[float, bool] | None]:
    """Per row of a batch's features (N, D): (distance, passes the gate), or None when the model has no gate."""
    if classifier.gate is None:
        return [None] * len(features)
    distances, passes = classifier.gate.assess(features)
    return list(zip(distances.tolist(), passes.tolist()))


def result_from_output(filename: str, digest: str, scan: Scan, probabilities: np.ndarray,
                       gate_verdict: tuple[float, bool] | None, classifier,
                       screen_reason: str | None = None) -> ScanResult:
    """Build the result of one inferred scan from the cheap checks' verdict and the gate's (see `gate_verdicts`).

    A scan either check stops is "rejected" with no label, but keeps the model's probabilities
    for the record (and so that evaluation scores the model on every decodable MRI slice).
    """
    named = {name: float(value) for name, value in zip(classifier.classes, probabilities)}
    distance, passes = gate_verdict if gate_verdict is not None else (None, True)
    if screen_reason:
        return ScanResult(filename, digest, "rejected", screen_reason, None, named, distance, scan)
    if not passes:
        return ScanResult(filename, digest, "rejected", GATE_MESSAGE, None, named, distance, scan)
    label = classifier.classes[int(np.argmax(probabilities))]
    return ScanResult(filename, digest, "ok", "", label, named, distance, scan)


def analyse_bytes(classifier, data: bytes, filename: str, *, frame: int | None = None,
                  window: tuple[float, float] | None = None) -> ScanResult:
    """Classify one uploaded file; bad input yields a "rejected" result, never an exception.

    `frame` and `window` choose a DICOM file's frame and (centre, width) window, as in `load_scan`.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        scan = load_scan(data, filename, frame=frame, window=window)
    except ScanRejected as rejection:
        return ScanResult(filename, digest, "rejected", rejection.reason)
    return analyse_scan(classifier, scan, filename, digest)


def analyse_scan(classifier, scan: Scan, filename: str, digest: str) -> ScanResult:
    """Classify a decoded scan (an upload's, or one read back from the archive) as `analyse_bytes` does."""
    tensor = prepare_image(scan.image, classifier.image_size)
    output = classifier.predict_tensors(tensor[np.newaxis])
    result = result_from_output(filename, digest, scan, output.probabilities[0],
                                gate_verdicts(classifier, output.features)[0], classifier,
                                screen(scan))
    return replace(result, tensor=tensor)


# Scans per inference call in `analyse_many`; measured with bench/inference.py on 2 CPU cores.
BATCH_SIZE = 16


def _intake_one(item: tuple[str, Callable[[], bytes]], image_size: int, keep_scan: bool = True):
    """Read, decode, screen and prepare one file: (filename, sha256, scan, tensor or None, reason or None).

    A tensor with a reason is a scan the cheap checks stopped; no tensor means intake rejected it.

    Runs in a worker thread, so every failure becomes a reason: one bad file must not stop a folder.
    """
    filename, read = item
    try:
        data = read()
    except OSError as error:
        return filename, UNREAD, None, None, f"the file could not be read: {error.strerror}"
    except Exception as error:  # A reader is caller code (a share, an archive); its failure is this file's.
        return filename, UNREAD, None, None, f"the file could not be read ({type(error).__name__}: {error})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        scan = load_scan(data, filename)
    except ScanRejected as rejection:
        return filename, digest, None, None, rejection.reason
    except Exception as error:  # A decoder bug on one odd file is that file's problem, not the batch's.
        return filename, digest, None, None, f"the file could not be decoded ({type(error).__name__}: {error})"
    del data  # The bytes are not needed once decoded; a folder of large files must not pile them up.
    kept = scan if keep_scan else None
    try:
        tensor = prepare_image(scan.image, image_size)
    except Exception as error:
        return filename, digest, kept, None, f"the image could not be prepared ({type(error).__name__}: {error})"
    # A screened scan is still inferred: its result carries the reason and the model's probabilities.
    return filename, digest, kept, tensor, screen(scan)


def analyse_many(classifier, items: Iterable[tuple[str, Callable[[], bytes]]], batch_size: int = BATCH_SIZE,
                 workers: int = 2, keep_scans: bool = False) -> Iterator[ScanResult]:
    """Classify many files in order: (name, reader) pairs in, one `ScanResult` per pair out.

    Reading, decoding and preprocessing run in a thread pool (file reads, OpenCV and the inference
    runtimes release the GIL) while the previous batch is inferred. At most two batches are in
    flight and, unless `keep_scans`, a decoded picture is dropped as soon as its tensor exists, so
    memory stays bounded by 2 x `batch_size` small tensors for any folder.
    """
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

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
                verdicts = gate_verdicts(classifier, output.features)  # One product for the whole batch.
            position = {index: row for row, index in enumerate(ready)}
            for index, (filename, digest, scan, tensor, reason) in enumerate(prepared):
                if tensor is None:
                    yield ScanResult(filename, digest, "rejected", reason, scan=scan)
                else:
                    row = position[index]
                    yield result_from_output(filename, digest, scan, output.probabilities[row], verdicts[row],
                                             classifier, reason)
            pending = upcoming
    finally:
        # A caller that stops early (or fails) must not wait for files it will never see.
        pool.shutdown(wait=True, cancel_futures=True)
