"""BrainScan Review: the front door - page config, the shared sidebar and navigation. Run `make run`."""

import streamlit as st

from app import identity as app_identity
from app import performance as app_performance
from app import support as app_support
from pages import history, model, performance, review, second_reads, studies

FAVICON = "🧠"


def performance_page() -> st.Page:
    return st.Page(performance.render, title="Performance", icon=":material/monitoring:", url_path="performance")


def navigation(identity=None, links: bool = False) -> st.Page:
    """Register the pages this user may open with `st.navigation`; return the one the URL asks for.

    The Second reads page is for second readers and admins; without an identity (before the
    gate, or when it refused) every page is registered, so any URL resolves, but none is run.
    The menu is the app's own page links at the top of the sidebar (`links`): Streamlit's menu is
    off (`client.showSidebarNavigation`), because until the first run reached `st.navigation` it
    listed the files of pages/ ("streamlit app / history / ...") for seconds.
    """
    pages = [
        st.Page(review.render, title="Review", icon=":material/fact_check:", url_path="review", default=True),
        st.Page(studies.render, title="Studies", icon=":material/lan:", url_path="studies"),
        st.Page(history.render, title="History", icon=":material/history:", url_path="history"),
        performance_page(),
    ]
    if identity is None or identity.adjudicates:
        pages.append(st.Page(second_reads.render, title="Second reads", icon=":material/group:",
                             url_path="second-reads"))
    pages.append(st.Page(model.render, title="Model", icon=":material/description:", url_path="model"))
    page = st.navigation(pages, position="hidden")
    if links:
        with st.sidebar.container(key="page_links"):
            for each in pages:
                st.page_link(each)
    return page


def rerun_through_navigation() -> None:
    """Select the page the URL asks for with `st.navigation`, then rerun this session from `run()`.

    Until `st.navigation` first runs in a server process, Streamlit executes a file in pages/ on its
    own, or this file as a page of its own, rather than this file as the entry point (see
    pages/__init__.py). Widgets drawn in such a run get other ids than on every later run, so a
    name typed at once would be dropped; nothing is drawn here, and the rerun draws it all.
    """
    st.set_page_config(page_title="BrainScan Review", page_icon=FAVICON)  # before a page's icon can become the tab's
    navigation()  # Switches the process to this navigation for good.
    st.session_state["navigation_ready"] = True
    st.rerun()


def run() -> None:
    """Configure the page, draw the shared sidebar and hand over to the selected page."""
    if not st.session_state.get("navigation_ready"):
        rerun_through_navigation()  # A session's first run may be the pages-folder fallback.
    st.set_page_config(page_title="BrainScan Review", page_icon=FAVICON, layout="wide")
    identity = app_identity.gate()  # Team mode: a signed-in user with a role, else the sign-in page.
    if identity is None:
        navigation()  # no page links and no page run: the gate's page is all there is
        return
    app_support.session_id()  # Local mode: this tab's history session, mirrored in the URL.
    owner = app_support.workspace_owner()  # The worklist and the reader's name: the machine's, or the user's.
    app_identity.restore_workspace(owner)
    try:
        page = navigation(identity, links=True)
        app_support.render_sidebar(app_support.model_status(), identity)
        app_performance.render_sidebar_alerts(identity, performance_page())
        # A page's material icon would become the tab's icon, fetched from fonts.gstatic.com; an emoji
        # icon is drawn in the browser, so the page makes no request outside the app's own origin.
        st.set_page_config(page_icon=FAVICON)
        page.run()
    finally:
        app_identity.keep_workspace(owner)


if __name__ == "__main__":
    run()
