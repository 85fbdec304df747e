"""Evaluating a model on labelled folders through the same path the app serves scans with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.classes import class_index
from core.errors import DatasetError
from core.pipeline import analyse_many
from core.progress import progress
from core.training.dataset import LabelledFile, find_labelled_files
from core.training.metrics import classification_report, present_recalls
from core.training.split import read_manifest


def select_split(files: list[LabelledFile], manifest_path: Path, split: str) -> list[LabelledFile]:
    """The files whose manifest row (matched by relative path) is in `split`."""
    wanted = {row.path for row in read_manifest(manifest_path) if row.split == split}
    chosen = [item for item in files if item.relative_path in wanted]
    if not chosen:
        raise DatasetError(f"no file of these folders is in the '{split}' split of {manifest_path.name}")
    return chosen


def evaluate_files(classifier, files: list[LabelledFile], manifest_path: Path | None = None,
                   leave_out: set[str] | None = None, not_mri: dict | None = None) -> dict:
    """Metrics of `classifier` on labelled files: accuracy, macro_f1, per_class, confusion_matrix, ece, n.

    Files the intake rejects are counted in `rejected` and left out of the metrics; files the
    out-of-distribution gate flags are kept in the metrics (the model's answer is still scored)
    and counted in `ood_flagged`. `by_source` breaks accuracy and per-class recall down by the
    folder that holds the class folders (e.g. 'sartaj-brain-mri/Testing'): one collection's
    figure can hide another's.

    `overlap` says how many of the scored files the model's split manifest (`manifest_path`, by
    sha256) puts in its training or validation split, and gives the figures without them: a
    score on files the model learnt from is not a held-out score.

    `leave_out` (sha256 digests, e.g. a label audit's flags) adds `without_flagged`: the figures with
    those files left out, a second figure beside, never instead of, the full one.

    `not_mri` (sha256 -> `core.training.dataset.NotMriFile`, the not-brain-MRI manifest) names files
    that are not brain MRI at all (head CT filed as MRI): they are not scored, and
    `not_mri_left_out` counts them by kind, with how many the gate refused.
    """
    not_mri = not_mri or {}
    left_out: dict[str, dict[str, int]] = {}
    readers = [(str(item.path), item.path.read_bytes) for item in files]
    probabilities, truths, sources, digests, rejected, flagged = [], [], [], [], [], 0
    results = analyse_many(classifier, readers)
    for item, result in progress(zip(files, results), total=len(files), description="evaluating"):
        if result.sha256 in not_mri:
            counts = left_out.setdefault(not_mri[result.sha256].kind, {"n": 0, "refused": 0})
            counts["n"] += 1
            counts["refused"] += result.status != "ok"
        elif result.probabilities:
            probabilities.append([result.probabilities[name] for name in classifier.classes])
            truths.append(class_index(item.label))
            sources.append(source_folder(item))
            digests.append(result.sha256)
            flagged += result.status != "ok"
        else:
            rejected.append({"file": result.filename, "reason": result.message})
    if not probabilities:
        raise DatasetError("no file could be classified")
    truths, probabilities, sources = np.array(truths), np.array(probabilities), np.array(sources)
    report = classification_report(truths, probabilities, classifier.classes)
    report["by_source"] = {}
    for source in sorted(set(sources)):
        part = classification_report(truths[sources == source], probabilities[sources == source], classifier.classes)
        report["by_source"][source] = {
            "n": part["n"], "accuracy": part["accuracy"],
            "recall": present_recalls(part),
        }
    report["overlap"] = training_overlap(digests, truths, probabilities, classifier.classes, manifest_path)
    if leave_out is not None:
        dropped = np.array([digest in leave_out for digest in digests])
        without = figures_without(truths, probabilities, classifier.classes, dropped)
        report["without_flagged"] = None if without is None else {**without, "left_out": int(dropped.sum())}
    report["rejected"] = rejected
    report["not_mri_left_out"] = left_out
    report["ood_flagged"] = flagged
    report["ood_pass_rate"] = 1.0 - flagged / len(truths)
    report["model"] = classifier.version
    return report


def training_overlap(digests: list[str], truths: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...],
                     manifest_path: Path | None) -> dict:
    """Which scored files (by sha256) the manifest puts in the train or validation split, and the figures without them.

    Returns {"manifest", "train", "validation", "files", "without_overlap"}; `without_overlap`
    holds n, accuracy, macro_f1 and per-class recall of the other files (None when no file is
    left, or nothing overlaps). With no manifest, `manifest` is None and the counts are unknown.
    """
    if manifest_path is None or not Path(manifest_path).is_file():
        return {"manifest": None, "train": None, "validation": None, "files": None, "without_overlap": None}
    split_of = {row.sha256: row.split for row in read_manifest(Path(manifest_path))}
    splits = np.array([split_of.get(digest, "") for digest in digests])
    seen = np.isin(splits, ("train", "validation"))
    without = figures_without(truths, probabilities, classes, seen) if seen.any() else None
    return {"manifest": Path(manifest_path).name, "train": int((splits == "train").sum()),
            "validation": int((splits == "validation").sum()), "files": int(seen.sum()), "without_overlap": without}


def figures_without(truths: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...],
                    dropped: np.ndarray) -> dict | None:
    """n, accuracy, macro_f1 and per-class recall of the files `dropped` (an (N,) bool mask) leaves; None if none."""
    if dropped.all():
        return None
    kept = classification_report(truths[~dropped], probabilities[~dropped], classes)
    return {"n": kept["n"], "accuracy": kept["accuracy"], "macro_f1": kept["macro_f1"], "recall": present_recalls(kept)}


def _recall_text(recall: dict[str, float], display_names: dict[str, str]) -> str:
    return "  ".join(f"{display_names.get(name, name)} {value:.3f}" for name, value in recall.items())


def _figures_text(figures: dict, display_names: dict[str, str]) -> str:
    return (f"n = {figures['n']}, accuracy = {figures['accuracy']:.4f}, macro-F1 = {figures['macro_f1']:.4f}; "
            f"recall {_recall_text(figures['recall'], display_names)}")


def _overlap_lines(overlap: dict | None, display_names: dict[str, str]) -> list[str]:
    if not overlap:
        return []
    if overlap["manifest"] is None:
        return ["overlap with the model's training data: unknown (no split manifest to compare with)"]
    if not overlap["files"]:
        return [f"overlap with the model's training data: no file is byte-identical to one in the train or "
                f"validation split of {overlap['manifest']} (near-duplicates are not compared here)"]
    lines = [f"WARNING: {overlap['files']} of these files are ones the model was trained or tuned on "
             f"({overlap['train']} in the train and {overlap['validation']} in the validation split of "
             f"{overlap['manifest']}, matched by sha256); the figures above are not a held-out score"]
    without = overlap["without_overlap"]
    if without is None:
        lines.append("  every scored file overlaps: there are no held-out figures")
    else:
        lines.append(f"  without them: {_figures_text(without, display_names)}")
    return lines


def _flagged_lines(without: dict | None, display_names: dict[str, str]) -> list[str]:
    if not without:
        return []
    return [f"without the {without['left_out']} files the label audit flags (a second figure, not the result): "
            f"{_figures_text(without, display_names)}"]


def source_folder(item: LabelledFile) -> str:
    """The folder holding the file's class folder, from the dataset folder on: 'sartaj-brain-mri/Testing'."""
    return "/".join(item.relative_path.split("/")[:-2]) or item.source


def format_report(report: dict, display_names: dict[str, str]) -> str:
    """A plain-text report: headline figures, per-class table and confusion matrix."""
    names = list(report["per_class"])
    lines = [
        *([f"model {report['model']}, served by {report['served']}"] if report.get("served") else []),
        f"n = {report['n']}   accuracy = {report['accuracy']:.4f}   macro-F1 = {report['macro_f1']:.4f}   "
        f"ECE = {report['ece']:.4f}",
        f"out-of-distribution gate: {report.get('ood_flagged', 0)} flagged "
        f"(pass rate {report.get('ood_pass_rate', 1.0):.4f}); rejected at intake: {len(report.get('rejected', []))}",
        *[f"left out, not brain MRI (not-brain-MRI manifest): {counts['n']} {kind} ({counts['refused']} refused by "
          "the gate)" for kind, counts in report.get("not_mri_left_out", {}).items()],
        *_overlap_lines(report.get("overlap"), display_names),
        *_flagged_lines(report.get("without_flagged"), display_names),
        "",
        f"{'class':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{display_names.get(name, name):<18}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{row['support']:>10d}")
    lines += ["", "confusion (rows: true, columns: predicted)", " " * 18 + "".join(f"{name[:9]:>10}" for name in names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{display_names.get(name, name):<18}" + "".join(f"{count:>10d}" for count in row))
    by_source = report.get("by_source") or {}
    if len(by_source) > 1:
        lines += ["", "by source folder (recall per class present)"]
        for source, part in by_source.items():
            recalls = _recall_text(part["recall"], display_names)
            lines.append(f"  {source}: n = {part['n']}, accuracy = {part['accuracy']:.4f}; {recalls}")
    return "\n".join(lines)


def files_for(data_dirs: list[Path]) -> list[LabelledFile]:
    """Every labelled file of the given dataset folders."""
    files: list[LabelledFile] = []
    for data_dir in data_dirs:
        files.extend(find_labelled_files(Path(data_dir)))
    return files
