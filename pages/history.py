"""History: reads, adjudications and refusals, filters, agreement figures and a spreadsheet-safe CSV export.

An admin sees every session and the tamper check; anyone else sees their own reads only.
"""

from __future__ import annotations

from datetime import datetime, timezone

import altair as alt
import pandas as pd
import streamlit as st

from app import identity as app_identity
from app import review as app_review
from app import support as app_support
from core.classes import CLASS_NAMES, LABEL_NAMES, READ_LABELS
from core.errors import HistoryUnavailable
from core.review.export import CASE_COLUMNS, EVENT_COLUMNS, NO_MODEL_VERSION, csv_bytes
from core.review.reads import reader_agreement, reader_key
from core.review.records import (
    PROBABILITY_COLUMNS,
    STATUS_LABELS,
    VERDICT_NAMES,
    VERDICTS,
    display_time,
    filter_rows,
    row_date,
    summarise,
    verdict_name,
)

VIEWS = {"cases": "Cases (latest state)", "events": "Every event"}
NO_VERDICT = "none"
VERDICT_FILTER_NAMES = {NO_VERDICT: "No verdict yet", **VERDICT_NAMES}


def table(rows: list[dict], view: str, display_names: dict[str, str]) -> pd.DataFrame:
    """History rows as the on-screen table: display names, sha256 prefix, UTC time to the second."""
    def name(value):
        return display_names.get(value, value) if value else ""

    # What a reader looks for first (which scan, what the model said, where the case stands), then the
    # figures and words behind it, then when, who and which model: the first columns fit on a laptop.
    frame = pd.DataFrame({
        "File": [row["file_name"] for row in rows],
        "Model's class": [name(row["predicted_class"]) for row in rows],
        **({"Status": [STATUS_LABELS.get(row["status"], row["status"]) for row in rows]} if view == "cases" else
           {"Event": [row["kind"] for row in rows]}),
        "Verdict": [verdict_name(row["verdict"], row["predicted_class"]) for row in rows],
        "Final label": [name(row["final_label"]) for row in rows],
        **({"Reads": [chain_of_reads(row, display_names) for row in rows]} if view == "cases" else {}),
        # Percent with one decimal, as everywhere else; a refused scan has no probability (an empty cell).
        **{f"P({display_names.get(column[2:], column[2:])})": [
            None if row[column] is None else round(row[column] * 100, 1) for row in rows]
           for column in PROBABILITY_COLUMNS},
        "Reason": [row["reason"] for row in rows],
        "Note": [row["note"] for row in rows],
        "Time (UTC)": [display_time(row["time"]) for row in rows],
        "Reviewer": [row["reviewer"] for row in rows],
        "sha256": [row["sha256"][:12] for row in rows],
        "Model version": ["" if row["model_version"] == NO_MODEL_VERSION else row["model_version"] for row in rows],
    })
    return frame


def chain_of_reads(row: dict, display_names: dict[str, str]) -> str:
    """The case's reads in order (reader: verdict class), then its adjudication, as one line."""
    parts = [f"{read['reviewer']}: {verdict_name(read['verdict'], read['predicted_class']).lower()}"
             + (f" {display_names.get(read['final_label'], read['final_label'])}" if read["final_label"] else "")
             + (f" (amended {read['amended']}x)" if read.get("amended") else "") for read in row.get("reads") or []]
    adjudication = row.get("adjudication")
    if adjudication:
        parts.append(f"adjudicated by {adjudication['reviewer']}: "
                     f"{display_names.get(adjudication['final_label'], adjudication['final_label'])}")
    return "; ".join(parts)


def render_reader_agreement(cases: list[dict]) -> None:
    """Agreement between readers who read the same scans: raw agreement and Cohen's kappa per pair."""
    pairs = reader_agreement({(row["sha256"], row["model_version"]): row.get("reads") or [] for row in cases})
    if not pairs:
        st.caption("Agreement between readers appears once two readers have both given a class to the same scans.")
        return
    st.dataframe(pd.DataFrame({
        "Readers": [" & ".join(pair["readers"]) for pair in pairs],
        "Scans read by both": [pair["scans"] for pair in pairs],
        "Agreement": [pair["agreement"] for pair in pairs],
        "Cohen's kappa": [None if pair["kappa"] is None else round(pair["kappa"], 3) for pair in pairs],
    }), hide_index=True, key="history_reader_agreement",
        column_config={"Agreement": st.column_config.NumberColumn(format="percent")})


