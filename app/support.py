"""The app's shared glue: the cached model, the history store, the session id, the shared sidebar and the
confusion heat map both the History and Model pages draw. Who the user is comes from `app.identity`.

`core/` never imports Streamlit; pages never load models or open databases themselves.
"""

from __future__ import annotations

import hashlib
import re
import runpy
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app import identity as app_identity
from app.markup import escape_markdown
from core import config
from core.archive import ScanArchive, open_archive
from core.errors import HistoryUnavailable
from core.review.store import HistoryStore

NOTICE = (
    "**Review aid only - not a diagnostic device.** The model's output may be wrong; every decision "
    "rests with a qualified reader."
)
SESSION_PARAMETER = "session"
HISTORY_RETRY_SECONDS = 5
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ModelStatus:
    """The shared classifier, or why there is none: exactly one of `classifier` and `error` is set."""

    path: Path
    classifier: object | None = None
    error: str | None = None


# A cold machine spent up to 22 s here with no word of why: the first load converts the network for this
# CPU (OpenVINO) and checks it; later processes read the converted copy from data/runtime-cache.
MODEL_LOADING = ("Loading the model. The first start on a machine converts it for this computer's processor "
                 "and checks the result (up to about 30 s, once); later starts read the converted copy in seconds.")


@st.cache_resource(show_spinner=MODEL_LOADING, max_entries=2)
def _load_classifier(model_path: str, stamp: tuple[int, int]):
    # One load per process and file version, shared by every session: the stamp (modification
    # time and size) makes a replaced model file load afresh. Failures raise and are therefore
    # not cached, so fixing the file takes effect on the next rerun without a restart.
    from core.model.inference import Classifier

    classifier = Classifier.load(Path(model_path))  # Traces and warms up inference.
    try:
        from core.model.explain import warm_up
    except ImportError:
        return classifier
    warm_up(classifier)  # The first heat-map a reviewer asks for then costs one call, not a trace.
    # The first archive object of a process costs 0.45 s of imports; pay it here, under the loading spinner,
    # not in the first reader's first upload (with eight readers at once, every one of them waited for it).
    # Not in a background thread: with it, the browser test's first upload was lost about one run in three
    # (the page stayed at "Upload one or more scans", the server idle); the likely cause is the thread's
    # imports holding the interpreter while that upload arrived. Without it, 10 runs of 10 passed.
    from core.review.uploads import warm_up_archiving

    warm_up_archiving()
    return classifier


def model_status() -> ModelStatus:
    """Load (once per process) the configured model; never raises."""
    from core.errors import ModelContractError
    from core.model.card import card_path_for

    path = config.model_path()
    try:
        stamps = [(file.stat().st_mtime_ns, file.stat().st_size) for file in (path, card_path_for(path))]
        stamp = (max(mtime for mtime, _ in stamps), sum(size for _, size in stamps))
    except OSError:
        stamp = (0, 0)
    try:
        return ModelStatus(path, classifier=_load_classifier(str(path), stamp))
    except ModelContractError as error:
        return ModelStatus(path, error=str(error))
    except Exception as error:  # Whatever else breaks loading, the page must explain it, not crash.
        return ModelStatus(path, error=f"the model at {path} could not be loaded ({type(error).__name__}: {error})")


def history_store() -> HistoryStore | None:
    """The history named by BRAINSCAN_DATABASE_URL (else BRAINSCAN_HISTORY_DB), or None after saying it is unavailable.

    Cheap to call on every run: engines are kept per process and the schema is checked until it
    is found current, so a database that was down or not yet upgraded is picked up on a later run.
    """
    try:
        return open_history()
    except HistoryUnavailable as error:
        history_unavailable(error, "Nothing can be shown or recorded until it is back")
        return None


def open_history() -> HistoryStore:
    """The configured history store, drawing nothing (for callbacks); raises `HistoryUnavailable`."""
    return HistoryStore(config.database_url())


