"""The Review page's Streamlit-side workflow and parts: the worklist in session state, saving a verdict,
heat-maps, the probability bars and the DICOM display panel.

pages/review.py lays the page out; this module keeps what survives reruns (session state) and
talks to the history store and the classifier through `app.support`. The plain rules (what a
worklist keeps, statuses, what comes next) are in `core.review.worklist`.
"""

from __future__ import annotations

import hashlib
import html
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pandas as pd
import streamlit as st

from app import identity as app_identity
from app import support as app_support
from core import config
from core.errors import HistoryUnavailable, ScanRejected
from core.pipeline import analyse_bytes
from core.review.reads import split_reads
from core.review.records import IDENTITY_COLUMNS, VERDICT_NAMES, VerdictRejected, display_time
from core.review.worklist import (
    ReviewItem,
    first_unreviewed,
    item_from_result,
    next_unreviewed,
)
from core.scans.dicom import BRAIN_WINDOW
from core.scans.intake import load_scan, sniff_format

DICOM_VIEWS_KEPT = 8  # re-classified DICOM frame/window choices kept per session
PICTURES_KEPT = 2000  # thumbnails (at most 512 x 512 bytes each) kept per process for second readers
HIGHLIGHT = "#2b6cb0"
MUTED = "#c3cad5"
_WORKLIST_STATE = ("review_items", "review_digests", "review_unrecorded", "review_heatmaps", "review_current",
                   "review_dicom_headers")


def classify(classifier, data: bytes, file_name: str, **view) -> ReviewItem:
    """Classify one file's bytes through the shared pipeline and keep what the worklist needs."""
    return item_from_result(analyse_bytes(classifier, data, file_name, **view), classifier.version,
                            classifier.image_size)


def classify_uploads(uploads, classifier, store, session: str) -> list[ReviewItem]:
    """Classify uploads not seen before (a progress bar for a batch), record their predictions, return the worklist.

    The worklist holds every distinct scan classified in this session, in upload order, until it
    is cleared: switching pages (which empties the uploader) keeps it. Bytes are read only for
    files the page has not seen; a file already in the worklist is never classified again.
    """
    items: dict[str, ReviewItem] = st.session_state.setdefault("review_items", {})
    digests: dict[str, str] = st.session_state.setdefault("review_digests", {})
    unrecorded: set[str] = st.session_state.setdefault("review_unrecorded", set())
    pending = [upload for upload in uploads if digests.get(upload.file_id) not in items]
    bar = st.progress(0.0, text=f"Classifying {len(pending)} scans...") if len(pending) > 1 else None
    for position, upload in enumerate(pending, start=1):
        data = upload.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        digests[upload.file_id] = digest
        if digest not in items:
            with st.spinner("Classifying the scan...") if bar is None else nullcontext():
                item = classify(classifier, data, upload.name)
            # A refused file is recorded too, under the sha256 of the bytes that were uploaded.
            items[digest] = item if item.sha256 else replace(item, sha256=digest)
            unrecorded.add(digest)
            if item.thumbnail is not None:
                remember_picture(item)
        del data
        if bar is not None:
            bar.progress(position / len(pending), text=f"Classified {position} of {len(pending)} scans")
    if bar is not None:
        bar.empty()
    current = {upload.file_id for upload in uploads}
    for file_id in [file_id for file_id in digests if file_id not in current]:
        del digests[file_id]
    _record_predictions([item for digest, item in items.items() if digest in unrecorded], store, session, unrecorded)
    return list(items.values())


@st.cache_resource(show_spinner=False)
def _pictures() -> dict[str, np.ndarray]:
    # The second reader's view of a scan someone else uploaded to this server process (never the bytes).
    return {}


def remember_picture(item: ReviewItem) -> None:
    """Keep a scan's thumbnail for the Second reads page, the latest PICTURES_KEPT per server process."""
    pictures = _pictures()
    pictures.pop(item.sha256, None)
    pictures[item.sha256] = item.thumbnail
    while len(pictures) > PICTURES_KEPT:
        pictures.pop(next(iter(pictures)), None)


