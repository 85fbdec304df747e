"""BrainScan Review: the front door - page config, the shared sidebar and navigation. Run `make run`."""

import streamlit as st

import app_support


def run() -> None:
    """Configure the page, draw the shared sidebar and hand over to the selected page."""
    st.set_page_config(page_title="BrainScan Review", page_icon=":material/neurology:", layout="wide")
    app_support.session_id()
    app_support.render_sidebar(app_support.model_status())
    pages = [
        st.Page("app_pages/review.py", title="Review", icon=":material/fact_check:", url_path="review", default=True),
        st.Page("app_pages/history.py", title="History", icon=":material/history:", url_path="history"),
        st.Page("app_pages/model_card.py", title="Model", icon=":material/description:", url_path="model"),
    ]
    st.navigation(pages).run()


if __name__ == "__main__":
    run()
