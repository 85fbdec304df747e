"""The scan archive: one place every reader on every replica gets a scan's picture back from, byte for byte.

    objects    an upload -> the DICOM object archived for it (a Secondary Capture, or a de-identified
               copy of a DICOM upload) and its reference (UIDs and the object's sha256)
    folder     the embedded default: a content-addressed folder (BRAINSCAN_SCAN_DIR, data/scans/)
    dicomweb   a team's archive over DICOMweb (BRAINSCAN_DICOMWEB_URL): STOW-RS in, WADO-RS out
    reading    archived bytes -> the `Scan` the uploader saw

`open_archive(settings)` picks the implementation, as MLflow picks an artifact repository by URI.
Both implement `ScanArchive`: `store` (idempotent), `fetch` (the exact bytes, checked against the
recorded sha256), `contains` and `ping`. Failures are `core.errors.ArchiveError`s: unavailable
(down, slow, credentials refused), missing, or altered.

A stage between `scans` (which it decodes with) and `review` (whose history records what was
archived); it knows nothing of the model, the pipeline or the history.
"""

from __future__ import annotations

from typing import Protocol

from core.archive.objects import ArchiveObject, ArchiveReference
from core.config import ArchiveSettings


class ScanArchive(Protocol):
    """What every scan archive does; `description` names it for messages ("the scan folder data/scans")."""

    description: str

    def store(self, archived: ArchiveObject) -> None:
        """Keep the object; storing an object the archive already holds changes nothing."""

    def fetch(self, reference: ArchiveReference) -> bytes:
        """The object's bytes, checked against `reference.object_sha256`."""

    def contains(self, reference: ArchiveReference) -> bool:
        """Whether the archive holds the object (by its UIDs or its sha256)."""

    def ping(self) -> None:
        """Raise `ArchiveUnavailable` unless the archive answers now."""


def open_archive(settings: ArchiveSettings) -> ScanArchive:
    """The archive the settings name: DICOMweb when a URL is set, else the scan folder."""
    if settings.dicomweb_url:
        from core.archive.dicomweb import DicomWebArchive

        return DicomWebArchive(settings.dicomweb_url, settings.user, settings.password, settings.timeout_s)
    from core.archive.folder import FolderArchive

    return FolderArchive(settings.scan_dir)


def copy_archive(source, destination: ScanArchive) -> int:
    """Store every object of `source` (a `FolderArchive`) in `destination` and read each back; the count copied.

    Storing is idempotent, so an interrupted copy is finished by running it again. Raises
    `ArchiveError` at the first object the destination does not give back unchanged.
    """
    copied = 0
    for reference in source.references():
        destination.store(ArchiveObject(source.fetch(reference), reference))
        destination.fetch(reference)  # Checked against the sha256: what was copied is what a reader will get.
        copied += 1
    return copied
