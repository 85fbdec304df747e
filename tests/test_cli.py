import csv
import json
import subprocess
import sys

from core.cli import main
from core.config import ROOT
from tests.synthetic import encode, synthetic_slice, write_class_folders

PREDICT_COLUMNS = ["file", "sha256", "status", "predicted_class",
                   "p_glioma", "p_meningioma", "p_pituitary", "p_no_tumor", "message"]


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
