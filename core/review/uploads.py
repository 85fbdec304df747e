"""An upload's way into the record, and a recorded scan's way back: archive first, then the history.

`take_upload` classifies the bytes, stores the scan in the archive and only then records it, so
no history row ever names a scan the archive does not hold. `reopen` reads an archived scan back
and classifies it again, which is how a worklist returns after a restart and how a second reader
on another replica sees the picture and its heat map.

The order of a new upload, and what each failure leaves:

1. classify the bytes (`core.pipeline.analyse_bytes`; never raises);
2. a decodable scan is archived (`core.archive.objects.object_for_upload`, then `archive.store`).
   If that fails the upload is refused with the archive's reason: nothing is recorded, and the
   worklist does not list it;
3. the history records, in one transaction, the archive event (once per scan), the prediction
   or refusal (once per session) and the worklist entry (`HistoryStore.record_upload`). If the
   history is down, the caller keeps the result and records it on a later attempt.

A file that cannot be decoded has no picture to archive; it is recorded as a refusal and listed
with its reason, without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.archive import ScanArchive
from core.archive.objects import ArchiveReference, object_for_upload
from core.archive.reading import scan_from_archive
from core.errors import ArchivedScanMissing, ArchiveError, ScanRejected
from core.pipeline import ScanResult, analyse_bytes, analyse_scan
from core.review.worklist import monitoring_detail


@dataclass(frozen=True)
class TakenUpload:
    """A classified upload and where the archive keeps it (None: nothing to archive, e.g. an undecodable file)."""

    result: ScanResult
    reference: ArchiveReference | None


def archive_result(archive: ScanArchive, data: bytes, result: ScanResult) -> ArchiveReference | None:
    """Store a classified upload's scan in the archive; its reference, or None when it has no picture.

    Raises `ArchiveError` (the archive is down, or refused the object): the upload is then not taken.
    """
    if result.scan is None:
        return None
    archived = object_for_upload(data, result.scan, result.sha256)
    archive.store(archived)
    return archived.reference


def warm_up_archiving() -> None:
    """Build, and throw away, the archive object of a small drawn picture: what the first upload would pay.

    The first Secondary Capture of a process imports highdicom and its codecs and fills their
    tables (0.45 s of CPU here, against 0.02 s for the next whole upload); the app runs this
    when it loads the model, under the loading spinner, so the first reader's first upload does
    not. Not in a background thread: the app ran it in one once, and the first page's first
    upload was then lost about one run in three (likely while the thread's imports held the
    interpreter). Never
    raises: a failure here shows up, with its message, on the upload that needs the object.
    """
    import logging

    import cv2
    import numpy as np

    from core.scans.intake import load_scan

    try:
        picture = np.zeros((64, 64), np.uint8)
        cv2.circle(picture, (32, 32), 24, 180, -1)
        data = cv2.imencode(".png", picture)[1].tobytes()
        object_for_upload(data, load_scan(data, "warm-up.png"), "0" * 64)
    except Exception as error:  # noqa: BLE001 - a warm-up must never take the app down
        logging.getLogger(__name__).warning("archive warm-up failed: %s", error)


def take_upload(classifier, archive: ScanArchive, data: bytes, file_name: str) -> TakenUpload:
    """Classify an upload and archive its scan; raises `ArchiveError` when the scan could not be archived."""
    result = analyse_bytes(classifier, data, file_name)
    return TakenUpload(result, archive_result(archive, data, result))


def pulled_name(instance, series_number: int | None = None) -> str:
    """What the worklist and the history call a pulled instance: its series and image numbers, nothing of the patient."""
    series = f"S{series_number}" if series_number is not None else "S?"
    image = f"I{instance.number:04d}" if instance.number is not None else f"I-{instance.instance_uid[-8:]}"
    return f"{series}-{image}.dcm"


def take_pulled(classifier, archive, instances, series_number: int | None = None,
                on_progress=None) -> list[TakenUpload]:
    """Pull a series' instances (`core.archive.pacs.InstanceSummary`, in slice order) and classify them as one batch.

    Each instance is read with WADO-RS as stored and stays where it is: its reference is its own
    UIDs and the sha256 of the bytes read, so nothing is stored again, and a refused instance keeps
    its reference too (the reader can see which it was). An instance that is read but cannot be
    decoded or classified (an SR, a PDF, a CT, a localizer) is a refusal with its own message; the
    others go on. An instance the archive does not give back (it went down, the retrieve was cut
    off, the study is gone) fails the whole pull with one `ArchiveError`, so that nothing of a
    half-read series is recorded and pulling it again starts clean. `on_progress(done, total)` is
    called after each instance.
    """
    from contextlib import closing

    from core.archive.pacs import retrieve
    from core.pipeline import analyse_many

    instances = list(instances)
    failures: dict[int, ArchiveError] = {}

    def reader(position: int, instance):
        def read() -> bytes:
            try:
                return retrieve(archive, instance)
            except ArchiveError as error:
                failures[position] = error
                raise
        return read

    items = [(pulled_name(instance, series_number), reader(position, instance))
             for position, instance in enumerate(instances, start=1)]
    taken = []
    with closing(analyse_many(classifier, items, keep_scans=True)) as results:
        for done, (instance, result) in enumerate(zip(instances, results), start=1):
            if failures:
                break
            reference = None
            if result.sha256:  # Read from the archive: it is there, whatever the model made of it.
                reference = ArchiveReference(instance.study_uid, instance.series_uid, instance.instance_uid,
                                             result.sha256, instance.sop_class_uid or "")
            taken.append(TakenUpload(result, reference))
            if on_progress is not None:
                on_progress(done, len(instances))
    if failures:
        position = min(failures)
        raise ArchiveError(f"the series could not be read whole: instance {position} of {len(instances)} did not "
                           f"come back ({failures[position]}); nothing of it was recorded - pull it again")
    return taken


def record_taken(store, taken: TakenUpload, *, session_id: str, owner: str, reviewer: str, model_version: str,
                 actor: Mapping[str, str] | None = None) -> None:
    """Record a taken upload (archive event, prediction or refusal, worklist entry); raises `HistoryUnavailable`."""
    result = taken.result
    store.record_upload(
        session_id=session_id, owner=owner, reviewer=reviewer, file_name=result.filename, sha256=result.sha256,
        model_version=model_version, predicted_class=result.label, probabilities=result.probabilities,
        refusal_reason=None if result.status == "ok" else result.message,
        archived=taken.reference.to_detail() if taken.reference is not None else None, actor=actor,
        detail=monitoring_detail(result))


def reference_for(store, sha256: str) -> ArchiveReference | None:
    """The archive reference the history recorded for a scan, or None when the scan was never archived."""
    detail = store.archived_reference(sha256)
    return None if detail is None else ArchiveReference.from_detail(detail)


def reopen(classifier, archive: ScanArchive, store, sha256: str, file_name: str) -> ScanResult | None:
    """Read a recorded scan back from the archive and classify it as its upload was; None when it has no copy.

    `sha256` is the upload's, kept as the key. Raises `ArchiveError` when the archive cannot give the
    scan back (down, missing, altered). An archived object that no longer decodes is a "rejected"
    result saying so, like any upload.
    """
    reference = reference_for(store, sha256)
    if reference is None:
        return None
    data = archive.fetch(reference)
    try:
        scan = scan_from_archive(data)
    except ScanRejected as rejection:
        return ScanResult(file_name, sha256, "rejected", rejection.reason, refused_by="intake")
    return analyse_scan(classifier, scan, file_name, sha256)


def decode_archived(data: bytes):
    """An archived object's bytes as the `Scan` its upload decoded to (raises `ScanRejected`), for display controls."""
    return scan_from_archive(data)


