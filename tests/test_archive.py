"""The scan archive: the content-addressed folder, the DICOM objects it holds, and Orthanc over DICOMweb.

What an upload is stored as is read back pixel for pixel; nothing identifying from a DICOM upload
reaches the archive; every failure is one `ArchiveError` with a message that names the archive.
The DICOMweb cases run against a real Orthanc (tests/orthanc.py).
"""

from __future__ import annotations

import hashlib
import io
import os

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import uid

from core.archive import open_archive
from core.archive.dicomweb import DicomWebArchive
from core.archive.folder import FolderArchive
from core.archive.objects import (ArchiveReference, deidentified_copy, object_for_upload, reference_of,
                                  secondary_capture)
from core.archive.reading import CAPTURE_FORMAT, is_own_capture, scan_from_archive
from core.config import ArchiveSettings, archive_settings
from core.errors import ArchivedScanAltered, ArchivedScanMissing, ArchiveError, ArchiveUnavailable
from core.scans.intake import load_scan
from deploy.team import free_port
from tests.synthetic import encode, synthetic_slice
from tests.test_dicom import IDENTIFYING, PRIVATE_VALUE, identifying_dicom, make_dicom

CANARIES = ("Canary^Patient^Name", "CANARY-PID-31337", "Canary^Referrer", "Canary Institution of Leaks")


def _with_canaries(seed: int) -> bytes:
    """An MR file whose identifying tags hold canary values, with a private tag and a free-text comment."""
    data = identifying_dicom(synthetic_slice(seed, 64))
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PatientName, dataset.PatientID = CANARIES[0], CANARIES[1]
    dataset.ReferringPhysicianName, dataset.InstitutionName = CANARIES[2], CANARIES[3]
    dataset.ImageComments = "Canary comment: call Dr Canary"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def assert_nothing_identifying(data: bytes) -> None:
    """No canary, no identifying value of tests.test_dicom and no private value anywhere in the object's bytes."""
    text = data.decode("latin-1")
    for value in (*CANARIES, *IDENTIFYING.values(), PRIVATE_VALUE, "Canary comment"):
        for part in str(value).replace("^", " ").split():
            if len(part) > 4:
                assert part not in text, f"{part!r} from the upload reached the archive"


