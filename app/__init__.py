"""The app's Streamlit glue, shared by the front door (`streamlit_app.py`) and the pages (`pages/`).

    support   the cached model and history store, the session id, the shared sidebar, shared charts
    identity  who is signed in (st.user, or local mode), the gate every page passes, worklist ownership
    review    the Review page's workflow: the worklist, saving a verdict, heat maps, bars, the DICOM panel
    markup    escaping user text for st.markdown

Only this package and the pages import Streamlit. It may import `core` (never the reverse) and never
imports `pages` or the front door. Pages reach the history store, the scan archive and model loading
through `support`. The contracts in `pyproject.toml` enforce it.
"""
