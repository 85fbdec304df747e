import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from core.cli import main
from core.config import ROOT
from tests.synthetic import encode, synthetic_slice, write_class_folders

PREDICT_COLUMNS = ["file", "sha256", "status", "predicted_class",
                   "p_glioma", "p_meningioma", "p_pituitary", "p_no_tumor", "low_confidence", "message"]


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_on_good_files_exits_zero_with_one_row_each(tmp_path, tiny_model_path):
    folder = tmp_path / "scans" / "nested"
    folder.mkdir(parents=True)
    for index in range(3):
        (folder / f"scan{index}.png").write_bytes(encode(synthetic_slice(index)))
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "scans"), "--model", str(tiny_model_path), "--csv", str(out)]) == 0
    rows = _rows(out)
    assert list(rows[0]) == PREDICT_COLUMNS
    assert len(rows) == 3 and all(row["status"] == "ok" for row in rows)
    for row in rows:
        assert abs(sum(float(row[f"p_{name}"]) for name in ("glioma", "meningioma", "pituitary", "no_tumor")) - 1) < 1e-4
        assert len(row["sha256"]) == 64 and row["predicted_class"]


def test_predict_with_a_bad_file_exits_non_zero_and_keeps_the_rest(tmp_path, tiny_model_path):
    (tmp_path / "good.png").write_bytes(encode(synthetic_slice(1)))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_bytes(b"just some text, not an image")
    out = tmp_path / "out.csv"
    code = main(["predict", str(tmp_path / "good.png"), str(tmp_path / "empty.png"), str(tmp_path / "notes.png"),
                 "--model", str(tiny_model_path), "--csv", str(out)])
    assert code != 0
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in _rows(out)}
    assert rows["good.png"]["status"] == "ok"
    assert rows["empty.png"]["status"] == "rejected" and rows["empty.png"]["message"]
    assert rows["notes.png"]["status"] == "rejected" and rows["notes.png"]["predicted_class"] == ""


def test_evaluate_writes_the_metrics_json(tmp_path, tiny_model_path):
    write_class_folders(tmp_path / "data", per_class=3)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tiny_model_path), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "n"):
        assert key in metrics
    assert metrics["n"] == 12
    assert sum(map(sum, metrics["confusion_matrix"])) == 12


def test_cli_errors_are_one_line_messages_not_tracebacks(tmp_path):
    (tmp_path / "scan.png").write_bytes(encode(synthetic_slice(1)))
    completed = subprocess.run(
        [sys.executable, "-m", "core", "predict", str(tmp_path / "scan.png"), "--model", str(tmp_path / "none.keras")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "does not exist" in completed.stderr


def test_prepare_model_converts_the_model_into_the_runtime_cache_before_the_app_needs_it(tmp_path, tiny_model_path,
                                                                                         capsys, monkeypatch):
    from core.cli import main

    monkeypatch.setenv("BRAINSCAN_RUNTIME_CACHE", str(tmp_path / "cache"))
    assert main(["prepare-model", "--model", str(tiny_model_path)]) == 0
    said = capsys.readouterr().err
    assert "ready on" in said
    if "ready on openvino" in said:  # where OpenVINO is installed, the converted network is cached for the app
        assert any((tmp_path / "cache").iterdir())
    assert main(["prepare-model", "--model", str(tmp_path / "none.keras")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_rejects_unknown_class_folder(tmp_path, tiny_model_path, capsys):
    write_class_folders(tmp_path / "data", names=("glioma", "ependymoma"), per_class=1)
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tiny_model_path)]) == 2
    assert "ependymoma" in capsys.readouterr().err


def test_evaluate_breaks_accuracy_down_by_source_folder(tmp_path, tiny_model_path, capsys):
    write_class_folders(tmp_path / "set" / "Training", per_class=3)
    write_class_folders(tmp_path / "set" / "Testing", names=("glioma_tumor", "no_tumor"), per_class=2)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(tmp_path / "set"), "--model", str(tiny_model_path), "--json", str(out)]) == 0
    by_source = json.loads(out.read_text())["by_source"]
    assert {source: part["n"] for source, part in by_source.items()} == {"set/Testing": 4, "set/Training": 12}
    assert set(by_source["set/Testing"]["recall"]) == {"glioma", "no_tumor"}  # only the classes present
    assert "by source folder" in capsys.readouterr().out

    # Each folder's accuracy is that of the model's top class over the folder's files.
    classes = ("glioma", "meningioma", "pituitary", "no_tumor")
    truth = {"glioma": "glioma", "glioma_tumor": "glioma", "meningioma": "meningioma", "pituitary": "pituitary",
             "notumor": "no_tumor", "no_tumor": "no_tumor"}
    predictions = tmp_path / "predictions.csv"
    main(["predict", str(tmp_path / "set"), "--model", str(tiny_model_path), "--csv", str(predictions)])
    for source in ("Training", "Testing"):
        rows = [row for row in _rows(predictions) if f"/{source}/" in row["file"]]
        right = [max(classes, key=lambda name: float(row[f"p_{name}"])) == truth[row["file"].split("/")[-2]]
                 for row in rows]
        assert abs(by_source[f"set/{source}"]["accuracy"] - sum(right) / len(right)) < 1e-9