def upload_object(data: bytes, name: str):
    scan = load_scan(data, name)
    return scan, object_for_upload(data, scan, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------- the objects


def test_a_picture_becomes_a_deterministic_secondary_capture_read_back_pixel_for_pixel():
    data = encode(synthetic_slice(1, 80))
    scan, archived = upload_object(data, "a.png")
    again = object_for_upload(data, load_scan(data, "a.png"), hashlib.sha256(data).hexdigest())
    assert again.data == archived.data and again.reference == archived.reference
    dataset = pydicom.dcmread(io.BytesIO(archived.data))
    assert str(dataset.SOPClassUID) == uid.SecondaryCaptureImageStorage and is_own_capture(dataset)
    assert str(dataset.PatientID).startswith("BS-") and not str(dataset.get("PatientName", ""))
    assert dataset.get("PatientBirthDate", "") == "" and dataset.get("StudyDate", "") == ""
    assert hashlib.sha256(data).hexdigest() in dataset.DerivationDescription
    back = scan_from_archive(archived.data)
    assert back.source_format == CAPTURE_FORMAT
    np.testing.assert_array_equal(back.image, scan.image)
    assert reference_of(archived.data) == archived.reference


def test_a_colour_picture_keeps_its_colour_and_its_greyscale():
    grey = synthetic_slice(2, 64)
    colour = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    colour[10:20, 10:20] = (0, 0, 255)  # A red mark: the channels differ, so the picture is stored in RGB.
    data = encode(colour)
    scan, archived = upload_object(data, "c.png")
    assert scan.colour is not None
    dataset = pydicom.dcmread(io.BytesIO(archived.data))
    assert dataset.PhotometricInterpretation == "RGB"
    back = scan_from_archive(archived.data)
    np.testing.assert_array_equal(back.image, scan.image)
    np.testing.assert_array_equal(back.colour, scan.colour)


def test_a_dicom_upload_is_archived_without_any_identifying_attribute():
    data = _with_canaries(3)
    with pytest.raises(AssertionError):
        assert_nothing_identifying(data)  # The check finds the canaries where they are.
    scan, archived = upload_object(data, "c.dcm")
    assert_nothing_identifying(archived.data)
    dataset = pydicom.dcmread(io.BytesIO(archived.data))
    assert dataset.PatientIdentityRemoved == "YES"
    assert dataset.Modality == "MR" and not is_own_capture(dataset)
    original = pydicom.dcmread(io.BytesIO(data))
    assert dataset.SOPInstanceUID != original.SOPInstanceUID  # UIDs replaced too: they can be traced back.
    np.testing.assert_array_equal(dataset.pixel_array, original.pixel_array)
    np.testing.assert_array_equal(scan_from_archive(archived.data).image, scan.image)
    assert deidentified_copy(data, hashlib.sha256(data).hexdigest()).data == archived.data  # Deterministic.


def test_a_dicom_file_without_uids_is_given_ones_and_one_without_a_sop_class_is_refused():
    data = make_dicom(synthetic_slice(4, 32))
    dataset = pydicom.dcmread(io.BytesIO(data))
    del dataset.StudyInstanceUID, dataset.SeriesInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    archived = deidentified_copy(buffer.getvalue(), "0" * 64)
    assert archived.reference.study_uid and archived.reference.series_uid
    del dataset.SOPClassUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    with pytest.raises(ArchiveError, match="SOP class"):
        deidentified_copy(buffer.getvalue(), "0" * 64)


def test_damaged_archived_bytes_are_a_rejection_not_a_crash():
    from core.errors import ScanRejected

    with pytest.raises(ScanRejected, match="damaged"):
        scan_from_archive(b"DICM but not really" * 10)


# ---------------------------------------------------------------- the folder


def test_the_folder_stores_atomically_once_and_gives_back_the_same_bytes(tmp_path):
    archive = FolderArchive(tmp_path / "scans")
    _, archived = upload_object(encode(synthetic_slice(5, 48)), "f.png")
    archive.store(archived)
    path = archive.path_of(archived.sha256)
    assert path.parent.name == archived.sha256[:2] and path.read_bytes() == archived.data
    stamp = path.stat().st_mtime_ns
    archive.store(archived)  # Never rewritten.
    assert path.stat().st_mtime_ns == stamp
    assert not [name for name in os.listdir(path.parent) if name.startswith(".incoming-")]
    assert archive.fetch(archived.reference) == archived.data and archive.contains(archived.reference)
    assert list(archive.references()) == [archived.reference]


def test_the_folder_reports_a_missing_or_altered_scan(tmp_path):
    archive = FolderArchive(tmp_path / "scans")
    _, archived = upload_object(encode(synthetic_slice(6, 48)), "f.png")
    with pytest.raises(ArchivedScanMissing, match="does not hold"):
        archive.fetch(archived.reference)
    archive.store(archived)
    path = archive.path_of(archived.sha256)
    path.write_bytes(archived.data[:-1] + b"\x01")
    with pytest.raises(ArchivedScanAltered, match="changed after it was stored"):
        archive.fetch(archived.reference)


def test_the_folder_refuses_bytes_that_do_not_match_their_hash_and_a_folder_it_cannot_write(tmp_path):
    from core.archive.objects import ArchiveObject

    _, archived = upload_object(encode(synthetic_slice(7, 48)), "f.png")
    forged = ArchiveObject(archived.data + b"x", archived.reference)
    with pytest.raises(ArchiveError, match="do not match"):
        FolderArchive(tmp_path / "scans").store(forged)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ArchiveUnavailable, match="cannot be written"):
        FolderArchive(blocker / "scans").store(archived)


