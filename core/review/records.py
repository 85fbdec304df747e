"""The review record's vocabulary and rules: verdicts, statuses, limits, final labels, and row summaries.

Plain functions over plain rows, shared by the history store (`core.review.store`), the export and
the pages; nothing here touches a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone

from core.classes import CLASS_NAMES, READ_LABELS
from core.errors import BrainScanError

# A prediction shown, a reviewer's read (verdict), a second reader's adjudication, a file refused at intake, an
# export, a scan stored in the archive, a reader's read of a whole series, a result object sent to the archive.
EVENT_KINDS: tuple[str, ...] = ("prediction", "verdict", "adjudication", "refusal", "export", "archive",
                                "series_read", "result")
# The kinds that make up a case (its status and final label): a scan's, or a series' (its reads and adjudication,
# filed under `core.review.series.series_key`); the others are about files and objects.
CASE_KINDS: tuple[str, ...] = ("prediction", "verdict", "adjudication", "refusal", "series_read")
# A reader's read: of one scan, or of a whole series.
READ_KINDS: tuple[str, ...] = ("verdict", "series_read")
VERDICTS: tuple[str, ...] = ("confirm", "override", "flag")
VERDICT_NAMES: dict[str, str] = {"confirm": "Confirmed", "override": "Overridden", "flag": "Flagged for second read"}
# A scan the model gave no class (refused) is read by an `override` with the reader's label and reason; shown so.
READ_WITHOUT_CLASS = "Read (no model class)"
# The status of a scan, derived from all its reads (core.review.reads.case_state); "flagged" means awaiting a second read.
STATUSES: tuple[str, ...] = ("new", "reviewed", "flagged", "adjudicated", "rejected")
STATUS_LABELS: dict[str, str] = {"new": "New", "reviewed": "Reviewed", "flagged": "Awaiting second read",
                                 "adjudicated": "Adjudicated", "rejected": "Refused"}
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in CLASS_NAMES)
# Who acted, as a sign-in provider names them (issuer + subject identify; email, name and role are
# as shown then). Empty until the app signs reviewers in; `reviewer` is the name typed meanwhile.
IDENTITY_COLUMNS: tuple[str, ...] = ("actor_issuer", "actor_subject", "actor_email", "actor_name", "actor_role")
# The hash chain (core.review.chain): the previous event's hash and this event's own.
CHAIN_COLUMNS: tuple[str, ...] = ("prev_hash", "hash")
COLUMNS: tuple[str, ...] = (
    "id", "time", "session_id", "reviewer", *IDENTITY_COLUMNS, "kind", "sha256", "file_name", "model_version",
    "predicted_class", *PROBABILITY_COLUMNS, "verdict", "final_label", "reason", "note", *CHAIN_COLUMNS,
    # An archive event's reference (DICOM UIDs, the archived object's sha256) or a series read's key slices.
    "detail",
)
MAX_IDENTITY_CHARS = 320  # an email address's longest legal length
MAX_REVIEWER_CHARS = 80
MAX_REASON_CHARS = 500
MAX_NOTE_CHARS = 2000
MAX_FILE_NAME_CHARS = 255


class VerdictRejected(BrainScanError):
    """A verdict cannot be saved as given; the message says what to fix."""


def check_length(what: str, text: str, limit: int) -> None:
    """Raise `VerdictRejected` when a free-text field is longer than its limit."""
    if len(text) > limit:
        raise VerdictRejected(f"the {what} is {len(text)} characters long; keep it under {limit}")


def verdict_name(verdict: str | None, predicted_class: str | None = None) -> str:
    """A verdict as pages show it; an override of a scan the model gave no class is the reader's own read."""
    if verdict == "override" and not predicted_class:
        return READ_WITHOUT_CLASS
    return VERDICT_NAMES.get(verdict or "", "")


