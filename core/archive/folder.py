"""The embedded scan archive: a content-addressed folder, one DICOM file per object sha256, never rewritten.

`data/scans/ab/abcdef...64 hex....dcm`: the two-character folder keeps any one directory small.
A file is written to a temporary name in the same folder, flushed to disk (fsync), renamed into
place and the folder fsynced, so a killed process leaves either the whole file or none, and a
reader never sees half a file. A file that exists already is never written again: its name is its
content's hash, so it can only be the same bytes (or damaged, which `fetch` and `archive verify`
report).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.archive.objects import ArchiveObject, ArchiveReference, reference_of
from core.errors import ArchiveError, ArchivedScanAltered, ArchivedScanMissing, ArchiveUnavailable

SUFFIX = ".dcm"


class FolderArchive:
    """Scans as files named by the sha256 of their bytes under `folder` (created on first store)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.description = f"the scan folder {self.folder}"

    def path_of(self, object_sha256: str) -> Path:
        """Where the object with this sha256 lives (whether or not it exists)."""
        digest = object_sha256.lower()
        if len(digest) != 64 or any(character not in "0123456789abcdef" for character in digest):
            raise ArchiveError(f"{object_sha256!r} is not a sha256")
        return self.folder / digest[:2] / f"{digest}{SUFFIX}"

    def store(self, archived: ArchiveObject) -> None:
        """Write the object atomically (temporary file, fsync, rename, fsync of the folder) unless present."""
        if hashlib.sha256(archived.data).hexdigest() != archived.sha256:
            raise ArchiveError("the object's bytes do not match its sha256; nothing was stored")
        path = self.path_of(archived.sha256)
        if path.is_file():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=path.parent)
            try:
                with os.fdopen(handle, "wb") as output:
                    output.write(archived.data)
                    output.flush()
                    os.fsync(output.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            _fsync_folder(path.parent)
        except OSError as error:
            raise ArchiveUnavailable(f"{self.description} cannot be written ({error.strerror or error})") from None

    def fetch(self, reference: ArchiveReference) -> bytes:
        """The object's bytes; raises `ArchivedScanMissing` or `ArchivedScanAltered`."""
        path = self.path_of(reference.object_sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArchivedScanMissing(f"{self.description} does not hold the scan {reference.object_sha256[:12]}…") \
                from None
        except OSError as error:
            raise ArchiveUnavailable(f"{self.description} cannot be read ({error.strerror or error})") from None
        if hashlib.sha256(data).hexdigest() != reference.object_sha256:
            raise ArchivedScanAltered(f"the archived scan {reference.object_sha256[:12]}… in {self.description} no "
                                      "longer matches its sha256: the file was changed after it was stored")
        return data

    def contains(self, reference: ArchiveReference) -> bool:
        """Whether the object's file exists."""
        return self.path_of(reference.object_sha256).is_file()

    def ping(self) -> None:
        """Raise `ArchiveUnavailable` when the folder exists but cannot be read."""
        if self.folder.exists() and not os.access(self.folder, os.R_OK | os.X_OK):
            raise ArchiveUnavailable(f"{self.description} cannot be read")

    def references(self) -> Iterator[ArchiveReference]:
        """Every object in the folder, in file-name order (temporary files of an interrupted store skipped)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob(f"??/*{SUFFIX}")):
            yield reference_of(path.read_bytes())


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too (POSIX; a no-op elsewhere).
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
