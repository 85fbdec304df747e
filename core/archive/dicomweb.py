"""A team's scan archive over DICOMweb (dicomweb-client): STOW-RS to store, WADO-RS to read, QIDO-RS to look.

The reference server is Orthanc with its DICOMweb plugin (deploy/orthanc.json); any DICOMweb
service does. Requests authenticate with HTTP basic authentication (`BRAINSCAN_DICOMWEB_USER`
and `_PASSWORD`, or the `[dicomweb]` secrets section), give up after `timeout_s` and are not
retried: a page must say at once that the archive is down rather than wait through back-offs.
Each thread gets its own client and HTTP session, so 16 readers never share a connection.

Every failure reaches callers as an `ArchiveError`: `ArchiveUnavailable` when the service cannot
be reached, times out, refuses the credentials or fails (5xx), `ArchivedScanMissing` when it
answers that it does not hold the instance, `ArchivedScanAltered` when the bytes it returns do
not hash to the recorded sha256. No message carries the password.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from core.archive.objects import ArchiveObject, ArchiveReference
from core.errors import ArchiveError, ArchivedScanAltered, ArchivedScanMissing, ArchiveUnavailable

# The instance as stored, in whatever transfer syntax it was stored in (PS3.18 8.7.3.5.2).
RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DicomWebArchive:
    """The DICOMweb service at `url` (e.g. http://127.0.0.1:8042/dicom-web)."""

    def __init__(self, url: str, user: str = "", password: str = "", timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.description = f"the DICOMweb archive at {self.url}"
        self._user, self._password, self.timeout_s = user, password, timeout_s
        self._local = threading.local()

    def client(self):
        """This thread's `dicomweb_client.DICOMwebClient` (created on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            import requests
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()
            if self._user:
                session.auth = (self._user, self._password)
            client = DICOMwebClient(self.url, session=session, timeout=self.timeout_s)
            client.set_http_retry_params(retry=False)
            self._local.client = client
        return client

    @contextmanager
    def translate(self, doing: str, reference: ArchiveReference | None = None) -> Iterator[None]:
        """Turn what requests, dicomweb-client and pydicom raise into this module's errors, saying what failed."""
        import requests

        try:
            yield
        except ArchiveError:
            raise
        except requests.exceptions.Timeout:
            raise ArchiveUnavailable(f"{self.description} did not answer within {self.timeout_s:g} s "
                                     f"while {doing}") from None
        except requests.exceptions.ConnectionError:
            raise ArchiveUnavailable(f"{self.description} cannot be reached (while {doing})") from None
        except requests.exceptions.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 404 and reference is not None:
                raise ArchivedScanMissing(f"{self.description} does not hold the scan "
                                          f"{reference.instance_uid}") from None
            if status in (401, 403):
                raise ArchiveUnavailable(f"{self.description} refused the credentials (HTTP {status}); check "
                                         "BRAINSCAN_DICOMWEB_USER and BRAINSCAN_DICOMWEB_PASSWORD") from None
            raise ArchiveUnavailable(f"{self.description} answered HTTP {status} while {doing}") from None
        except requests.exceptions.RequestException as error:
            raise ArchiveUnavailable(f"{self.description} failed while {doing} ({type(error).__name__})") from None
        except Exception as error:  # A malformed answer (multipart, JSON, DICOM) is the archive's failure too.
            raise ArchiveUnavailable(f"{self.description} gave an answer that could not be read while {doing} "
                                     f"({type(error).__name__})") from None

    # The archive moves bytes, not datasets: the object stored is the object hashed, and a reader gets
    # exactly those bytes back. dicomweb-client's public store_instances/retrieve_instance re-encode
    # through pydicom (slow, and a different serialisation would fail the sha256 check), so the
    # multipart helpers underneath them are used; dicomweb-client is pinned in requirements.txt and
    # tests/test_archive.py exercises both against a real Orthanc.

    def store(self, archived: ArchiveObject) -> None:
        """STOW-RS the object's bytes; an instance the archive already holds with the same UID is not an error."""
        from dicomweb_client.web import _Transaction

        reference = archived.reference
        with self.translate("storing a scan"):
            client = self.client()
            response = client._http_post_multipart_application_dicom(
                client._get_studies_url(_Transaction.STORE), [archived.data])
        failed = [item for item in (response.get("FailedSOPSequence") or [])
                  if item.get("ReferencedSOPInstanceUID") == reference.instance_uid]
        stored = [item for item in (response.get("ReferencedSOPSequence") or [])
                  if item.get("ReferencedSOPInstanceUID") == reference.instance_uid]
        if failed or not stored:
            reason = failed[0].get("FailureReason") if failed else None
            raise ArchiveError(f"{self.description} did not store the scan"
                               + (f" (failure reason {reason:#06x})" if isinstance(reason, int) else ""))

    def fetch(self, reference: ArchiveReference) -> bytes:
        """WADO-RS the instance in the transfer syntax it was stored in; its bytes, checked against the sha256."""
        data = self.retrieve(reference.study_uid, reference.series_uid, reference.instance_uid, reference)
        if hashlib.sha256(data).hexdigest() != reference.object_sha256:
            raise ArchivedScanAltered(f"the scan {reference.instance_uid} in {self.description} no longer matches "
                                      "the sha256 recorded when it was stored")
        return data

    def retrieve(self, study_uid: str, series_uid: str, instance_uid: str,
                 reference: ArchiveReference | None = None) -> bytes:
        """WADO-RS one instance's bytes exactly as stored (any transfer syntax), unchecked: a PACS pull's way in."""
        from dicomweb_client.web import _Transaction

        missing = reference or ArchiveReference(study_uid, series_uid, instance_uid, "")
        with self.translate("reading a scan", missing):
            client = self.client()
            url = client._get_instances_url(_Transaction.RETRIEVE, study_uid, series_uid, instance_uid)
            response = client._http_get(url, headers={"Accept": RETRIEVE_ACCEPT})
            if response.headers.get("Content-Type", "").startswith("application/dicom"):
                parts = [response.content]  # Some servers send the one part without the multipart wrapper.
            else:
                parts = list(client._decode_multipart_message(response, stream=False))
        if len(parts) != 1:
            raise ArchiveUnavailable(f"{self.description} answered with {len(parts)} objects for one scan")
        return bytes(parts[0])

    def contains(self, reference: ArchiveReference) -> bool:
        """Whether a QIDO-RS search finds the instance."""
        with self.translate("looking a scan up", reference):
            found = self.client().search_for_instances(
                study_instance_uid=reference.study_uid, series_instance_uid=reference.series_uid,
                search_filters={"SOPInstanceUID": reference.instance_uid})
        return bool(found)

    def ping(self) -> None:
        """Raise `ArchiveUnavailable` unless a one-study QIDO-RS search answers."""
        with self.translate("checking that it answers"):
            self.client().search_for_studies(limit=1)
