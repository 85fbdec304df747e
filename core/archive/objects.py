"""What the archive holds for an upload: a DICOM object with nothing identifying in it, and its reference.

Every archived scan is one DICOM Part 10 object, whichever archive holds it, so a scan folder can
be copied into a DICOMweb archive unchanged and the history's references stay valid:

- a **JPEG, PNG or other picture** becomes a Secondary Capture built with highdicom: its pixel
  data is the picture exactly as the app decoded it (8-bit greyscale, or 8-bit RGB when the
  channels differ), with a pseudonymous patient (`BS-` and the first 16 hex digits of the
  upload's sha256, no name, birth date or sex) and a study and series of its own. No clinical
  fact is invented: no modality beyond Secondary Capture's "OT", no body part, no date.
- a **DICOM upload** is de-identified first with dicognito (the Basic Application Level
  Confidentiality Profile of PS3.15: names, IDs, UIDs, addresses, institutions and dates
  replaced), then its private elements, overlays and free-text (LT, ST, UT) elements go too.

Both are deterministic: the same upload gives byte-identical objects with the same UIDs, so two
replicas storing one scan store one object, and a repeated upload is not a new instance.
Burned-in text in the pixels is not touched: a picture with a patient's name written into it
keeps it (as any header-only de-identification does).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from core.errors import ArchiveError
from core.scans.scan import Scan

MANUFACTURER = "BrainScan Review"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# An 8-bit window that maps stored values to display values one to one (PS3.3 C.11.2.1.2).
IDENTITY_WINDOW = (128.0, 256.0)
_FREE_TEXT_VRS = ("LT", "ST", "UT")


@dataclass(frozen=True)
class ArchiveReference:
    """Where an archived scan is and what it must hash to: DICOM UIDs and the sha256 of the object's bytes."""

    study_uid: str
    series_uid: str
    instance_uid: str
    object_sha256: str
    sop_class_uid: str = SECONDARY_CAPTURE

    def to_detail(self) -> dict[str, str]:
        """The reference as the history records it (the `detail` of an archive event)."""
        return {"study_uid": self.study_uid, "series_uid": self.series_uid, "instance_uid": self.instance_uid,
                "object_sha256": self.object_sha256, "sop_class_uid": self.sop_class_uid}

    @classmethod
    def from_detail(cls, detail: dict) -> ArchiveReference:
        """The reference an archive event recorded; raises ArchiveError when the record is incomplete."""
        try:
            return cls(str(detail["study_uid"]), str(detail["series_uid"]), str(detail["instance_uid"]),
                       str(detail["object_sha256"]), str(detail.get("sop_class_uid") or SECONDARY_CAPTURE))
        except (KeyError, TypeError):
            raise ArchiveError("the history's record of this archived scan is incomplete") from None


@dataclass(frozen=True)
class ArchiveObject:
    """A DICOM object ready to archive: its bytes and its reference."""

    data: bytes
    reference: ArchiveReference

    @property
    def sha256(self) -> str:
        """The sha256 of the object's bytes (not of the upload)."""
        return self.reference.object_sha256


