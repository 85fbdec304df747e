"""Performance: is the model still right here? Figures against the readers' final labels, input drift, reader use.

Every figure is recomputed from the history on each run (`core.review.monitor`, the same function
as `python -m core monitor`), with the number of cases it rests on. Alerts come first. Second
readers and admins see the department's figures; a reviewer sees only how they themselves read.
"""

from __future__ import annotations

import io
from datetime import date

import pandas as pd
import streamlit as st

from app import identity as app_identity
from app import performance as app_performance
from app import support as app_support
from core.classes import DISPLAY_NAMES
from core.review.export import SafeCsvWriter
from core.review.monitor import ALL_PERIODS, GATE_MEASURE, REPORT_COLUMNS, report_html, report_rows


def percent(value) -> str:
    return "" if value is None else f"{value:.1%}"


def render_readers(report) -> None:
    st.subheader("How readers use it", divider="gray")
    if not report.readers:
        st.caption("No reads in this range.")
        return
    for figure in report.readers:
        if figure["period"] == ALL_PERIODS and figure["rubber_stamp"]:
            st.warning(f"**{app_support.escape_markdown(figure['reader'])}** confirmed "
                       f"{figure['confirms']} of {figure['reads']} predictions, {figure['confirmed_otherwise']} of "
                       "them later given another final label: a sign of relying on the model (automation bias).",
                       icon=":material/person_alert:")
    st.dataframe(pd.DataFrame([{
        "Reader": figure["reader"], "Period": "All" if figure["period"] == ALL_PERIODS else figure["period"],
        "Reads": figure["reads"], "Override": percent(figure["override_rate"]), "Flag": percent(figure["flag_rate"]),
        "Agrees with model": percent(figure["agreement_with_model"]),
        "Agrees with final label": percent(figure["agreement_with_final"]),
        "Confirmed, then adjudicated otherwise": figure["confirmed_otherwise"],
    } for figure in report.readers]), hide_index=True, key="performance_readers")


def render_exports(report) -> None:
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer, REPORT_COLUMNS)
    for row in report_rows(report):
        writer.writerow(row)
    stamp = date.today().isoformat()
    left, right = st.columns(2)
    data = buffer.getvalue().encode("utf-8-sig")
    name = f"brainscan-performance-{stamp}.csv"
    left.download_button("Figures as CSV", data=data, file_name=name, mime="text/csv", key="performance_csv",
                         on_click=app_support.record_export, args=(name, data, "performance figures (CSV)"),
                         icon=":material/download:")
    page = report_html(report).encode("utf-8")
    name = f"brainscan-performance-{stamp}.html"
    right.download_button("Printable report (HTML)", data=page, file_name=name, mime="text/html",
                          key="performance_html", on_click=app_support.record_export,
                          args=(name, page, "performance report (HTML)"), icon=":material/print:")
    if "history_export_error" in st.session_state:
        app_support.history_unavailable(st.session_state.pop("history_export_error"), "The export was not recorded")


def render() -> None:
    """Draw the alerts, the chart, the tables and the exports for the chosen range."""
    st.title("Performance")
    identity = app_identity.current_identity()
    if identity is None:
        return
    by_col, since_col, until_col = st.columns(3)
    by = by_col.segmented_control("Period", ["month", "week"], default="month", key="performance_by") or "month"
    since = since_col.date_input("Cases since", value=None, key="performance_since")
    until = until_col.date_input("until", value=None, key="performance_until")
    report = app_performance.report_for(identity, by, since.isoformat() if since else None,
                                        until.isoformat() if until else None)
    if report is None:
        return
    if not identity.adjudicates:
        st.info("Your own reads only: the department's figures are for second readers and admins.",
                icon=":material/person:")
        render_readers(report)
        render_exports(report)
        return
    for alert in report.alerts:
        st.error(f"**Alert**: {app_support.escape_markdown(alert.message)}.", icon=":material/notification_important:")
    if not report.alerts:
        st.success("No alert in this range.", icon=":material/check_circle:")
    st.caption(f"{report.cases} cases, {report.cases_with_final_label} with a final label (agreed reads and "
               "adjudications). Wilson 95% intervals; the dashed line is the model card's test-split figure. "
               "See the README's monitoring section for what each alert means and what to do.")
    status = app_support.model_status()
    names = status.classifier.card.display_names if status.classifier is not None else dict(DISPLAY_NAMES)
    st.subheader("Against the readers' final labels", divider="gray")
    measure_col, scanner_col = st.columns(2)
    measure = measure_col.segmented_control(
        "Measure", ["sensitivity", "ppv"], default="sensitivity", key="performance_measure",
        format_func={"sensitivity": "Sensitivity", "ppv": "Positive predictive value"}.get)
    scanner = scanner_col.selectbox("Scanner", app_performance.scanners_of(report), key="performance_scanner")
    chart = app_performance.sensitivity_chart(report, measure or "sensitivity", names, scanner)
    if chart is None:
        st.caption("No case in this range has a final label yet.")
    else:
        st.altair_chart(chart, width="stretch")
    shown = [figure for figure in report.performance if figure["n"] and figure["scanner"] == scanner]
    if shown:
        st.dataframe(pd.DataFrame([{
            "Period": "All" if figure["period"] == ALL_PERIODS else figure["period"], "Model": figure["model_version"],
            "Scanner": figure["scanner"], "Measure": figure["measure"], "Class": names.get(figure["class"], figure["class"]),
            "Value": percent(figure["value"]), "95% interval": f"{percent(figure['low'])} - {percent(figure['high'])}",
            "Cases": figure["n"], "Card": percent(figure["reference"]), "Alert": "yes" if figure["alert"] else "",
        } for figure in shown]), hide_index=True, key="performance_table")
    st.subheader("Without ground truth", divider="gray")
    st.dataframe(pd.DataFrame([{
        "Period": figure["period"], "Measure": figure["measure"],
        "Value": f"{figure['value']:.2f}" if figure["measure"] == GATE_MEASURE and figure["value"] is not None
        else percent(figure["value"]),
        "Cases": figure["n"],
        "Reference": f"bound {figure['reference']:.2f} (against the {figure['against']})"
        if figure["measure"] == GATE_MEASURE and figure["reference"] is not None
        else f"{percent(figure['reference'])} (earlier periods)" if figure["reference"] is not None else "",
        "Alert": "yes" if figure["alert"] else "",
    } for figure in report.inputs]), hide_index=True, key="performance_inputs")
    render_readers(report)
    render_exports(report)


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    app_support.hand_over_to_front_door()
