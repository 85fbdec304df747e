"""How well the not-a-brain-MRI gate works: held-out MRI slices passed, other images flagged.

`evaluate_gate` runs both sets through the serving pipeline (`core.pipeline.analyse_many`), so
the cheap checks and the Mahalanobis gate (`core.model.gate`) are measured together, as served;
`python -m core ood-eval` prints and records the result.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from core.pipeline import GATE_MESSAGE, NOT_MRI_MESSAGE, analyse_many
from core.scans.statistics import ImageStatistics, image_statistics
from core.training.nonmri import category_of

FLOORS = {"mri_pass_rate": 0.95, "non_mri_flag_rate": 0.95}
_STATISTIC_PERCENTILES = (0.5, 1.0, 5.0, 50.0, 95.0, 99.0, 99.5)


def outcome_stage(result) -> str:
    """Where a `core.pipeline.ScanResult` stopped: "passed", "intake", "screen" or "gate"."""
    if result.status == "ok":
        return "passed"
    if not result.probabilities:
        return "intake"
    return "gate" if result.message == GATE_MESSAGE else "screen"


def evaluate_gate(classifier, mri_items, non_mri_items) -> dict:
    """Run both sets through the serving pipeline; report the MRI pass rate and the non-MRI flag rate.

    Items are (name, reader) pairs, as `core.pipeline.analyse_many` takes. A non-MRI image counts
    as flagged when it ends anywhere but "ok" (rejected at intake, by the cheap checks or by the
    gate); an MRI slice counts as passed only when it ends "ok". The MRI side also reports
    percentiles of `image_statistics`, the numbers the cheap checks' limits are set from.
    """
    mri_stages, mri_reasons, statistics, stopped = Counter(), Counter(), [], []
    for result in analyse_many(classifier, mri_items, keep_scans=True):
        stage = outcome_stage(result)
        mri_stages[stage] += 1
        if stage != "passed":
            mri_reasons[_reason_key(result.message)] += 1
            stopped.append({"file": result.filename, "stage": stage, "message": result.message})
        if result.scan is not None:
            statistics.append(image_statistics(result.scan.image))
    non_stages, categories, missed = Counter(), {}, []
    for result in analyse_many(classifier, non_mri_items):
        stage = outcome_stage(result)
        non_stages[stage] += 1
        category = categories.setdefault(category_of(result.filename), Counter())
        category["n"] += 1
        category["flagged"] += stage != "passed"
        if stage == "passed":
            missed.append(result.filename)
    mri_total, non_total = sum(mri_stages.values()), sum(non_stages.values())
    report = {
        "model": classifier.version,
        "mri": {
            "n": mri_total,
            "passed": mri_stages["passed"],
            "pass_rate": mri_stages["passed"] / mri_total if mri_total else float("nan"),
            "by_stage": dict(mri_stages),
            "reasons": dict(mri_reasons.most_common()),
            "stopped_files": stopped,
            "statistics_percentiles": _percentiles(statistics),
        },
        "non_mri": {
            "n": non_total,
            "flagged": non_total - non_stages["passed"],
            "flag_rate": (non_total - non_stages["passed"]) / non_total if non_total else float("nan"),
            "by_stage": dict(non_stages),
            "by_category": {name: {"n": counts["n"], "flagged": counts["flagged"],
                                   "flag_rate": counts["flagged"] / counts["n"]}
                            for name, counts in sorted(categories.items())},
            "passed_files": missed,
        },
        "floors": dict(FLOORS),
    }
    report["meets_floors"] = bool(report["mri"]["pass_rate"] >= FLOORS["mri_pass_rate"]
                                  and report["non_mri"]["flag_rate"] >= FLOORS["non_mri_flag_rate"])
    return report


def _reason_key(message: str) -> str:
    if message.startswith(NOT_MRI_MESSAGE) and "(" in message:
        reason = message[message.index("(") + 1: message.rindex(")")] if ")" in message else message
        # Numbers vary per image; the reason's kind is what is counted.
        return re.sub(r"\d+(\.\d+)?", "#", reason)
    return message


def _percentiles(statistics: list[ImageStatistics]) -> dict[str, dict[str, float]]:
    if not statistics:
        return {}
    table = {}
    for name in ImageStatistics.__dataclass_fields__:
        values = np.array([getattr(item, name) for item in statistics])
        table[name] = {f"p{percentile:g}": round(float(np.percentile(values, percentile)), 4)
                       for percentile in _STATISTIC_PERCENTILES}
    return table


def format_gate_report(report: dict) -> str:
    """A plain-text summary of `evaluate_gate`'s report."""
    mri, non = report["mri"], report["non_mri"]
    lines = [
        f"MRI slices passed: {mri['passed']}/{mri['n']} = {mri['pass_rate']:.4f} "
        f"(floor {report['floors']['mri_pass_rate']:.2f}); stopped at {_stages(mri['by_stage'])}",
        f"non-MRI images flagged: {non['flagged']}/{non['n']} = {non['flag_rate']:.4f} "
        f"(floor {report['floors']['non_mri_flag_rate']:.2f}); stopped at {_stages(non['by_stage'])}",
        "",
        f"{'non-MRI category':<20}{'n':>6}{'flagged':>9}{'rate':>8}",
    ]
    for name, row in non["by_category"].items():
        lines.append(f"{name:<20}{row['n']:>6}{row['flagged']:>9}{row['flag_rate']:>8.3f}")
    if mri["reasons"]:
        lines += ["", "why MRI slices were stopped:"] + [f"  {count:>5}  {reason}" for reason, count in mri["reasons"].items()]
    if non["passed_files"]:
        shown = ", ".join(non["passed_files"][:12]) + (" ..." if len(non["passed_files"]) > 12 else "")
        lines += ["", f"non-MRI images that passed: {shown}"]
    lines += ["", "floors met" if report["meets_floors"] else "FLOORS NOT MET"]
    return "\n".join(lines)


def _stages(counts: dict) -> str:
    return ", ".join(f"{stage} {counts.get(stage, 0)}" for stage in ("intake", "screen", "gate", "passed"))
