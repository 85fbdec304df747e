"""Studies: find a study in the hospital's archive, pull a series, review it slice by slice, read it, send results back.

Works when the scan archive speaks DICOMweb (BRAINSCAN_DICOMWEB_URL: a PACS or the team's
Orthanc). Patient name and ID are shown while choosing a study, as in any viewer; the history
and every export keep only UIDs and sha256.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app import pacs as app_pacs
from app import review as app_review
from app import support as app_support
from core.classes import CLASS_NAMES
from core.review.records import STATUS_LABELS, VERDICT_NAMES, VERDICTS
from core.review.series import most_suspicious, series_class, series_slices, strip_rows


SLICE_BACK_KEY, SLICE_FORWARD_KEY, SUSPICIOUS_KEY = "Alt+Up", "Alt+Down", "Alt+S"


def render_search(archive) -> None:
    """The search fields and button; the results stay in the session until the next search."""
    first, second, third, fourth, fifth = st.columns(5)
    patient_id = first.text_input("Patient ID", key="pacs_patient_id")
    accession = second.text_input("Accession number", key="pacs_accession")
    date_from = third.date_input("Study date from", value=None, key="pacs_date_from")
    date_to = fourth.date_input("Study date to", value=None, key="pacs_date_to")
    modality = fifth.text_input("Modality", value="MR", key="pacs_modality")
    # The button only asks (a callback); the search runs here, in the page, so its messages are drawn in place.
    st.button("Search", icon=":material/search:", key="pacs_search", on_click=_ask, args=("pacs_search_asked",))
    if st.session_state.pop("pacs_search_asked", False):
        found = app_pacs.find(archive, patient_id, accession, date_from, date_to, modality)
        if found is not None:
            st.session_state["pacs_found"] = found


def render_study_choice(archive, classifier):
    """The studies found and their series; pulling one; returns the pulled series to review, or None."""
    studies = st.session_state.get("pacs_found")
    if studies is None:
        return None
    if not studies:
        st.info("No study matches the search.", icon=":material/search_off:")
        return None
    by_uid = {study.study_uid: study for study in studies}
    chosen = st.selectbox("Study", list(by_uid), key="pacs_study", format_func=lambda uid: (
        f"{by_uid[uid].date or 'no date'} · {by_uid[uid].description or 'no description'} · "
        f"{by_uid[uid].patient_name or '-'} ({by_uid[uid].patient_id or '-'}) · accession {by_uid[uid].accession or '-'}"))
    study = by_uid[chosen]
    series_by_uid = {series.series_uid: series for series in study.series}
    if not series_by_uid:
        st.info("This study lists no series.", icon=":material/info:")
        return None
    series_uid = st.selectbox("Series", list(series_by_uid), key="pacs_series", format_func=lambda uid: (
        f"{series_by_uid[uid].number if series_by_uid[uid].number is not None else '?'} · {series_by_uid[uid].modality}"
        f" · {series_by_uid[uid].instances if series_by_uid[uid].instances is not None else '?'} instances · "
        f"{series_by_uid[uid].description or 'no description'}"))
    pulled = st.session_state.get(app_pacs.PULLED, {}).get(series_uid)
    st.button("Pull and classify this series" if pulled is None else "Pull it again", key="pacs_pull",
              icon=":material/download:", type="primary" if pulled is None else "secondary", on_click=_ask,
              args=("pacs_pull_asked",))
    if st.session_state.pop("pacs_pull_asked", False):
        pulled = app_pacs.pull_series(archive, classifier, study.study_uid, series_by_uid[series_uid])
    return pulled


def render_series(archive, classifier, pulled) -> None:
    """The slice viewer, the strip chart, the short list, the series read form and sending results."""
    names = classifier.card.display_names
    slices = series_slices([_SliceResult(item) for item in pulled.items])
    refused = sum(item.status != "ok" for item in slices)
    st.subheader(pulled.name, divider="gray")
    st.caption(f"{len(slices)} {'instance' if len(slices) == 1 else 'instances'}; "
               f"{refused} refused, each with its reason.")
    position = 1
    if len(slices) > 1:
        slider, back, forward, top = st.columns([6, 1, 1, 2], vertical_alignment="bottom")
        position = slider.slider("Slice", 1, len(slices), 1, key=pulled.key("slice"),
                                 help="Arrow keys move the slider once it has the focus")
        # Moving through a stack without the mouse, as in a PACS viewer; each shortcut has a modifier, so typing a
        # reason never moves the slice.
        back.button("", icon=":material/arrow_upward:", key=pulled.key("slice_back"), width="stretch",
                    shortcut=SLICE_BACK_KEY, help=f"Previous slice ({SLICE_BACK_KEY})", on_click=app_pacs.step_slice,
                    args=(pulled, -1))
        forward.button("", icon=":material/arrow_downward:", key=pulled.key("slice_forward"), width="stretch",
                       shortcut=SLICE_FORWARD_KEY, help=f"Next slice ({SLICE_FORWARD_KEY})",
                       on_click=app_pacs.step_slice, args=(pulled, 1))
        ranked = [entry.position + 1 for entry in most_suspicious(slices)]
        top.button("Next suspicious", icon=":material/priority_high:", key=pulled.key("slice_suspicious"),
                   width="stretch", shortcut=SUSPICIOUS_KEY, disabled=not ranked,
                   help=f"The next slice of the short list, most suspicious first ({SUSPICIOUS_KEY})",
                   on_click=app_pacs.next_suspicious, args=(pulled, ranked))
    item = pulled.items[position - 1]
    left, right = st.columns([5, 6], gap="large")
    with left:
        if item.thumbnail is not None:
            st.image(app_review.png_bytes(item.thumbnail), caption=f"Slice {position}: {item.file_name}",
                     width="stretch", output_format="PNG")
    with right:
        if item.status == "ok":
            st.markdown(f"**Slice {position}: {names.get(item.label, item.label)}** ({item.confidence:.1%})")
            st.html(app_review.probability_bars(item.probabilities, item.label, names))
        else:
            st.error(f"**Slice {position} not classified**: {app_support.escape_markdown(item.message)}.",
                     icon=":material/block:")
    rows = pd.DataFrame(strip_rows(slices, names))
    lines = alt.Chart(rows[~rows["refused"]]).mark_line(point=True).encode(
        x=alt.X("slice:Q", title="Slice"), y=alt.Y("probability:Q", title="Probability", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("class:N", title="Class"))
    marks = alt.Chart(rows[rows["refused"]]).mark_rule(color="#999", strokeDash=[4, 3]).encode(x="slice:Q")
    st.altair_chart(lines + marks, width="stretch")
    suspicious = most_suspicious(slices)
    st.markdown("**Most suspicious slices** (highest probability of a tumour first)")
    st.dataframe(pd.DataFrame({"Slice": [entry.position + 1 for entry in suspicious],
                               "Model's class": [names.get(entry.label, entry.label) for entry in suspicious],
                               "P(tumour)": [f"{entry.suspicion:.1%}" for entry in suspicious]}),
                 hide_index=True, key="pacs_suspicious")
    render_read_form(archive, classifier, pulled, slices, [entry.position + 1 for entry in suspicious])


def render_read_form(archive, classifier, pulled, slices, suspicious: list[int]) -> None:
    """The series read (verdict, class, reason, key slices) and the two ways results go back to the archive."""
    names = classifier.card.display_names
    model_class = series_class(slices)
    st.markdown(f"**Model's class for the series** (its most suspicious slice): "
                f"{names.get(model_class, model_class) if model_class else 'none (no slice classified)'}")
    st.radio("Series read", VERDICTS, index=None, format_func=lambda verdict: VERDICT_NAMES[verdict],
             key=pulled.key("verdict"), horizontal=True)
    st.selectbox("Your class (to override)", CLASS_NAMES, index=None, format_func=lambda name: names.get(name, name),
                 key=pulled.key("override"))
    st.text_input("Reason (required to override)", max_chars=500, key=pulled.key("reason"))
    st.multiselect("Key slices that support the read", [entry.position + 1 for entry in slices if entry.status == "ok"],
                   default=suspicious[:1], key=pulled.key("key_slices"))
    st.button("Save series read", type="primary", icon=":material/save:", key=pulled.key("save_read"),
              on_click=app_pacs.record_series_read, args=(pulled, model_class, classifier.version))
    chosen = list(st.session_state.get(pulled.key("key_slices")) or suspicious[:3])
    st.button("Send the AI result to the archive", key=pulled.key("send_model"), icon=":material/upload:",
              disabled=not chosen, on_click=app_pacs.send_model_result, args=(archive, classifier, pulled, chosen))
    standing = app_pacs.series_standing(pulled, classifier.version)
    if standing is None:
        return
    status, final = standing
    if final is None:
        st.caption(f"Series: {STATUS_LABELS[status]}; the verified result waits for a final class (reads "
                   "that agree, or a second reader's adjudication on the Second reads page).")
        return
    said = "adjudicated" if final["verdict"] == "adjudicated" else VERDICT_NAMES[final["verdict"]].lower()
    st.caption(f"Series: {STATUS_LABELS[status]}, final class "
               f"{names.get(final['final_label'], final['final_label'])} ({said} by {final['reviewer']}).")
    st.button("Send the read result to the archive (verified)", key=pulled.key("send_read"), icon=":material/verified:",
              on_click=app_pacs.send_read_result, args=(archive, classifier, pulled, final))


def _ask(flag: str) -> None:
    """Button callback: note that the button was pressed, for the page to act on in place."""
    st.session_state[flag] = True


class _SliceResult:
    """A worklist item as `core.review.series.series_slices` reads a pipeline result."""

    def __init__(self, item):
        self.filename, self.sha256, self.status = item.file_name, item.sha256, item.status
        self.label, self.probabilities, self.message = item.label, item.probabilities, item.message


def render() -> None:
    """Draw the Studies page."""
    st.title("Studies")
    flash = st.session_state.pop("pacs_flash", None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    archive = app_pacs.pacs_archive()
    status = app_support.model_status()
    if archive is None:
        st.info("Studies come from a DICOMweb archive (a PACS or the team's Orthanc): set BRAINSCAN_DICOMWEB_URL, "
                "or a [dicomweb] section in .streamlit/secrets.toml. Until then, upload scans on the Review page.",
                icon=":material/lan:")
        return
    if status.classifier is None:
        st.error(f"**The model is not available**: {app_support.escape_markdown(status.error)}.",
                 icon=":material/error:")
        return
    render_search(archive)
    pulled = render_study_choice(archive, status.classifier)
    if pulled is not None:
        render_series(archive, status.classifier, pulled)


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    app_support.hand_over_to_front_door()
