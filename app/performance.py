"""The Performance page's Streamlit side: the monitoring report for this user, its chart and its exports.

The figures come from `core.review.monitor` over the history (nothing stored); second readers and
admins see the department's, a reviewer only their own reads' figures.
"""

from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from app import support as app_support
from core import config
from core.errors import HistoryUnavailable
from core.review.monitor import ALL_PERIODS, ALL_SCANNERS, CardReference, MonitorReport, monitor_history

SIDEBAR_REFRESH_S = 300


def _reference() -> CardReference | None:
    status = app_support.model_status()
    return CardReference.from_card(status.classifier.card.data) if status.classifier is not None else None


def _threshold() -> float:
    try:
        return config.low_confidence_threshold()
    except ValueError:
        return 0.80


def report_for(identity, by: str, since: str | None, until: str | None) -> MonitorReport | None:
    """This user's report (None, with a message, when the history cannot be read)."""
    store = app_support.history_store()
    if store is None:
        return None
    reference, threshold = _reference(), _threshold()
    try:
        return monitor_history(store, low_confidence=threshold, by=by, since=since, until=until, reference=reference,
                               only_reader=None if identity.adjudicates else identity.key)
    except HistoryUnavailable as error:
        app_support.history_unavailable(error, "The figures are not shown")
        return None


def scanners_of(report: MonitorReport) -> list[str]:
    """The scanner groups the report has figures for, all scanners first."""
    return [ALL_SCANNERS] + sorted({figure["scanner"] for figure in report.performance} - {ALL_SCANNERS})


def sensitivity_chart(report: MonitorReport, measure: str, display_names: dict[str, str],
                      scanner: str = ALL_SCANNERS):
    """A line per class over the periods with its 95% band, and the card's figure as a dashed rule."""
    rows = [{"Period": figure["period"], "Class": display_names.get(figure["class"], figure["class"]),
             "Value": figure["value"], "Low": figure["low"], "High": figure["high"], "n": figure["n"],
             "Card": figure["reference"]}
            for figure in report.performance
            if figure["measure"] == measure and figure["class"] and figure["period"] != ALL_PERIODS and figure["n"]
            and figure["scanner"] == scanner]
    if not rows:
        return None
    data = pd.DataFrame(rows)
    base = alt.Chart(data).encode(x=alt.X("Period:O", title=None), color=alt.Color("Class:N", title="Class"))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("Low:Q", title=measure.capitalize(),
                                                       scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
                                              y2="High:Q")
    line = base.mark_line(point=True).encode(
        y="Value:Q", tooltip=["Period", "Class", alt.Tooltip("Value:Q", format=".1%"),
                              alt.Tooltip("Low:Q", format=".1%"), alt.Tooltip("High:Q", format=".1%"), "n"])
    card = alt.Chart(data.dropna(subset=["Card"]).drop_duplicates(["Class"])).mark_rule(strokeDash=[4, 4]).encode(
        y="Card:Q", color="Class:N")
    return (band + line + card).properties(height=260)


@st.cache_data(max_entries=16, show_spinner=False)
def _alert_messages(history: str, window: int, threshold: float, reference_version: str | None,
                    _store, _reference: CardReference | None) -> list[str]:
    # Recomputed from the history at most once per SIDEBAR_REFRESH_S per process: the sidebar is on every
    # page and every rerun, and on a large history the figures take a second. The Performance page is always fresh.
    return [alert.message for alert in monitor_history(_store, low_confidence=threshold, reference=_reference).alerts]


def render_sidebar_alerts(identity, performance_page) -> None:
    """For admins: the monitoring alerts of the whole history (at most `SIDEBAR_REFRESH_S` old), linked to the page."""
    if identity is None or not identity.is_admin:
        return
    reference = _reference()
    try:
        store = app_support.open_history()
        messages = _alert_messages(store.display_url, int(time.time() // SIDEBAR_REFRESH_S), _threshold(),
                                   reference.model_version if reference is not None else None, store, reference)
    except HistoryUnavailable:
        return  # The page itself says the history is unavailable.
    if messages:
        with st.sidebar:
            st.error(f"**{len(messages)} performance alert{'s' if len(messages) != 1 else ''}**: "
                     + app_support.escape_markdown(messages[0]) + (" ..." if len(messages) > 1 else ""),
                     icon=":material/notification_important:")
            st.page_link(performance_page, label="Open Performance", icon=":material/monitoring:")
