"""AI results back into the source study as DICOM (IHE AI Results): structured reports and a heat-map capture, by highdicom.

- `model_report`: a Comprehensive 3D SR holding a TID 1500 Measurement Report. One measurement
  group per key slice: the model's class as a qualitative evaluation, each class's calibrated
  probability as a measurement, the algorithm (model name, version, the weights' sha256) and the
  source instance it refers to. `VerificationFlag` UNVERIFIED: no reader has read it yet.
- `reader_report`: once a series has a final label (an agreed read or an adjudication), the same
  report with the reader as observer and verifying observer (`VERIFIED`), the final class, the
  verdict and the reason.
- `heatmap_capture`: a Secondary Capture of the heat map drawn over the key slice, marked as a
  derived image of it (ImageType DERIVED\\SECONDARY, SourceImageSequence), in the source study.

Classes are coded in a private scheme (`99BRAINSCAN`, as PS3.16 reserves "99" prefixes for):
the product's four classes are its own, not a standard terminology's concepts. Every object is
new (fresh UIDs derived from what it reports, so sending the same result twice stores one object).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.archive.objects import MANUFACTURER, ArchiveObject, dicom_bytes, reference_of
from core.errors import ArchiveError

SCHEME = "99BRAINSCAN"
SCHEME_VERSION = "1"
# LOINC 24590-2: MR Brain (the procedure the report is about).
PROCEDURE = ("24590-2", "LN", "MR Brain")
RESULT_SERIES_NUMBER = 9900  # where results sit in the study: high, so viewers list them after the images


@dataclass(frozen=True)
class KeySlice:
    """One key slice's result: its source instance (DICOM bytes as stored), the model's class and probabilities."""

    source: bytes
    label: str
    probabilities: Mapping[str, float]


@dataclass(frozen=True)
class ModelIdentity:
    """The algorithm as the report names it: model name, version and the sha256 of its weights."""

    name: str
    version: str
    weights_sha256: str


def _code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, SCHEME, meaning, SCHEME_VERSION)


def _uid(*parts: str) -> str:
    digest = hashlib.sha256("\n".join(("brainscan-review-result", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# Patient and study attributes a result copies from its source; a source may lack these type 2
# attributes (many exports do), and a result then carries them empty, as the standard allows.
_COPIED_EMPTY_IF_MISSING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                            "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _dataset(data: bytes):
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as error:  # A damaged source is reported, not raised as pydicom's own type.
        raise ArchiveError(f"a source instance could not be read as DICOM ({type(error).__name__})") from None
    for keyword in _COPIED_EMPTY_IF_MISSING:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def _groups(slices: Sequence[KeySlice], model: ModelIdentity, display_names: Mapping[str, str],
            final: tuple[str, str, str] | None = None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                              parameters=[f"weights sha256 {model.weights_sha256}"])
    groups = []
    for index, item in enumerate(slices, start=1):
        source = _dataset(item.source)
        evaluations = [hd.sr.QualitativeEvaluation(_code("model-class", "Model's class"),
                                                   _code(item.label, display_names.get(item.label, item.label)))]
        if final is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                _code("final-class", "Reader's final class"), _code(final[0], display_names.get(final[0], final[0]))))
            evaluations.append(hd.sr.QualitativeEvaluation(_code("verdict", "Reader's verdict"),
                                                           _code(final[1], final[1].capitalize())))
        measurements = [hd.sr.Measurement(name=_code(f"p-{name}", f"Probability of {display_names.get(name, name)}"),
                                          value=float(value), unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
                        for name, value in item.probabilities.items()]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid("group", str(source.SOPInstanceUID), model.version),
                                                         identifier=f"key slice {index}"),
            algorithm_id=algorithm,
            source_images=[hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID), str(source.SOPInstanceUID))],
            qualitative_evaluations=evaluations, measurements=measurements)
        if final is not None and final[2]:
            group[0].ContentSequence.append(hd.sr.TextContentItem(
                _code("reason", "Reader's reason"), final[2], relationship_type="CONTAINS"))
        groups.append(group)
    return groups


def _report(slices: Sequence[KeySlice], model: ModelIdentity, display_names: Mapping[str, str], reader: str = "",
            final: tuple[str, str, str] | None = None, organisation: str = "") -> ArchiveObject:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    if not slices:
        raise ArchiveError("a result needs at least one key slice")
    evidence = [_dataset(item.source) for item in slices]
    study = {str(dataset.StudyInstanceUID) for dataset in evidence}
    if len(study) != 1:
        raise ArchiveError("the key slices of one result must come from one study")
    device = hd.sr.ObserverContext(codes.DCM.Device, hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device", model.name, model.version, model.weights_sha256), name=model.name,
        manufacturer_name=MANUFACTURER, model_name=f"{model.name} {model.version}"))
    person = hd.sr.ObserverContext(codes.DCM.Person, hd.sr.PersonObserverIdentifyingAttributes(name=reader)) \
        if final is not None else None
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device),
        procedure_reported=Code(*PROCEDURE), imaging_measurements=_groups(slices, model, display_names, final))
    kind = "verified" if final is not None else "model"
    key = [kind, model.weights_sha256, *(str(dataset.SOPInstanceUID) for dataset in evidence),
           *(final or ()), reader]
    report = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=content, series_instance_uid=_uid("series", *study, "sr"),
        series_number=RESULT_SERIES_NUMBER, sop_instance_uid=_uid("instance", *key), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=final is not None, is_verified=final is not None,
        verifying_observer_name=reader if final is not None else None,
        verifying_organization=(organisation or MANUFACTURER) if final is not None else None,
        series_description="BrainScan Review AI result" + (" (read)" if final is not None else ""))
    data = dicom_bytes(report)
    return ArchiveObject(data, reference_of(data))


def model_report(slices: Sequence[KeySlice], model: ModelIdentity, display_names: Mapping[str, str]) -> ArchiveObject:
    """The model's result for a series' key slices as an UNVERIFIED TID 1500 SR in their study."""
    return _report(slices, model, display_names)


def person_name(name: str) -> str:
    """A display name as a DICOM person name: "Sam Reader" -> "Reader^Sam"; one already in PN form is kept."""
    name = " ".join(name.split())
    if "^" in name or not name:
        return name
    parts = name.split(" ")
    return f"{parts[-1]}^{' '.join(parts[:-1])}" if len(parts) > 1 else f"{name}^"


def reader_report(slices: Sequence[KeySlice], model: ModelIdentity, display_names: Mapping[str, str], reader: str,
                  final_label: str, verdict: str, reason: str, organisation: str = "") -> ArchiveObject:
    """The series' final read as a VERIFIED SR: the reader as observer and verifier, final class, verdict and reason."""
    if not reader.strip():
        raise ArchiveError("a verified result names its reader")
    return _report(slices, model, display_names, person_name(reader), (final_label, verdict, reason.strip()),
                   organisation)


