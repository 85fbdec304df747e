"""The hospital's archive as a reader meets it: find studies (QIDO-RS), list a study's series, pull a series' instances (WADO-RS).

This is the way in from a PACS (or the team's Orthanc): `find_studies` searches by patient ID,
accession number, study date or range and modality (MR by default) and lists each study with its
series; `series_instances` lists a series' instances in slice order; `retrieve` gets one
instance's bytes exactly as stored. Patient name and ID come back for display while reading, as
in any viewer; nothing here writes them anywhere, and the history keeps only UIDs and sha256
(`core.review.uploads.take_pulled`).

Every failure is a `core.errors.ArchiveError` with the archive's own wording (down, credentials,
missing), through `DicomWebArchive.translate`.
"""

from __future__ import annotations

import datetime as _datetime
import re
from dataclasses import dataclass, field

from core.archive.dicomweb import DicomWebArchive
from core.errors import ArchiveError

# QIDO-RS attributes asked for beyond the defaults, by keyword.
_STUDY_FIELDS = ("StudyDescription", "StudyDate", "AccessionNumber", "PatientID", "PatientName", "ModalitiesInStudy",
                 "NumberOfStudyRelatedInstances")
_SERIES_FIELDS = ("SeriesDescription", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")
_INSTANCE_FIELDS = ("InstanceNumber", "SOPClassUID", "NumberOfFrames")
DEFAULT_LIMIT = 50


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study as QIDO-RS describes it."""

    series_uid: str
    modality: str
    description: str
    number: int | None
    instances: int | None


@dataclass(frozen=True)
class StudySummary:
    """One study: its UID, date (ISO, or ""), description, accession, the patient as the archive names them, its series."""

    study_uid: str
    date: str
    description: str
    accession: str
    patient_id: str
    patient_name: str
    modalities: tuple[str, ...]
    series: tuple[SeriesSummary, ...] = field(default=())


@dataclass(frozen=True)
class InstanceSummary:
    """One instance of a series: its UIDs, slice number (InstanceNumber, or None), SOP class and frame count."""

    study_uid: str
    series_uid: str
    instance_uid: str
    number: int | None
    sop_class_uid: str
    frames: int


def parse_date(text: str) -> _datetime.date:
    """'2026-11-30' or '20261130' -> a date; raises `ValueError` naming the expected form."""
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return _datetime.datetime.strptime(text.strip(), form).date()
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date; write it as YYYY-MM-DD")


_DATE = r"\d{4}-?\d{2}-?\d{2}"
_RANGE = re.compile(rf"^(?P<low>{_DATE})?(?P<dash>-(?P<high>{_DATE})?)?$")


def parse_date_range(text: str) -> tuple[_datetime.date | None, _datetime.date | None]:
    """A study date or range as DICOM writes ranges: 'D', 'D-D', 'D-' (from) or '-D' (until), each D as
    YYYY-MM-DD or YYYYMMDD -> (first day or None, last day or None); raises `ValueError` naming the forms."""
    match = _RANGE.match(text.strip())
    if not match or not (match["low"] or match["high"]):
        raise ValueError(f"{text!r} is not a date or a date range; write D, D-D, D- or -D, each D as YYYY-MM-DD")
    low = parse_date(match["low"]) if match["low"] else None
    high = parse_date(match["high"]) if match["high"] else None
    return low, (high if match["dash"] else low)


def study_filters(patient_id: str = "", accession: str = "", date_from: _datetime.date | None = None,
                  date_to: _datetime.date | None = None, modality: str = "MR") -> dict[str, str]:
    """QIDO-RS search filters (PS3.18 8.3.4) for the reader's search; empty fields are left out."""
    filters: dict[str, str] = {}
    if patient_id.strip():
        filters["PatientID"] = patient_id.strip()
    if accession.strip():
        filters["AccessionNumber"] = accession.strip()
    if date_from or date_to:
        if date_from and date_to and date_from > date_to:
            raise ValueError(f"the date range ends ({date_to}) before it starts ({date_from})")
        low = date_from.strftime("%Y%m%d") if date_from else ""
        high = date_to.strftime("%Y%m%d") if date_to else ""
        filters["StudyDate"] = low if low == high else f"{low}-{high}"
    if modality.strip():
        filters["ModalitiesInStudy"] = modality.strip().upper()
    return filters


def find_studies(archive: DicomWebArchive, patient_id: str = "", accession: str = "",
                 date_from: _datetime.date | None = None, date_to: _datetime.date | None = None,
                 modality: str = "MR", limit: int = DEFAULT_LIMIT, with_series: bool = True) -> list[StudySummary]:
    """Studies matching the search, newest first, each with its series (unless `with_series` is False)."""
    filters = study_filters(patient_id, accession, date_from, date_to, modality)
    with archive.translate("searching for studies"):
        found = archive.client().search_for_studies(search_filters=filters, fields=list(_STUDY_FIELDS), limit=limit)
    studies = [_study(item) for item in found]
    if with_series:
        studies = [StudySummary(**{**study.__dict__, "series": tuple(study_series(archive, study.study_uid))})
                   for study in studies]
    return sorted(studies, key=lambda study: (study.date, study.study_uid), reverse=True)


def study_series(archive: DicomWebArchive, study_uid: str) -> list[SeriesSummary]:
    """A study's series, in series-number order."""
    with archive.translate("listing a study's series"):
        found = archive.client().search_for_series(study_instance_uid=study_uid, fields=list(_SERIES_FIELDS))
    series = [SeriesSummary(_text(item, "0020000E"), _text(item, "00080060"), _text(item, "0008103E"),
                            _number(item, "00200011"), _number(item, "00201209")) for item in found]
    return sorted(series, key=lambda item: (item.number is None, item.number or 0, item.series_uid))


def series_instances(archive: DicomWebArchive, study_uid: str, series_uid: str) -> list[InstanceSummary]:
    """A series' instances in slice order (InstanceNumber, then UID); raises `ArchiveError` for an empty series."""
    with archive.translate("listing a series' instances"):
        found = archive.client().search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid,
                                                      fields=list(_INSTANCE_FIELDS))
    instances = [InstanceSummary(study_uid, series_uid, _text(item, "00080018"), _number(item, "00200013"),
                                 _text(item, "00080016"), _number(item, "00280008") or 1) for item in found]
    if not instances:
        raise ArchiveError(f"{archive.description} holds no instance of the series {series_uid}")
    return sorted(instances, key=lambda item: (item.number is None, item.number or 0, item.instance_uid))


def retrieve(archive: DicomWebArchive, instance: InstanceSummary) -> bytes:
    """One instance's bytes as stored (WADO-RS, any transfer syntax)."""
    return archive.retrieve(instance.study_uid, instance.series_uid, instance.instance_uid)


def _study(item: dict) -> StudySummary:
    date = _text(item, "00080020")
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    modalities = tuple(str(value) for value in (item.get("00080061") or {}).get("Value") or ())
    return StudySummary(_text(item, "0020000D"), date, _text(item, "00081030"), _text(item, "00080050"),
                        _text(item, "00100020"), _person(item, "00100010"), modalities)


def _text(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""


def _number(item: dict, tag: str) -> int | None:
    text = _text(item, tag)
    try:
        return int(float(text))
    except ValueError:
        return None


def _person(item: dict, tag: str) -> str:
    """A PN value in DICOM JSON ({"Alphabetic": "Doe^Jane"}) as "Doe, Jane"."""
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    name = values[0].get("Alphabetic", "") if isinstance(values[0], dict) else str(values[0])
    parts = [part for part in name.split("^") if part]
    return ", ".join(parts[:2]) if parts else ""
