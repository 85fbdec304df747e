"""Review: upload scans, read the model's calibrated probabilities and heat-map, and record a verdict.

Predictions are keyed by the sha256 of the file bytes and kept in session state without the bytes,
so a widget change never re-infers or records twice. The verdict and worklist status come from the
history database on every run, so a refresh (or another reviewer's save) shows what is on disk.
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from app import identity as app_identity
from app import review as app_review
from app import support as app_support
from core import config
from core.errors import HistoryUnavailable
from core.classes import READ_LABELS
from core.review.records import VERDICTS, display_time, verdict_name
from core.review.worklist import STATUS_NAMES, UNAVAILABLE, ReviewItem, status_counts

UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom", "bmp", "gif", "tif", "tiff", "webp"]


def render_image(item: ReviewItem, classifier, source=lambda: None) -> None:
    """The scan (in colour for a colour upload), with the model's heat-map overlaid at the chosen opacity when
    available, and the original alone at full size a click away (`source()` gives its archived bytes)."""
    name = app_support.escape_markdown(item.file_name)
    if item.thumbnail is None:
        st.info(f"No picture: {name} could not be decoded.", icon=":material/hide_image:")
        return
    picture = app_review.shown_picture(item)
    caption = name
    explain = app_review.explainer() if item.status == "ok" else None
    if item.status == "ok" and explain is None:
        st.caption("The heat-map of where the model looked is not available in this version of the app.")
    elif item.status == "ok":
        show = st.toggle("Heat-map overlay", value=True, key="review_show_heatmap",
                         help="Where the model looked: warm colours raised the score of its class.")
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="review_heatmap_opacity", disabled=not show)
        if show:
            heat = app_review.heatmap_for(item, classifier, explain)
            if isinstance(heat, str):
                st.caption(heat)
            elif explain.heat_is_flat(heat):
                st.caption(app_review.FLAT_HEAT)
            else:
                picture = app_review.overlaid(item, heat, opacity, explain)
                caption = f"{name} - heat-map over the model's crop of the head"
    if item.colour is not None:
        caption += " (shown in colour; the model reads it in greyscale)"
    st.image(app_review.png_bytes(picture), caption=caption, width="stretch", output_format="PNG")
    st.button("Original at full size", icon=":material/open_in_full:", key=f"review_original_{item.widget_key}",
              help="The scan alone, at its own resolution, without the heat map", on_click=st.session_state.update,
              kwargs={"review_open_original": item.sha256})
    if st.session_state.pop("review_open_original", None) == item.sha256:
        app_review.show_original(item, source())


def render_prediction(item: ReviewItem, classifier) -> None:
    """The model's class, its calibrated probability, the low-confidence flag and the probability bars."""
    display_names = classifier.card.display_names
    try:
        threshold = config.low_confidence_threshold()
    except ValueError as error:
        st.warning(f"{error}; using 80%.")
        threshold = 0.80
    # The class is the most important word on the page: a heading that wraps, never a metric that truncates it.
    st.markdown(f"<div class='brainscan-class' role='status' aria-label='Model class'>"
                f"<span style='opacity:0.7;font-size:0.9em'>Model's class</span><br>"
                f"<span class='brainscan-class-name' style='font-size:1.9em;font-weight:650;line-height:1.15;"
                f"white-space:normal'>{html.escape(display_names.get(item.label, item.label))}</span> "
                f"<span class='brainscan-class-probability' style='font-size:1.2em;font-variant-numeric:tabular-nums'>"
                f"{item.confidence:.1%}</span></div>",
                unsafe_allow_html=True)
    if item.confidence < threshold:
        st.warning(f"**Low confidence**: {item.confidence:.0%} is under the {threshold:.0%} threshold. "
                   "Read this scan with extra care.", icon=":material/warning:")
    st.html(app_review.probability_bars(item.probabilities, item.label, display_names))


def render_verdict(item: ReviewItem, state: dict | None, classifier, session: str) -> None:
    """This reader's verdict form: blank, or their own read to amend; other reads read-only, as the role allows.

    A scan the model refused gets the same form without a class to confirm: the reader's own read
    (a class, "not a brain MRI slice" or "non-diagnostic") with a reason, or a flag.
    """
    names = classifier.card.label_names
    key = item.widget_key
    identity = app_identity.current_identity()
    saved, others = app_review.own_and_other_reads(state, identity)
    st.subheader("Your read", divider="gray")
    app_review.render_other_reads(others, state, identity, names)
    if saved:
        outcome = app_review.case_outcome(saved, state, identity, names)
        st.info(f"Saved verdict: **{verdict_name(saved['verdict'], item.label)}** · {outcome} · by "
                f"{app_support.escape_markdown(saved['reviewer'])} at {display_time(saved['time'])} UTC. "
                "Saving again amends your read; the earlier one stays in the history.", icon=":material/task_alt:")
    # No verdict is chosen for the reader: one Ctrl+Enter must never confirm a scan nobody has looked at
    # (automation bias is the known failure of AI aids). A saved read starts from its own verdict.
    verdicts = VERDICTS if item.label else ("override", "flag")
    if not item.label:
        st.caption("The model gave this scan no class. Record what you see, with a reason, or flag it for a "
                   "second reader; the refusal stays in the history beside your read.")
    verdict = st.radio(
        "Verdict", verdicts, index=verdicts.index(saved["verdict"]) if saved and saved["verdict"] in verdicts
        else None, horizontal=True, key=f"review_verdict_{key}",
        format_func={"confirm": "Confirm", "override": "Override" if item.label else "Give my read",
                     "flag": "Flag for second read"}.get,
    )
    if verdict == "override":
        choices = [name for name in READ_LABELS if name != item.label]
        previous = saved["final_label"] if saved and saved["verdict"] == "override" else None
        # No answer is pre-selected: the reader must choose one.
        st.selectbox("Correct class" if item.label else "Your read", choices,
                     index=choices.index(previous) if previous in choices else None,
                     placeholder="Choose the correct class" if item.label else "Choose a class or another answer",
                     format_func=lambda name: names.get(name, name), key=f"review_override_{key}")
        st.text_input(f"Reason for {'the override' if item.label else 'your read'} (required)",
                      value=saved["reason"] if previous else "", max_chars=500, key=f"review_reason_{key}")
    st.text_area("Note (optional)", value=saved["note"] if saved else "", max_chars=2000, height=80,
                 key=f"review_note_{key}")
    reviewer = app_support.reviewer_name()
    st.button("Save verdict", type="primary", icon=":material/save:", key=f"review_save_{key}",
              disabled=not reviewer or verdict is None, on_click=app_review.save_verdict, args=(item, session),
              shortcut=app_review.SAVE_KEY, help="Save the verdict chosen above (Ctrl+Enter, or Cmd+Enter on a Mac)")
    if not reviewer:
        st.caption("Enter your name in the sidebar to save a verdict.")
    elif verdict is None:
        st.caption("Choose a verdict to save: nothing is chosen for you.")
    flash = app_review.take_flash(item)
    if flash:
        kind, text = flash
        (st.success if kind == "success" else st.error)(text)


