"""The Model page and the shared sidebar through AppTest: a full card, a partial card, a broken model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.model.card import card_path_for
from tests.navigate import open_page

ROOT = Path(__file__).resolve().parents[1]


def model_page(model_path: Path, history_path: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("BRAINSCAN_MODEL", str(model_path))
    monkeypatch.setenv("BRAINSCAN_HISTORY_DB", str(history_path))
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    open_page(app, "model")
    assert not app.exception, app.exception
    return app


def copy_model(source: Path, folder: Path) -> Path:
    """A copy of a model with its card and gate, to be altered without touching the shared fixture."""
    folder.mkdir()
    for file in source.parent.iterdir():
        shutil.copy(file, folder / file.name)
    return folder / source.name


def page_text(app: AppTest) -> str:
    parts = [element.value for kind in ("title", "subheader", "markdown", "caption", "error") for element in
             app.get(kind)]
    return "\n".join(str(part) for part in parts)


def test_the_card_of_the_loaded_model_is_shown_with_its_metrics(tiny_model_path, tmp_path, monkeypatch):
    app = model_page(tiny_model_path, tmp_path / "history.sqlite3", monkeypatch)
    assert app.title[0].value == "tiny · version 0.0.1-test"
    frames = [element.value for element in app.dataframe]
    classes = next(frame for frame in frames if "Shown as" in frame.columns)
    assert list(classes["Class"]) == ["glioma", "meningioma", "pituitary", "no_tumor"]
    metrics = next(frame for frame in frames if "Macro F1" in frame.columns)
    assert metrics.iloc[0].to_dict() == {"Split": "test", "Scans": "8", "Accuracy": "25.0%", "Macro F1": "0.250",
                                         "ECE (calibrated)": "0.100"}
    per_class = next(frame for frame in frames if "Recall" in frame.columns)
    assert list(per_class["Support"]) == ["2", "2", "2", "2"]
    assert len(app.get("vega_lite_chart")) == 1  # The confusion matrix heat map.
    calibration = next(frame for frame in frames if "Measure" in frame.columns)
    assert dict(zip(calibration["Measure"], calibration["Value"]))["Temperature"] == "1.500"
    # The engineering detail (preprocessing, the gate's thresholds, commands) is in one closed expander.
    [detail] = [expander for expander in app.expander if expander.label.startswith("Engineering detail")]
    assert any("Temperature" in list(frame.value.get("Measure", [])) for frame in detail.dataframe)
    assert all(not label.startswith("Engineering") for label in (expander.label for expander in app.expander
                                                                if expander is not detail))
    assert "tiny" in " ".join(element.value for element in app.sidebar.markdown)
    assert "not a diagnostic device" in " ".join(element.value for element in app.sidebar.warning)


def test_a_card_with_only_the_required_keys_still_renders(tiny_model_path, tmp_path, monkeypatch):
    model = copy_model(tiny_model_path, tmp_path / "partial")
    card = json.loads(card_path_for(model).read_text())
    required = {key: card[key] for key in ("version", "model_sha256", "classes", "display_names", "input",
                                           "temperature")}
    required["input"] = {"image_size": card["input"]["image_size"]}
    card_path_for(model).write_text(json.dumps(required))
    app = model_page(model, tmp_path / "history.sqlite3", monkeypatch)
    text = page_text(app)
    assert "not recorded in the card" in text
    for heading in ("Intended use", "Limitations", "Classes and input", "Training data and split",
                    "Measured performance", "Calibration and out-of-distribution gate"):
        assert heading in text
    assert not app.get("vega_lite_chart")


@pytest.mark.parametrize("damage, message", [
    ("model", "does not match its card"),
    ("card", "is not valid JSON"),
])
def test_a_broken_model_gives_a_clear_message_on_every_page(tiny_model_path, tmp_path, monkeypatch, damage, message):
    model = copy_model(tiny_model_path, tmp_path / "broken")
    if damage == "model":
        model.write_bytes(model.read_bytes() + b"tampered")
    else:
        card_path_for(model).write_text("{ not json")
    app = model_page(model, tmp_path / "history.sqlite3", monkeypatch)
    assert message in " ".join(element.value for element in app.error)
    assert "not loaded" in " ".join(element.value for element in app.sidebar.markdown)
    open_page(app, "history")
    assert not app.exception, app.exception


def test_every_rerun_on_every_page_runs_the_entry_point_and_keeps_the_reviewer_name(tiny_model_path, tmp_path,
                                                                                  monkeypatch):
    # Pages live in pages/, which Streamlit (and AppTest, on every run) treats as a v1 multipage
    # folder until st.navigation runs: each run must still go through streamlit_app.run().
    app = model_page(tiny_model_path, tmp_path / "history.sqlite3", monkeypatch)
    app.text_input(key="reviewer_name").input("Ann").run()
    for url_path, heading in (("history", "History"), ("review", "Review scans"), ("model", "tiny · version")):
        open_page(app, url_path)
        assert not app.exception, app.exception
        assert app.title[0].value.startswith(heading)
        assert app.sidebar.text_input(key="reviewer_name").value == "Ann"
        assert "loaded" in " ".join(element.value for element in app.sidebar.caption)
    app.run()
    assert app.sidebar.text_input(key="reviewer_name").value == "Ann"


def test_a_continued_run_lists_every_command_earliest_first():
    from core.model.summary import training_commands

    training = {"command": "python -m core train --init-from first.keras",
                "continued_from": {"sha256": "ab", "command": "python -m core train", "continued_from": None}}
    assert training_commands(training) == ["python -m core train", "python -m core train --init-from first.keras"]
    assert training_commands({"command": "only"}) == ["only"]
    assert training_commands({}) == []


def test_the_confusion_heat_map_puts_row_i_column_j_in_its_cell_with_the_given_axis_titles():
    from app import support as app_support

    names = ["A", "B", "C"]
    matrix = [[5, 1, 0], [2, 7, 3], [0, 4, 9]]
    spec = app_support.confusion_heatmap(matrix, names, rows="True class", columns="Model's class").to_dict()
    [values] = spec["datasets"].values()
    cells = {(value["row"], value["column"]): value["Scans"] for value in values}
    assert cells == {(names[i], names[j]): matrix[i][j] for i in range(3) for j in range(3)}
    cell_layer = spec["layer"][0]["encoding"]
    assert (cell_layer["y"]["field"], cell_layer["y"]["title"]) == ("row", "True class")
    assert (cell_layer["x"]["field"], cell_layer["x"]["title"]) == ("column", "Model's class")


def test_robustness_figures_written_to_the_card_are_shown(tiny_model_path, tmp_path, monkeypatch):
    from core.cli import main
    from core.training import robustness
    from tests.synthetic import write_class_folders

    model = copy_model(tiny_model_path, tmp_path / "robust")
    app = model_page(model, tmp_path / "history.sqlite3", monkeypatch)
    assert "Other scanners and exports" not in page_text(app)  # nothing measured, nothing shown

    write_class_folders(tmp_path / "data", per_class=2, size=80)
    assert main(["robustness", "--data", str(tmp_path / "data"), "--model", str(model), "--write-card"]) == 0
    card = json.loads(model.with_suffix(".card.json").read_text())
    assert card["robustness"]["n"] == 8 and set(card["robustness"]["accuracy"]) == set(robustness.PERTURBATIONS)
    app = model_page(model, tmp_path / "history.sqlite3", monkeypatch)  # the card still loads
    assert "Other scanners and exports" in page_text(app)
    table = next(element.value for element in app.dataframe if "Condition" in element.value.columns)
    assert list(table["Condition"]) == ["as exported"] + list(robustness.PERTURBATIONS)
    assert table["Accuracy"].iloc[0] == f"{card['robustness']['clean_accuracy']:.1%}"


def test_an_ensemble_lists_its_networks_at_the_top(tiny_model_path, tmp_path, monkeypatch):
    model = copy_model(tiny_model_path, tmp_path / "ensemble")
    card = json.loads(card_path_for(model).read_text())
    card["architecture"] = {"name": "ensemble", "type": "ensemble of 2", "members": [
        {"version": "2.2.0", "type": "EfficientNet-Lite0", "image_size": 160, "sha256": "ab" * 32},
        {"version": "1.2.0", "type": "residual CNN", "image_size": 128, "sha256": "cd" * 32}]}
    card_path_for(model).write_text(json.dumps(card))
    app = model_page(model, tmp_path / "history.sqlite3", monkeypatch)
    members = next(element.value for element in app.dataframe if "Network" in element.value.columns)
    assert list(members["Version"]) == ["2.2.0", "1.2.0"] and list(members["sha256"]) == ["ab" * 6, "cd" * 6]
    assert "The networks in this model" in page_text(app)


def test_the_serving_section_says_which_network_answers_and_shows_its_figures(tiny_model_path, tmp_path, monkeypatch):
    model_path = copy_model(tiny_model_path, tmp_path / "model")
    card = json.loads(card_path_for(model_path).read_text())
    figures = {"n": 40, "right": 38, "accuracy": 0.95, "macro_f1": 0.949, "ece": 0.012}
    # A card naming an int8 network whose files are not there: the page must say f32 answers, and why.
    card["serving"] = {"precision": "int8", "network": "tiny.int8.xml", "source_model_sha256": card["model_sha256"],
                       "command": "python -m core quantize --data d",
                       "validation": {"f32": figures, "int8": {**figures, "right": 39, "accuracy": 0.975},
                                      "same_class": 39}}
    card["served_metrics"] = {"test": {"precision": "f32", "runtime": "openvino", "n": 8, "accuracy": 0.5,
                                       "macro_f1": 0.45, "ece": 0.05, "recall": {"glioma": 0.25, "meningioma": 0.75},
                                       "command": "python -m core evaluate --split test --write-card"}}
    card_path_for(model_path).write_text(json.dumps(card))
    app = model_page(model_path, tmp_path / "history.sqlite3", monkeypatch)
    text = page_text(app)
    assert "How this machine serves it" in text
    assert "this machine serves the **full-precision (f32)** network" in text
    frame = next(element.value for element in app.dataframe if "Lowest class recall" in element.value.columns)
    assert list(frame["Network"]) == ["f32", "int8", "f32"]
    assert list(frame["Accuracy"]) == ["95.0%", "97.5%", "50.0%"]
    assert frame.iloc[2]["Lowest class recall"] == "0.250 (Glioma)"
    assert "same class on 39 of 40" in text
