"""Reads, not last-save-wins: each reviewer's read of a scan, second reads, adjudication and the final label.

A read is one reviewer's verdict on one scan under one model version; a reviewer who saves again
amends their own read (a new event; the old one stays in the log, and the latest counts). A scan's
final label is its adjudication if it has one, else the class every read agrees on; a flag for a
second read, or two reads that disagree on the final class, leave it awaiting a second read,
which a second reader settles with an adjudication (final class and a required reason).

Plain functions over history rows (dicts keyed by `core.review.records.COLUMNS`), shared by the
store (to compute each case's status), the pages and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from core.classes import CLASS_NAMES
from core.review.records import READ_KINDS

# A case's status: no read yet, reads agree, waiting for a second reader, settled by one, or refused at intake.
NEW, REVIEWED, AWAITING, ADJUDICATED, REJECTED = "new", "reviewed", "flagged", "adjudicated", "rejected"


def reader_key(event: Mapping) -> str:
    """Who made an event: issuer and subject when signed in, else the typed reviewer name (local mode)."""
    subject = event.get("actor_subject") or ""
    if subject:
        return f"{event.get('actor_issuer') or ''}\n{subject}"
    return f"\n{' '.join(str(event.get('reviewer') or '').split())}"


def reads_of(events: Iterable[Mapping]) -> list[dict]:
    """Each reader's latest read of one scan (or series), in the order they first read it.

    `amended` counts each reader's earlier saves.
    """
    latest: dict[str, dict] = {}
    saves: dict[str, int] = {}
    for event in sorted(events, key=lambda row: row["id"]):
        if event.get("kind") not in READ_KINDS:
            continue
        key = reader_key(event)
        saves[key] = saves.get(key, 0) + 1
        latest[key] = dict(event)
    return [{**read, "reader": key, "amended": saves[key] - 1} for key, read in latest.items()]


def adjudication_of(events: Iterable[Mapping]) -> dict | None:
    """The latest adjudication among one scan's events, or None."""
    found = [dict(event) for event in events if event.get("kind") == "adjudication"]
    return max(found, key=lambda row: row["id"]) if found else None


def case_state(events: Sequence[Mapping]) -> tuple[str, str | None]:
    """(status, final label) of one scan from all its events: the adjudication, else the reads' agreed class.

    Status is `new` (no read), `reviewed` (every read gives the same class), `flagged` (a read asks
    for a second read, or two reads disagree: awaiting a second reader), `adjudicated` or, for a
    file refused at intake, `rejected`. The final label is None unless reviewed or adjudicated.
    """
    adjudication = adjudication_of(events)
    if adjudication is not None:
        return ADJUDICATED, adjudication["final_label"]
    reads = reads_of(events)
    if not reads:
        kinds = {event.get("kind") for event in events}
        return (REJECTED if "refusal" in kinds and "prediction" not in kinds else NEW), None
    labels = {read["final_label"] for read in reads}
    if any(read["verdict"] == "flag" for read in reads) or len(labels) != 1:
        return AWAITING, None
    return REVIEWED, labels.pop()


def needs_second_read(status: str) -> bool:
    """True for a scan on the second-read queue."""
    return status == AWAITING


def split_reads(reads: Sequence[Mapping], viewer_key: str) -> tuple[dict | None, list[dict]]:
    """(the viewer's own read or None, everyone else's reads)."""
    own = next((dict(read) for read in reads if read["reader"] == viewer_key), None)
    return own, [dict(read) for read in reads if read["reader"] != viewer_key]


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None for no items or when chance agreement is 1."""
    if len(first) != len(second):
        raise ValueError("both raters must label the same items")
    total = len(first)
    if total == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / total
    labels = set(first) | set(second)
    expected = sum((list(first).count(label) / total) * (list(second).count(label) / total) for label in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def reader_agreement(reads_by_case: Mapping[object, Sequence[Mapping]]) -> list[dict]:
    """For every pair of readers who both gave a class to the same scans: n, raw agreement and Cohen's kappa.

    `reads_by_case` maps a case key to its reads (`reads_of`); flags give no class and are left out.
    Rows carry `readers` (two display names), `scans`, `agreement` and `kappa` (None when undefined).
    """
    labelled: dict[str, dict[object, str]] = {}
    names: dict[str, str] = {}
    for case, reads in reads_by_case.items():
        for read in reads:
            if read.get("final_label") in CLASS_NAMES:
                labelled.setdefault(read["reader"], {})[case] = read["final_label"]
                names[read["reader"]] = read.get("actor_name") or read.get("actor_email") or read.get("reviewer") \
                    or read["reader"]
    rows = []
    for first, second in combinations(sorted(labelled), 2):
        shared = sorted(set(labelled[first]) & set(labelled[second]), key=str)
        if not shared:
            continue
        a = [labelled[first][case] for case in shared]
        b = [labelled[second][case] for case in shared]
        rows.append({"readers": (names[first], names[second]), "scans": len(shared),
                     "agreement": sum(x == y for x, y in zip(a, b)) / len(shared), "kappa": cohen_kappa(a, b)})
    return rows