def test_settings_pick_the_archive_and_the_environment_wins_over_the_secrets_file(tmp_path, monkeypatch):
    assert isinstance(open_archive(archive_settings()), FolderArchive)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[dicomweb]\nurl = "http://127.0.0.1:1/dicom-web/"\nuser = "u"\npassword = "p"\ntimeout = 2\n')
    monkeypatch.setenv("BRAINSCAN_SECRETS_FILE", str(secrets))
    settings = archive_settings()
    assert (settings.dicomweb_url, settings.user, settings.password, settings.timeout_s) == \
        ("http://127.0.0.1:1/dicom-web", "u", "p", 2.0)
    assert "p" not in repr(settings).split("password")[-1][:5]  # The password is kept out of repr.
    monkeypatch.setenv("BRAINSCAN_DICOMWEB_USER", "env-user")
    assert archive_settings().user == "env-user"
    archive = open_archive(archive_settings())
    assert isinstance(archive, DicomWebArchive) and "127.0.0.1:1" in archive.description
    monkeypatch.setenv("BRAINSCAN_DICOMWEB_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="not a number"):
        archive_settings()


# ---------------------------------------------------------------- Orthanc over DICOMweb


def dicomweb(server, **overrides) -> DicomWebArchive:
    settings = dict(url=server.url, user=server.user, password=server.password, timeout_s=10.0) | overrides
    return DicomWebArchive(settings["url"], settings["user"], settings["password"], settings["timeout_s"])


def test_orthanc_gives_back_byte_for_byte_what_was_stored(orthanc_server):
    archive = dicomweb(orthanc_server)
    archive.ping()
    for data, name in ((encode(synthetic_slice(11, 64)), "o.png"), (_with_canaries(12), "o.dcm")):
        _, archived = upload_object(data, name)
        assert not archive.contains(archived.reference)
        archive.store(archived)
        archive.store(archived)  # A second replica storing the same scan changes nothing.
        assert archive.contains(archived.reference)
        fetched = archive.fetch(archived.reference)
        assert fetched == archived.data
        assert_nothing_identifying(fetched)


def test_orthanc_keeps_a_compressed_upload_in_its_own_transfer_syntax(orthanc_server):
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(synthetic_slice(13, 64))))
    dataset.compress(uid.RLELossless)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    scan, archived = upload_object(buffer.getvalue(), "rle.dcm")
    archive = dicomweb(orthanc_server)
    archive.store(archived)
    fetched = archive.fetch(archived.reference)
    assert fetched == archived.data
    assert pydicom.dcmread(io.BytesIO(fetched)).file_meta.TransferSyntaxUID == uid.RLELossless
    np.testing.assert_array_equal(scan_from_archive(fetched).image, scan.image)


def test_orthanc_missing_scan_wrong_hash_bad_credentials_and_a_server_that_is_down(orthanc_server):
    archive = dicomweb(orthanc_server)
    _, archived = upload_object(encode(synthetic_slice(14, 48)), "m.png")
    with pytest.raises(ArchivedScanMissing, match="does not hold"):
        archive.fetch(archived.reference)
    archive.store(archived)
    wrong = ArchiveReference(**{**archived.reference.to_detail(), "object_sha256": "0" * 64})
    with pytest.raises(ArchivedScanAltered, match="no longer matches"):
        archive.fetch(wrong)
    refused = dicomweb(orthanc_server, password="not-the-password")
    with pytest.raises(ArchiveUnavailable, match="refused the credentials") as caught:
        refused.fetch(archived.reference)
    assert "not-the-password" not in str(caught.value)
    with pytest.raises(ArchiveUnavailable, match="refused the credentials"):
        refused.store(archived)
    down = dicomweb(orthanc_server, url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2.0)
    for attempt in (down.ping, lambda: down.store(archived), lambda: down.fetch(archived.reference)):
        with pytest.raises(ArchiveUnavailable, match="cannot be reached"):
            attempt()


def test_orthanc_refuses_anyone_without_the_user_and_never_has_the_default_one(orthanc_server):
    import urllib.error
    import urllib.request

    for token in (None, "orthanc:orthanc"):
        request = urllib.request.Request(f"{orthanc_server.url}/studies")
        if token:
            import base64

            request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
    assert "orthanc" not in orthanc_server.config.read_text().split('"RegisteredUsers"')[1].split("}")[0]
    assert oct(orthanc_server.config.stat().st_mode & 0o777) == "0o600"


# ---------------------------------------------------------------- uploads, the history and the command line


def _take(store, classifier, archive, data: bytes, name: str, owner: str = "ada"):
    from core.review.uploads import record_taken, take_upload

    taken = take_upload(classifier, archive, data, name)
    record_taken(store, taken, session_id="s1", owner=owner, reviewer=owner, model_version=classifier.version)
    return taken


def test_an_upload_the_archive_refuses_is_not_recorded(database_url, tiny_classifier, tmp_path):
    from core.review.store import HistoryStore
    from core.review.uploads import take_upload

    store = HistoryStore(database_url)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ArchiveUnavailable):
        take_upload(tiny_classifier, FolderArchive(blocker / "scans"), encode(synthetic_slice(20, 64)), "x.png")
    assert store.events() == [] and store.worklist("ada") == []