def picture_of(sha256: str) -> np.ndarray | None:
    """The thumbnail of a scan uploaded to this server process, or None."""
    return _pictures().get(sha256)


def upload_of(uploads, item: ReviewItem):
    """The uploaded file whose bytes are `item`'s, or None (the worklist outlives the uploader's files)."""
    digests = st.session_state.get("review_digests", {})
    return next((upload for upload in uploads if digests.get(upload.file_id) == item.sha256), None)


def clear_worklist() -> None:
    """Empty the worklist and the uploader (a button callback); saved verdicts stay in the history."""
    for name in _WORKLIST_STATE:
        st.session_state.pop(name, None)
    # A new key gives a new, empty uploader: Streamlit offers no other way to clear one.
    st.session_state["review_uploader_generation"] = uploader_generation() + 1


def uploader_generation() -> int:
    """The number in the uploader's key, raised by every clear."""
    return st.session_state.get("review_uploader_generation", 0)


def _record_predictions(items: list[ReviewItem], store, session: str, unrecorded: set[str]) -> None:
    # A prediction (or a refusal, with its reason) is recorded once per session (the store ignores
    # repeats); a database failure leaves it pending so the next rerun tries again instead of
    # silently losing it.
    for item in items:
        try:
            if item.status != "ok":
                store.record_refusal(session_id=session, reviewer=app_support.reviewer_name(),
                                     file_name=item.file_name, sha256=item.sha256, model_version=item.model_version,
                                     reason=item.message, actor=app_support.actor())
            else:
                store.record_prediction(session_id=session, reviewer=app_support.reviewer_name(),
                                        file_name=item.file_name, sha256=item.sha256, model_version=item.model_version,
                                        predicted_class=item.label, probabilities=item.probabilities,
                                        actor=app_support.actor())
            unrecorded.discard(item.sha256)
        except HistoryUnavailable as error:
            app_support.history_unavailable(error, "Predictions are shown but not yet recorded; they are recorded "
                                            "on the first run after it is back")
            return


def select_first_unreviewed(order: list[str], statuses: dict[str, str]) -> None:
    """Show the worklist's first unreviewed scan unless the current choice is still in the worklist.

    Right after a verdict was saved, move on to the next unreviewed scan (if any is left).
    """
    saved = st.session_state.pop("review_advance", None)
    if saved is not None and saved == st.session_state.get("review_current"):
        following = next_unreviewed(order, statuses, saved)
        if following is not None:
            st.session_state["review_current"] = following
    if st.session_state.get("review_current") not in order:
        st.session_state["review_current"] = first_unreviewed(order, statuses) or order[0]


def reader_statuses(items: list[ReviewItem], states: dict[str, dict], identity) -> dict[str, str]:
    """Each worklist scan's status for this reader: refused, or new / reviewed / flagged by their own read.

    Another reader's read does not make a scan reviewed for this one: every reader reads every scan.
    """
    statuses = {}
    for item in items:
        own, _ = own_and_other_reads(states.get(item.sha256), identity)
        statuses[item.sha256] = ("rejected" if item.status != "ok" else "new" if own is None
                                 else "flagged" if own["verdict"] == "flag" else "reviewed")
    return statuses


def own_and_other_reads(state: dict | None, identity) -> tuple[dict | None, list[dict]]:
    """(this reader's own latest read of a case or None, the other readers' reads)."""
    if not state or identity is None:
        return None, []
    return split_reads(state.get("reads") or [], identity.key)


def sees_other_reads(identity) -> bool:
    """Second readers and admins see every read; a reviewer too unless blind double reading is on (the default)."""
    return identity is not None and (identity.sees_every_read or not config.blind_double_reading())