def cases_chart(summary: dict, display_names: dict[str, str]) -> alt.Chart:
    """Bars: scans per class the model gave."""
    frame = pd.DataFrame({"Class": [display_names.get(name, name) for name in CLASS_NAMES],
                          "Scans": [summary["cases_per_class"][name] for name in CLASS_NAMES]})
    return alt.Chart(frame, title="Scans per model class").mark_bar(cornerRadiusEnd=3).encode(
        y=alt.Y("Class:N", sort=list(frame["Class"]), title=None, axis=alt.Axis(labelOverlap=False)),
        x=alt.X("Scans:Q", title="Scans", axis=alt.Axis(tickMinStep=1)),
        tooltip=["Class:N", "Scans:Q"],
    ).properties(height=220)


def verify_chain(store) -> None:
    """Button callback: walk the hash chain now and record the result, which render_audit then shows."""
    try:
        store.verify(record=True, verified_by=f"History page ({app_support.reviewer_name() or 'no name given'})")
    except HistoryUnavailable as error:
        st.session_state["history_verify_error"] = str(error)


def render_audit(store) -> None:
    """The admin's view of tamper evidence: the last verification of the hash chain, and a button to run one."""
    st.subheader("Tamper check", divider="gray")
    try:
        last = store.last_verification()
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "The last tamper check cannot be shown")
        return
    if last is None:
        st.caption("The hash chain has not been verified yet.")
    elif last["intact"]:
        st.success(f"Chain intact when verified at {display_time(last['time'])} UTC: "
                   f"{last['event_count']} events, last hash `{last['last_hash'][:16]}…` "
                   f"({app_support.escape_markdown(last['verified_by'])}).", icon=":material/verified:")
    else:
        st.error(f"**Chain broken** when verified at {display_time(last['time'])} UTC: event "
                 f"{last['first_bad_event_id']}: {app_support.escape_markdown(last['problem'])}.",
                 icon=":material/gpp_bad:")
    if "history_verify_error" in st.session_state:
        app_support.history_unavailable(st.session_state.pop("history_verify_error"), "The chain was not verified")
    st.button("Verify the chain now", key="history_verify", icon=":material/fact_check:", on_click=verify_chain,
              args=(store,), help="Recompute every event's hash in order; `python -m core audit verify` does the "
                                  "same from a shell.")


