"""Second reads: scans flagged for a second read or read differently by two readers, and their adjudication.

Visible to second readers and admins only (the front door does not register the page for others,
and the page checks again). The second reader sees the scan as the archive holds it (on any
replica, after any restart) with the model's heat map, the model's output, every read with its
note, and records an adjudication: a final label (a class, "not a brain MRI slice" or
"non-diagnostic") and a required reason. The adjudication is the scan's final label.
"""

from __future__ import annotations

import json

import streamlit as st

from app import identity as app_identity
from app import review as app_review
from app import support as app_support
from core.classes import CLASS_NAMES, LABEL_NAMES, READ_LABELS
from core.errors import HistoryUnavailable
from core.review.reads import needs_second_read
from core.review.records import PROBABILITY_COLUMNS, VerdictRejected
from core.review.results import key_slices_of


def adjudicate(case: dict) -> None:
    """Button callback: record the adjudication form's final class and reason for `case`."""
    key = case["sha256"][:16]
    try:
        app_identity.acting_identity("second_reader")
        app_support.open_history().record_adjudication(
            session_id=app_support.session_id(), reviewer=app_support.reviewer_name(), file_name=case["file_name"],
            sha256=case["sha256"], model_version=case["model_version"], predicted_class=case["predicted_class"],
            probabilities=probabilities_of(case), final_label=st.session_state.get(f"second_class_{key}"),
            reason=st.session_state.get(f"second_reason_{key}") or "",
            note=st.session_state.get(f"second_note_{key}") or "", actor=app_support.actor())
    except VerdictRejected as rejection:
        st.session_state["second_flash"] = ("error", f"Not recorded: {rejection}.")
    except HistoryUnavailable as error:
        st.session_state["second_flash"] = ("error", f"Not recorded: the history is unavailable ({error}).")
    else:
        st.session_state["second_flash"] = ("success", f"Adjudicated: {case['file_name']}.")
        st.session_state.pop("second_current", None)


def probabilities_of(case: dict) -> dict[str, float]:
    """The model's probabilities recorded with a case, by class name."""
    return {name: case[column] for name, column in zip(CLASS_NAMES, PROBABILITY_COLUMNS) if case[column] is not None}


def refusal_of(store, case: dict) -> str:
    """Why the model gave a case no class, as its refusal event says (the refusal stays beside the reads)."""
    try:
        reason = store.refusal_reason(case["sha256"], case["model_version"])
    except HistoryUnavailable:
        return "the reason cannot be read while the history is unavailable"
    return reason or "no reason recorded"


def render_series_case(store, classifier, case: dict) -> None:
    """A series awaiting a second read: what it is, and the first key slice a read names, from the archive."""
    detail = json.loads(case["detail"]) if case.get("detail") else {}
    key_slices = [slice_ for read in sorted(case["reads"], key=lambda read: -read["id"])
                  for slice_ in key_slices_of(read)]
    st.markdown(f"**Series** {app_support.escape_markdown(case['file_name'])} · {detail.get('slices', '?')} slices · "
                f"series UID {app_support.escape_markdown(str(detail.get('series_uid', '')))}")
    if not key_slices:
        st.caption("No read names a key slice (a flag needs none): open the series on the Studies page to see it.")
        return
    st.caption(f"Key slice named by the latest read ({len(set(key_slices))} named in all); the whole series is on the "
               "Studies page.")
    app_review.render_archived_scan(store, classifier, {**case, "sha256": key_slices[0],
                                                        "file_name": f"key slice of {case['file_name']}"},
                                    key="second")


def render() -> None:
    """Draw the queue, the chosen scan with its reads and the adjudication form."""
    st.title("Second reads")
    identity = app_identity.current_identity()
    if identity is None or not identity.adjudicates:
        st.error("Second reads are for second readers and admins.", icon=":material/block:")
        return
    status = app_support.model_status()
    display_names = status.classifier.card.label_names if status.classifier is not None else dict(LABEL_NAMES)
    flash = st.session_state.pop("second_flash", None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    store = app_support.history_store()
    if store is None:
        return
    try:
        queue = [case for case in store.current_state() if needs_second_read(case["status"])]
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "The second-read queue cannot be shown")
        return
    if not queue:
        st.info("Nothing awaits a second read.", icon=":material/done_all:")
        return
    by_key = {f"{case['sha256']}|{case['model_version']}": case for case in queue}
    st.caption(f"{len(queue)} {'case awaits' if len(queue) == 1 else 'cases await'} a second read (scans, and series "
               "read on the Studies page): flagged by a reader, or read differently by two.")
    chosen = st.selectbox("Scan", list(by_key), key="second_current",
                          format_func=lambda value: f"{'Series ' if by_key[value]['kind'] == 'series_read' else ''}"
                                                    f"{by_key[value]['file_name']} · sha256 {value[:12]}… · "
                                                    f"{len(by_key[value]['reads'])} "
                                                    f"{'read' if len(by_key[value]['reads']) == 1 else 'reads'}")
    case = by_key[chosen]
    key = case["sha256"][:16]
    series = case["kind"] == "series_read"
    left, right = st.columns([5, 6], gap="large")
    with left:
        if series:
            render_series_case(store, status.classifier, case)
        else:
            app_review.render_archived_scan(store, status.classifier, case, key="second")
    with right:
        if series:
            st.markdown(f"**Model** {app_support.escape_markdown(case['model_version'])}, series' class (its most "
                        f"suspicious slice): **{display_names.get(case['predicted_class'], '-')}**")
        elif case["predicted_class"]:
            probability = probabilities_of(case).get(case["predicted_class"])
            st.markdown(f"**Model** {app_support.escape_markdown(case['model_version'])}: "
                        f"**{display_names.get(case['predicted_class'], case['predicted_class'])}**"
                        + (f" ({probability:.1%})" if probability is not None else ""))
        else:
            st.markdown(f"**Model** {app_support.escape_markdown(case['model_version'])}: no class. "
                        f"**Refused**: {app_support.escape_markdown(refusal_of(store, case))}.")
        if probabilities_of(case):
            st.html(app_review.probability_bars(probabilities_of(case), case["predicted_class"], display_names))
        app_review.render_other_reads(case["reads"], case, identity, display_names)
        st.subheader("Adjudication", divider="gray")
        st.selectbox("Final label", CLASS_NAMES if series else READ_LABELS, index=None,
                     placeholder="Choose the final class" if series else "Choose a class or another answer",
                     format_func=lambda name: display_names.get(name, name), key=f"second_class_{key}")
        st.text_input("Reason (required)", max_chars=500, key=f"second_reason_{key}")
        st.text_area("Note (optional)", max_chars=2000, height=80, key=f"second_note_{key}")
        st.button("Record adjudication", type="primary", icon=":material/gavel:", key=f"second_save_{key}",
                  on_click=adjudicate, args=(case,))


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    app_support.hand_over_to_front_door()