def heatmap_capture(source: bytes, overlay: np.ndarray, model: ModelIdentity) -> ArchiveObject:
    """A Secondary Capture of the heat map over a key slice (RGB uint8 (H, W, 3)), derived from that slice."""
    import highdicom as hd
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    overlay = np.ascontiguousarray(overlay, dtype=np.uint8)
    if overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ArchiveError("the heat map must be an RGB picture")
    reference = _dataset(source)
    instance = str(reference.SOPInstanceUID)
    stated = list(reference.get("PatientOrientation") or [])
    # highdicom asks for an orientation in the patient coordinate system: the source's own where it
    # states one, else a placeholder that is emptied below, so nothing the source did not say is claimed.
    orientation = tuple(stated) if len(stated) == 2 else ("L", "P")
    capture = hd.sc.SCImage.from_ref_dataset(
        reference, overlay, "RGB", 8, "PATIENT", _uid("series", str(reference.StudyInstanceUID), "heatmap"),
        RESULT_SERIES_NUMBER + 1, _uid("heatmap", instance, model.weights_sha256), 1, MANUFACTURER,
        patient_orientation=orientation, transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
    if len(stated) != 2:
        capture.PatientOrientation = ""
    capture.ImageType = ["DERIVED", "SECONDARY"]
    capture.SeriesDescription = "BrainScan Review heat map"
    capture.DerivationDescription = f"heat map of {model.name} {model.version} over the source slice"
    source_item = Dataset()
    source_item.ReferencedSOPClassUID = reference.SOPClassUID
    source_item.ReferencedSOPInstanceUID = instance
    capture.SourceImageSequence = DicomSequence([source_item])
    data = dicom_bytes(capture)
    return ArchiveObject(data, reference_of(data))