# Faults a new user hit (issue 11); each test failed before the fix.

def test_the_same_file_named_twice_is_one_row_not_a_traceback(tmp_path, tiny_model_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for index in range(2):
        (folder / f"scan{index}.png").write_bytes(encode(synthetic_slice(index)))
    first = folder / "scan0.png"
    for paths in ([first, first], [folder, first], [first, folder / ".." / "scans" / "scan0.png"]):
        out = tmp_path / "out.csv"
        assert main(["predict", *map(str, paths), "--model", str(tiny_model_path), "--csv", str(out)]) == 0
        rows = _rows(out)
        expected = 2 if folder in paths else 1
        assert len(rows) == expected, paths
        assert [row["file"] for row in rows][0] == str(paths[0] if paths[0] != folder else first)


def test_predict_csv_is_spreadsheet_safe(tmp_path, tiny_model_path):
    formula = tmp_path / "=HYPERLINK(1).png"
    formula.write_bytes(encode(synthetic_slice(2)))
    out = tmp_path / "out.csv"
    completed = subprocess.run([sys.executable, "-m", "core", "predict", formula.name, "--model", str(tiny_model_path),
                                "--csv", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert completed.returncode == 0, completed.stderr
    [row] = _rows(out)
    assert row["file"] == "'=HYPERLINK(1).png"
    assert float(row["p_glioma"]) >= 0  # numbers stay numbers


def test_a_rejected_row_has_no_probabilities_and_an_unreadable_file_no_sha256(tmp_path, tiny_model_path):
    import numpy as np

    colours = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    (tmp_path / "photo.png").write_bytes(encode(colours))  # decodes and is inferred, then refused as in colour
    (tmp_path / "locked.png").symlink_to(tmp_path / "moved-away.png")  # listed, but cannot be read
    out = tmp_path / "out.csv"
    code = main(["predict", str(tmp_path / "photo.png"), str(tmp_path / "locked.png"), "--model",
                 str(tiny_model_path), "--csv", str(out)])
    assert code == 1
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in _rows(out)}
    photo, locked = rows["photo.png"], rows["locked.png"]
    assert photo["status"] == "rejected" and len(photo["sha256"]) == 64
    assert all(photo[column] == "" for column in PREDICT_COLUMNS if column.startswith("p_"))
    assert photo["predicted_class"] == ""
    assert locked["status"] == "rejected" and locked["sha256"] == "" and "nothing exists at this path" in locked["message"]


def test_evaluate_reports_files_the_model_was_trained_or_tuned_on(tmp_path, tiny_model_path, capsys):
    import shutil

    from core.training.split import ManifestRow, write_manifest

    data = tmp_path / "data"
    write_class_folders(data, per_class=3)
    files = sorted(path for path in data.rglob("*.png"))
    digest = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    # The first two files are in the model's train split, the third in validation, the rest unseen.
    splits = ["train", "train", "validation"] + ["test"] * (len(files) - 3)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_path.parent, model_dir)
    manifest = model_dir / "manifest.csv"
    write_manifest([ManifestRow(f"elsewhere/{index}.png", digest[path], "glioma", index, split)
                    for index, (path, split) in enumerate(zip(files, splits))], manifest)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(data), "--model", str(model_dir / tiny_model_path.name),
                 "--manifest", str(manifest), "--json", str(out)]) == 0
    overlap = json.loads(out.read_text())["overlap"]
    assert (overlap["train"], overlap["validation"], overlap["files"]) == (2, 1, 3)
    assert overlap["without_overlap"]["n"] == len(files) - 3
    printed = capsys.readouterr().out
    assert "3 of these files are ones the model was trained or tuned on" in printed
    assert f"without them: n = {len(files) - 3}" in printed

    # Files the manifest does not hold in train or validation overlap nothing.
    clean = tmp_path / "clean.json"
    write_manifest([], manifest)
    main(["evaluate", "--data", str(data), "--model", str(model_dir / tiny_model_path.name),
          "--manifest", str(manifest), "--json", str(clean)])
    assert json.loads(clean.read_text())["overlap"]["files"] == 0


