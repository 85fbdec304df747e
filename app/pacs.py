"""The Studies page's glue: the PACS archive, pulling a series into the worklist, series reads and results.

A pulled series is kept in the session (`PulledSeries`: each slice as a small `ReviewItem`, with
the instance it came from) and its slices are recorded in the reader's worklist as uploads are,
so the Review and History pages know them. Series reads and results go to the history through
`core.review`; the page only draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from app import identity as app_identity
from app import review as app_review
from app import support as app_support
from core.archive.dicomweb import DicomWebArchive
from core.errors import ArchiveError, HistoryUnavailable
from core.review.records import VerdictRejected
from core.review.results import final_read
from core.review.worklist import ReviewItem, item_from_result

PULLED = "pacs_pulled"


@dataclass(frozen=True)
class PulledSeries:
    """A series pulled from the PACS: its UIDs, number and description, and its slices in order with their instances."""

    study_uid: str
    series_uid: str
    number: int | None
    description: str
    items: tuple[ReviewItem, ...]
    instances: tuple  # core.archive.pacs.InstanceSummary, one per item

    def key(self, name: str) -> str:
        """A widget key of this series' form: a series' slider and read form must not carry over to another."""
        return f"pacs_{name}_{self.series_uid.replace('.', '_')[-24:]}"

    @property
    def name(self) -> str:
        """What the history calls the series: its number and description, nothing of the patient."""
        number = self.number if self.number is not None else "?"
        return f"Series {number}" + (f" {self.description}" if self.description else "")


def pacs_archive() -> DicomWebArchive | None:
    """The configured archive when it speaks DICOMweb (a PACS or the team's Orthanc), else None."""
    archive = app_support.scan_archive()
    return archive if isinstance(archive, DicomWebArchive) else None


def pull_series(archive: DicomWebArchive, classifier, study_uid: str, series) -> PulledSeries | None:
    """Pull a series' instances with a progress bar, classify them as one batch, record them in the worklist."""
    from core.archive.pacs import series_instances
    from core.review.uploads import record_taken, take_pulled

    progress = st.progress(0.0, text="Listing the series' instances...")
    try:
        instances = series_instances(archive, study_uid, series.series_uid)
        taken = take_pulled(classifier, archive, instances, series.number, on_progress=lambda done, total: (
            progress.progress(done / total, text=f"Pulled and classified {done} of {total} instances")))
    except ArchiveError as error:
        progress.empty()
        app_support.archive_unavailable(error, "The series was not pulled")
        return None
    progress.empty()
    store = app_support.history_store()
    if store is not None:
        try:
            for item in taken:
                record_taken(store, item, session_id=app_support.session_id(), owner=app_support.worklist_owner(),
                             reviewer=app_support.reviewer_name(), model_version=classifier.version,
                             actor=app_support.actor())
        except HistoryUnavailable as error:
            app_support.history_unavailable(error, "The series is shown but not yet in your worklist")
    items = tuple(item_from_result(item.result, classifier.version, classifier.image_size) for item in taken)
    pulled = PulledSeries(study_uid, series.series_uid, series.number, series.description, items, tuple(instances))
    st.session_state.setdefault(PULLED, {})[series.series_uid] = pulled
    return pulled


def step_slice(pulled: PulledSeries, step: int) -> None:
    """Button callback: move the series' slice slider by `step`, staying within the series."""
    key = pulled.key("slice")
    position = int(st.session_state.get(key, 1)) + step
    st.session_state[key] = min(max(position, 1), len(pulled.items))


def next_suspicious(pulled: PulledSeries, ranked: list[int]) -> None:
    """Button callback: show the short list's next slice after the one shown (most suspicious first, wrapping)."""
    key = pulled.key("slice")
    shown = int(st.session_state.get(key, 1))
    following = ranked[(ranked.index(shown) + 1) % len(ranked)] if shown in ranked else ranked[0]
    st.session_state[key] = following


def record_series_read(pulled: PulledSeries, model_class: str | None, model_version: str) -> None:
    """Button callback: record the series read form's verdict, class, reason and key slices."""
    verdict = st.session_state.get(pulled.key("verdict"))
    by_position = {str(index + 1): item for index, item in enumerate(pulled.items)}
    keys = [by_position[str(position)].sha256 for position in st.session_state.get(pulled.key("key_slices")) or []]
    try:
        app_identity.acting_identity("reviewer")
        app_support.open_history().record_series_read(
            session_id=app_support.session_id(), reviewer=app_support.reviewer_name(), series_name=pulled.name,
            study_uid=pulled.study_uid, series_uid=pulled.series_uid, model_version=model_version,
            predicted_class=model_class, verdict=verdict or "", override_label=st.session_state.get(pulled.key("override")),
            reason=st.session_state.get(pulled.key("reason")) or "", key_slices=keys, slice_count=len(pulled.items),
            actor=app_support.actor())
    except (VerdictRejected, HistoryUnavailable) as error:
        st.session_state["pacs_flash"] = ("error", f"Not saved: {error}.")
    else:
        st.session_state["pacs_flash"] = ("success", f"Saved the series read of {pulled.name}.")


def key_slices_of(archive: DicomWebArchive, pulled: PulledSeries, positions: list[int]):
    """`core.archive.results.KeySlice`s of the classified slices at these 1-based positions (bytes read again)."""
    from core.archive.pacs import retrieve
    from core.archive.results import KeySlice

    chosen = []
    for position in positions:
        item, instance = pulled.items[position - 1], pulled.instances[position - 1]
        if item.status == "ok":
            chosen.append(KeySlice(retrieve(archive, instance), item.label, item.probabilities))
    return chosen


def send_model_result(archive: DicomWebArchive, classifier, pulled: PulledSeries, positions: list[int]) -> None:
    """Button callback: store the model's report on the key slices and the heat map of the first; say what was sent."""
    from core.model import explain
    from core.review.results import send_model_result as send

    try:
        slices = key_slices_of(archive, pulled, positions)
        if not slices:
            raise VerdictRejected("choose at least one classified key slice")
        first = pulled.items[positions[0] - 1]
        heat = explain.gradcam(classifier, first.tensor, classifier.classes.index(first.label))
        picture = explain.overlay(_full_picture(archive, pulled, positions[0]), np.asarray(heat, np.float32))
        sent = send(app_support.open_history(), archive, classifier, pulled.series_uid, slices, picture,
                    session_id=app_support.session_id(), reviewer=app_support.reviewer_name(),
                    actor=app_support.actor())
    except (VerdictRejected, ArchiveError, HistoryUnavailable) as error:
        st.session_state["pacs_flash"] = ("error", f"Not sent: {error}.")
    else:
        st.session_state["pacs_flash"] = ("success", f"Sent to the archive: the AI result and its heat map "
                                                     f"({len(sent)} objects, in the source study).")


def send_read_result(archive: DicomWebArchive, classifier, pulled: PulledSeries, read: dict) -> None:
    """Button callback: store the VERIFIED report of the series' final read (`core.review.results.final_read`)."""
    from core.review.results import send_read_result as send

    by_sha = {item.sha256: index + 1 for index, item in enumerate(pulled.items)}
    positions = [by_sha[sha] for sha in read["key_slices"] if sha in by_sha]
    try:
        slices = key_slices_of(archive, pulled, positions)
        if not slices:
            raise VerdictRejected("the read names no classified key slice of this series")
        send(app_support.open_history(), archive, classifier, pulled.series_uid, slices, reader=read["reviewer"],
             final_label=read["final_label"], verdict=read["verdict"], reason=read["reason"] or "",
             session_id=app_support.session_id(), actor=app_support.actor())
    except (VerdictRejected, ArchiveError, HistoryUnavailable) as error:
        st.session_state["pacs_flash"] = ("error", f"Not sent: {error}.")
    else:
        st.session_state["pacs_flash"] = ("success", "Sent to the archive: the verified result of the read.")


def _full_picture(archive: DicomWebArchive, pulled: PulledSeries, position: int) -> np.ndarray:
    """The key slice's picture at its own resolution, as the intake decodes it, for the heat-map capture."""
    from core.archive.pacs import retrieve
    from core.scans.intake import load_scan

    instance = pulled.instances[position - 1]
    return load_scan(retrieve(archive, instance), pulled.items[position - 1].file_name).image


def find(archive: DicomWebArchive, patient_id: str, accession: str, date_from, date_to, modality: str):
    """Studies matching the search form (`core.archive.pacs.find_studies`); None after saying why it failed."""
    from core.archive.pacs import find_studies

    try:
        return find_studies(archive, patient_id, accession, date_from, date_to, modality)
    except ValueError as error:
        st.error(f"**Search not run**: {app_support.escape_markdown(str(error))}.", icon=":material/error:")
    except ArchiveError as error:
        app_support.archive_unavailable(error, "No study could be searched for")
    return None


def series_standing(pulled: PulledSeries, model_version: str) -> tuple[str, dict | None] | None:
    """Where the series' case stands for this viewer (its status) and the final read a verified report would state.

    None before a read this viewer may see (also when the history is down, after saying so). A
    blind reviewer (`app.review.sees_other_reads`) sees their own read's status only, and is offered
    the verified report only when the case's final read is their own.
    """
    store = app_support.history_store()
    if store is None:
        return None
    try:
        case = store.series_case(pulled.series_uid, model_version)
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "The series' reads cannot be shown")
        return None
    if case is None:
        return None
    final = final_read(case)
    identity = app_identity.current_identity()
    if app_review.sees_other_reads(identity):
        return case["status"], final
    shown = app_review.viewer_row(case, identity)
    if not shown["reads"]:
        return None
    return shown["status"], final if final is not None and final["reader"] == identity.key else None