def _dicomweb_secrets() -> dict:
    """The `[dicomweb]` section of Streamlit's secrets ({} without one); the password never leaves the process."""
    if not app_identity._secrets_files():
        # No secrets file at all (local mode): Streamlit would look for and try to parse each file again on every
        # rerun, since nothing was loaded.
        return {}
    try:
        if not st.secrets.load_if_toml_exists():
            return {}
        section = st.secrets.get("dicomweb")
        return dict(section) if section else {}
    except Exception:  # An unreadable secrets file: the sign-in gate says so; the archive falls back to settings.
        return {}


@st.cache_resource(show_spinner=False, max_entries=4)
def _archive(settings: config.ArchiveSettings) -> ScanArchive:
    # One archive object per process and settings: its HTTP sessions (one per thread) are reused by every run.
    return open_archive(settings)


def scan_archive() -> ScanArchive | None:
    """The configured scan archive (BRAINSCAN_DICOMWEB_URL or [dicomweb], else BRAINSCAN_SCAN_DIR); None after saying why."""
    try:
        return _archive(config.archive_settings(_dicomweb_secrets()))
    except ValueError as error:
        st.error(f"**The scan archive is misconfigured**: {escape_markdown(str(error))}.", icon=":material/error:")
        return None


def archive_unavailable(error: BaseException, consequence: str) -> None:
    """Say in one line that the scan archive could not be used, why, and what that means here; never raises."""
    st.warning(f"**Scan archive**: {escape_markdown(str(error))}. {consequence}.", icon=":material/cloud_off:")


def history_unavailable(error: BaseException, consequence: str) -> None:
    """Say the history is unavailable, why, and what that means on this page; the page redraws itself once it is back."""
    st.error(f"**The history is unavailable** ({escape_markdown(str(error))}). {consequence}. This page checks "
             f"again every {HISTORY_RETRY_SECONDS} seconds and redraws itself when the history is back.",
             icon=":material/database:")
    st.session_state["history_down_since"] = time.monotonic()
    _redraw_when_history_returns()


@st.fragment(run_every=HISTORY_RETRY_SECONDS)
def _redraw_when_history_returns() -> None:
    # A fragment reruns on its own timer, without the reviewer doing anything. Its first run is
    # part of the failed page run, so it waits one interval before the first check.
    down_since = st.session_state.get("history_down_since")
    if down_since is None or time.monotonic() - down_since < HISTORY_RETRY_SECONDS - 0.5:
        return
    try:
        open_history().ping()
    except HistoryUnavailable:
        return
    st.session_state.pop("history_down_since", None)
    st.rerun(scope="app")


def hand_over_to_front_door() -> None:
    """Switch to the front door's navigation and rerun, from a page file Streamlit ran on its own.

    Only Streamlit's pages-folder fallback runs a file in pages/ as a script (see pages/__init__.py).
    The front door (streamlit_app.py) is loaded by path, as Streamlit itself loads it, rather than
    imported: it imports the pages, so a page importing it would close an import circle.
    """
    front_door = runpy.run_path(str(Path(__file__).resolve().parents[1] / "streamlit_app.py"),
                                run_name="streamlit_app_fallback")  # Not "__main__": define, don't run.
    front_door["rerun_through_navigation"]()


def session_id() -> str:
    """The history session and worklist owner of this run.

    Team mode: the signed-in user's own key (from issuer and subject), never in the URL, so a copied
    URL grants nothing. Local mode: this browser tab's id, kept in session state and mirrored in the
    URL so a refresh keeps it.
    """
    identity = app_identity.current_identity()
    if identity is not None and not identity.local:
        if SESSION_PARAMETER in st.query_params:
            del st.query_params[SESSION_PARAMETER]
        return app_identity.owner_key(identity)
    if "session_id" not in st.session_state:
        from_url = st.query_params.get(SESSION_PARAMETER, "")
        st.session_state["session_id"] = from_url if _SESSION_ID.fullmatch(from_url) else uuid.uuid4().hex
    identifier = st.session_state["session_id"]
    if st.query_params.get(SESSION_PARAMETER) != identifier:
        st.query_params[SESSION_PARAMETER] = identifier
    return identifier


