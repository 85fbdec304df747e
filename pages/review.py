"""Review: upload scans, read the model's calibrated probabilities and heat-map, and record a verdict.

Predictions are keyed by the sha256 of the file bytes and kept in session state without the bytes,
so a widget change never re-infers or records twice. The verdict and worklist status come from the
history database on every run, so a refresh (or another reviewer's save) shows what is on disk.
"""

from __future__ import annotations

import hashlib
import html
import sqlite3
from contextlib import nullcontext
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pandas as pd
import streamlit as st

import app_support
from core import config
from core.dicom import BRAIN_WINDOW
from core.errors import ScanRejected
from core.history import VERDICT_NAMES, VERDICTS, VerdictRejected
from core.intake import load_scan, sniff_format
from core.pipeline import ScanResult, analyse_bytes
from core.preprocess import prepare_image

UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom", "bmp", "gif", "tif", "tiff", "webp"]
DICOM_VIEWS_KEPT = 8  # re-classified DICOM frame/window choices kept per session
THUMBNAIL_SIDE = 512
STATUS_NAMES = {"new": "New", "reviewed": "Reviewed", "flagged": "Flagged", "rejected": "Rejected"}
HIGHLIGHT = "#2b6cb0"
MUTED = "#c3cad5"


@dataclass(frozen=True)
class ReviewItem:
    """What the page keeps of one classified upload: never the file bytes, only a small thumbnail."""

    sha256: str
    file_name: str
    status: str  # "ok" or "rejected", as `ScanResult.status`
    message: str
    label: str | None
    probabilities: dict[str, float]
    model_version: str
    thumbnail: np.ndarray | None  # uint8 greyscale, longest side at most THUMBNAIL_SIDE
    tensor: np.ndarray | None  # the model input (S, S, 1) float32, kept for the heat-map

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label] if self.label else 0.0

    @property
    def widget_key(self) -> str:
        return self.sha256[:16]


def item_from_result(result: ScanResult, classifier) -> ReviewItem:
    """Shrink a pipeline result to what the page needs to keep between reruns."""
    thumbnail = tensor = None
    if result.scan is not None:
        image = result.scan.image
        scale = min(1.0, THUMBNAIL_SIDE / max(image.shape))
        thumbnail = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
            interpolation=cv2.INTER_AREA)
        if result.status == "ok":
            tensor = result.tensor if result.tensor is not None else prepare_image(image, classifier.image_size)
    return ReviewItem(result.sha256, result.filename, result.status, result.message, result.label,
                      dict(result.probabilities), classifier.version, thumbnail, tensor)


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
                items[digest] = item_from_result(analyse_bytes(classifier, data, upload.name), classifier)
            if items[digest].status == "ok":
                unrecorded.add(digest)
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


def _clear_worklist() -> None:
    for name in ("review_items", "review_digests", "review_unrecorded", "review_heatmaps", "review_current",
                 "review_dicom_headers"):
        st.session_state.pop(name, None)
    # A new key gives a new, empty uploader: Streamlit offers no other way to clear one.
    st.session_state["review_uploader_generation"] = st.session_state.get("review_uploader_generation", 0) + 1


def _record_predictions(items: list[ReviewItem], store, session: str, unrecorded: set[str]) -> None:
    # A prediction is recorded once per session (the store ignores repeats); a database failure
    # leaves it pending so the next rerun tries again instead of silently losing it.
    for item in items:
        try:
            store.record_prediction(session_id=session, reviewer=app_support.reviewer_name(),
                                    file_name=item.file_name, sha256=item.sha256, model_version=item.model_version,
                                    predicted_class=item.label, probabilities=item.probabilities)
            unrecorded.discard(item.sha256)
        except sqlite3.Error as error:
            st.error(f"The history database could not be written ({error}); predictions are shown but not "
                     "yet recorded. This page retries on the next interaction.", icon=":material/database:")
            return


def status_of(item: ReviewItem, states: dict[str, dict]) -> str:
    """Worklist status: rejected, or new / reviewed / flagged from the scan's latest history event."""
    if item.status != "ok":
        return "rejected"
    state = states.get(item.sha256)
    return state["status"] if state else "new"


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


def _explainer():
    # Grad-CAM lives in core.explain; a build without it still reviews scans, just without heat-maps.
    try:
        from core import explain
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


