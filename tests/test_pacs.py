"""The PACS way in, against a real Orthanc: find studies by patient, accession, date and modality; pull a series."""

from __future__ import annotations

import csv
import datetime
import io
import uuid

import numpy as np
import pydicom
import pytest
from pydicom import uid

from core.archive.dicomweb import DicomWebArchive
from core.archive.objects import ArchiveObject, reference_of
from core.archive.pacs import find_studies, parse_date, series_instances, study_filters, study_series
from core.review.uploads import take_pulled
from tests.synthetic import synthetic_slice
from tests.test_dicom import make_dicom


def archive_of(server) -> DicomWebArchive:
    return DicomWebArchive(server.url, server.user, server.password, 10.0)


def store(archive: DicomWebArchive, data: bytes) -> None:
    archive.store(ArchiveObject(data, reference_of(data)))


def reshaped(data: bytes, **elements) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def a_study(archive: DicomWebArchive) -> dict:
    """One patient's MR study: a 5-slice axial series stored out of order, and a series of mixed objects."""
    patient = f"PAT-{uuid.uuid4().hex[:10]}"
    study, axial, mixed = uid.generate_uid(), uid.generate_uid(), uid.generate_uid()
    common = dict(StudyInstanceUID=study, PatientID=patient, PatientName="Doe^Jane", StudyDate="20261115",
                  AccessionNumber=f"ACC-{patient[-6:]}", StudyDescription="MRI HEAD")
    for number in (3, 1, 5, 2, 4):
        store(archive, make_dicom(synthetic_slice(number, 96), SeriesInstanceUID=axial, SeriesNumber=2,
                                  SeriesDescription="AX T2", InstanceNumber=number, **common))
    store(archive, make_dicom(synthetic_slice(9, 96), SeriesInstanceUID=mixed, SeriesNumber=7,
                              SeriesDescription="MIXED", InstanceNumber=1, **common))
    ct = make_dicom(synthetic_slice(10, 96), SeriesInstanceUID=mixed, SeriesNumber=7, InstanceNumber=2, **common)
    store(archive, reshaped(ct, Modality="CT", SOPClassUID=uid.CTImageStorage))
    store(archive, make_dicom(np.stack([synthetic_slice(seed, 64) for seed in (1, 2, 3)]), SeriesInstanceUID=mixed,
                              SeriesNumber=7, InstanceNumber=3, **common))
    report = pydicom.Dataset()
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = uid.BasicTextSRStorage
    report.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    report.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    report.SOPClassUID, report.SOPInstanceUID = uid.BasicTextSRStorage, report.file_meta.MediaStorageSOPInstanceUID
    report.Modality, report.SeriesInstanceUID, report.SeriesNumber, report.InstanceNumber = "SR", mixed, 7, 4
    for keyword, value in common.items():
        setattr(report, keyword, value)
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    store(archive, buffer.getvalue())
    return {"patient": patient, "study": study, "axial": axial, "mixed": mixed, "accession": common["AccessionNumber"]}


def test_search_filters_follow_qido_and_dates_are_checked():
    assert study_filters("P1", "A1", datetime.date(2026, 1, 1), datetime.date(2026, 1, 31)) == {
        "PatientID": "P1", "AccessionNumber": "A1", "StudyDate": "20260101-20260131", "ModalitiesInStudy": "MR"}
    assert study_filters(date_from=datetime.date(2026, 1, 1), modality="") == {"StudyDate": "20260101-"}
    with pytest.raises(ValueError, match="ends"):
        study_filters(date_from=datetime.date(2026, 2, 1), date_to=datetime.date(2026, 1, 1))
    assert parse_date("2026-11-30") == parse_date("20261130") == datetime.date(2026, 11, 30)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_date("30/11/2026")


def test_a_study_is_found_by_patient_accession_and_date_with_its_series(orthanc_server):
    archive = archive_of(orthanc_server)
    made = a_study(archive)
    [study] = find_studies(archive, patient_id=made["patient"])
    assert study.study_uid == made["study"] and study.date == "2026-11-15" and study.description == "MRI HEAD"
    assert study.patient_name == "Doe, Jane" and study.accession == made["accession"]
    assert [(series.number, series.description, series.instances) for series in study.series] == [
        (2, "AX T2", 5), (7, "MIXED", 4)]
    assert [item.study_uid for item in find_studies(archive, accession=made["accession"])] == [made["study"]]
    in_range = find_studies(archive, patient_id=made["patient"], date_from=datetime.date(2026, 11, 1),
                            date_to=datetime.date(2026, 11, 30))
    assert [item.study_uid for item in in_range] == [made["study"]]
    assert find_studies(archive, patient_id=made["patient"], date_to=datetime.date(2026, 10, 31)) == []
    assert find_studies(archive, patient_id=made["patient"], modality="US") == []


def test_a_series_is_pulled_in_slice_order_and_each_object_classified_or_refused_with_its_reason(
        orthanc_server, tiny_classifier):
    archive = archive_of(orthanc_server)
    made = a_study(archive)
    axial = series_instances(archive, made["study"], made["axial"])
    assert [instance.number for instance in axial] == [1, 2, 3, 4, 5]
    seen = []
    taken = take_pulled(tiny_classifier, archive, axial, 2, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5) and len(seen) == 5
    assert [item.result.filename for item in taken] == [f"S2-I000{number}.dcm" for number in range(1, 6)]
    assert all(item.result.status == "ok" for item in taken)
    # The reference is the PACS's own instance: nothing is stored again, and it reads back byte for byte.
    for instance, item in zip(axial, taken):
        assert item.reference.instance_uid == instance.instance_uid
        assert archive.fetch(item.reference)
    mixed = take_pulled(tiny_classifier, archive, series_instances(archive, made["study"], made["mixed"]), 7)
    statuses = [(item.result.status, item.result.message) for item in mixed]
    assert statuses[0][0] == "ok"
    assert statuses[1][0] == "rejected" and "CT" in statuses[1][1]
    assert statuses[2][0] == "ok"  # multi-frame: one result for the instance
    assert statuses[3][0] == "rejected" and "structured report" in statuses[3][1]
    # Refused objects keep their reference: the reader can still see which instance it was.
    assert all(item.reference is not None and item.reference.series_uid == made["mixed"] for item in mixed)


def test_pacs_find_and_pull_on_the_command_line(dicomweb_env, tiny_model_path, tmp_path, capsys):
    from core.cli import main

    made = a_study(archive_of(dicomweb_env))
    assert main(["pacs", "find", "--patient-id", made["patient"]]) == 0
    printed = capsys.readouterr().out
    assert made["study"] in printed and "AX T2" in printed and "MIXED" in printed
    out = tmp_path / "pulled.csv"
    assert main(["pacs", "pull", made["study"], made["axial"], "--model", str(tiny_model_path),
                 "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["file"] for row in rows] == [f"S2-I000{number}.dcm" for number in range(1, 6)]
    assert all(row["status"] == "ok" and row["predicted_class"] for row in rows)
    assert "Doe" not in out.read_text() and made["patient"] not in out.read_text()
    assert main(["pacs", "pull", made["study"], made["mixed"], "--model", str(tiny_model_path),
                 "--csv", str(out)]) == 1


def test_pacs_commands_without_a_dicomweb_archive_say_what_to_set(capsys):
    from core.cli import main

    assert main(["pacs", "find", "--patient-id", "X"]) == 2
    assert "BRAINSCAN_DICOMWEB_URL" in capsys.readouterr().err
