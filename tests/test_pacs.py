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
from core.archive.objects import ArchiveObject, ArchiveReference, reference_of
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
    """One patient's MR study: a 5-slice axial series stored out of order, and a series of mixed objects (an MR
    slice, a CT, a multi-frame MR, a text SR and an MR localizer)."""
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
    localizer = make_dicom(synthetic_slice(11, 64), SeriesInstanceUID=mixed, SeriesNumber=7, InstanceNumber=5,
                           **common)
    store(archive, reshaped(localizer, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
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


def test_a_date_range_is_read_as_dicom_writes_ranges():
    from core.archive.pacs import parse_date_range

    day, other = datetime.date(2026, 11, 1), datetime.date(2026, 11, 30)
    assert parse_date_range("2026-11-01") == parse_date_range("20261101") == (day, day)
    assert parse_date_range("2026-11-01-2026-11-30") == parse_date_range("20261101-20261130") == (day, other)
    assert parse_date_range("2026-11-01-") == (day, None) and parse_date_range("-20261130") == (None, other)
    for wrong in ("", "-", "2026-11", "20261101--20261130", "yesterday"):
        with pytest.raises(ValueError, match="D-D"):
            parse_date_range(wrong)


def test_a_study_is_found_by_patient_accession_and_date_with_its_series(orthanc_server):
    archive = archive_of(orthanc_server)
    made = a_study(archive)
    [study] = find_studies(archive, patient_id=made["patient"])
    assert study.study_uid == made["study"] and study.date == "2026-11-15" and study.description == "MRI HEAD"
    assert study.patient_name == "Doe, Jane" and study.accession == made["accession"]
    assert [(series.number, series.description, series.instances) for series in study.series] == [
        (2, "AX T2", 5), (7, "MIXED", 5)]
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
    assert statuses[4][0] == "rejected" and "localizer" in statuses[4][1]
    # Refused objects keep their reference: the reader can still see which instance it was.
    assert all(item.reference is not None and item.reference.series_uid == made["mixed"] for item in mixed)


def delete_study(server, study_uid: str) -> None:
    """Remove a study from the test Orthanc through its REST API, as a PACS administrator would."""
    import requests

    root = server.url.removesuffix("/dicom-web")
    auth = (server.user, server.password)
    [orthanc_id] = [entry["ID"] for entry in requests.post(f"{root}/tools/lookup", data=study_uid, auth=auth,
                                                           timeout=10).json()]
    requests.delete(f"{root}/studies/{orthanc_id}", auth=auth, timeout=10).raise_for_status()


def test_a_retrieve_cut_off_halfway_fails_the_whole_pull_with_one_message(orthanc_server, tiny_classifier):
    from core.errors import ArchiveError
    from tests.orthanc import cutting_proxy

    made = a_study(archive_of(orthanc_server))
    axial = series_instances(archive_of(orthanc_server), made["study"], made["axial"])
    with cutting_proxy(orthanc_server.url, cut_at_retrieve=3) as proxied:
        archive = DicomWebArchive(proxied, orthanc_server.user, orthanc_server.password, 10.0)
        with pytest.raises(ArchiveError, match="could not be read whole") as raised:
            take_pulled(tiny_classifier, archive, axial, 2)
    assert "pull it again" in str(raised.value) and orthanc_server.password not in str(raised.value)
    # The archive is whole again: the same pull goes through.
    assert len(take_pulled(tiny_classifier, archive_of(orthanc_server), axial, 2)) == 5


def test_a_pull_cut_off_or_of_a_study_gone_records_nothing_and_the_cli_says_so_in_one_line(
        dicomweb_env, tiny_model_path, tmp_path, capsys, monkeypatch):
    from core.cli import main
    from tests.orthanc import cutting_proxy

    made = a_study(archive_of(dicomweb_env))
    history = tmp_path / "history.sqlite3"
    out = tmp_path / "cut.csv"
    with cutting_proxy(dicomweb_env.url, cut_at_retrieve=2) as proxied:
        monkeypatch.setenv("BRAINSCAN_DICOMWEB_URL", proxied)
        code = main(["pacs", "predict", made["study"], "--series", made["axial"], "--model", str(tiny_model_path),
                     "--csv", str(out), "--send-results", "--database", str(history)])
    monkeypatch.setenv("BRAINSCAN_DICOMWEB_URL", dicomweb_env.url)
    error = capsys.readouterr().err
    assert code == 2 and "could not be read whole" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1, error
    assert not out.exists() and (not history.exists() or HistoryStore(history).events() == [])
    assert not [series for series in study_series(archive_of(dicomweb_env), made["study"]) if series.number == 9900]

    delete_study(dicomweb_env, made["study"])
    code = main(["pacs", "predict", made["study"], "--model", str(tiny_model_path), "--csv", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert made["study"] in error and not out.exists()


def test_pacs_find_and_pull_on_the_command_line(dicomweb_env, tiny_model_path, tmp_path, capsys):
    from core.cli import main

    made = a_study(archive_of(dicomweb_env))
    assert main(["pacs", "find", "--patient-id", made["patient"]]) == 0
    printed = capsys.readouterr().out
    assert made["study"] in printed and "AX T2" in printed and "MIXED" in printed
    # The Study Instance UID first on each study's line; nothing of the patient on the terminal.
    studies = [line for line in printed.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in studies] == [made["study"]]
    assert {line.split()[0] for line in printed.splitlines() if line.startswith(" ")} == {made["axial"], made["mixed"]}
    assert made["patient"] not in printed and "Doe" not in printed
    assert main(["pacs", "find", "--patient-id", made["patient"], "--date", "2026-11-01-2026-11-30"]) == 0
    assert made["study"] in capsys.readouterr().out
    assert main(["pacs", "find", "--patient-id", made["patient"], "--date", "20261201-"]) == 0
    assert capsys.readouterr().out.strip() == "no study matches"
    assert main(["pacs", "find", "--date", "last week"]) == 2
    assert "D-D" in capsys.readouterr().err
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


def _all_text(dataset) -> str:
    """Every value in a dataset and its sequences, as text, for looking things up in an SR."""
    parts = []
    for element in dataset.iterall():
        if element.VR != "SQ":
            parts.append(str(element.value))
    return " ".join(parts)


def test_results_go_back_into_the_study_as_an_unverified_sr_a_heat_map_and_a_verified_sr(
        orthanc_server, tiny_classifier, tmp_path):
    from core.archive.results import KeySlice
    from core.review.results import send_model_result, send_read_result
    from core.review.series import most_suspicious, series_slices
    from core.review.store import HistoryStore

    archive = archive_of(orthanc_server)
    made = a_study(archive)
    instances = series_instances(archive, made["study"], made["axial"])
    taken = take_pulled(tiny_classifier, archive, instances, 2)
    by_sha = {item.result.sha256: (instance, item) for instance, item in zip(instances, taken)}
    key = most_suspicious(series_slices([item.result for item in taken]), 2)
    key_slices = [KeySlice(retrieve_bytes(archive, by_sha[item.sha256][0]), item.label, item.probabilities)
                  for item in key]
    store = HistoryStore(tmp_path / "history.sqlite3")
    heatmap = np.zeros((96, 96, 3), np.uint8)
    heatmap[..., 0] = 200
    sent = send_model_result(store, archive, tiny_classifier, made["axial"], key_slices, heatmap,
                             session_id="s1", reviewer="Ann")
    report, capture = (pydicom.dcmread(io.BytesIO(archive.fetch(reference))) for reference in sent)
    assert report.SOPClassUID == uid.Comprehensive3DSRStorage and report.VerificationFlag == "UNVERIFIED"
    assert report.StudyInstanceUID == made["study"] and report.PatientID == made["patient"]
    text = _all_text(report)
    assert tiny_classifier.card.name in text and tiny_classifier.card.data["model_sha256"] in text
    assert key[0].label in text and "Probability of" in text
    referenced = {item.ReferencedSOPInstanceUID for item in report.CurrentRequestedProcedureEvidenceSequence[0]
                  .ReferencedSeriesSequence[0].ReferencedSOPSequence}
    assert referenced == {by_sha[item.sha256][0].instance_uid for item in key}
    assert capture.SOPClassUID == uid.SecondaryCaptureImageStorage and list(capture.ImageType)[:2] == ["DERIVED",
                                                                                                     "SECONDARY"]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == by_sha[key[0].sha256][0].instance_uid
    # The study now lists the results after its images.
    numbers = [series.number for series in study_series(archive, made["study"])]
    assert numbers[-2:] == [9900, 9901]
    verified = send_read_result(store, archive, tiny_classifier, made["axial"], key_slices[:1], reader="Sam Reader",
                                final_label="meningioma", verdict="override", reason="dural tail", session_id="s2")
    read = pydicom.dcmread(io.BytesIO(archive.fetch(verified)))
    assert read.VerificationFlag == "VERIFIED" and str(read.VerifyingObserverSequence[0].VerifyingObserverName) == \
        "Reader^Sam"
    assert "dural tail" in _all_text(read) and "meningioma" in _all_text(read)
    roles = [row["note"] for row in store.results_sent(made["axial"])]
    assert roles == ["model report", "heat map", "reader report"]
    # The same result again is the same object: refused, nothing stored or recorded twice.
    from core.review.results import ResultAlreadySent

    objects = len(study_series(archive, made["study"]))
    with pytest.raises(ResultAlreadySent, match="already in the archive"):
        send_model_result(store, archive, tiny_classifier, made["axial"], key_slices, heatmap,
                          session_id="s3", reviewer="Ann")
    assert len(store.results_sent(made["axial"])) == 3 and len(study_series(archive, made["study"])) == objects
    assert store.verify().intact


def retrieve_bytes(archive, instance) -> bytes:
    from core.archive.pacs import retrieve

    return retrieve(archive, instance)


def test_pacs_predict_classifies_a_study_and_sends_its_results_back(dicomweb_env, tiny_model_path, tmp_path, capsys):
    from core.cli import main
    from core.review.store import HistoryStore

    archive = archive_of(dicomweb_env)
    made = a_study(archive)
    out, history = tmp_path / "study.csv", tmp_path / "history.sqlite3"
    # The whole study: the axial series classified, the mixed one's CT, SR and so on refused: exit 1.
    assert main(["pacs", "predict", made["study"], "--model", str(tiny_model_path), "--csv", str(out)]) == 1
    rows = list(csv.DictReader(out.open()))
    assert {row["series_uid"] for row in rows} == {made["axial"], made["mixed"]}
    assert all(row["file"] == f"{row['series_uid']}/{row['instance_uid']}" for row in rows)
    ct = [row for row in rows if row["series_uid"] == made["mixed"] and "CT" in row["message"]]
    assert len(ct) == 1 and ct[0]["status"] == "rejected" and not ct[0]["predicted_class"]
    text = out.read_text() + capsys.readouterr().err
    assert "Doe" not in text and made["patient"] not in text
    # One series, its results sent: an unverified SR and a heat map in the study, both in the history.
    before = len(study_series(archive, made["study"]))
    assert main(["pacs", "predict", made["study"], "--series", made["axial"], "--model", str(tiny_model_path),
                 "--csv", str(out), "--send-results", "--database", str(history)]) == 0
    assert "stored the AI result" in capsys.readouterr().err
    numbers = [series.number for series in study_series(archive, made["study"])]
    assert len(numbers) == before + 2 and numbers[-2:] == [9900, 9901]
    sent = HistoryStore(history).results_sent(made["axial"])
    assert [row["note"] for row in sent] == ["model report", "heat map"]
    report = pydicom.dcmread(io.BytesIO(archive.fetch(ArchiveReference.from_detail(sent[0]["detail"]))))
    assert report.VerificationFlag == "UNVERIFIED"
    assert main(["pacs", "predict", made["study"], "--series", "1.2.3.4", "--model", str(tiny_model_path)]) == 2
    assert "has no series 1.2.3.4" in capsys.readouterr().err