def dicom_bytes(dataset) -> bytes:
    """A pydicom dataset as DICOM Part 10 bytes (preamble, file meta), the one serialisation the archive hashes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reference_of(data: bytes) -> ArchiveReference:
    """The reference of DICOM bytes already in an archive (their UIDs and sha256); raises ArchiveError if unreadable."""
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        return ArchiveReference(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                                str(dataset.SOPInstanceUID), hashlib.sha256(data).hexdigest(),
                                str(dataset.SOPClassUID))
    except Exception as error:  # A damaged object is reported, not raised as pydicom's own type.
        raise ArchiveError(f"an archived object could not be read as DICOM ({type(error).__name__})") from None


def object_for_upload(data: bytes, scan: Scan, upload_sha256: str) -> ArchiveObject:
    """The object to archive for an upload that decoded to `scan`: a de-identified copy of DICOM, else a capture."""
    if scan.source_format == "DICOM":
        return deidentified_copy(data, upload_sha256)
    return secondary_capture(scan, upload_sha256)


def _uid(upload_sha256: str, role: str) -> str:
    """A 2.25 UID (PS3.5 B.2) of 128 bits derived from the upload's digest: the same upload, the same UIDs."""
    digest = hashlib.sha256(f"brainscan-review\n{role}\n{upload_sha256}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def secondary_capture(scan: Scan, upload_sha256: str) -> ArchiveObject:
    """A Secondary Capture of a decoded picture (8-bit grey, or RGB when `scan.colour` is set), pseudonymous."""
    import highdicom
    from pydicom.uid import ExplicitVRLittleEndian

    colour = scan.colour is not None
    pixels = np.ascontiguousarray(scan.colour if colour else scan.image, dtype=np.uint8)
    study, series, instance = (_uid(upload_sha256, role) for role in ("study", "series", "instance"))
    try:
        capture = highdicom.sc.SCImage(
            pixel_array=pixels, photometric_interpretation="RGB" if colour else "MONOCHROME2", bits_allocated=8,
            # highdicom asks for an orientation in the patient coordinate system; it is emptied below.
            coordinate_system="PATIENT", patient_orientation=("L", "P"),
            study_instance_uid=study, series_instance_uid=series, series_number=1, sop_instance_uid=instance,
            instance_number=1, manufacturer=MANUFACTURER, patient_id=f"BS-{upload_sha256[:16]}",
            transfer_syntax_uid=ExplicitVRLittleEndian)
    except Exception as error:  # highdicom validates everything; a refusal means this picture cannot be archived.
        raise ArchiveError(f"the picture could not be made into a DICOM object ({type(error).__name__}: "
                           f"{error})") from None
    # No clock time in the object: the same upload must give the same bytes on every replica.
    for keyword in ("DateOfSecondaryCapture", "TimeOfSecondaryCapture", "InstanceCreationDate",
                    "InstanceCreationTime", "ContentDate", "ContentTime", "StudyDate", "StudyTime"):
        if keyword in capture:
            setattr(capture, keyword, "") if keyword in ("ContentDate", "ContentTime", "StudyDate", "StudyTime") \
                else delattr(capture, keyword)
    for equipment in capture.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in equipment:
            del equipment.ContributionDateTime
    capture.StudyDescription = "BrainScan Review upload"
    capture.SeriesDescription = f"Uploaded picture ({scan.source_format})"
    capture.DerivationDescription = (f"A {scan.source_format} file uploaded to BrainScan Review, stored as the app "
                                     f"decoded it; sha256 of the uploaded file {upload_sha256}")
    capture.PatientOrientation = ""  # Type 2: an uploaded picture's orientation is not known, so none is stated.
    capture.PatientIdentityRemoved = "YES"
    if not colour:
        capture.WindowCenter, capture.WindowWidth = IDENTITY_WINDOW
    data = dicom_bytes(capture)
    return ArchiveObject(data, ArchiveReference(study, series, instance, hashlib.sha256(data).hexdigest(),
                                                SECONDARY_CAPTURE))


def deidentified_copy(data: bytes, upload_sha256: str) -> ArchiveObject:
    """A DICOM upload de-identified (dicognito, then private, overlay and free-text elements removed)."""
    import pydicom
    from dicognito.anonymizer import Anonymizer

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        _complete_file_meta(dataset, upload_sha256)
        # Seeded by the upload's digest: the same file always gets the same pseudonyms and UIDs.
        Anonymizer(seed=upload_sha256).anonymize(dataset)
        dataset.remove_private_tags()
        dataset.walk(_drop_free_text_and_overlays)  # walk descends into sequences, so nested items go too
        dataset.PatientIdentityRemoved = "YES"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        copy = dicom_bytes(dataset)
        reference = ArchiveReference(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                                     str(dataset.SOPInstanceUID), hashlib.sha256(copy).hexdigest(),
                                     str(dataset.SOPClassUID))
    except ArchiveError:
        raise
    except Exception as error:  # pydicom and dicognito raise many types on odd files; all mean "not archived".
        raise ArchiveError(f"the DICOM file could not be de-identified for the archive ({type(error).__name__})") \
            from None
    return ArchiveObject(copy, reference)


def _complete_file_meta(dataset, upload_sha256: str) -> None:
    """Give a DICOM file read without its meta header (or with a partial one) what Part 10 requires.

    A file without a study, series or instance UID (hand-made files often lack them) gets ones
    derived from the upload's digest, which de-identification then replaces like any other UID.
    """
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        dataset.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(dataset, "original_encoding", (True, True))
        meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian if implicit else (
            uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
    if "SOPClassUID" not in dataset:
        raise ArchiveError("the DICOM file names no SOP class (what kind of object it is), so it cannot be archived")
    for keyword, role in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"), ("SOPInstanceUID", "instance")):
        if not str(dataset.get(keyword, "") or ""):
            setattr(dataset, keyword, _uid(upload_sha256, role))
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID


def _drop_free_text_and_overlays(dataset, element) -> None:
    # Free text (comments, histories, addresses) may name anyone; overlays and curves may hold drawn text.
    group = element.tag.group
    if element.VR in _FREE_TEXT_VRS or 0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF:
        del dataset[element.tag]