def render_other_reads(others: list[dict], state: dict | None, identity, display_names: dict[str, str]) -> None:
    """Earlier reads by other readers, read-only: in full for those allowed, else only that they exist."""
    if not others and not (state or {}).get("adjudication"):
        return
    if not sees_other_reads(identity):
        count = len(others)
        st.caption(f":material/visibility_off: This scan has been read before ({count} "
                   f"{'read' if count == 1 else 'reads'}). Blind double reading: who read it and what they "
                   "decided are hidden until your read is saved and a second reader looks at the scan.")
        return
    with st.expander(f"Other reads of this scan ({len(others)})", expanded=True):
        for read in others:
            label = display_names.get(read["final_label"], "-") if read["final_label"] else "no class (flagged)"
            st.markdown(f"**{app_support.escape_markdown(read['reviewer'])}**"
                        f"{' (' + read['actor_role'].replace('_', ' ') + ')' if read.get('actor_role') else ''}: "
                        f"{VERDICT_NAMES[read['verdict']]} · {app_support.escape_markdown(label)} · "
                        f"{display_time(read['time'])} UTC")
            detail = " · ".join(part for part in (f"Reason: {read['reason']}" if read["reason"] else "",
                                                  f"Note: {read['note']}" if read["note"] else "") if part)
            if detail:
                st.caption(app_support.escape_markdown(detail))
        adjudication = (state or {}).get("adjudication")
        if adjudication:
            st.markdown(f"**Adjudicated** by {app_support.escape_markdown(adjudication['reviewer'])}: "
                        f"{app_support.escape_markdown(display_names.get(adjudication['final_label'], ''))} - "
                        f"{app_support.escape_markdown(adjudication['reason'])}")


def viewer_row(row: dict, identity) -> dict:
    """A current-state row as this viewer may see it: a blind reviewer sees their own read of it, not the latest."""
    if sees_other_reads(identity):
        return row
    own, _ = own_and_other_reads(row, identity)
    shown = dict(row)
    for column in ("verdict", "final_label", "reason", "note", "reviewer", "time", *IDENTITY_COLUMNS):
        shown[column] = (own or {}).get(column, row[column] if column == "time" else None if column in (
            "verdict", "final_label") else "")
    if own is None:
        shown["status"] = row["status"] if row["status"] == "rejected" else "new"
    elif row["status"] not in ("adjudicated",):
        shown["status"] = "flagged" if own["verdict"] == "flag" else "reviewed"
    shown["reads"], shown["adjudication"] = [own] if own else [], None
    # The latest event may be another reader's: its file name (which can carry a patient's name), its
    # session and the number of events would tell a blind reader who else read the scan.
    shown["file_name"] = (own or {}).get("file_name", "")
    shown["session_id"] = (own or {}).get("session_id", "")
    shown["event_count"] = None
    return shown


def go_to_next_unreviewed(order: list[str], statuses: dict[str, str]) -> None:
    """Button callback: select the next unreviewed scan, or note that every scan has a verdict."""
    following = next_unreviewed(order, statuses, st.session_state.get("review_current"))
    if following is None:
        st.session_state["review_all_done"] = True
    else:
        st.session_state["review_current"] = following


def save_verdict(item: ReviewItem, session: str) -> None:
    """Button callback: record the verdict form's values; the page shows the outcome on this run.

    Runs before the page is drawn, so the worklist and the saved verdict shown on this run already
    include it. The confirmation is set only after the store has committed the event.
    """
    key = item.widget_key
    flashes = st.session_state.setdefault("review_flash", {})
    verdict = st.session_state.get(f"review_verdict_{key}")
    try:
        app_identity.acting_identity("reviewer")
        store = app_support.open_history()  # Not history_store(): a callback draws nothing.
        store.record_verdict(
            session_id=session, reviewer=app_support.reviewer_name(), file_name=item.file_name,
            sha256=item.sha256, model_version=item.model_version, predicted_class=item.label,
            probabilities=item.probabilities, verdict=verdict,
            override_label=st.session_state.get(f"review_override_{key}"),
            reason=(st.session_state.get(f"review_reason_{key}") or "") if verdict == "override" else "",
            note=st.session_state.get(f"review_note_{key}") or "", actor=app_support.actor(),
        )
    except VerdictRejected as rejection:
        flashes[item.sha256] = ("error", f"Not saved: {rejection}.")
    except HistoryUnavailable as error:
        message = f"Not saved: the history is unavailable ({error}). Save again once it is back."
        flashes[item.sha256] = ("error", message)
    else:
        flashes[item.sha256] = ("success", f"Saved: {VERDICT_NAMES[verdict].lower()}.")
        st.session_state["review_advance"] = item.sha256  # The worklist moves on to the next unreviewed scan.