LOCAL_WORKLIST = "local"


def worklist_owner() -> str:
    """Whose worklist this run shows: the signed-in user's (team mode), else the one worklist of this install.

    Local mode is one reviewer on one machine, so its worklist is the machine's: a restart, a new
    tab or a URL without the session parameter shows the same worklist.
    """
    identity = app_identity.current_identity()
    if identity is not None and not identity.local:
        return app_identity.owner_key(identity)
    return LOCAL_WORKLIST


def workspace_owner() -> str:
    """Whose worklist and typed name a run takes up: the signed-in user's, else this install's (per history).

    Local mode is one reviewer on one machine: a new tab, a bookmark or an address without the
    session parameter finds the reader's name and worklist where they were left.
    """
    owner = worklist_owner()
    return owner if owner != LOCAL_WORKLIST else f"{LOCAL_WORKLIST}@{config.database_url()}"


def reviewer_name() -> str:
    """The reviewer recorded with an event: the signed-in user's name (team mode) or the typed name; empty until known."""
    identity = app_identity.current_identity()
    return identity.display_name if identity is not None else ""


def actor() -> dict[str, str]:
    """The signed-in identity the history records with an event (issuer, subject, email, name, role); {} locally."""
    identity = app_identity.current_identity()
    return identity.actor() if identity is not None else {}


def render_sidebar(status: ModelStatus, identity) -> None:
    """The sidebar every page shares: model status, who is reviewing and the not-for-diagnosis notice."""
    with st.sidebar:
        if status.classifier is not None:
            card = status.classifier.card
            st.markdown(f"**Model** {escape_markdown(card.name)} · version {escape_markdown(card.version)}")
            st.caption(":green[●] loaded")
        else:
            st.markdown("**Model** not loaded")
            st.error(status.error, icon=":material/error:")
        app_identity.render_identity(identity)
        st.warning(NOTICE, icon=":material/info:")


def confusion_heatmap(matrix: list[list[int]], names: list[str], rows: str, columns: str, title: str | None = None,
                      height: int = 240) -> alt.Chart:
    """Heat map of a square count matrix with each cell's count written in it.

    Row i, column j holds matrix[i][j]; `rows` and `columns` title the y and x axes. Counts above
    half the largest are written in white on the darker cells.
    """
    # Vega-Lite field names must not contain quotes (axis titles may), hence the neutral field names.
    frame = pd.DataFrame([{"row": names[row], "column": names[column], "Scans": matrix[row][column]}
                          for row in range(len(names)) for column in range(len(names))])
    base = alt.Chart(frame, title=title or "").encode(
        x=alt.X("column:N", sort=names, title=columns, axis=alt.Axis(labelAngle=0, labelLimit=110)),
        y=alt.Y("row:N", sort=names, title=rows),
    )
    peak = max(1, max(max(row) for row in matrix))
    cells = base.mark_rect().encode(
        color=alt.Color("Scans:Q", scale=alt.Scale(scheme="blues"), legend=None),
        tooltip=[alt.Tooltip("row:N", title=rows), alt.Tooltip("column:N", title=columns), "Scans:Q"],
    )
    text = base.mark_text(fontSize=13).encode(
        text="Scans:Q", color=alt.condition(alt.datum.Scans > peak / 2, alt.value("white"), alt.value("#1a202c")))
    return (cells + text).properties(height=height)


def record_export(file_name: str, data: bytes, description: str) -> None:
    """Download callback: an export is an event too (who exported which file, of what, when)."""
    try:
        open_history().record_export(
            session_id=session_id(), reviewer=reviewer_name() or "(local reviewer)",
            file_name=file_name, sha256=hashlib.sha256(data).hexdigest(), description=description,
            actor=actor())
    except HistoryUnavailable as error:
        st.session_state["history_export_error"] = str(error)
