"""The Review page's Streamlit-side workflow and parts: the worklist in session state, saving a verdict,
heat-maps, the probability bars and the DICOM display panel.

pages/review.py lays the page out; this module keeps what survives reruns (session state) and
talks to the history store and the classifier through `app.support`. The plain rules (what a
worklist keeps, statuses, what comes next) are in `core.review.worklist`.
"""

from __future__ import annotations

import hashlib
import html
import time
from contextlib import nullcontext
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from app import identity as app_identity
from app import support as app_support
from core import config
from core.classes import CLASS_NAMES
from core.errors import ArchiveError, HistoryUnavailable, ScanRejected
from core.pipeline import analyse_bytes
from core.review.reads import split_reads
from core.review.records import IDENTITY_COLUMNS, STATUS_LABELS, VerdictRejected, display_time, verdict_name
from core.review.uploads import archived_bytes, decode_archived, reopen, take_upload
from core.review.worklist import (
    PICTURE_UPLOAD,
    UNAVAILABLE,
    ReviewItem,
    first_unreviewed,
    item_from_result,
    next_unreviewed,
)
from core.scans.dicom import BRAIN_WINDOW
from core.scans.intake import sniff_format

DICOM_VIEWS_KEPT = 8  # re-classified DICOM frame/window choices (and their source bytes) kept per session
ARCHIVED_VIEWS_KEPT = 256  # archived scans read back for second readers and History, kept per process
HIGHLIGHT = "#2b6cb0"
FLAT_HEAT = "The heat-map is flat: no part of this scan stands out for the model's class."
MUTED = "#c3cad5"
_WORKLIST_STATE = ("review_items", "review_digests", "review_unrecorded", "review_heatmaps", "review_current",
                   "review_dicom_headers", "review_sources", "review_restore_failed", "review_archive_refused")


def classify(classifier, data: bytes, file_name: str, **view) -> ReviewItem:
    """Classify one file's bytes through the shared pipeline and keep what the worklist needs."""
    return item_from_result(analyse_bytes(classifier, data, file_name, **view), classifier.version,
                            classifier.image_size)


def classify_uploads(uploads, classifier, store, archive, session: str, owner: str) -> list[ReviewItem]:
    """Classify and archive uploads not seen before (a progress bar for a batch), record them, return the worklist.

    A scan is archived before anything is recorded; one the archive refuses (down, slow, or it
    would not take the object) is not added to the worklist, and the page says why, once per
    file, until it is uploaded again. Bytes are read only for files the page has not seen; a file
    already in the worklist is never classified again. The worklist itself is the history's
    (`sync_worklist`): switching pages, a reload, a restart or another replica shows the same one.
    """
    items: dict[str, ReviewItem] = st.session_state.setdefault("review_items", {})
    digests: dict[str, str] = st.session_state.setdefault("review_digests", {})
    unrecorded: dict[str, dict | None] = st.session_state.setdefault("review_unrecorded", {})
    refused: dict[str, str] = st.session_state.setdefault("review_archive_refused", {})
    pending = [upload for upload in uploads
               if upload.file_id not in refused and digests.get(upload.file_id) not in items]
    bar = st.progress(0.0, text=f"Classifying {len(pending)} scans...") if len(pending) > 1 else None
    first_new = None
    for position, upload in enumerate(pending, start=1):
        data = upload.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in items:
            with st.spinner("Classifying the scan...") if bar is None else nullcontext():
                try:
                    taken = take_upload(classifier, archive, data, upload.name)
                except ArchiveError as error:
                    refused[upload.file_id] = f"{upload.name} was not added to the worklist: {error}"
            if upload.file_id not in refused:
                result, reference = taken.result, taken.reference
                item = item_from_result(result, classifier.version, classifier.image_size)
                items[digest] = item if item.sha256 else replace(item, sha256=digest)
                unrecorded[digest] = reference.to_detail() if reference is not None else None
                first_new = first_new or digest
        digests[upload.file_id] = digest
        del data
        if bar is not None:
            bar.progress(position / len(pending), text=f"Classified {position} of {len(pending)} scans")
    if bar is not None:
        bar.empty()
    if first_new is not None:  # The page lands on the first new scan of an upload, not the one it showed before.
        st.session_state["review_land_on"] = first_new
    current = {upload.file_id for upload in uploads}
    for file_id in [file_id for file_id in digests if file_id not in current]:
        del digests[file_id]
    for file_id in [file_id for file_id in refused if file_id not in current]:
        del refused[file_id]
    for message in refused.values():
        app_support.archive_unavailable(message, "Upload it again once the archive is back")
    _record_uploads([items[digest] for digest in unrecorded if digest in items], store, session, owner, unrecorded)
    return sync_worklist(store, archive, classifier, owner)