def take_flash(item: ReviewItem) -> tuple[str, str] | None:
    """The outcome ("success" or "error", text) of this scan's last save, once."""
    return st.session_state.get("review_flash", {}).pop(item.sha256, None)


def explainer():
    """`core.model.explain`, or None in a build without it (scans are still reviewed, without heat-maps)."""
    try:
        from core.model import explain
    except ImportError:
        return None
    return explain


def heatmap_for(item: ReviewItem, classifier, explain) -> np.ndarray | str:
    """The item's Grad-CAM for its predicted class, computed once per scan; or a message why not."""
    cache: dict[str, np.ndarray | str] = st.session_state.setdefault("review_heatmaps", {})
    if item.sha256 not in cache:
        try:
            with st.spinner("Computing the heat-map..."):
                cache[item.sha256] = np.asarray(
                    explain.gradcam(classifier, item.tensor, classifier.classes.index(item.label)), dtype=np.float32)
        except Exception as error:  # An explanation failure must not hide the prediction.
            cache[item.sha256] = f"the heat-map could not be computed ({type(error).__name__}: {error})"
    return cache[item.sha256]


def dicom_header(item: ReviewItem, upload):
    """The upload's decoded DICOM scan without its pixels, or None for other files; decoded once per session.

    Every widget interaction reruns the page, and re-decoding a multi-frame or JPEG 2000 file for
    its details and slider ranges each time would repeat the slowest step of the upload.
    """
    headers: dict = st.session_state.setdefault("review_dicom_headers", {})
    if item.sha256 not in headers:
        data, scan = upload.getvalue(), None
        if sniff_format(data) == "dicom" or upload.name.lower().endswith((".dcm", ".dicom")):
            try:
                scan = replace(load_scan(data, upload.name), image=None)
            except ScanRejected:
                pass
        headers[item.sha256] = scan
    return headers[item.sha256]


def _view_key(item: ReviewItem, frame: int, window: tuple[float, float]) -> tuple:
    return item.sha256, item.model_version, frame, float(window[0]), float(window[1])


def dicom_view_item(item: ReviewItem, upload, classifier, frame: int, window: tuple[float, float]) -> ReviewItem:
    """`item` re-classified at another DICOM frame and (centre, width) window, once per view and session."""
    view = _view_key(item, frame, window)
    views: dict = st.session_state.setdefault("review_dicom_views", {})
    if view not in views:
        with st.spinner("Classifying the chosen frame and window..."):
            views[view] = classify(classifier, upload.getvalue(), upload.name, frame=frame, window=window)
        while len(views) > DICOM_VIEWS_KEPT:
            del views[next(iter(views))]
    return views[view]


def forget_heatmap_if_view_changed(item: ReviewItem, frame: int, window: tuple[float, float]) -> None:
    """Drop a scan's cached heat-map when the DICOM view it was computed for is no longer the one shown."""
    view = _view_key(item, frame, window)
    shown: dict = st.session_state.setdefault("review_dicom_shown", {})
    if shown.get(item.sha256, view) != view:
        st.session_state.get("review_heatmaps", {}).pop(item.sha256, None)
    shown[item.sha256] = view