def render_image(item: ReviewItem, classifier) -> None:
    """The scan, with the model's heat-map overlaid at the chosen opacity when available."""
    name = app_support.escape_markdown(item.file_name)
    if item.thumbnail is None:
        st.info(f"No picture: {name} could not be decoded.", icon=":material/hide_image:")
        return
    picture = item.thumbnail
    caption = name
    explain = _explainer() if item.status == "ok" else None
    if item.status == "ok" and explain is None:
        st.caption("The heat-map of where the model looked is not available in this version of the app.")
    elif item.status == "ok":
        show = st.toggle("Heat-map overlay", value=True, key="review_show_heatmap",
                         help="Where the model looked: warm colours raised the score of its class.")
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="review_heatmap_opacity", disabled=not show)
        if show:
            heat = heatmap_for(item, classifier, explain)
            if isinstance(heat, str):
                st.caption(heat)
            else:
                picture = explain.overlay(item.thumbnail, heat, opacity)
                caption = f"{name} - heat-map over the model's crop of the head"
    st.image(picture, caption=caption, width="stretch", clamp=True)


def render_prediction(item: ReviewItem, classifier) -> None:
    """The model's class, its calibrated probability, the low-confidence flag and the probability bars."""
    display_names = classifier.card.display_names
    try:
        threshold = config.low_confidence_threshold()
    except ValueError as error:
        st.warning(f"{error}; using 80%.")
        threshold = 0.80
    first, second = st.columns(2)
    first.metric("Model's class", display_names.get(item.label, item.label))
    second.metric("Calibrated probability", f"{item.confidence:.1%}")
    if item.confidence < threshold:
        st.warning(f"**Low confidence**: {item.confidence:.0%} is under the {threshold:.0%} threshold. "
                   "Read this scan with extra care.", icon=":material/warning:")
    st.html(probability_bars(item.probabilities, item.label, display_names))


def _save_verdict(item: ReviewItem, session: str) -> None:
    # Runs as the button's callback, before the page is drawn, so the worklist and the saved
    # verdict shown on this run already include it. The confirmation is set only after commit.
    key = item.widget_key
    flashes = st.session_state.setdefault("review_flash", {})
    verdict = st.session_state.get(f"review_verdict_{key}")
    try:
        store = app_support.history_store()
        if store is None:
            raise sqlite3.OperationalError("the database cannot be opened")
        store.record_verdict(
            session_id=session, reviewer=app_support.reviewer_name(), file_name=item.file_name,
            sha256=item.sha256, model_version=item.model_version, predicted_class=item.label,
            probabilities=item.probabilities, verdict=verdict,
            override_label=st.session_state.get(f"review_override_{key}"),
            reason=(st.session_state.get(f"review_reason_{key}") or "") if verdict == "override" else "",
            note=st.session_state.get(f"review_note_{key}") or "",
        )
    except VerdictRejected as rejection:
        flashes[item.sha256] = ("error", f"Not saved: {rejection}.")
    except sqlite3.Error as error:
        flashes[item.sha256] = ("error", f"Not saved: the history database could not be written ({error}).")
    else:
        flashes[item.sha256] = ("success", f"Saved: {VERDICT_NAMES[verdict].lower()}.")


def render_verdict(item: ReviewItem, state: dict | None, classifier, session: str) -> None:
    """The reviewer's verdict form, prefilled with the scan's latest saved verdict."""
    display_names = classifier.card.display_names
    key = item.widget_key
    saved = state if state and state.get("verdict") else None
    st.subheader("Your verdict", divider="gray")
    if saved:
        final = display_names.get(saved["final_label"], "none yet (second read)") if saved["final_label"] else \
            "none yet (second read)"
        st.info(f"Saved verdict: **{VERDICT_NAMES[saved['verdict']]}** · final label **{final}** · by "
                f"{app_support.escape_markdown(saved['reviewer'])} at {saved['time'][:19].replace('T', ' ')} UTC",
                icon=":material/task_alt:")
    verdict = st.radio(
        "Verdict", VERDICTS, index=VERDICTS.index(saved["verdict"]) if saved else 0, horizontal=True,
        format_func={"confirm": "Confirm", "override": "Override", "flag": "Flag for second read"}.get,
        key=f"review_verdict_{key}",
    )
    if verdict == "override":
        choices = [name for name in classifier.classes if name != item.label]
        previous = saved["final_label"] if saved and saved["verdict"] == "override" else None
        st.selectbox("Correct class", choices, index=choices.index(previous) if previous in choices else 0,
                     format_func=lambda name: display_names.get(name, name), key=f"review_override_{key}")
        st.text_input("Reason for the override (required)", value=saved["reason"] if previous else "",
                      max_chars=500, key=f"review_reason_{key}")
    st.text_area("Note (optional)", value=saved["note"] if saved else "", max_chars=2000, height=80,
                 key=f"review_note_{key}")
    reviewer = app_support.reviewer_name()
    st.button("Save verdict", type="primary", icon=":material/save:", key=f"review_save_{key}",
              disabled=not reviewer, on_click=_save_verdict, args=(item, session))
    if not reviewer:
        st.caption("Enter your name in the sidebar to save a verdict.")
    flash = st.session_state.get("review_flash", {}).pop(item.sha256, None)
    if flash:
        kind, text = flash
        (st.success if kind == "success" else st.error)(text)