RESTORE_RETRY_SECONDS = 15.0


def sync_worklist(store, archive, classifier, owner: str) -> list[ReviewItem]:
    """The worklist as the history holds it (plus scans not yet recorded), each scan's item in session state.

    A scan the session has not seen (added on another replica, or before a restart) is read back
    from the archive and classified again; one the archive cannot give back just now is listed
    with the reason, and tried again after RESTORE_RETRY_SECONDS. While the history is down, the
    session's own copy is the worklist.
    """
    items: dict[str, ReviewItem] = st.session_state.setdefault("review_items", {})
    unrecorded: dict[str, dict | None] = st.session_state.setdefault("review_unrecorded", {})
    try:
        entries = store.worklist(owner)
    except HistoryUnavailable:
        return list(items.values())
    order = [entry["sha256"] for entry in entries] + [digest for digest in unrecorded if digest in items]
    order = list(dict.fromkeys(order))
    failed: dict[str, float] = st.session_state.setdefault("review_restore_failed", {})
    now = time.monotonic()
    missing = [entry for entry in entries if entry["sha256"] not in items
               or (entry["sha256"] in failed and now - failed[entry["sha256"]] > RESTORE_RETRY_SECONDS)]
    bar = st.progress(0.0, text=f"Opening {len(missing)} scans of your worklist...") if len(missing) > 1 else None
    for position, entry in enumerate(missing, start=1):
        items[entry["sha256"]] = restore_item(store, archive, classifier, entry)
        if items[entry["sha256"]].status == UNAVAILABLE:
            failed[entry["sha256"]] = now
        else:
            failed.pop(entry["sha256"], None)
        if bar is not None:
            bar.progress(position / len(missing), text=f"Opened {position} of {len(missing)} scans")
    if bar is not None:
        bar.empty()
    kept = {digest: items[digest] for digest in order if digest in items}
    items.clear()
    items.update(kept)
    return list(kept.values())


def restore_item(store, archive, classifier, entry: dict) -> ReviewItem:
    """A worklist entry's item: its archived scan read back and classified, its refusal, or why it cannot be shown."""
    sha256, file_name = entry["sha256"], entry["file_name"]
    try:
        result = reopen(classifier, archive, store, sha256, file_name)
        if result is None:  # A file with no picture (it could not be decoded): its recorded refusal.
            reason = store.refusal_reason(sha256, entry["model_version"])
            message = reason if reason is not None else "the scan has no copy in the archive"
            return ReviewItem(sha256, file_name, "rejected", message, None, {}, classifier.version, None, None)
    except (ArchiveError, HistoryUnavailable) as error:
        return ReviewItem(sha256, file_name, UNAVAILABLE, f"the picture cannot be shown just now: {error}", None, {},
                          classifier.version, None, None)
    return item_from_result(result, classifier.version, classifier.image_size)


@st.cache_resource(show_spinner=False)
def _archived_views() -> dict[tuple[str, str], ReviewItem | str]:
    # A second reader's (or a History reader's) view of an archived scan, per process: at most ARCHIVED_VIEWS_KEPT.
    return {}


def archived_view(store, archive, classifier, sha256: str, file_name: str) -> ReviewItem | str:
    """An archived scan read back and classified by the loaded model (cached per process), or why it cannot be.

    Failures are not cached: the next run asks the archive again.
    """
    views = _archived_views()
    key = (sha256, classifier.version)
    if key not in views:
        try:
            result = reopen(classifier, archive, store, sha256, file_name)
        except (ArchiveError, HistoryUnavailable) as error:
            return str(error)
        if result is None:
            return "this scan has no copy in the archive (recorded before the archive existed, or not decodable)"
        views[key] = item_from_result(result, classifier.version, classifier.image_size)
        while len(views) > ARCHIVED_VIEWS_KEPT:
            views.pop(next(iter(views)), None)
    return views[key]