def test_the_command_line_works_from_any_folder(tmp_path):
    import shutil

    completed = subprocess.run([sys.executable, "-m", "core", "--help"], capture_output=True, text=True,
                               cwd=tmp_path, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "predict" in completed.stdout and completed.stdout.startswith("usage: python -m core")
    script = shutil.which("brainscan")
    assert script, "the brainscan console script is not installed (pip install -e .)"
    completed = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert completed.returncode == 0 and "predict" in completed.stdout
    assert completed.stdout.startswith("usage: brainscan "), completed.stdout[:80]  # The name it was called by.


def test_predict_marks_low_confidence_in_its_own_column_and_counts_in_the_right_number(tmp_path, tiny_model_path,
                                                                                       capsys, monkeypatch):
    scan = encode(synthetic_slice(3, 96))
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(scan)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path), "--model", str(tiny_model_path), "--csv", str(out)]) == 1
    assert "2 classified, 1 rejected, 1 duplicate" in capsys.readouterr().err  # Not "1 duplicates".
    rows = {Path(row["file"]).name: row for row in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows["a.png"]["low_confidence"] == "yes"  # An untrained model is never confident ...
    assert rows["bad.png"]["low_confidence"] == ""  # ... and a rejected file has no confidence at all.
    monkeypatch.setenv("BRAINSCAN_LOW_CONFIDENCE", "0.01")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_path), "--csv", str(out)]) == 0
    assert next(csv.DictReader(out.open(encoding="utf-8")))["low_confidence"] == "no"


def test_evaluate_gives_a_second_figure_without_flagged_labels_beside_the_full_one(tmp_path, tiny_model_path):
    from core.training.label_audit import AUDIT_COLUMNS

    data = write_class_folders(tmp_path / "data", per_class=3)
    files = sorted(data.rglob("*.png"))
    audit = tmp_path / "audit.csv"
    with open(audit, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(AUDIT_COLUMNS)
        for path in files[:2]:
            writer.writerow([path.name, hashlib.sha256(path.read_bytes()).hexdigest(), "test", 0, "glioma",
                             "meningioma", "0.1", "0.9", 1])
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(data), "--model", str(tiny_model_path), "--json", str(out),
                 "--leave-out-flagged", str(audit)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == len(files)  # the full figure stays the result
    assert report["without_flagged"]["n"] == len(files) - 2 and report["without_flagged"]["left_out"] == 2


def test_predict_on_a_path_that_does_not_exist_says_so(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "no-such-folder"), "--model", str(tiny_model_path), "--csv", str(out)]) == 1
    [row] = _rows(out)
    assert row["status"] == "rejected" and "no such file or folder" in row["message"]


def test_evaluate_records_one_splits_figures_as_served_in_the_card(tmp_path, tiny_model_path, capsys):
    import shutil

    from core.model.card import load_card
    from core.training.dataset import find_labelled_files
    from core.training.split import ManifestRow, write_manifest

    data = tmp_path / "data"
    write_class_folders(data, per_class=3)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_path.parent, model_dir)
    model = model_dir / tiny_model_path.name
    manifest = model_dir / "manifest.csv"
    files = find_labelled_files(data)
    write_manifest([ManifestRow(item.relative_path, hashlib.sha256(item.path.read_bytes()).hexdigest(), item.label,
                                index, "test") for index, item in enumerate(files)], manifest)
    arguments = ["evaluate", "--data", str(data), "--model", str(model), "--manifest", str(manifest), "--write-card"]
    assert main(arguments) == 2  # which split the figures are of must be said
    assert "pass --split" in capsys.readouterr().err
    assert "served_metrics" not in load_card(model).data
    assert main([*arguments, "--split", "test"]) == 0
    assert "served by openvino f32" in capsys.readouterr().out
    recorded = load_card(model).data["served_metrics"]["test"]
    assert (recorded["n"], recorded["precision"], recorded["runtime"]) == (len(files), "f32", "openvino")
    assert set(recorded["recall"]) == {"glioma", "meningioma", "pituitary", "no_tumor"}
    assert recorded["command"].startswith("python -m core") and recorded["measured"]