def render_scan(item: ReviewItem, state: dict | None, classifier, session: str, source=lambda: None) -> None:
    """Everything about one scan: picture left, result and verdict right.

    `source()` gives the archived copy's bytes, which scan-type controls re-decode (a DICOM's
    window/level and frame) and the full-size view shows; it is called only when one of them needs
    it, since reading and checking the archived copy of every new upload cost each upload's rerun.
    """
    st.markdown(f"#### {app_support.escape_markdown(item.file_name)}")
    st.caption(f"sha256 {item.sha256[:12]}… · model {app_support.escape_markdown(item.model_version)}")
    if item.status == UNAVAILABLE:
        app_support.archive_unavailable(item.message, "This scan stays in your worklist and is shown once the "
                                        "archive gives it back")
        return
    left, right = st.columns([5, 6], gap="large")
    with left:
        item = app_review.dicom_panel(item, source, classifier)
        render_image(item, classifier, source)
    with right:
        if item.status != "ok":
            st.error(f"**Refused**: {app_support.escape_markdown(item.message)}.", icon=":material/block:")
        else:
            render_prediction(item, classifier)
        render_verdict(item, state, classifier, session)


def render_worklist(items: list[ReviewItem], statuses: dict[str, str], display_names: dict[str, str]) -> ReviewItem:
    """The batch as a worklist with a status per scan; returns the scan to show."""
    by_digest = {item.sha256: item for item in items}
    order = [item.sha256 for item in items]
    counts = status_counts(statuses)
    st.markdown(" · ".join(f"**{counts[status]}** {name.lower()}" for status, name in STATUS_NAMES.items()
                           if counts[status] or status == "new"))
    st.dataframe(
        pd.DataFrame({
            "File": [item.file_name for item in items],
            "Model's class": [display_names.get(item.label, "-") if item.label else f"Refused: {item.message}"
                              if item.status == "rejected" else "-" for item in items],
            "Probability": [round(item.confidence * 100, 1) if item.label else None for item in items],
            "Status": [STATUS_NAMES[statuses[item.sha256]] for item in items],
        }),
        hide_index=True, key="review_worklist",
        # One decimal, as the result panel gives it ("percent" would show two).
        column_config={"Probability": st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100)},
    )
    app_review.select_first_unreviewed(order, statuses)  # also moves on from a scan just saved
    chooser, back, forward, step = st.columns([5, 1, 1, 2], vertical_alignment="bottom")
    chooser.selectbox(
        "Scan", order, key="review_current",
        format_func=lambda digest: f"{order.index(digest) + 1}. {by_digest[digest].file_name} "
                                  f"({STATUS_NAMES[statuses[digest]].lower()})",
    )
    app_review.render_steps(back, forward, step, order, statuses)
    if st.session_state.pop("review_all_done", False):
        st.success("Every scan in this batch has a verdict.", icon=":material/done_all:")
    return by_digest[st.session_state["review_current"]]


def render() -> None:
    """Draw the Review page: uploader, worklist, the chosen scan's prediction and the verdict form."""
    st.title("Review scans")
    session, owner = app_support.session_id(), app_support.worklist_owner()
    status = app_support.model_status()
    store = app_support.history_store()
    archive = app_support.scan_archive()
    if store is None or archive is None:
        return
    generation = app_review.uploader_generation()
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
    items = app_review.classify_uploads(uploads, classifier, store, archive, session, owner)
    try:
        states = {}
        for version in {item.model_version for item in items}:
            states.update(store.latest_by_sha256([item.sha256 for item in items if item.model_version == version],
                                                 version))
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "Saved verdicts are not shown, and a verdict is saved only once it "
                                        "is back")
        states = {}
    app_review.render_earlier(store, session, {item.sha256 for item in items}, display_names)
    if not items:
        st.info("Upload one or more scans to start.", icon=":material/upload_file:")
        return
    statuses = app_review.reader_statuses(items, states, app_identity.current_identity())
    current = render_worklist(items, statuses, display_names) if len(items) > 1 else items[0]
    app_review.clear_worklist_control(store, owner, len(items))
    app_review.show_saved_elsewhere(current)
    st.divider()
    render_scan(current, states.get(current.sha256), classifier, session,
                lambda: app_review.source_bytes(store, archive, current, uploads))


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    app_support.hand_over_to_front_door()