def render_archived_scan(store, classifier, case: dict, key: str) -> None:
    """A recorded scan's picture as the archive holds it, with the heat map of the model version that read it.

    Works on any replica and after any restart: the picture comes from the archive, never from
    the process that received the upload. Says in one line why not when the archive cannot give
    it back; the rest of the page keeps working.
    """
    archive = app_support.scan_archive()
    if archive is None:
        return
    name = app_support.escape_markdown(case["file_name"])
    if classifier is None:
        st.info("The model is not loaded, so the scan cannot be read back with its heat map.",
                icon=":material/hide_image:")
        return
    view = archived_view(store, archive, classifier, case["sha256"], case["file_name"])
    if isinstance(view, str):
        app_support.archive_unavailable(view, "The picture cannot be shown; everything else on this page still works")
        return
    if view.thumbnail is None:
        st.info(f"No picture: {app_support.escape_markdown(view.message)}.", icon=":material/hide_image:")
        return
    picture, caption = shown_picture(view), name
    explain = explainer()
    if case["model_version"] != classifier.version:
        st.caption(f"No heat map: this scan was read with model {app_support.escape_markdown(case['model_version'])}"
                   f", and the app now runs {app_support.escape_markdown(classifier.version)}.")
    elif view.status == "ok" and explain is not None and st.toggle(
            "Heat-map overlay", value=True, key=f"{key}_show_heatmap_{view.widget_key}",
            help="Where the model looked: warm colours raised the score of its class."):
        heat = heatmap_for(view, classifier, explain)
        if isinstance(heat, str):
            st.caption(heat)
        elif explain.heat_is_flat(heat):
            st.caption(FLAT_HEAT)
        else:
            picture = overlaid(view, heat, 0.45, explain)
            caption = f"{name} - heat-map over the model's crop of the head"
    st.image(png_bytes(picture), caption=caption, width="stretch", output_format="PNG")


def render_scan_opener(store, classifier, rows: list[dict], display_names: dict[str, str]) -> None:
    """History: open one of the scans in the table, as the archive holds it, with its heat map."""
    cases = {f"{row['sha256']}|{row['model_version']}": row for row in rows
             if row.get("sha256") and row.get("kind") in ("prediction", "verdict", "adjudication", "refusal")}
    if not cases:
        return
    with st.expander("Open a scan from this table", expanded=False):
        chosen = st.selectbox(
            "Scan", list(cases), index=None, placeholder="Choose a scan to see it", key="history_open_scan",
            format_func=lambda value: f"{cases[value]['file_name']} · sha256 {value[:12]}… · "
                                      f"{display_names.get(cases[value]['predicted_class'], '-')}")
        if chosen is not None:
            render_archived_scan(store, classifier, cases[chosen], key="history")


def source_bytes(store, archive, item: ReviewItem, uploads) -> bytes | None:
    """The DICOM bytes a scan's display controls re-decode: the archived copy (kept per session), else the upload."""
    sources: dict[str, bytes] = st.session_state.setdefault("review_sources", {})
    if item.sha256 not in sources:
        try:
            sources[item.sha256] = archived_bytes(store, archive, item.sha256)
        except (ArchiveError, HistoryUnavailable):
            upload = upload_of(uploads, item)
            if upload is None:
                return None
            return upload.getvalue()
        while len(sources) > DICOM_VIEWS_KEPT:
            sources.pop(next(iter(sources)), None)
    return sources[item.sha256]


def upload_of(uploads, item: ReviewItem):
    """The uploaded file whose bytes are `item`'s, or None (the worklist outlives the uploader's files)."""
    digests = st.session_state.get("review_digests", {})
    return next((upload for upload in uploads if digests.get(upload.file_id) == item.sha256), None)


def clear_worklist(store, owner: str) -> None:
    """Button callback: empty the worklist in the history, then here, and the uploader; saved reads stay."""
    try:
        store.clear_worklist(owner)
    except HistoryUnavailable as error:
        st.session_state["review_clear_error"] = str(error)
        return
    for name in _WORKLIST_STATE:
        st.session_state.pop(name, None)
    # A new key gives a new, empty uploader: Streamlit offers no other way to clear one.
    st.session_state["review_uploader_generation"] = uploader_generation() + 1


def uploader_generation() -> int:
    """The number in the uploader's key, raised by every clear."""
    return st.session_state.get("review_uploader_generation", 0)