def _set_window(centre_key: str, width_key: str, window: tuple[float, float]) -> None:
    st.session_state[centre_key], st.session_state[width_key] = float(window[0]), float(window[1])


def _dicom_header(item: ReviewItem, upload):
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


def dicom_view(item: ReviewItem, upload, classifier) -> ReviewItem:
    """For a DICOM upload: its non-identifying details, a frame picker and window/level; the chosen view's item.

    The file's own middle frame and window are what was classified at upload; another choice is
    decoded and classified once per (frame, window) and kept in session state, so moving back to
    a view never re-infers. Other formats return `item` unchanged.
    """
    if upload is None:
        return item
    scan = _dicom_header(item, upload)
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
    view = (item.sha256, item.model_version, frame, float(centre), float(width))
    chosen = item
    if frame != scan.frame or (centre, width) != scan.default_window:
        views: dict = st.session_state.setdefault("review_dicom_views", {})
        if view not in views:
            with st.spinner("Classifying the chosen frame and window..."):
                result = analyse_bytes(classifier, upload.getvalue(), upload.name, frame=frame, window=(centre, width))
            views[view] = item_from_result(result, classifier)
            while len(views) > DICOM_VIEWS_KEPT:
                del views[next(iter(views))]
        chosen = views[view]
        st.caption(f"Showing and classifying frame {frame + 1} at window W {width:g}, L {centre:g}; the "
                   "prediction recorded at upload used the file's own frame and window.")
    shown: dict = st.session_state.setdefault("review_dicom_shown", {})
    if shown.get(item.sha256, view) != view:  # The heat-map belongs to the view it was computed for.
        st.session_state.get("review_heatmaps", {}).pop(item.sha256, None)
    shown[item.sha256] = view
    return chosen


def render_scan(item: ReviewItem, state: dict | None, classifier, session: str, upload=None) -> None:
    """Everything about one scan: picture left, result and verdict right.

    `upload` (the uploaded file) lets scan-type controls re-decode the original, e.g. DICOM
    window/level and frame choice; JPG and PNG scans need only the kept thumbnail.
    """
    st.markdown(f"#### {app_support.escape_markdown(item.file_name)}")
    st.caption(f"sha256 {item.sha256[:12]}… · model {app_support.escape_markdown(item.model_version)}")
    left, right = st.columns([5, 6], gap="large")
    with left:
        item = dicom_view(item, upload, classifier)
        render_image(item, classifier)
    with right:
        if item.status != "ok":
            st.error(f"**Not classified**: {app_support.escape_markdown(item.message)}.", icon=":material/block:")
            return
        render_prediction(item, classifier)
        render_verdict(item, state, classifier, session)


def _go_to_next_unreviewed(order: list[str], statuses: dict[str, str]) -> None:
    current = st.session_state.get("review_current")
    start = order.index(current) + 1 if current in order else 0
    for digest in order[start:] + order[:start]:
        if statuses[digest] == "new":
            st.session_state["review_current"] = digest
            return
    st.session_state["review_all_done"] = True


def render_worklist(items: list[ReviewItem], statuses: dict[str, str], display_names: dict[str, str]) -> ReviewItem:
    """The batch as a worklist with a status per scan; returns the scan to show."""
    by_digest = {item.sha256: item for item in items}
    order = [item.sha256 for item in items]
    counts = {status: sum(value == status for value in statuses.values()) for status in STATUS_NAMES}
    st.markdown(" · ".join(f"**{counts[status]}** {name.lower()}" for status, name in STATUS_NAMES.items()
                           if counts[status] or status == "new"))
    st.dataframe(
        pd.DataFrame({
            "File": [item.file_name for item in items],
            "Model's class": [display_names.get(item.label, "-") if item.label else "-" for item in items],
            "Probability": [item.confidence if item.label else None for item in items],
            "Status": [STATUS_NAMES[statuses[item.sha256]] for item in items],
        }),
        hide_index=True, key="review_worklist",
        column_config={"Probability": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)},
    )
    if st.session_state.get("review_current") not in by_digest:
        st.session_state["review_current"] = next((digest for digest in order if statuses[digest] == "new"), order[0])
    chooser, step = st.columns([4, 1], vertical_alignment="bottom")
    chooser.selectbox(
        "Scan", order, key="review_current",
        format_func=lambda digest: f"{order.index(digest) + 1}. {by_digest[digest].file_name} "
                                  f"({STATUS_NAMES[statuses[digest]].lower()})",
    )
    step.button("Next unreviewed", icon=":material/skip_next:", key="review_next", width="stretch",
                on_click=_go_to_next_unreviewed, args=(order, statuses))
    if st.session_state.pop("review_all_done", False):
        st.success("Every scan in this batch has a verdict.", icon=":material/done_all:")
    return by_digest[st.session_state["review_current"]]