def archived_bytes(store, archive: ScanArchive, sha256: str) -> bytes:
    """The archived object's bytes for a scan the history names; raises `ArchiveError` (missing, down, altered)."""
    reference = reference_for(store, sha256)
    if reference is None:
        raise ArchivedScanMissing("this scan was recorded without a copy in the archive (before the archive "
                                  "existed, or it could not be decoded)")
    return archive.fetch(reference)


@dataclass(frozen=True)
class ArchiveCheck:
    """What `verify_archive` found: scans checked, scans recorded without a copy, and the first failure (or None)."""

    archive: str
    verified: int
    without_copy: int
    failure: str | None

    @property
    def intact(self) -> bool:
        """Whether every scan the history archived is held and hashes to its recorded sha256."""
        return self.failure is None

    def summary(self) -> str:
        """One line for the terminal."""
        held = (f"{self.verified} archived scan{'' if self.verified == 1 else 's'} held and matching their sha256"
                f" in {self.archive}")
        note = (f"; {self.without_copy} scan{'' if self.without_copy == 1 else 's'} recorded without a copy "
                "(before the archive existed, or not decodable)" if self.without_copy else "")
        return (held + note) if self.intact else f"FAILED after {self.verified} scans: {self.failure}"


def verify_archive(store, archive: ScanArchive) -> ArchiveCheck:
    """Fetch every scan the history recorded as archived and check its sha256; stop at the first that fails.

    Raises `ArchiveUnavailable` when the archive cannot be reached at all (that is not a verdict on a scan).
    """
    from core.errors import ArchiveUnavailable

    archived = store.archived_scans()
    held = {row["sha256"] for row in archived}
    without_copy = sum(1 for sha256 in store.scans_named() if sha256 not in held)
    archive.ping()
    for count, row in enumerate(archived):
        try:
            archive.fetch(ArchiveReference.from_detail(row["detail"]))
        except ArchiveUnavailable:
            raise
        except ArchiveError as error:
            return ArchiveCheck(archive.description, count, without_copy,
                                f"event {row['id']} ({row['file_name']}, sha256 {row['sha256'][:12]}…): {error}")
    return ArchiveCheck(archive.description, len(archived), without_copy, None)