def _record_uploads(items: list[ReviewItem], store, session: str, owner: str,
                    unrecorded: dict[str, dict | None]) -> None:
    # An upload (its archive event, its prediction or refusal, its worklist entry) is recorded in one
    # transaction; a database failure leaves it pending so the next rerun tries again instead of
    # silently losing it.
    for item in items:
        try:
            store.record_upload(
                session_id=session, owner=owner, reviewer=app_support.reviewer_name(), file_name=item.file_name,
                sha256=item.sha256, model_version=item.model_version, predicted_class=item.label,
                probabilities=item.probabilities, refusal_reason=None if item.status == "ok" else item.message,
                archived=unrecorded[item.sha256], actor=app_support.actor(), detail=item.detail)
            del unrecorded[item.sha256]
        except HistoryUnavailable as error:
            app_support.history_unavailable(error, "Predictions are shown but not yet recorded; they are recorded "
                                            "on the first run after it is back")
            return


def select_first_unreviewed(order: list[str], statuses: dict[str, str]) -> None:
    """Show the worklist's first unreviewed scan unless the current choice is still in the worklist.

    Right after an upload, show its first new scan; right after a verdict was saved, move on to the
    next unreviewed scan (if any is left).
    """
    landing = st.session_state.pop("review_land_on", None)
    if landing in order:
        st.session_state["review_current"] = landing
        st.session_state.pop("review_advance", None)
        return
    saved = st.session_state.pop("review_advance", None)
    if saved is not None and saved == st.session_state.get("review_current"):
        following = next_unreviewed(order, statuses, saved)
        if following is not None:
            st.session_state["review_current"] = following
    if st.session_state.get("review_current") not in order:
        st.session_state["review_current"] = first_unreviewed(order, statuses) or order[0]


