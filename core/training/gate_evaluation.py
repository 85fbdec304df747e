"""How well the not-a-brain-MRI gate works: held-out MRI slices passed, other images flagged.

`evaluate_gate` runs both sets through the serving pipeline (`core.pipeline.analyse_many`), so
the model-free checks and the gate (`core.model.gate`) are measured together, as served;
`python -m core ood-eval` prints and records the result. Files of the MRI collections that the
not-brain-MRI manifest lists (head CT filed as MRI) are not counted as MRI: their refusal is
reported apart, as a correct one.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from core.pipeline import NOT_MRI_MESSAGE, analyse_many
from core.scans.statistics import ImageStatistics, image_statistics
from core.training.nonmri import category_of

# The floors: 98% of held-out MRI slices pass; 97% of real non-MRI images are refused and
# every head CT, body CT and photograph of them; every image of the synthetic set.
FLOORS = {"mri_pass_rate": 0.98, "non_mri_flag_rate": 1.0, "real_non_mri_flag_rate": 0.97,
          "real_category_flag_rate": {"head_ct": 1.0, "ct_body": 1.0, "dermoscopy_or_photo": 1.0}}
# Real "non-MRI" images that are brain MRI in another plane: the training collections hold such
# slices, so the classifier should read them; they are reported as a pass rate of their own.
IN_DISTRIBUTION_CATEGORIES = ("brain_mri_other_plane",)
_STATISTIC_PERCENTILES = (0.5, 1.0, 5.0, 50.0, 95.0, 99.0, 99.5)


def outcome_stage(result) -> str:
    """Where a `core.pipeline.ScanResult` stopped: "passed", "intake", "screen" or "gate"."""
    if result.status == "ok":
        return "passed"
    return result.refused_by or ("screen" if result.probabilities else "intake")


def evaluate_gate(classifier, mri_items, non_mri_items, real_non_mri_items=None, not_mri: dict | None = None) -> dict:
    """Run the sets through the serving pipeline; report the MRI pass rate and the non-MRI flag rates.

    Items are (name, reader) pairs, as `core.pipeline.analyse_many` takes; a non-MRI item's name
    starts with its category ("head_ct/...", as `core.training.nonmri` and `non_mri_folder_items`
    name them). A non-MRI image counts as flagged when it ends anywhere but "ok" (rejected at
    intake, by the cheap checks or by the gate); an MRI slice counts as passed only when it ends
    "ok". `real_non_mri_items` are real images (`ood-eval --non-mri`): their categories in
    `IN_DISTRIBUTION_CATEGORIES` are brain MRI in another plane, which the training data holds
    too, so they are reported as a pass rate of their own, not as misses. The MRI side also
    reports percentiles of `image_statistics`. `not_mri` (sha256 -> `core.training.dataset.NotMriFile`)
    names MRI items that are not brain MRI: they are counted apart, by kind, and their refusal is right.
    """
    not_mri = not_mri or {}
    mri_stages, mri_reasons, statistics, stopped = Counter(), Counter(), [], []
    listed: dict[str, Counter] = {}
    listed_passed = []
    for result in analyse_many(classifier, mri_items, keep_scans=True):
        stage = outcome_stage(result)
        if result.sha256 in not_mri:
            counts = listed.setdefault(not_mri[result.sha256].kind, Counter())
            counts["n"] += 1
            counts["refused"] += stage != "passed"
            if stage == "passed":
                listed_passed.append(result.filename)
            continue
        mri_stages[stage] += 1
        if stage != "passed":
            mri_reasons[_reason_key(result.message)] += 1
            stopped.append({"file": result.filename, "stage": stage, "message": result.message})
        if result.scan is not None:
            statistics.append(image_statistics(result.scan.image))
    mri_total = sum(mri_stages.values())
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
        "filed_as_mri": {"by_kind": {kind: dict(counts) for kind, counts in sorted(listed.items())},
                         "passed_files": listed_passed,
                         "rule": "files of the MRI collections the not-brain-MRI manifest lists; refusing them is right"},
        "non_mri": _non_mri_section(classifier, non_mri_items),
        "floors": dict(FLOORS),
    }
    meets = (report["mri"]["pass_rate"] >= FLOORS["mri_pass_rate"]
             and report["non_mri"]["flag_rate"] >= FLOORS["non_mri_flag_rate"])
    if real_non_mri_items is not None:
        report["real_non_mri"] = _non_mri_section(classifier, real_non_mri_items, IN_DISTRIBUTION_CATEGORIES)
        categories = report["real_non_mri"]["by_category"]
        meets = meets and report["real_non_mri"]["flag_rate"] >= FLOORS["real_non_mri_flag_rate"] and all(
            categories[name]["flag_rate"] >= floor for name, floor in FLOORS["real_category_flag_rate"].items()
            if name in categories)
    report["meets_floors"] = bool(meets)
    return report


def _non_mri_section(classifier, items, in_distribution: tuple[str, ...] = ()) -> dict:
    """Flag counts per category and stage; categories in `in_distribution` are counted as passes apart."""
    stages, categories, missed, kept = Counter(), {}, [], Counter()
    for result in analyse_many(classifier, items):
        stage = outcome_stage(result)
        category = category_of(result.filename)
        if category in in_distribution:
            kept["n"] += 1
            kept["passed"] += stage == "passed"
            continue
        stages[stage] += 1
        counts = categories.setdefault(category, Counter())
        counts["n"] += 1
        counts["flagged"] += stage != "passed"
        if stage == "passed":
            missed.append(result.filename)
        elif result.looks_like:
            counts[f"named: {result.looks_like}"] += 1
    total = sum(stages.values())
    section = {
        "n": total,
        "flagged": total - stages["passed"],
        "flag_rate": (total - stages["passed"]) / total if total else float("nan"),
        "by_stage": dict(stages),
        "by_category": {name: {"n": counts["n"], "flagged": counts["flagged"],
                               "flag_rate": counts["flagged"] / counts["n"],
                               "named": {key[len("named: "):]: value for key, value in sorted(counts.items())
                                         if key.startswith("named: ")}}
                        for name, counts in sorted(categories.items())},
        "passed_files": missed,
    }
    if in_distribution:
        section["other_plane_mri"] = {"categories": list(in_distribution), "n": kept["n"], "passed": kept["passed"],
                                      "pass_rate": kept["passed"] / kept["n"] if kept["n"] else float("nan")}
    return section


def non_mri_folder_items(folder: Path) -> list[tuple[str, object]]:
    """(category/file name, reader) pairs of a folder of category subfolders of non-MRI images, sorted."""
    items = []
    for category in sorted(path for path in Path(folder).iterdir() if path.is_dir()):
        for file in sorted(path for path in category.iterdir() if path.is_file() and not path.name.startswith(".")):
            items.append((f"{category.name}/{file.name}", file.read_bytes))
    return items


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
    mri, floors = report["mri"], report["floors"]
    lines = [
        f"MRI slices passed: {mri['passed']}/{mri['n']} = {mri['pass_rate']:.4f} "
        f"(floor {floors['mri_pass_rate']:.2f}); stopped at {_stages(mri['by_stage'])}",
    ]
    sections = [("non-MRI images (synthetic set)", report["non_mri"], floors["non_mri_flag_rate"])]
    if "real_non_mri" in report:
        sections.append(("real non-MRI images", report["real_non_mri"], floors["real_non_mri_flag_rate"]))
    for title, section, floor in sections:
        lines += [
            "",
            f"{title} flagged: {section['flagged']}/{section['n']} = {section['flag_rate']:.4f} "
            f"(floor {floor:.2f}); stopped at {_stages(section['by_stage'])}",
            f"{'category':<22}{'n':>6}{'flagged':>9}{'rate':>8}",
        ]
        for name, row in section["by_category"].items():
            named = ", ".join(f"{count} {what}" for what, count in row.get("named", {}).items())
            lines.append(f"{name:<22}{row['n']:>6}{row['flagged']:>9}{row['flag_rate']:>8.3f}"
                         + (f"   named: {named}" if named else ""))
        other = section.get("other_plane_mri")
        if other:
            lines.append(f"brain MRI in another plane (should pass, not counted above): {other['passed']}/"
                         f"{other['n']} passed")
        if section["passed_files"]:
            shown = ", ".join(section["passed_files"][:12]) + (" ..." if len(section["passed_files"]) > 12 else "")
            lines.append(f"passed the gate: {shown}")
    for kind, counts in report.get("filed_as_mri", {}).get("by_kind", {}).items():
        lines.insert(1, f"{kind} filed as MRI in the collections (not counted above): refused {counts['refused']}/"
                        f"{counts['n']}")
    if mri["reasons"]:
        lines += ["", "why MRI slices were stopped:"] + [f"  {count:>5}  {reason}" for reason, count in mri["reasons"].items()]
    lines += ["", "floors met" if report["meets_floors"] else "FLOORS NOT MET"]
    return "\n".join(lines)


def _stages(counts: dict) -> str:
    return ", ".join(f"{stage} {counts.get(stage, 0)}" for stage in ("intake", "screen", "gate", "passed"))


def gate_score_reference(classifier, mri_items, not_mri: dict | None = None) -> dict:
    """The gate's not-MRI scores of MRI slices as served, counted per unit bin: what monitoring compares a period with.

    Items are (name, reader) pairs, as `evaluate_gate` takes; files the not-brain-MRI manifest lists
    are left out, as everywhere else. Bins are `floor(score)`, the unit bins the history's
    aggregates use (`core.review.store.HistoryStore.monitoring_aggregates`). Only scored files count
    (a file refused at intake or by the model-free checks has no score).
    """
    import math

    not_mri = not_mri or {}
    bins: Counter = Counter()
    left_out = 0
    for result in analyse_many(classifier, mri_items):
        if result.sha256 in not_mri:
            left_out += 1
            continue
        if result.not_mri_score is not None and math.isfinite(result.not_mri_score):
            bins[math.floor(result.not_mri_score)] += 1
    return {"n": sum(bins.values()), "gate_score_bins": {str(edge): bins[edge] for edge in sorted(bins)},
            "left_out_not_brain_mri": left_out, "model": classifier.version}
