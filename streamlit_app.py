"""BrainScan Review: the front door - page config, the shared sidebar and navigation. Run `make run`."""

import streamlit as st

import app_support
from pages import history, model, review


def navigation() -> st.Page:
    """Register the three pages with `st.navigation`; return the one the URL asks for."""
    return st.navigation([
        st.Page(review.render, title="Review", icon=":material/fact_check:", url_path="review", default=True),
        st.Page(history.render, title="History", icon=":material/history:", url_path="history"),
        st.Page(model.render, title="Model", icon=":material/description:", url_path="model"),
    ])


def rerun_through_navigation() -> None:
    """Select the page the URL asks for with `st.navigation`, then rerun this session from `run()`.

    Until `st.navigation` first runs in a server process, Streamlit executes a file in pages/ on its
    own, or this file as a page of its own, rather than this file as the entry point (see
    pages/__init__.py). Widgets drawn in such a run get other ids than on every later run, so a
    name typed at once would be dropped; nothing is drawn here, and the rerun draws it all.
    """
    navigation()  # Switches the process to this navigation for good.
    st.session_state["navigation_ready"] = True
    st.rerun()


def run() -> None:
    """Configure the page, draw the shared sidebar and hand over to the selected page."""
    if not st.session_state.get("navigation_ready"):
        rerun_through_navigation()  # A session's first run may be the pages-folder fallback.
    st.set_page_config(page_title="BrainScan Review", page_icon=":material/neurology:", layout="wide")
    app_support.session_id()
    app_support.render_sidebar(app_support.model_status())
    navigation().run()


if __name__ == "__main__":
    run()