def render() -> None:
    """Draw the History page: scope, filters, summary charts, the table, its CSV export and the tamper check."""
    st.title("History")
    session = app_support.session_id()
    status = app_support.model_status()
    display_names = status.classifier.card.label_names if status.classifier is not None else dict(LABEL_NAMES)
    store = app_support.history_store()
    if store is None:
        return

    identity = app_identity.current_identity()
    admin = identity is not None and identity.is_admin
    top = st.columns([3, 2], vertical_alignment="bottom")
    view = top[0].segmented_control("Show", list(VIEWS), format_func=VIEWS.get, default="cases", required=True,
                                    key="history_view") or "cases"
    # Only an admin sees (and exports) everyone's scans; a reviewer sees their own reads only.
    # Local mode is one reviewer's machine: everything it recorded, unless narrowed to this tab's session.
    everyone = admin and top[1].toggle("All sessions", value=identity.local, key="history_all_sessions",
                                       help="Off: only the scans of this session. On: everything ever recorded.")
    scope = None if everyone else session
    try:
        cases = [app_review.viewer_row(row, identity) for row in store.current_state(session_id=scope)]
        rows = cases if view == "cases" else [event for event in store.events(session_id=scope)
                                              if admin or reader_key(event) == identity.key]
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "The history cannot be shown")
        return
    if not rows:
        st.info("Nothing recorded yet in this session. Review a scan"
                + (", or switch on **All sessions**." if admin else ".") if not everyone
                else "Nothing has been recorded yet.", icon=":material/inbox:")
        if admin:
            render_audit(store)
        return

    filters = st.columns(4)
    classes = filters[0].multiselect("Class (model or final)", READ_LABELS, key="history_classes",
                                     format_func=lambda name: display_names.get(name, name))
    verdicts = filters[1].multiselect("Verdict", [NO_VERDICT, *VERDICTS], key="history_verdicts",
                                      format_func=VERDICT_FILTER_NAMES.get)
    reviewers = filters[2].multiselect("Reviewer", sorted({row["reviewer"] for row in rows if row["reviewer"]}),
                                       key="history_reviewers")
    days = sorted({row_date(row) for row in rows})
    chosen_days = filters[3].date_input("Dates (UTC)", value=[], min_value=days[0], max_value=days[-1],
                                        key="history_dates")
    start = chosen_days[0] if len(chosen_days) > 0 else None
    end = chosen_days[1] if len(chosen_days) > 1 else start
    criteria = {"classes": classes, "reviewers": reviewers, "start": start, "end": end,
                "verdicts": [None if verdict == NO_VERDICT else verdict for verdict in verdicts]}
    shown = filter_rows(rows, **criteria)
    shown_cases = filter_rows(cases, **criteria)
    summary = summarise(shown_cases)

    figures = st.columns(5)
    refused = sum(1 for row in shown_cases if row.get("status") == "rejected")
    # The same scans as the cases table below counts, refused ones included, so the two never disagree.
    figures[0].metric("Scans", len(shown_cases), help=f"Every scan matching the filters, {refused} of them refused "
                      "at intake (no model class).")
    figures[1].metric(STATUS_LABELS["reviewed"], summary["status_counts"]["reviewed"])
    figures[2].metric(STATUS_LABELS["flagged"], summary["status_counts"]["flagged"],
                      help="Flagged, or read differently by two readers, and not yet adjudicated.")
    figures[3].metric(STATUS_LABELS["adjudicated"], summary["status_counts"]["adjudicated"])
    figures[4].metric("Model-reviewer agreement",
                      "-" if summary["agreement"] is None else f"{summary['agreement']:.0%}",
                      help=f"{summary['agreed']} of {summary['decided']} scans with a final label kept the "
                           "model's class.")
    charts = st.columns(2, gap="large")
    charts[0].altair_chart(cases_chart(summary, display_names), width="stretch")
    charts[1].altair_chart(app_support.confusion_heatmap(
        summary["confusion"], [display_names.get(name, name) for name in CLASS_NAMES], rows="Model's class",
        columns="Final label", title="Model's class against final label", height=220), width="stretch")

    if app_review.sees_other_reads(identity):
        render_reader_agreement(cases)
    st.subheader(f"{len(shown)} of {len(rows)} {'scans' if view == 'cases' else 'events'}", divider="gray")
    probability_columns = {f"P({display_names.get(column[2:], column[2:])})": st.column_config.NumberColumn(
        format="%.1f%%") for column in PROBABILITY_COLUMNS}
    st.dataframe(table(shown, view, display_names), hide_index=True, key="history_table",
                 column_config=probability_columns)
    app_review.render_scan_opener(store, status.classifier, shown, display_names)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    # Built once per run from exactly the rows on screen; a download button is never nested in a button.
    data = csv_bytes(shown, CASE_COLUMNS if view == "cases" else EVENT_COLUMNS)
    file_name = f"brainscan-history-{view}-{stamp}.csv"
    scope_text = "all sessions" if everyone else "own session"
    st.download_button(
        "Export CSV", data=data, file_name=file_name, mime="text/csv", key="history_export",
        on_click=app_support.record_export, args=(file_name, data, f"{VIEWS[view]}, {len(shown)} rows, {scope_text}"),
        icon=":material/download:", type="primary",
        help="The rows shown above (recorded in the history as an export). Text that a spreadsheet would run as a "
             "formula is prefixed with '.",
    )
    if "history_export_error" in st.session_state:
        app_support.history_unavailable(st.session_state.pop("history_export_error"), "The export was not recorded")
    if admin:
        render_audit(store)


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    app_support.hand_over_to_front_door()
