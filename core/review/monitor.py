"""Is the model still right here? Real-world performance figures and drift alerts, from the history alone.

Everything is recomputed from the history on each call (`HistoryStore.monitoring_aggregates`
aggregates it in SQL per day), never stored as truth: a new event changes the figures on the next
run. A case is one scan under one model version, dated by its first prediction. Three kinds of
figure, each with the number of cases it rests on:

- **Against the readers' final labels** (`performance`): per period and model version, each class's
  sensitivity (of the cases whose final label is the class, the share the model called so) and
  positive predictive value (of the cases the model called the class, the share whose final label
  is it), and overall accuracy, with Wilson 95% intervals. A case without a final label (unread,
  flagged, reads that disagree) does not count. For the card's own model version each is set
  beside the card's test-split figure, and an **alert** is raised when a period's interval's upper
  bound is below it: the model does worse here than it was measured to do. (PPV depends on how
  common each class is; the card's comes from a test split with the four classes about equal.)
  Figures are given for all scanners and per scanner (the DICOM header's manufacturer and model
  name, kept with each prediction; "picture upload" for PNG and JPEG). Alerts are raised per
  scanner, and for all scanners together only where several fall below the card while none
  alone does.
- **Without ground truth** (`inputs`, an early warning): per period, each predicted class's share,
  the mean calibrated confidence, the low-confidence share and the share of files refused (at
  intake, by the model-free checks or by the gate). Each is compared with its reference, the mean of up to `REFERENCE_PERIODS`
  earlier periods that hold at least `MIN_CASES` cases; an alert when a share moves further than
  `SHARE_BOUND` and three binomial standard errors, or the mean confidence drops by more than
  `CONFIDENCE_BOUND`. The gate's not-MRI score distribution is compared with the validation
  split's, where the card carries it (`python -m core monitor-reference --write-card`), else with
  the pooled earlier periods', by the Kolmogorov-Smirnov distance over unit bins of the log-odds
  (`ks_bound`).
- **How readers use it** (`readers`): per reader and period, their latest read of each case counted
  as confirm / override / flag, their agreement with the model and with the final label, and how
  many of their confirms the final label later contradicted. Over the whole range, a reader with at
  least `RUBBER_STAMP_MIN_READS` reads who confirms at least `RUBBER_STAMP_SHARE` of them, one or
  more of which were adjudicated otherwise, is marked `rubber_stamp` (automation bias). `latency`
  gives the median and p90 hours (nearest rank, in tenths of an hour rounded down) from a case's
  first prediction to its first read and from its first flag to its first adjudication.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from core.classes import CLASS_NAMES

PERIODS = ("week", "month")
Z_95 = 1.959963984540054
REFERENCE_PERIODS = 3
MIN_CASES = 20
SHARE_BOUND = 0.10
CONFIDENCE_BOUND = 0.05
RUBBER_STAMP_MIN_READS = 10
RUBBER_STAMP_SHARE = 0.98
ALL_PERIODS = "all"
ALL_SCANNERS = "all scanners"
NOT_RECORDED = "scanner not recorded"
# The gate score's distribution: a period is compared with the pooled earlier periods (as the other
# input figures are) by the two-sample Kolmogorov-Smirnov statistic over unit bins of the not-MRI
# log-odds; an alert when it exceeds both KS_BOUND and the 0.1% critical value for the two sizes.
KS_BOUND = 0.10
KS_CRITICAL = 1.949  # c(alpha) = sqrt(-ln(alpha / 2) / 2) for alpha = 0.001
GATE_MEASURE = "gate score shift (KS)"


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (None without cases)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def period_of(day: str, by: str) -> str:
    """The period a YYYY-MM-DD day falls in: `2026-11` by month, ISO `2026-W47` by week."""
    if by == "month":
        return day[:7]
    if by == "week":
        year, week, _ = date.fromisoformat(day).isocalendar()
        return f"{year}-W{week:02d}"
    raise ValueError(f"unknown period {by!r}; expected one of {', '.join(PERIODS)}")


@dataclass(frozen=True)
class CardReference:
    """The model card's test-split figures that the history's are compared with."""

    model_version: str
    sensitivity: Mapping[str, float]
    ppv: Mapping[str, float]
    accuracy: float | None
    source: str = "model card, held-out test split"
    # The validation split's gate scores per unit bin (`python -m core monitor-reference --write-card`), if measured.
    gate_bins: Mapping[int, int] | None = None

    @classmethod
    def from_card(cls, data: Mapping) -> CardReference:
        test = (data.get("metrics") or {}).get("test") or {}
        per_class = test.get("per_class") or {}
        reference = (data.get("monitoring") or {}).get("reference") or {}
        bins = reference.get("gate_score_bins") or None
        # A reference measured on another network or gate (a card copied on, or recalibrated, since) says
        # nothing about this one's scores: no input-drift comparison rather than a wrong one.
        this_model = f"{data.get('name')} {data.get('version')} ({str(data.get('model_sha256', ''))[:8]})"
        if reference.get("model") not in (None, this_model):
            bins = None
        return cls(model_version=str(data.get("version", "")),
                   sensitivity={name: float(values["recall"]) for name, values in per_class.items()},
                   ppv={name: float(values["precision"]) for name, values in per_class.items()},
                   accuracy=float(test["accuracy"]) if "accuracy" in test else None,
                   gate_bins={int(edge): int(count) for edge, count in bins.items()} if bins else None)


@dataclass
class Alert:
    kind: str  # "performance" or "input"
    measure: str
    period: str
    group: str
    value: float
    reference: float
    n: int
    message: str
    class_name: str = ""


@dataclass
class MonitorReport:
    by: str
    since: str | None
    until: str | None
    performance: list[dict] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    readers: list[dict] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    reference: CardReference | None = None
    cases: int = 0
    cases_with_final_label: int = 0

    def as_dict(self) -> dict:
        return {
            "by": self.by, "since": self.since, "until": self.until, "cases": self.cases,
            "cases_with_final_label": self.cases_with_final_label,
            "reference": None if self.reference is None else {
                "model_version": self.reference.model_version, "source": self.reference.source,
                "sensitivity": dict(self.reference.sensitivity), "ppv": dict(self.reference.ppv),
                "accuracy": self.reference.accuracy},
            "alerts": [vars(alert) for alert in self.alerts],
            "performance": self.performance, "inputs": self.inputs, "readers": self.readers,
            "latency": self.latency,
        }


def _in_range(day: str, since: str | None, until: str | None) -> bool:
    return (since is None or day >= since) and (until is None or day <= until)


def _figure(measure: str, period: str, version: str, scanner: str, class_name: str, successes: int, n: int,
            reference: float | None) -> dict:
    interval = wilson_interval(successes, n)
    return {"measure": measure, "period": period, "model_version": version, "scanner": scanner, "class": class_name,
            "successes": successes, "n": n, "value": successes / n if n else None,
            "low": interval[0] if interval else None, "high": interval[1] if interval else None,
            "reference": reference, "alert": False}


def scanner_group(scanner: str | None) -> str:
    """The group a case's recorded scanner puts it in (`NOT_RECORDED` for events from before scanners were kept)."""
    return scanner or NOT_RECORDED