def final_label_of(verdict: str, predicted_class: str | None, override_label: str | None, reason: str,
                   labels: tuple[str, ...] = READ_LABELS) -> str | None:
    """The final label a verdict gives a scan (None for a flag); raise `VerdictRejected` saying what to fix.

    A scan the model refused has no class to confirm: its read is an override with the reader's
    label (a class, "not a brain MRI slice" or "non-diagnostic") and a reason. `labels` are the
    answers allowed (a series read allows only the classes).
    """
    if verdict == "confirm":
        if predicted_class not in CLASS_NAMES:
            raise VerdictRejected("there is no model class to confirm; give your own read with a reason, or flag it")
        return predicted_class
    if verdict == "override":
        if override_label not in labels:
            raise VerdictRejected("choose your read" if not predicted_class
                                  else "choose the class you override the prediction with")
        if override_label == predicted_class:
            raise VerdictRejected("the chosen class is the model's own prediction; confirm it instead")
        if not reason:
            raise VerdictRejected("a read of a scan the model refused needs a reason" if not predicted_class
                                  else "an override needs a reason")
        return override_label
    if verdict == "flag":
        return None
    raise VerdictRejected(f"unknown verdict {verdict!r}; expected one of {', '.join(VERDICTS)}")


def display_time(value: str) -> str:
    """An event's ISO 8601 UTC time as shown to reviewers, to the second: "2026-11-24 06:01:02"."""
    return str(value)[:19].replace("T", " ")


def row_date(row: Mapping) -> date:
    """The UTC calendar date of a history row's `time`."""
    return datetime.fromisoformat(row["time"]).astimezone(timezone.utc).date()


def filter_rows(rows: Iterable[Mapping], *, classes: Iterable[str] | None = None,
                verdicts: Iterable[str | None] | None = None, reviewers: Iterable[str] | None = None,
                start: date | None = None, end: date | None = None) -> list[dict]:
    """Rows matching every given filter (None or empty: no filter on that field).

    `classes` match the model's class or the final label; `verdicts` may include None for rows
    without a verdict (predictions, unreviewed scans); `start` and `end` are inclusive UTC dates.
    """
    classes = set(classes or ())
    verdicts = set(verdicts or ())
    reviewers = set(reviewers or ())
    kept = []
    for row in rows:
        if classes and row.get("predicted_class") not in classes and row.get("final_label") not in classes:
            continue
        if verdicts and row.get("verdict") not in verdicts:
            continue
        if reviewers and row.get("reviewer") not in reviewers:
            continue
        if start is not None or end is not None:
            day = row_date(row)
            if (start is not None and day < start) or (end is not None and day > end):
                continue
        kept.append(dict(row))
    return kept


def summarise(states: Iterable[Mapping]) -> dict:
    """Summary of current-state rows: cases per class, model-reviewer agreement and the confusion matrix.

    Returns `cases_per_class` {class: count by the model's class}, `status_counts` {status: count},
    `decided` (scans with a final label), `agreed` (final label equals the model's class),
    `agreement` (agreed / decided, None when nothing is decided) and `confusion`
    [model class index][final label index] counts over decided scans, in `CLASS_NAMES` order.
    """
    cases_per_class = {name: 0 for name in CLASS_NAMES}
    status_counts = {status: 0 for status in STATUSES}
    confusion = [[0] * len(CLASS_NAMES) for _ in CLASS_NAMES]
    decided = agreed = 0
    for row in states:
        predicted, final = row.get("predicted_class"), row.get("final_label")
        if predicted in cases_per_class:
            cases_per_class[predicted] += 1
        if row.get("status") in status_counts:
            status_counts[row["status"]] += 1
        if predicted in CLASS_NAMES and final in CLASS_NAMES:
            decided += 1
            agreed += predicted == final
            confusion[CLASS_NAMES.index(predicted)][CLASS_NAMES.index(final)] += 1
    return {
        "cases_per_class": cases_per_class,
        "status_counts": status_counts,
        "decided": decided,
        "agreed": agreed,
        "agreement": agreed / decided if decided else None,
        "confusion": confusion,
    }
