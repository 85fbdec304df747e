"""Sending a series' results back to the archive, and recording that they were sent.

`send_model_result` stores the model's UNVERIFIED report on the key slices and a heat-map
capture of the first key slice; `send_read_result` stores the VERIFIED report of the series'
final read. Each object is stored first and recorded after (a `result` event naming its
reference and role), so the history never names an object the archive does not hold; an
object the history already records as sent is refused (`ResultAlreadySent`) before either.
Building the objects is `core.archive.results`'; this module only orders the steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from core.archive.results import KeySlice, ModelIdentity, heatmap_capture, model_report, reader_report
from core.review.reads import reader_key
from core.review.records import VerdictRejected

MODEL_REPORT, READER_REPORT, HEAT_MAP = "model report", "reader report", "heat map"


def model_identity(classifier) -> ModelIdentity:
    """The loaded model as a result names it: card name, version, the weights' sha256."""
    card = classifier.card
    return ModelIdentity(card.name, str(card.data.get("version", "")), str(card.data.get("model_sha256", "")))


def final_read(case: Mapping | None) -> dict | None:
    """What a series' VERIFIED report states, from its case (`HistoryStore.series_case`); None without a final label.

    An adjudicated series: the second reader as verifier, the adjudication's label and reason,
    verdict "adjudicated". Reads that agree: the latest read's reader, verdict and reason. Either
    way the key slices are the latest read's that names any, and `reader` is who verifies
    (`core.review.reads.reader_key`). A flagged or disputed series has none.
    """
    if not case or case.get("status") not in ("reviewed", "adjudicated") or not case.get("final_label"):
        return None
    reads = sorted(case.get("reads") or [], key=lambda read: read["id"])
    named = [read for read in reads if key_slices_of(read)]
    key_slices = key_slices_of(named[-1]) if named else []
    adjudication = case.get("adjudication")
    if case["status"] == "adjudicated" and adjudication:
        return {"reviewer": adjudication["reviewer"], "reader": reader_key(adjudication),
                "final_label": adjudication["final_label"], "verdict": "adjudicated",
                "reason": adjudication["reason"] or "", "key_slices": key_slices}
    latest = reads[-1]
    return {"reviewer": latest["reviewer"], "reader": reader_key(latest), "final_label": case["final_label"],
            "verdict": latest["verdict"], "reason": latest["reason"] or "", "key_slices": key_slices}


def key_slices_of(read: Mapping) -> list[str]:
    """The key slices' sha256 a series read names (its detail as stored, or already decoded)."""
    detail = read.get("detail") or {}
    if isinstance(detail, str):
        detail = json.loads(detail) if detail else {}
    return list(detail.get("key_slices") or [])


class ResultAlreadySent(VerdictRejected):
    """The archive already holds this result object (same SOP Instance UID), as the history records."""


def _send(store, archive, archived, *, series_uid: str, description: str, role: str, session_id: str, reviewer: str,
          model_version: str, actor: Mapping[str, str] | None):
    # A result's UIDs come from what it says (core.archive.results), so the same result sent again is the same
    # object: refused before anything is stored or recorded twice.
    instance = archived.reference.instance_uid
    if any(row["detail"].get("instance_uid") == instance for row in store.results_sent(series_uid)):
        raise ResultAlreadySent(f"this {role} is already in the archive (SOP Instance UID {instance}); it is not "
                                "stored again")
    archive.store(archived)
    store.record_result(session_id=session_id, reviewer=reviewer, series_uid=series_uid, description=description,
                        model_version=model_version, reference=archived.reference.to_detail(), role=role, actor=actor)
    return archived.reference


def send_model_result(store, archive, classifier, series_uid: str, key_slices: Sequence[KeySlice],
                      heatmap: np.ndarray | None, *, session_id: str, reviewer: str,
                      actor: Mapping[str, str] | None = None) -> list:
    """Store and record the model's report on the key slices (and the heat map of the first); their references."""
    model = model_identity(classifier)
    common = dict(series_uid=series_uid, session_id=session_id, reviewer=reviewer, model_version=classifier.version,
                  actor=actor)
    sent = [_send(store, archive, model_report(key_slices, model, classifier.card.display_names),
                  description="AI result (unverified)", role=MODEL_REPORT, **common)]
    if heatmap is not None and key_slices:
        sent.append(_send(store, archive, heatmap_capture(key_slices[0].source, heatmap, model),
                          description="AI heat map", role=HEAT_MAP, **common))
    return sent


def send_read_result(store, archive, classifier, series_uid: str, key_slices: Sequence[KeySlice], *, reader: str,
                     final_label: str, verdict: str, reason: str, session_id: str,
                     actor: Mapping[str, str] | None = None, organisation: str = ""):
    """Store and record the VERIFIED report of a series' final read; its reference."""
    archived = reader_report(key_slices, model_identity(classifier), classifier.card.display_names, reader,
                             final_label, verdict, reason, organisation)
    return _send(store, archive, archived, series_uid=series_uid, description="AI result (read)", role=READER_REPORT,
                 session_id=session_id, reviewer=reader, model_version=classifier.version, actor=actor)