def reader_statuses(items: list[ReviewItem], states: dict[str, dict], identity) -> dict[str, str]:
    """Each worklist scan's status for this reader: refused, or new / reviewed / flagged by their own read,
    adjudicated once a second reader settled a scan they have read.

    Another reader's read does not make a scan reviewed for this one: every reader reads every scan.
    """
    statuses = {}
    for item in items:
        own, _ = own_and_other_reads(states.get(item.sha256), identity)
        state = states.get(item.sha256) or {}
        # A refused scan stays "Refused" until this reader reads it; then it is a read like any other.
        statuses[item.sha256] = (
            UNAVAILABLE if item.status == UNAVAILABLE else ("rejected" if item.status != "ok" else "new")
            if own is None
            else "adjudicated" if state.get("status") == "adjudicated"
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
    adjudicated = bool((state or {}).get("adjudication"))
    with st.expander(f"Other reads of this scan ({len(others)})" + (" and its adjudication" if adjudicated else ""),
                     expanded=True):
        for read in others:
            label = display_names.get(read["final_label"], "-") if read["final_label"] else "no class (flagged)"
            st.markdown(f"**{app_support.escape_markdown(read['reviewer'])}**"
                        f"{' (' + read['actor_role'].replace('_', ' ') + ')' if read.get('actor_role') else ''}: "
                        f"{verdict_name(read['verdict'], read['predicted_class'])} · "
                        f"{app_support.escape_markdown(label)} · "
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


def case_outcome(saved: dict, state: dict | None, identity, names: dict[str, str]) -> str:
    """Where this reader's saved read leaves the case, in one phrase: their class, and the case's final label.

    A reader who may see other reads is told the case's own state (adjudicated, agreed, or awaiting a
    second read), so the line never contradicts the adjudication shown beside it; a blind reviewer is
    told only their own class.
    """
    said = "class" if saved["final_label"] in CLASS_NAMES else "read"
    own = f"your {said} **{names.get(saved['final_label'], saved['final_label'])}**" if saved["final_label"] else \
        "no class given (flagged for a second read)"
    if not sees_other_reads(identity) or not state:
        return own
    final = names.get(state.get("final_label") or "", state.get("final_label") or "")
    if state.get("status") == "adjudicated" and final:
        return f"{own} · final label **{final}** (adjudicated)"
    if state.get("status") == "flagged" or not final:
        return f"{own} · final label: awaiting a second read"
    return f"{own} · final label **{final}**"


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


# Keyboard shortcuts of the Review page: readers asked for them first. Each has a modifier, so typing a
# note never moves the page (Mod is Ctrl, or Cmd on a Mac; Streamlit shows them on the buttons).
SAVE_KEY, NEXT_UNREVIEWED_KEY, PREVIOUS_KEY, NEXT_KEY = "Mod+Enter", "Alt+N", "Alt+Up", "Alt+Down"


def render_steps(back, forward, step, order: list[str], statuses: dict[str, str]) -> None:
    """The worklist's previous, next and next-unreviewed buttons (with their shortcuts) in three columns."""
    back.button("", icon=":material/arrow_upward:", key="review_previous", width="stretch", shortcut=PREVIOUS_KEY,
                help=f"Previous scan ({PREVIOUS_KEY})", on_click=step_scan, args=(order, -1))
    forward.button("", icon=":material/arrow_downward:", key="review_following", width="stretch",
                   shortcut=NEXT_KEY, help=f"Next scan ({NEXT_KEY})", on_click=step_scan, args=(order, 1))
    step.button("Next unreviewed", icon=":material/skip_next:", key="review_next", width="stretch",
                shortcut=NEXT_UNREVIEWED_KEY, help=f"The next scan without your read ({NEXT_UNREVIEWED_KEY})",
                on_click=go_to_next_unreviewed, args=(order, statuses))


def step_scan(order: list[str], step: int) -> None:
    """Button callback: show the scan `step` places after the current one in the worklist (wrapping round)."""
    current = st.session_state.get("review_current")
    position = order.index(current) if current in order else 0
    st.session_state["review_current"] = order[(position + step) % len(order)]


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
    if verdict is None:  # The shortcut reaches the callback even while the button is shown disabled.
        flashes[item.sha256] = ("error", "Not saved: choose a verdict first.")
        return
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
        said = verdict_name(verdict, item.label).lower()
        flashes[item.sha256] = ("success", f"Saved: {said}.")
        # The worklist moves on to the next unreviewed scan; the reader sees there what was saved.
        st.session_state["review_advance"] = item.sha256
        st.session_state["review_saved_notice"] = (item.sha256, f"Saved {item.file_name}: {said}.")


def show_saved_elsewhere(current: ReviewItem) -> None:
    """Once, on the scan the page moved on to after a save: which scan was saved, and how."""
    notice = st.session_state.pop("review_saved_notice", None)
    if notice is not None and notice[0] != current.sha256:
        st.success(app_support.escape_markdown(notice[1]), icon=":material/check_circle:")


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
                    explain.gradcam(classifier, item.tensor, classifier.classes.index(item.label),
                                    class_maps=item.class_maps), dtype=np.float32)
        except Exception as error:  # An explanation failure must not hide the prediction.
            cache[item.sha256] = f"the heat-map could not be computed ({type(error).__name__}: {error})"
    return cache[item.sha256]


PNG_VIEWS_KEPT = 8  # encoded pictures kept per session, so a rerun that changes nothing on screen encodes nothing


def png_bytes(picture: np.ndarray) -> bytes:
    """A grey or RGB uint8 picture as lossless PNG bytes for `st.image`, encoded once per session and picture.

    Given an array, `st.image` sends a picture without transparency as a JPEG of quality 90: the
    reader saw the scan, and the heat map's colours, through lossy compression. Given these bytes
    with `output_format="PNG"`, it sends them as they are. OpenCV at compression level 1 writes a
    512-pixel colour picture in about 12 ms here (Pillow's default level took 30-65 ms), and a rerun
    that shows the same picture again (a verdict chosen, a note typed) reuses the bytes.
    """
    key = (picture.shape, hashlib.blake2b(np.ascontiguousarray(picture).tobytes(), digest_size=16).digest())
    kept: dict = st.session_state.setdefault("review_png", {})
    if key not in kept:
        bgr = picture if picture.ndim == 2 else np.ascontiguousarray(picture[:, :, ::-1])
        ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError("the picture could not be encoded as PNG")
        kept[key] = encoded.tobytes()
        while len(kept) > PNG_VIEWS_KEPT:
            kept.pop(next(iter(kept)))
    return kept[key]


def shown_picture(item: ReviewItem) -> np.ndarray | None:
    """The picture a reader sees of a scan: in colour for a colour upload, else its greyscale thumbnail."""
    return item.colour if item.colour is not None else item.thumbnail


def overlaid(item: ReviewItem, heat: np.ndarray, opacity: float, explain) -> np.ndarray:
    """The scan as shown (colour kept) with its heat map over the head box the model cropped from its greyscale."""
    from core.scans.preprocess import content_box

    return explain.overlay(shown_picture(item), heat, opacity, box=content_box(item.thumbnail))


def original_picture(item: ReviewItem, data: bytes | None) -> tuple[np.ndarray, str]:
    """(the scan's picture at its own resolution, alone, a caption): decoded from its archived copy.

    A DICOM is shown at its file's own frame and window. Without the archived copy (the archive is
    down and the upload is gone) it is the kept picture, and the caption says so.
    """
    if data is not None:
        try:
            scan = decode_archived(data)
        except ScanRejected:
            scan = None
        if scan is not None:
            picture = scan.colour if scan.colour is not None else scan.image
            return picture, (f"{item.file_name}: {picture.shape[1]} x {picture.shape[0]} pixels, as stored, "
                             "without the heat map")
    picture = shown_picture(item)
    return picture, (f"{item.file_name}: the archived copy cannot be read just now; this is the worklist's "
                     f"{picture.shape[1]} x {picture.shape[0]} copy")


@st.dialog("Original at full size", width="large")
def show_original(item: ReviewItem, data: bytes | None) -> None:
    """A dialog with the scan alone, at its own resolution (up to the dialog's width; the image's own
    full-screen button goes beyond)."""
    picture, caption = original_picture(item, data)
    st.image(png_bytes(picture), caption=caption, width="content", output_format="PNG")


def dicom_header(item: ReviewItem, data: bytes):
    """The scan's decoded DICOM without its pixels, or None for other scans; decoded once per session.

    `data` is the archived copy (a de-identified DICOM upload, or the capture of a picture, which
    has no DICOM display controls). Every widget interaction reruns the page, and re-decoding a
    multi-frame or JPEG 2000 file for its details and slider ranges each time would repeat the
    slowest step of the upload.
    """
    headers: dict = st.session_state.setdefault("review_dicom_headers", {})
    if item.sha256 not in headers:
        scan = None
        if sniff_format(data) == "dicom":
            try:
                decoded = decode_archived(data)
                scan = replace(decoded, image=None, colour=None) if decoded.source_format == "DICOM" else None
            except ScanRejected:
                pass
        headers[item.sha256] = scan
    return headers[item.sha256]


def _view_key(item: ReviewItem, frame: int, window: tuple[float, float]) -> tuple:
    return item.sha256, item.model_version, frame, float(window[0]), float(window[1])


def dicom_view_item(item: ReviewItem, data: bytes, classifier, frame: int, window: tuple[float, float]) -> ReviewItem:
    """`item` re-classified at another DICOM frame and (centre, width) window, once per view and session."""
    view = _view_key(item, frame, window)
    views: dict = st.session_state.setdefault("review_dicom_views", {})
    if view not in views:
        with st.spinner("Classifying the chosen frame and window..."):
            chosen = classify(classifier, data, item.file_name, frame=frame, window=window)
            views[view] = replace(chosen, sha256=item.sha256)  # the upload's key, not the archived copy's
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


def dicom_panel(item: ReviewItem, source, classifier) -> ReviewItem:
    """For a DICOM upload: its non-identifying details, a frame picker and window/level; the chosen view's item.

    `source()` gives the archived copy's bytes (None when unavailable). The file's own middle frame
    and window are what was classified at upload; another choice is decoded and classified once per
    (frame, window) and kept in session state, so moving back to a view never re-infers. Other
    formats return `item` unchanged; a picture upload's archived copy is not even read.
    """
    if item.detail.get("scanner") == PICTURE_UPLOAD:
        return item
    data = source()
    if data is None:
        return item
    scan = dicom_header(item, data)
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
        chosen = dicom_view_item(item, data, classifier, frame, (centre, width))
        st.caption(f"Showing and classifying frame {frame + 1} at window W {width:g}, L {centre:g}; the "
                   "prediction recorded at upload used the file's own frame and window.")
    forget_heatmap_if_view_changed(item, frame, (centre, width))  # A heat-map belongs to its view.
    return chosen


def _earlier_rows(store, session: str, shown: set[str]) -> list[dict]:
    """This session's earlier cases as this viewer may see them, read again only where the history has changed.

    Every rerun of the Review page draws this list. Reading the whole session's cases each time
    was the largest part of the page's own Python time per upload, and grew with the session
    (bench/README.md). The session's cases are kept between reruns with the id of the newest
    event they include; each rerun reads only the scans with a later event, from any replica
    (`HistoryStore.scans_changed_since`: one range of the primary key), and reads those again.
    """
    identity = app_identity.current_identity()  # a blind reviewer sees their own read of each scan only
    owner = (session, identity.key if identity is not None else None)
    cached = st.session_state.get("review_earlier_cases")
    if cached is not None and cached["owner"] == owner:
        head, changed = store.scans_changed_since(cached["head"])
        cases = cached["cases"]
        if changed:
            for row in store.current_state(session_id=session, sha256s=sorted(changed)):
                cases[(row["sha256"], row["model_version"])] = row
            cases = dict(sorted(cases.items(), key=lambda item: (item[1]["first_time"], item[1]["id"])))
    else:
        head = store.head_id()
        cases = {(row["sha256"], row["model_version"]): row for row in store.current_state(session_id=session)}
    key = (head, frozenset(shown))
    if cached is not None and cached["owner"] == owner and cached["key"] == key:
        rows = cached["rows"]
    else:
        rows = [viewer_row(row, identity) for row in cases.values()
                if row["sha256"] not in shown and row["kind"] != "series_read"]  # series: the Studies page
    st.session_state["review_earlier_cases"] = {"owner": owner, "head": head, "cases": cases, "key": key, "rows": rows}
    return rows


EARLIER_OPEN = "review_earlier_open"  # the "Earlier in this session" expander's state: True while open
EARLIER_TITLE = "Earlier in this session (from the history)"


def render_earlier(store, session: str, shown: set[str], display_names: dict[str, str]) -> None:
    """Scans this session reviewed earlier that are not uploaded now, read back from the history.

    A closed expander; only the reviewer opens it, and only then is its table built. When the page
    opened it for an empty worklist and shut it for an upload, that animation (and the grid drawn
    inside) was about half of the browser's work per upload (bench/page.py).
    """
    try:
        earlier = _earlier_rows(store, session, shown)
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "Scans reviewed earlier in this session are not listed")
        return
    if not earlier:
        return
    # Lazy: the table is built and sent only while the reviewer has the expander open (closed, it had been a
    # sixth of the Review page script's samples after 120 uploads in one session, bench/README.md). The
    # label never changes: Streamlit takes it into the expander's identity, and a label with the count in
    # it closed the expander each time the count changed (a scan uploaded again, the worklist cleared).
    expander = st.expander(EARLIER_TITLE, expanded=False, key=EARLIER_OPEN, on_change="rerun")
    if not expander.open:
        return
    with expander:
        count = f"{len(earlier)} {'scan' if len(earlier) == 1 else 'scans'}"
        st.caption(f"{count} of this session, not in the worklist now. Upload a file again to see its picture "
                   "and change its verdict.")
        st.dataframe(
            pd.DataFrame({
                "File": [row["file_name"] for row in earlier],
                "Model's class": [display_names.get(row["predicted_class"], row["predicted_class"]) for row in earlier],
                "Status": [STATUS_LABELS.get(row["status"], row["status"]) for row in earlier],
                "Verdict": [verdict_name(row["verdict"], row["predicted_class"]) for row in earlier],
                "Final label": [display_names.get(row["final_label"], "") for row in earlier],
                "Reviewer": [row["reviewer"] for row in earlier],
                "Time (UTC)": [display_time(row["time"]) for row in earlier],
            }),
            hide_index=True, key="review_earlier",
        )


def clear_worklist_control(store, owner: str, count: int) -> None:
    """Clear worklist behind a popover: one click once emptied the whole list, so it asks first and says what stays."""
    with st.popover("Clear worklist", icon=":material/clear_all:"):
        st.markdown(f"Remove all {count} {'scan' if count == 1 else 'scans'} from this worklist? "
                    "The history keeps every prediction and read, and each scan stays in the archive.")
        st.button("Yes, clear the worklist", key="review_clear", on_click=clear_worklist, args=(store, owner))
    if "review_clear_error" in st.session_state:
        app_support.history_unavailable(st.session_state.pop("review_clear_error"), "The worklist was not cleared")