def probability_bars(probabilities: dict[str, float], label: str | None, display_names: dict[str, str]) -> str:
    """Horizontal bars of the calibrated probabilities as HTML, highest first, the model's class highlighted.

    Plain HTML rather than a Vega-Lite chart: the bars appear with the page, with no chart library
    to compile and draw in the browser, which was most of the browser's work per upload. Each bar
    is an ARIA meter, so screen readers and tests read the same numbers the eye does.
    """
    rows = []
    for name, value in sorted(probabilities.items(), key=lambda pair: -pair[1]):
        shown = html.escape(display_names.get(name, name))
        colour, weight = (HIGHLIGHT, 600) if name == label else (MUTED, 400)
        percent = 100.0 * float(value)
        rows.append(
            f'<div style="display:contents">'
            f'<span style="font-weight:{weight}">{shown}</span>'
            f'<span role="meter" aria-label="{shown}" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{percent:.6f}" aria-valuetext="{percent:.1f}%" style="display:block;height:20px;'
            f'background:#edf0f4;border-radius:3px;overflow:hidden">'
            f'<span style="display:block;height:100%;width:{percent:.2f}%;background:{colour}"></span></span>'
            f'<span style="font-weight:{weight};font-variant-numeric:tabular-nums;text-align:right">{percent:.1f}%</span>'
            f"</div>"
        )
    return (
        '<div role="group" aria-label="Calibrated probability per class" class="brainscan-probabilities" '
        'style="display:grid;grid-template-columns:max-content 1fr 4.5em;gap:10px 12px;align-items:center;'
        'margin:4px 0 2px 0">' + "".join(rows) + "</div>"
        '<div style="font-size:0.8em;opacity:0.7;margin-bottom:8px">Calibrated probability per class</div>'
    )


def _set_window(centre_key: str, width_key: str, window: tuple[float, float]) -> None:
    st.session_state[centre_key], st.session_state[width_key] = float(window[0]), float(window[1])


def dicom_panel(item: ReviewItem, upload, classifier) -> ReviewItem:
    """For a DICOM upload: its non-identifying details, a frame picker and window/level; the chosen view's item.

    The file's own middle frame and window are what was classified at upload; another choice is
    decoded and classified once per (frame, window) and kept in session state, so moving back to
    a view never re-infers. Other formats return `item` unchanged.
    """
    if upload is None:
        return item
    scan = dicom_header(item, upload)
    if scan is None:
        return item
    key = item.widget_key
    frame_key, centre_key, width_key = (f"review_dicom_{name}_{key}" for name in ("frame", "centre", "width"))
    low, high = scan.value_range
    default_centre, default_width = scan.default_window
    span = max(high - low, default_width, BRAIN_WINDOW[1], 1.0)
    with st.expander("DICOM details and display", expanded=True):
        st.dataframe(pd.DataFrame({"Field": list(scan.metadata), "Value": list(scan.metadata.values())}),
                     hide_index=True, key=f"review_dicom_details_{key}")
        st.caption("Only these non-identifying fields are read from the file; patient, physician, "
                   "institution, date and private tags never are.")
        frame = scan.frame
        if scan.frame_count > 1:
            st.session_state.setdefault(frame_key, scan.frame + 1)
            frame = st.slider("Frame", 1, scan.frame_count, key=frame_key) - 1
        st.session_state.setdefault(centre_key, float(default_centre))
        st.session_state.setdefault(width_key, float(default_width))
        step = 1.0 if span >= 50 else span / 100
        centre = st.slider("Window centre (level)", float(min(low, default_centre, BRAIN_WINDOW[0])),
                           float(max(high, default_centre, BRAIN_WINDOW[0])), step=step, key=centre_key)
        width = st.slider("Window width", float(min(step, default_width)), float(2 * span), step=step, key=width_key)
        brain, own = st.columns(2)
        brain.button(f"Brain (W {BRAIN_WINDOW[1]:g}, L {BRAIN_WINDOW[0]:g})", key=f"review_dicom_brain_{key}",
                     on_click=_set_window, args=(centre_key, width_key, BRAIN_WINDOW), width="stretch")
        own.button(f"File default (W {default_width:g}, L {default_centre:g})", key=f"review_dicom_default_{key}",
                   on_click=_set_window, args=(centre_key, width_key, scan.default_window), width="stretch")
    chosen = item
    if frame != scan.frame or (centre, width) != scan.default_window:
        chosen = dicom_view_item(item, upload, classifier, frame, (centre, width))
        st.caption(f"Showing and classifying frame {frame + 1} at window W {width:g}, L {centre:g}; the "
                   "prediction recorded at upload used the file's own frame and window.")
    forget_heatmap_if_view_changed(item, frame, (centre, width))  # A heat-map belongs to its view.
    return chosen