def render_earlier(store, session: str, shown: set[str], display_names: dict[str, str]) -> None:
    """Scans this session reviewed earlier that are not uploaded now, read back from the history.

    A closed expander whose title gives the count; only the reviewer opens it. When the page
    opened it for an empty worklist and shut it for an upload, that animation (and the grid drawn
    inside) was about half of the browser's work per upload (bench/page.py).
    """
    try:
        earlier = [row for row in store.current_state(session_id=session) if row["sha256"] not in shown]
    except sqlite3.Error as error:
        st.error(f"The history database could not be read ({error}).")
        return
    if not earlier:
        return
    title = f"Earlier in this session ({len(earlier)} {'scan' if len(earlier) == 1 else 'scans'}, from the history)"
    with st.expander(title, expanded=False):
        st.dataframe(
            pd.DataFrame({
                "File": [row["file_name"] for row in earlier],
                "Model's class": [display_names.get(row["predicted_class"], row["predicted_class"]) for row in earlier],
                "Status": [STATUS_NAMES.get(row["status"], row["status"]) for row in earlier],
                "Verdict": [VERDICT_NAMES.get(row["verdict"], "") for row in earlier],
                "Final label": [display_names.get(row["final_label"], "") for row in earlier],
                "Reviewer": [row["reviewer"] for row in earlier],
                "Time (UTC)": [row["time"][:19].replace("T", " ") for row in earlier],
            }),
            hide_index=True, key="review_earlier",
        )
        st.caption("Upload a file again to see its picture and change its verdict.")


def render() -> None:
    """Draw the Review page: uploader, worklist, the chosen scan's prediction and the verdict form."""
    st.title("Review scans")
    session = app_support.session_id()
    status = app_support.model_status()
    store = app_support.history_store()
    if store is None:
        return
    generation = st.session_state.get("review_uploader_generation", 0)
    uploads = st.file_uploader(
        "Upload brain MRI slices (JPG, PNG or DICOM); several at once make a worklist",
        type=UPLOAD_TYPES, accept_multiple_files=True, key=f"review_uploads_{generation}",
    ) or []
    if status.classifier is None:
        st.error(f"**The model is not available**: {app_support.escape_markdown(status.error)}. "
                 "Scans cannot be classified until it is fixed.", icon=":material/error:")
        for upload in uploads:
            st.warning(f"{app_support.escape_markdown(upload.name)}: not classified - no model is loaded.",
                       icon=":material/block:")
        return
    classifier = status.classifier
    display_names = classifier.card.display_names
    items = classify_uploads(uploads, classifier, store, session)
    try:
        states = {}
        for version in {item.model_version for item in items}:
            states.update(store.latest_by_sha256([item.sha256 for item in items if item.model_version == version],
                                                 version))
    except sqlite3.Error as error:
        st.error(f"The history database could not be read ({error}); saved verdicts are not shown.")
        states = {}
    render_earlier(store, session, {item.sha256 for item in items}, display_names)
    if not items:
        st.info("Upload one or more scans to start.", icon=":material/upload_file:")
        return
    statuses = {item.sha256: status_of(item, states) for item in items}
    current = render_worklist(items, statuses, display_names) if len(items) > 1 else items[0]
    st.button("Clear worklist", icon=":material/clear_all:", key="review_clear", on_click=_clear_worklist,
              help="Empty the worklist and the uploader. Saved verdicts stay in the history.")
    upload = next((upload for upload in uploads
                   if st.session_state["review_digests"].get(upload.file_id) == current.sha256), None)
    st.divider()
    render_scan(current, states.get(current.sha256), classifier, session, upload)


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    import streamlit_app

    streamlit_app.rerun_through_navigation()
