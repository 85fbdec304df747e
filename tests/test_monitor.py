"""Monitoring from the history: histories with known answers, built through the store's record functions.

Every test that takes `store` runs on SQLite and on a real PostgreSQL server. The store stamps each
event with `utc_now()`; the tests move that clock to place cases in months.
"""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from core.classes import CLASS_NAMES, READ_LABELS
from core.cli import main
from core.review import store as store_module
from core.review.monitor import (ALL_PERIODS, ALL_SCANNERS, GATE_MEASURE, NOT_RECORDED, CardReference, ks_statistic,
                                 monitor_history, period_of, report_rows, scanner_group, wilson_interval)
from core.review.reads import reader_key
from core.review.store import HistoryStore

MODEL = "2.1.0"
CARD = CardReference(model_version=MODEL, sensitivity=dict.fromkeys(CLASS_NAMES, 0.9),
                     ppv=dict.fromkeys(CLASS_NAMES, 0.9), accuracy=0.9, source="test card")


class Clock:
    """A stand-in for the store's `utc_now`: each event a minute after the last, from a chosen day."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def at(self, day: str) -> None:
        self.now = max(self.now, datetime.fromisoformat(day).replace(tzinfo=timezone.utc))

    def __call__(self) -> str:
        self.now += timedelta(minutes=1)
        return self.now.isoformat(timespec="milliseconds")


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(store_module, "utc_now", clock)
    return clock


@pytest.fixture
def store(database_url) -> HistoryStore:
    return HistoryStore(database_url)


def probabilities(predicted: str, confidence: float = 0.9) -> dict[str, float]:
    rest = (1 - confidence) / (len(CLASS_NAMES) - 1)
    return {name: confidence if name == predicted else rest for name in CLASS_NAMES}


class Cases:
    """Numbered scans, predicted and read through the store as the app does."""

    def __init__(self, store: HistoryStore) -> None:
        self.store, self.number = store, 0

    def scan(self, predicted: str, confidence: float = 0.9, session: str = "s" * 32, scanner: str = "SIEMENS Skyra",
             gate_score: float = -9.0) -> dict:
        self.number += 1
        case = {"session_id": session, "file_name": f"scan-{self.number}.dcm", "sha256": f"{self.number:064x}",
                "model_version": MODEL, "predicted_class": predicted,
                "probabilities": probabilities(predicted, confidence)}
        self.store.record_upload(owner="Ann", reviewer="Ann", detail={"scanner": scanner, "gate_score": gate_score},
                                 **case)
        return case

    def read(self, case: dict, reviewer: str, truth: str | None = None, verdict: str | None = None) -> None:
        if verdict is None:
            verdict = "confirm" if truth == case["predicted_class"] else "override"
        self.store.record_verdict(reviewer=reviewer, verdict=verdict,
                                  override_label=truth if verdict == "override" else None,
                                  reason="reads otherwise" if verdict == "override" else "", **case)

    def adjudicate(self, case: dict, reviewer: str, truth: str) -> None:
        self.store.record_adjudication(reviewer=reviewer, final_label=truth, reason="second read", **case)


def month_of_reads(cases: Cases, clock: Clock, day: str, wrong: dict[str, list[str]],
                   scanner: str = "SIEMENS Skyra") -> None:
    """40 scans per class, read by Ann: the model errs on one per class, or as `wrong[class]` lists."""
    clock.at(day)
    for truth in CLASS_NAMES:
        predictions = wrong.get(truth) or [CLASS_NAMES[(CLASS_NAMES.index(truth) + 1) % len(CLASS_NAMES)]]
        predictions = predictions + [truth] * (40 - len(predictions))
        for predicted in predictions:
            cases.read(cases.scan(predicted, scanner=scanner), "Ann", truth)


def test_wilson_interval_matches_the_reference_computation():
    # Wilson (1927) score interval, z = 1.96; values as tabulated by Newcombe (1998), table I.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_periods_are_calendar_months_and_iso_weeks():
    assert period_of("2026-03-31", "month") == "2026-03"
    assert period_of("2026-01-01", "week") == "2026-W01"
    assert period_of("2027-01-01", "week") == "2026-W53"


def test_a_scanner_whose_meningioma_sensitivity_drops_in_month_three_raises_exactly_that_alert(store, clock):
    cases = Cases(store)
    for day in ("2026-01-05", "2026-02-05", "2026-03-05", "2026-04-05"):
        # Month three, on the GE scanner only: 12 of 40 meningiomas are called something else; readers override them.
        month_of_reads(cases, clock, day, {"meningioma": ["glioma", "pituitary", "no_tumor"] * 4}
                       if day == "2026-03-05" else {}, scanner="GE SIGNA Premier")
        month_of_reads(cases, clock, day, {}, scanner="SIEMENS Skyra")

    report = monitor_history(store, low_confidence=0.8, by="month", reference=CARD)

    assert [(alert.kind, alert.measure, alert.class_name, alert.period, alert.group) for alert in report.alerts] == [
        ("performance", "sensitivity", "meningioma", "2026-03", f"model {MODEL}, GE SIGNA Premier")], \
        [alert.message for alert in report.alerts]
    march = {figure["scanner"]: figure for figure in report.performance if figure["period"] == "2026-03"
             and figure["measure"] == "sensitivity" and figure["class"] == "meningioma"}
    assert set(march) == {ALL_SCANNERS, "GE SIGNA Premier", "SIEMENS Skyra"}
    assert (march["GE SIGNA Premier"]["successes"], march["GE SIGNA Premier"]["n"]) == (28, 40)
    assert march["GE SIGNA Premier"]["reference"] == 0.9 and march["GE SIGNA Premier"]["alert"]
    assert (march["GE SIGNA Premier"]["low"], march["GE SIGNA Premier"]["high"]) == \
        pytest.approx(wilson_interval(28, 40))
    assert (march[ALL_SCANNERS]["successes"], march[ALL_SCANNERS]["n"]) == (28 + 39, 80)
    assert report.cases == report.cases_with_final_label == 1280
    whole = {figure["scanner"]: figure for figure in report.performance if figure["period"] == ALL_PERIODS
             and figure["measure"] == "accuracy"}
    # One error per class a month; on the GE scanner in March, the 12 meningiomas instead of one.
    assert (whole["GE SIGNA Premier"]["successes"], whole["GE SIGNA Premier"]["n"]) == (640 - (4 * 4 - 1) - 12, 640)
    assert (whole["SIEMENS Skyra"]["successes"], whole["SIEMENS Skyra"]["n"]) == (640 - 4 * 4, 640)
    # The range narrows the cases, and the alert goes with March.
    assert monitor_history(store, low_confidence=0.8, since="2026-04-01", reference=CARD).alerts == []


def test_one_scanner_alerts_once_and_old_events_have_no_recorded_scanner(store, clock):
    cases = Cases(store)
    month_of_reads(cases, clock, "2026-01-05", {"glioma": ["meningioma"] * 20})
    report = monitor_history(store, low_confidence=0.8, by="month", reference=CARD)
    # 20 of 40 gliomas called meningioma, on the only scanner: its alerts, not repeated for all scanners.
    assert {(alert.measure, alert.class_name, alert.group) for alert in report.alerts} == {
        ("sensitivity", "glioma", f"model {MODEL}, SIEMENS Skyra"), ("ppv", "meningioma", f"model {MODEL}, SIEMENS Skyra")}
    store.record_prediction(reviewer="Ann", session_id="t" * 32, file_name="old.png", sha256="f" * 64,
                            model_version=MODEL, predicted_class="glioma", probabilities=probabilities("glioma"))
    outcomes = store.monitoring_aggregates(0.8)["outcomes"]
    assert {row["scanner"] for row in outcomes} == {"SIEMENS Skyra", None}
    assert scanner_group(None) == NOT_RECORDED


def test_a_shift_in_the_gate_score_raises_the_input_alert_without_any_final_label(store, clock):
    rng = random.Random(3)
    cases = Cases(store)
    for month in ("2026-01-05", "2026-02-05", "2026-03-05", "2026-04-05"):
        clock.at(month)
        for number in range(80):  # April: the same classes and confidence, but scans look less like the MRI it knows.
            cases.scan(CLASS_NAMES[number % 4], gate_score=rng.gauss(-4.0 if month == "2026-04-05" else -9.0, 1.5))

    report = monitor_history(store, low_confidence=0.8, by="month", reference=CARD)

    assert report.cases_with_final_label == 0
    assert [(alert.kind, alert.measure, alert.period) for alert in report.alerts] == [
        ("input", GATE_MEASURE, "2026-04")], [alert.message for alert in report.alerts]
    shifts = {figure["period"]: figure for figure in report.inputs if figure["measure"] == GATE_MEASURE}
    assert shifts["2026-01"]["value"] is None  # nothing earlier to compare with
    assert shifts["2026-03"]["value"] < shifts["2026-03"]["reference"]
    assert shifts["2026-04"]["value"] > 0.8 and shifts["2026-04"]["n"] == 80
    # The KS distance is printed as the number it is (0 to 1), not as a percentage.
    from core.review.monitor import report_html, report_text

    [line] = [line for line in report_text(report).splitlines() if line.strip().startswith("2026-04")
              and GATE_MEASURE in line]
    assert f"{GATE_MEASURE:<24} {shifts['2026-04']['value']:.2f} n=80" in line and "%" not in line.split("n=")[0]
    assert f"<td>{shifts['2026-04']['value']:.2f}</td>" in report_html(report)
    bins = [row for row in store.monitoring_aggregates(0.8)["gate"] if row["day"] == "2026-04-05"]
    assert sum(row["n"] for row in bins) == 80 and min(row["bin"] for row in bins) < -4 < max(row["bin"] for row in bins)


def test_with_the_cards_validation_scores_each_period_is_compared_with_them(store, clock):
    rng = random.Random(5)
    validation: dict[int, int] = {}
    for _ in range(800):
        edge = math.floor(rng.gauss(-7.0, 1.5))
        validation[edge] = validation.get(edge, 0) + 1
    card = CardReference(model_version=MODEL, sensitivity=CARD.sensitivity, ppv=CARD.ppv, accuracy=0.9,
                         source="test card", gate_bins=validation)
    cases = Cases(store)
    for month, centre in (("2026-01-05", -7.0), ("2026-02-05", -3.5), ("2026-03-05", -3.5)):
        clock.at(month)
        for number in range(60):  # From February the scans look less like the validation split, and stay so.
            cases.scan(CLASS_NAMES[number % 4], gate_score=rng.gauss(centre, 1.5))

    report = monitor_history(store, low_confidence=0.8, by="month", reference=card)

    assert [(alert.measure, alert.period) for alert in report.alerts] == [
        (GATE_MEASURE, "2026-02"), (GATE_MEASURE, "2026-03")], [alert.message for alert in report.alerts]
    assert all("validation split" in alert.message for alert in report.alerts)
    shifts = {figure["period"]: figure for figure in report.inputs if figure["measure"] == GATE_MEASURE}
    assert shifts["2026-01"]["value"] < shifts["2026-01"]["reference"] and shifts["2026-01"]["n"] == 60
    without = monitor_history(store, low_confidence=0.8, by="month", reference=CARD)  # no scores in this card
    assert all("earlier periods" in alert.message for alert in without.alerts) and without.alerts


def test_the_cards_monitoring_reference_is_read_from_the_card():
    card = {"version": "2.1.0", "metrics": {"test": {"accuracy": 0.95, "per_class": {
        "glioma": {"recall": 0.9, "precision": 0.92}}}},
        "monitoring": {"reference": {"n": 3, "gate_score_bins": {"-8": 2, "-7": 1}}}}
    reference = CardReference.from_card(card)
    assert reference.gate_bins == {-8: 2, -7: 1} and reference.sensitivity == {"glioma": 0.9}
    assert CardReference.from_card({"version": "1"}).gate_bins is None
    # A reference that names the network it measured is used for that network only: a card copied on to a
    # recalibrated or averaged model keeps no drift comparison with the old gate's scores.
    named = {**card, "name": "m", "model_sha256": "abcdef0123456789",
             "monitoring": {"reference": {**card["monitoring"]["reference"], "model": "m 2.1.0 (abcdef01)"}}}
    assert CardReference.from_card(named).gate_bins == {-8: 2, -7: 1}
    assert CardReference.from_card({**named, "version": "2.2.0"}).gate_bins is None
    assert CardReference.from_card({**named, "model_sha256": "0" * 16}).gate_bins is None


def test_the_ks_statistic_of_binned_samples_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(11)
    first = [int(rng.gauss(0, 2) // 1) for _ in range(300)]
    second = [int(rng.gauss(1, 2) // 1) for _ in range(200)]
    count = lambda values: {edge: values.count(edge) for edge in set(values)}  # noqa: E731
    assert ks_statistic(count(first), count(second)) == pytest.approx(scipy_stats.ks_2samp(first, second).statistic)


def test_a_shift_in_confidence_raises_the_input_alert_without_any_final_label(store, clock):
    cases = Cases(store)
    for month in ("2026-01-05", "2026-02-05", "2026-03-05"):
        clock.at(month)
        for number in range(60):
            cases.scan(CLASS_NAMES[number % 4], confidence=0.95)
    clock.at("2026-04-05")
    for number in range(60):  # The scanner was upgraded: half the scans now come back unsure.
        cases.scan(CLASS_NAMES[number % 4], confidence=0.95 if number % 2 else 0.55)

    report = monitor_history(store, low_confidence=0.8, by="month", reference=CARD)

    assert report.cases == 240 and report.cases_with_final_label == 0
    assert all(figure["n"] == 0 for figure in report.performance)
    assert sorted((alert.kind, alert.measure, alert.period) for alert in report.alerts) == [
        ("input", "low-confidence share", "2026-04"), ("input", "mean confidence", "2026-04")]
    april = {figure["measure"]: figure for figure in report.inputs if figure["period"] == "2026-04"}
    assert april["low-confidence share"]["value"] == pytest.approx(0.5)
    assert april["low-confidence share"]["reference"] == pytest.approx(0.0)
    assert april["mean confidence"]["value"] == pytest.approx(0.75)


def test_a_reader_who_confirms_everything_even_what_was_adjudicated_otherwise_is_shown(store, clock):
    cases = Cases(store)
    clock.at("2026-05-04")
    for number in range(12):
        truth = CLASS_NAMES[number % 4]
        wrong = number < 3  # The model errs on three scans
        case = cases.scan(CLASS_NAMES[(number + 1) % 4] if wrong else truth)
        cases.read(case, "Bob", verdict="confirm")
        cases.read(case, "Ann", truth)
        if wrong:  # Bob and Ann disagree: a second reader settles it, against the model (and Bob).
            cases.adjudicate(case, "Cat", truth)

    report = monitor_history(store, low_confidence=0.8, reference=CARD)

    overall = {figure["reader"]: figure for figure in report.readers if figure["period"] == ALL_PERIODS}
    assert overall["Bob"]["rubber_stamp"] and not overall["Ann"]["rubber_stamp"]
    assert (overall["Bob"]["reads"], overall["Bob"]["confirms"], overall["Bob"]["confirmed_otherwise"]) == (12, 12, 3)
    assert overall["Bob"]["agreement_with_final"] == pytest.approx(9 / 12)
    assert overall["Ann"]["agreement_with_final"] == 1.0 and overall["Ann"]["override_rate"] == pytest.approx(3 / 12)
    assert report.latency[-1]["upload_to_first_read"]["n"] == 12

    mine = monitor_history(store, low_confidence=0.8, reference=CARD,
                           only_reader=reader_key({"reviewer": "Bob"}))
    assert {figure["reader"] for figure in mine.readers} == {"Bob"}
    assert mine.performance == [] and mine.inputs == [] and mine.alerts == []


def test_waits_to_a_read_and_to_an_adjudication_are_the_events_own_hours(store, clock):
    cases = Cases(store)
    clock.at("2026-07-01")
    first, second = cases.scan("glioma"), cases.scan("meningioma")
    clock.now += timedelta(hours=3)
    cases.read(first, "Ann", "glioma")
    clock.now += timedelta(hours=1)
    cases.read(second, "Ann", verdict="flag")
    clock.now += timedelta(minutes=30)
    cases.adjudicate(second, "Cat", "meningioma")
    cases.read(second, "Bob", verdict="flag")  # a later flag is not the first one

    times = {(event["sha256"], event["kind"], event["reviewer"]): datetime.fromisoformat(event["time"])
             for event in store.events()}

    def hours(sha256: str, start: tuple[str, str], end: tuple[str, str]) -> float:
        return (times[(sha256, *end)] - times[(sha256, *start)]).total_seconds() / 3600

    to_read = sorted(math.floor(hours(case["sha256"], ("prediction", "Ann"), ("verdict", "Ann")) * 10) / 10
                     for case in (first, second))
    [latency] = [entry for entry in monitor_history(store, low_confidence=0.8).latency if entry["period"] == "2026-07"]
    assert latency["upload_to_first_read"] == {"n": 2, "median_hours": to_read[0], "p90_hours": to_read[1]}
    assert to_read == [3.0, 4.0]
    adjudicated = math.floor(hours(second["sha256"], ("verdict", "Ann"), ("adjudication", "Cat")) * 10) / 10
    assert latency["flag_to_adjudication"] == {"n": 1, "median_hours": adjudicated, "p90_hours": adjudicated} \
        and adjudicated == 0.5


def test_a_scan_read_as_not_a_brain_mri_counts_against_the_class_the_model_called(store, clock):
    cases = Cases(store)
    clock.at("2026-05-04")
    for _ in range(8):
        cases.read(cases.scan("glioma"), "Ann", "glioma")
    cases.read(cases.scan("glioma"), "Ann", "not_brain_mri")  # a knee the gate let through
    flagged = cases.scan("glioma")
    cases.read(flagged, "Ann", verdict="flag")
    cases.adjudicate(flagged, "Dan", "non_diagnostic")

    report = monitor_history(store, low_confidence=0.8, by="month", reference=CARD)
    figures = {(figure["measure"], figure["class"]): (figure["successes"], figure["n"]) for figure in report.performance
               if figure["period"] == "2026-05" and figure["scanner"] == ALL_SCANNERS}
    assert figures[("ppv", "glioma")] == (8, 10)
    assert figures[("sensitivity", "glioma")] == (8, 8)
    assert figures[("accuracy", "")] == (8, 10)
    assert report.cases_with_final_label == 10


def test_final_labels_in_sql_are_the_ones_the_reads_rules_give(store, clock):
    """A random history of reads, flags, amendments and adjudications: SQL's final labels equal `case_state`'s."""
    rng = random.Random(7)
    cases = Cases(store)
    clock.at("2026-06-01")
    for _ in range(60):
        case = cases.scan(rng.choice(CLASS_NAMES))
        for reviewer in rng.sample(["Ann", "Bob", "Cat"], rng.randint(0, 3)):
            for _save in range(rng.randint(1, 2)):
                choice = rng.random()
                if choice < 0.2:
                    cases.read(case, reviewer, verdict="flag")
                else:
                    cases.read(case, reviewer, rng.choice(READ_LABELS) if choice < 0.5 else case["predicted_class"])
        if rng.random() < 0.2:
            cases.adjudicate(case, "Dan", rng.choice(READ_LABELS))

    expected: dict[tuple[str, str], int] = {}
    for row in store.current_state():
        key = (row["predicted_class"], row["final_label"])
        expected[key] = expected.get(key, 0) + 1
    found: dict[tuple[str, str], int] = {}
    for row in store.monitoring_aggregates(0.8)["outcomes"]:
        key = (row["predicted"], row["final_label"])
        found[key] = found.get(key, 0) + int(row["n"])
    assert found == expected


def test_the_command_prints_the_alert_writes_json_and_csv_and_records_the_exports(tmp_path, clock, tiny_model_path):
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    store = HistoryStore(url)
    cases = Cases(store)
    month_of_reads(cases, clock, "2026-01-05", {})
    month_of_reads(cases, clock, "2026-02-05", {"glioma": ["meningioma"] * 20})
    card = json.loads((tiny_model_path.parent / f"{tiny_model_path.stem}.card.json").read_text())
    card["version"] = MODEL
    card.setdefault("metrics", {})["test"] = {"accuracy": 0.9, "per_class": {
        name: {"recall": 0.9, "precision": 0.9} for name in CLASS_NAMES}}
    model = tmp_path / "model" / tiny_model_path.name
    model.parent.mkdir()
    model.write_bytes(tiny_model_path.read_bytes())
    (model.parent / f"{model.stem}.card.json").write_text(json.dumps(card))

    code = main(["monitor", "--database", url, "--model", str(model), "--json", str(tmp_path / "m.json"),
                 "--csv", str(tmp_path / "m.csv")])

    assert code == 1
    report = json.loads((tmp_path / "m.json").read_text())
    alerts = {(alert["measure"], alert["class_name"], alert["period"]) for alert in report["alerts"]}
    assert ("sensitivity", "glioma", "2026-02") in alerts and ("ppv", "meningioma", "2026-02") in alerts
    assert all(alert["period"] == "2026-02" for alert in report["alerts"])
    csv_text = (tmp_path / "m.csv").read_text()
    assert csv_text.startswith("section,period,group,reader,measure,class,value,low,high,n,reference,alert")
    assert ",glioma," in csv_text
    exports = [event for event in HistoryStore(url).events() if event["kind"] == "export"]
    assert sorted(event["file_name"] for event in exports) == ["m.csv", "m.json"]
    assert report_rows  # the CSV's rows come from the one function the page uses too


def test_the_command_refuses_a_bad_date(tmp_path, capsys):
    assert main(["monitor", "--database", str(tmp_path / "none.sqlite3"), "--since", "March"]) == 2
    assert "not a date" in capsys.readouterr().err


def test_the_reference_command_refuses_a_gate_that_gives_no_score(tmp_path, tiny_model_path, capsys):
    from tests.synthetic import write_class_folders

    data = write_class_folders(tmp_path / "data", per_class=1)
    card = tiny_model_path.parent / f"{tiny_model_path.stem}.card.json"
    before = card.read_bytes()
    assert main(["monitor-reference", "--data", str(data), "--model", str(tiny_model_path), "--split", "all",
                 "--write-card"]) == 2
    assert "has no modality head" in capsys.readouterr().err
    assert card.read_bytes() == before