def _performance(outcomes: Sequence[Mapping], by: str, reference: CardReference | None,
                 alerts: list[Alert]) -> list[dict]:
    """Sensitivity, PPV and accuracy per (period, model version, scanner) and over all periods, against the card.

    Every figure is given for `ALL_SCANNERS` and for each scanner group. Alerts are raised per
    scanner, and on all scanners together only where several scanners' cases fall below the card
    while none alone does; never on the whole range (a period's alert would only repeat there).
    """
    confusion: dict[tuple[str, str, str], dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    scanners = set()
    for row in outcomes:
        if row["final_label"] is None or row["predicted"] is None:
            continue
        scanner = scanner_group(row.get("scanner"))
        scanners.add(scanner)
        for period in (period_of(row["day"], by), ALL_PERIODS):
            for group in (ALL_SCANNERS, scanner):
                confusion[(period, row["model_version"], group)][(row["predicted"], row["final_label"])] += \
                    int(row["n"])
    figures = []
    for (period, version, group), cells in sorted(confusion.items(), key=lambda item: (
            item[0][0], item[0][1], item[0][2] != ALL_SCANNERS, item[0][2])):
        card = reference if reference is not None and reference.model_version == version else None
        total = sum(cells.values())
        correct = sum(n for (predicted, final), n in cells.items() if predicted == final)
        figures.append(_figure("accuracy", period, version, group, "", correct, total,
                               card.accuracy if card else None))
        for name in CLASS_NAMES:
            hits = cells.get((name, name), 0)
            actual = sum(n for (_, final), n in cells.items() if final == name)
            called = sum(n for (predicted, _), n in cells.items() if predicted == name)
            figures.append(_figure("sensitivity", period, version, group, name, hits, actual,
                                   card.sensitivity.get(name) if card else None))
            figures.append(_figure("ppv", period, version, group, name, hits, called,
                                   card.ppv.get(name) if card else None))
    below = [figure for figure in figures if figure["period"] != ALL_PERIODS and figure["n"]
             and figure["reference"] is not None and figure["high"] < figure["reference"]]
    per_scanner = {(f["period"], f["model_version"], f["measure"], f["class"]) for f in below
                   if f["scanner"] != ALL_SCANNERS}
    for figure in below:
        if figure["scanner"] == ALL_SCANNERS and (
                len(scanners) < 2 or (figure["period"], figure["model_version"], figure["measure"],
                                      figure["class"]) in per_scanner):
            continue  # One scanner's alert says it already; a pooled alert only adds what no scanner shows alone.
        what = figure["measure"] if not figure["class"] else f"{figure['class']} {figure['measure']}"
        group = f"model {figure['model_version']}, {figure['scanner']}"
        figure["alert"] = True
        alerts.append(Alert(
            kind="performance", measure=figure["measure"], class_name=figure["class"], period=figure["period"],
            group=group, value=figure["value"], reference=figure["reference"], n=figure["n"],
            message=(f"{what} {figure['value']:.1%} (95% CI {figure['low']:.1%}-{figure['high']:.1%}, "
                     f"n={figure['n']}) in {figure['period']} on {group} is below the card's "
                     f"{figure['reference']:.1%}")))
    return figures


def _moving_reference(history: Sequence[tuple[int, float]]) -> float | None:
    """The mean of the last `REFERENCE_PERIODS` earlier values that rest on at least `MIN_CASES` cases."""
    usable = [value for n, value in history if n >= MIN_CASES][-REFERENCE_PERIODS:]
    return sum(usable) / len(usable) if usable else None


def _share_moved(value: float, reference: float, n: int) -> bool:
    spread = 3 * math.sqrt(max(reference * (1 - reference), 1e-9) / n)
    return abs(value - reference) > max(SHARE_BOUND, spread)


def ks_statistic(first: Mapping[int, int], second: Mapping[int, int]) -> float:
    """The Kolmogorov-Smirnov statistic of two binned samples: the largest gap between their cumulative shares."""
    total_first, total_second = sum(first.values()), sum(second.values())
    gap = seen_first = seen_second = 0
    for edge in sorted(set(first) | set(second)):
        seen_first += first.get(edge, 0)
        seen_second += second.get(edge, 0)
        gap = max(gap, abs(seen_first / total_first - seen_second / total_second))
    return gap


def ks_bound(n: int, m: int) -> float:
    """How far two samples of n and m may differ before an alert: KS_BOUND, or the 0.1% critical value if larger."""
    return max(KS_BOUND, KS_CRITICAL * math.sqrt((n + m) / (n * m)))


def _gate_figures(gate: Sequence[Mapping], by: str, alerts: list[Alert],
                  validation: Mapping[int, int] | None = None) -> dict[str, dict]:
    """Per period: the gate score's KS distance from its reference, with the bound an alert needs.

    The reference is the validation split's scores where the card carries them (`validation`),
    else the pooled earlier periods (up to `REFERENCE_PERIODS` with at least `MIN_CASES` each).
    """
    bins: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for row in gate:
        bins[period_of(row["day"], by)][int(row["bin"])] += int(row["n"])
    figures, earlier = {}, []
    for period in sorted(bins):
        current, n = bins[period], sum(bins[period].values())
        if validation:
            reference, against = dict(validation), "the validation split's"
        else:
            reference, against = defaultdict(int), "the earlier periods'"
            for entry in [entry for entry in earlier if sum(entry.values()) >= MIN_CASES][-REFERENCE_PERIODS:]:
                for edge, count in entry.items():
                    reference[edge] += count
        m = sum(reference.values())
        figure = {"measure": GATE_MEASURE, "period": period, "value": None, "n": n, "reference": None,
                  "alert": False, "against": "validation split" if validation else "earlier periods"}
        if m and n >= MIN_CASES:
            figure["value"], figure["reference"] = ks_statistic(current, reference), ks_bound(n, m)
            if figure["value"] > figure["reference"]:
                figure["alert"] = True
                alerts.append(Alert(kind="input", measure=GATE_MEASURE, period=period, group="all scans",
                                    value=figure["value"], reference=figure["reference"], n=n,
                                    message=(f"the gate's scores in {period} (n={n}) moved from {against} "
                                             f"(n={m}): KS distance {figure['value']:.2f}, bound "
                                             f"{figure['reference']:.2f}")))
        figures[period] = figure
        earlier.append(current)
    return figures


def _inputs(outcomes: Sequence[Mapping], refusals: Sequence[Mapping], gate: Sequence[Mapping], by: str,
            alerts: list[Alert], reference: CardReference | None = None) -> list[dict]:
    """Per period: class shares, mean confidence, low-confidence and refusal shares, the gate score's shift."""
    periods: dict[str, dict] = defaultdict(lambda: {"cases": 0, "by_class": defaultdict(int), "confidence": 0.0,
                                                    "low": 0, "refused": 0})
    for row in outcomes:
        entry = periods[period_of(row["day"], by)]
        entry["cases"] += int(row["n"])
        entry["by_class"][row["predicted"]] += int(row["n"])
        entry["confidence"] += float(row["confidence_sum"] or 0.0)
        entry["low"] += int(row["low_confidence"] or 0)
    for row in refusals:
        periods[period_of(row["day"], by)]["refused"] += int(row["n"])
    if reference is not None and reference.gate_bins:
        # The validation split's scores are the card's model's: only its own scans are compared with them.
        gate_figures = _gate_figures([row for row in gate if row.get("model_version") == reference.model_version],
                                     by, alerts, reference.gate_bins)
    else:
        gate_figures = _gate_figures(gate, by, alerts)
    figures: list[dict] = []
    earlier: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for period in sorted(set(periods) | set(gate_figures)):
        entry = periods[period]
        cases, files = entry["cases"], entry["cases"] + entry["refused"]
        measures: list[tuple[str, float | None, int]] = [
            (f"share {name}", entry["by_class"][name] / cases if cases else None, cases) for name in CLASS_NAMES]
        measures += [("mean confidence", entry["confidence"] / cases if cases else None, cases),
                     ("low-confidence share", entry["low"] / cases if cases else None, cases),
                     ("refusal share", entry["refused"] / files if files else None, files)]
        for measure, value, n in measures:
            reference = _moving_reference(earlier[measure])
            figure = {"measure": measure, "period": period, "value": value, "n": n, "reference": reference,
                      "alert": False}
            if value is not None and reference is not None and n >= MIN_CASES:
                if measure == "mean confidence":
                    moved = reference - value > CONFIDENCE_BOUND
                else:
                    moved = _share_moved(value, reference, n)
                if moved:
                    figure["alert"] = True
                    alerts.append(Alert(kind="input", measure=measure, period=period, group="all scans", value=value,
                                        reference=reference, n=n,
                                        message=(f"{measure} {value:.1%} in {period} (n={n}) moved from "
                                                 f"{reference:.1%}, the mean of the earlier periods")))
            figures.append(figure)
            if value is not None:
                earlier[measure].append((n, value))
        if period in gate_figures:
            figures.append(gate_figures[period])
    return figures


def _readers(rows: Sequence[Mapping], by: str, only_reader: str | None) -> list[dict]:
    """Per reader, per period and over all periods: verdict counts and agreement; `rubber_stamp` on the whole range."""
    counts: dict[tuple[str, str], dict] = {}
    names: dict[str, str] = {}
    numbers = ("reads", "confirms", "overrides", "flags", "with_final", "agree_final", "confirmed_otherwise")
    for row in rows:
        if only_reader is not None and row["reader"] != only_reader:
            continue
        names[row["reader"]] = row["name"] or names.get(row["reader"], "")
        for period in (period_of(row["day"], by), ALL_PERIODS):
            entry = counts.setdefault((row["reader"], period), dict.fromkeys(numbers, 0))
            for number in numbers:
                entry[number] += int(row[number] or 0)
    figures = []
    for (reader, period), entry in sorted(counts.items(), key=lambda item: (names[item[0][0]], item[0][1])):
        reads = entry["reads"]
        rubber_stamp = (period == ALL_PERIODS and reads >= RUBBER_STAMP_MIN_READS
                        and entry["confirms"] / reads >= RUBBER_STAMP_SHARE and entry["confirmed_otherwise"] > 0)
        figures.append({
            "reader": names[reader], "reader_key": reader, "period": period, **entry,
            "override_rate": entry["overrides"] / reads, "flag_rate": entry["flags"] / reads,
            "agreement_with_model": entry["confirms"] / reads,
            "agreement_with_final": entry["agree_final"] / entry["with_final"] if entry["with_final"] else None,
            "rubber_stamp": rubber_stamp,
        })
    return figures


def _quantiles(counts: Mapping[int, int]) -> dict:
    """Median and p90 (nearest rank) of waits counted per tenth of an hour, in hours."""
    n = sum(counts.values())
    if not n:
        return {"n": 0, "median_hours": None, "p90_hours": None}

    def rank(share: float) -> float:
        wanted, seen = max(1, math.ceil(share * n)), 0
        for tenths in sorted(counts):
            seen += counts[tenths]
            if seen >= wanted:
                return tenths / 10
        raise AssertionError("unreachable")

    return {"n": n, "median_hours": rank(0.5), "p90_hours": rank(0.9)}


def _latency(rows: Sequence[Mapping], by: str) -> list[dict]:
    """Per period: hours from upload to first read and from flag to adjudication (tenths of an hour, rounded down)."""
    to_read: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    to_adjudication: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        for period in (period_of(row["day"], by), ALL_PERIODS):
            to_read[period][int(row["to_read_tenths"])] += int(row["n"])
            if row["flag_to_adjudication_tenths"] is not None:
                to_adjudication[period][int(row["flag_to_adjudication_tenths"])] += int(row["n"])
    return [{"period": period, "upload_to_first_read": _quantiles(to_read[period]),
             "flag_to_adjudication": _quantiles(to_adjudication.get(period, {}))} for period in sorted(to_read)]


def monitor(aggregates: Mapping[str, Sequence[Mapping]], *, by: str = "month", since: str | None = None,
            until: str | None = None, reference: CardReference | None = None,
            only_reader: str | None = None) -> MonitorReport:
    """The figures and alerts of `aggregates` (from `HistoryStore.monitoring_aggregates`), cases dated since..until.

    `since` and `until` are YYYY-MM-DD days, inclusive. `only_reader` (a `core.review.reads.reader_key`)
    keeps that reader's own figures and nothing of the department's: what a reviewer may see.
    """
    if by not in PERIODS:
        raise ValueError(f"unknown period {by!r}; expected one of {', '.join(PERIODS)}")
    report = MonitorReport(by=by, since=since, until=until, reference=reference)
    keep = [row for row in aggregates["readers"] if _in_range(row["day"], since, until)]
    report.readers = _readers(keep, by, only_reader)
    if only_reader is not None:
        return report
    outcomes = [row for row in aggregates["outcomes"] if _in_range(row["day"], since, until)]
    report.cases = sum(int(row["n"]) for row in outcomes)
    report.cases_with_final_label = sum(int(row["n"]) for row in outcomes if row["final_label"] is not None)
    report.performance = _performance(outcomes, by, reference, report.alerts)
    report.inputs = _inputs(outcomes, *([row for row in aggregates[name] if _in_range(row["day"], since, until)]
                                        for name in ("refusals", "gate")), by, report.alerts,
                            reference)
    report.latency = _latency([row for row in aggregates["latencies"] if _in_range(row["day"], since, until)], by)
    return report


def monitor_history(store, *, low_confidence: float, **options) -> MonitorReport:
    """`monitor` over what `store` (a `HistoryStore`) holds now."""
    return monitor(store.monitoring_aggregates(low_confidence), **options)


REPORT_COLUMNS = ("section", "period", "group", "reader", "measure", "class", "value", "low", "high", "n",
                  "reference", "alert")


def report_rows(report: MonitorReport) -> list[dict]:
    """Every figure of `report` as one long table (the CSV export): one row per figure, its interval and reference."""
    rows = [{"section": "performance", "period": figure["period"],
             "group": f"model {figure['model_version']}, {figure['scanner']}",
             "measure": figure["measure"], "class": figure["class"], "value": figure["value"], "low": figure["low"],
             "high": figure["high"], "n": figure["n"], "reference": figure["reference"],
             "alert": "yes" if figure["alert"] else "no"} for figure in report.performance]
    rows += [{"section": "inputs", "period": figure["period"], "group": "all scans", "measure": figure["measure"],
              "value": figure["value"], "n": figure["n"], "reference": figure["reference"],
              "alert": "yes" if figure["alert"] else "no"} for figure in report.inputs]
    for figure in report.readers:
        for measure in ("override_rate", "flag_rate", "agreement_with_model", "agreement_with_final"):
            rows.append({"section": "readers", "period": figure["period"], "reader": figure["reader"],
                         "measure": measure.replace("_", " "), "value": figure[measure],
                         "n": figure["with_final"] if measure == "agreement_with_final" else figure["reads"],
                         "alert": "yes" if figure["rubber_stamp"] else "no"})
    for entry in report.latency:
        for measure in ("upload_to_first_read", "flag_to_adjudication"):
            for statistic in ("median_hours", "p90_hours"):
                rows.append({"section": "latency", "period": entry["period"],
                             "measure": f"{measure.replace('_', ' ')} {statistic.replace('_', ' ')}",
                             "value": entry[measure][statistic], "n": entry[measure]["n"]})
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _input_value(figure: Mapping, key: str) -> str:
    """An input figure as reports print it: the gate's KS distance as a number (0 to 1), the shares as percents."""
    value = figure.get(key)
    if figure["measure"] == GATE_MEASURE:
        return "-" if value is None else f"{float(value):.2f}"
    return _percent(value)


def report_text(report: MonitorReport) -> str:
    """The report as plain text for a terminal: alerts first, then each kind of figure."""
    lines = [f"{report.cases} cases, {report.cases_with_final_label} with a final label"
             + (f", {report.since or '...'} to {report.until or '...'}" if report.since or report.until else "")
             + f"; by {report.by}"]
    if report.reference is not None:
        lines.append(f"reference: {report.reference.source}, model {report.reference.model_version}")
    lines.append(f"alerts: {len(report.alerts) or 'none'}")
    lines += [f"  ALERT {alert.message}" for alert in report.alerts]
    lines.append("\nagainst the final labels (Wilson 95% interval; card figure)")
    for figure in report.performance:
        what = figure["measure"] if not figure["class"] else f"{figure['class']} {figure['measure']}"
        interval = "" if figure["low"] is None else f" ({_percent(figure['low'])}-{_percent(figure['high'])})"
        card = "" if figure["reference"] is None else f"; card {_percent(figure['reference'])}"
        lines.append(f"  {figure['period']:<9} model {figure['model_version']:<8} {figure['scanner']:<22} {what:<24} "
                     f"{_percent(figure['value'])}{interval} n={figure['n']}{card}")
    lines.append("\nwithout ground truth (reference: mean of earlier periods)")
    for figure in report.inputs:
        mark = "  ALERT" if figure["alert"] else ""
        lines.append(f"  {figure['period']:<9} {figure['measure']:<24} {_input_value(figure, 'value')} "
                     f"n={figure['n']}; reference {_input_value(figure, 'reference')}{mark}")
    lines.append("\nreaders (latest read per case)")
    for figure in report.readers:
        mark = "  CONFIRMS NEARLY EVERYTHING, some later adjudicated otherwise" if figure["rubber_stamp"] else ""
        lines.append(f"  {figure['period']:<9} {figure['reader']:<20} reads={figure['reads']} "
                     f"override {_percent(figure['override_rate'])} flag {_percent(figure['flag_rate'])} "
                     f"agrees with model {_percent(figure['agreement_with_model'])} "
                     f"with final {_percent(figure['agreement_with_final'])}{mark}")
    lines.append("\ntime to read (hours: median / p90)")
    for entry in report.latency:
        read, adjudication = entry["upload_to_first_read"], entry["flag_to_adjudication"]

        def hours(part: dict) -> str:
            return "-" if not part["n"] else f"{part['median_hours']:.1f} / {part['p90_hours']:.1f} (n={part['n']})"

        lines.append(f"  {entry['period']:<9} upload to first read {hours(read)}; flag to adjudication "
                     f"{hours(adjudication)}")
    return "\n".join(lines)


def report_html(report: MonitorReport, title: str = "BrainScan Review - model performance here") -> str:
    """A one-page printable report for the quality meeting: alerts, then the tables; no outside resources."""
    from html import escape

    def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
        head = "".join(f"<th>{escape(str(header))}</th>" for header in headers)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def interval(figure: Mapping) -> str:
        return "-" if figure["low"] is None else f"{_percent(figure['low'])} - {_percent(figure['high'])}"

    span = f"{report.since or 'the first case'} to {report.until or 'the last case'}"
    alerts = ("<p>No alert.</p>" if not report.alerts else
              "<ul class='alerts'>" + "".join(f"<li>{escape(alert.message)}</li>" for alert in report.alerts) + "</ul>")
    reference = ("" if report.reference is None else
                 f"<p>Reference: {escape(report.reference.source)}, model {escape(report.reference.model_version)}.</p>")
    performance = table(("Period", "Model", "Scanner", "Measure", "Class", "Value", "95% CI", "n", "Card"), [
        (figure["period"], figure["model_version"], figure["scanner"], figure["measure"], figure["class"] or "-",
         _percent(figure["value"]), interval(figure), figure["n"], _percent(figure["reference"]))
        for figure in report.performance if figure["n"]])
    inputs = table(("Period", "Measure", "Value", "n", "Reference", "Alert"), [
        (figure["period"], figure["measure"], _input_value(figure, "value"), figure["n"],
         _input_value(figure, "reference"), "yes" if figure["alert"] else "") for figure in report.inputs])
    readers = table(("Reader", "Period", "Reads", "Override", "Flag", "Agrees with model", "Agrees with final",
                     "Confirmed, then adjudicated otherwise", "Confirms nearly everything"), [
        (figure["reader"], figure["period"], figure["reads"], _percent(figure["override_rate"]),
         _percent(figure["flag_rate"]), _percent(figure["agreement_with_model"]),
         _percent(figure["agreement_with_final"]), figure["confirmed_otherwise"],
         "yes" if figure["rubber_stamp"] else "") for figure in report.readers])
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            "<style>body{font:11pt system-ui,sans-serif;margin:1.5cm}table{border-collapse:collapse;width:100%;"
            "margin-bottom:1em}th,td{border:1px solid #999;padding:2px 6px;text-align:left;font-size:9pt}"
            ".alerts li{color:#a00;font-weight:600}@media print{body{margin:0.5cm}}</style></head><body>"
            f"<h1>{escape(title)}</h1><p>{report.cases} cases from {escape(span)}, "
            f"{report.cases_with_final_label} with a final label (agreed reads and adjudications); by {report.by}. "
            "Figures are recomputed from the history; Wilson 95% intervals. A review aid, not a diagnostic device."
            f"</p>{reference}<h2>Alerts</h2>{alerts}<h2>Against the readers' final labels</h2>{performance}"
            f"<h2>Without ground truth</h2>{inputs}<h2>How readers use it</h2>{readers}</body></html>")