def test_record_upload_is_one_transaction_archive_once_worklist_once(database_url, tiny_classifier, tmp_path):
    from core.review.store import HistoryStore
    from core.review.uploads import reference_for

    store = HistoryStore(database_url)
    archive = FolderArchive(tmp_path / "scans")
    data = encode(synthetic_slice(21, 64))
    taken = _take(store, tiny_classifier, archive, data, "one.png")
    _take(store, tiny_classifier, archive, data, "one-again.png")
    _take(store, tiny_classifier, archive, data, "one.png", owner="bob")
    kinds = [event["kind"] for event in store.events()]
    assert kinds.count("archive") == 1 and kinds.count("prediction") == 1  # Once per scan; once per session.
    assert [entry["sha256"] for entry in store.worklist("ada")] == [taken.result.sha256]
    assert [entry["sha256"] for entry in store.worklist("bob")] == [taken.result.sha256]
    assert reference_for(store, taken.result.sha256) == taken.reference
    store.clear_worklist("ada")
    assert store.worklist("ada") == [] and len(store.worklist("bob")) == 1
    assert store.verify().intact


def test_archive_verify_passes_then_names_the_altered_scan(history_path, tiny_classifier, capsys):
    from core.cli import main
    from core.review.store import HistoryStore

    store = HistoryStore(history_path)
    archive = open_archive(archive_settings())
    first = _take(store, tiny_classifier, archive, encode(synthetic_slice(22, 64)), "first.png")
    _take(store, tiny_classifier, archive, encode(synthetic_slice(23, 64)), "second.png")
    _take(store, tiny_classifier, archive, b"not an image at all", "broken.png")  # Recorded without a copy.
    assert main(["archive", "verify", "--database", str(history_path)]) == 0
    out = capsys.readouterr().out
    assert "2 archived scans held" in out and "1 scan recorded without a copy" in out
    path = archive.path_of(first.reference.object_sha256)
    stored = path.read_bytes()
    path.write_bytes(stored[:-1] + bytes([stored[-1] ^ 0xFF]))  # One pixel changed on disk.
    assert main(["archive", "verify", "--database", str(history_path)]) == 1
    assert "FAILED after 0 scans" in (out := capsys.readouterr().out) and "first.png" in out
    path.unlink()
    assert main(["archive", "verify", "--database", str(history_path)]) == 1
    out = capsys.readouterr().out
    assert "does not hold" in out
    # Not even the first scan in the folder: most likely a team's history checked without its DICOMweb settings.
    assert "set BRAINSCAN_DICOMWEB_URL" in out


def test_archive_copy_moves_the_folder_into_orthanc_and_verify_then_reads_it_there(
        history_path, tiny_classifier, dicomweb_env, monkeypatch, capsys):
    from core.cli import main
    from core.review.store import HistoryStore

    monkeypatch.delenv("BRAINSCAN_DICOMWEB_URL")  # Uploads first go to the scan folder (local mode) ...
    store = HistoryStore(history_path)
    folder = open_archive(archive_settings())
    for seed in (24, 25):
        _take(store, tiny_classifier, folder, encode(synthetic_slice(seed, 64)), f"{seed}.png")
    _take(store, tiny_classifier, folder, _with_canaries(26), "26.dcm")
    assert main(["archive", "copy", "--to", dicomweb_env.url]) == 0
    assert "copied 3 scans" in capsys.readouterr().out
    assert main(["archive", "copy", "--to", dicomweb_env.url]) == 0  # ... again: nothing changes, nothing fails.
    monkeypatch.setenv("BRAINSCAN_DICOMWEB_URL", dicomweb_env.url)  # ... then the team's archive is named.
    assert main(["archive", "verify", "--database", str(history_path)]) == 0
    assert f"3 archived scans held and matching their sha256 in the DICOMweb archive at {dicomweb_env.url}" in \
        capsys.readouterr().out
    monkeypatch.setenv("BRAINSCAN_DICOMWEB_PASSWORD", "wrong")
    assert main(["archive", "verify", "--database", str(history_path)]) == 2
    assert "refused the credentials" in capsys.readouterr().err


def test_the_archive_warm_up_loads_what_the_first_upload_needs_and_never_raises(monkeypatch, caplog):
    import subprocess
    import sys

    from core.review import uploads

    code = ("import sys; from core.review.uploads import warm_up_archiving; assert 'highdicom' not in sys.modules; "
            "warm_up_archiving(); assert 'highdicom' in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0

    def broken(*args, **kwargs):
        raise RuntimeError("no codec")

    monkeypatch.setattr(uploads, "object_for_upload", broken)
    uploads.warm_up_archiving()
    assert "archive warm-up failed: no codec" in caplog.text
