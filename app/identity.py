"""Who is using the app and what is theirs: local mode or team sign-in, the gate every page passes, the workspace.

Two modes. **Local mode** (no `[auth]` section in `.streamlit/secrets.toml`): one reviewer on this
computer types a name; the app listens on 127.0.0.1 only (`make run`). **Team mode** (an `[auth]`
section): OpenID Connect sign-in through Streamlit's own `st.login` / `st.user`; the identity is
the ID token's (`iss`, `sub`, `email`, `name`) and roles come from a claim or the roles file
(`core.review.identity`). Nothing here reads identity from session state or query parameters,
which a browser can write.

`sign_in_state()` is the one place identity enters the app. AppTests (which run the script in
the test's own process) replace it with `monkeypatch.setattr(app.identity, "sign_in_state", ...)`;
that is test-only, and a browser has no way to reach it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.markup import escape_markdown
from core import config
from core.review.identity import (
    ROLE_NAMES,
    Identity,
    RolesFileError,
    identity_from_claims,
    is_expired,
    load_roles_file,
    local_identity,
    roles_claim_name,
    roles_file_path,
)
from core.review.records import VerdictRejected

# What a reviewer's worklist is made of; kept per owner for the life of the server process, so a
# reload (a new Streamlit session) finds it again, pictures included.
WORKSPACE_KEYS = ("review_items", "review_digests", "review_unrecorded", "review_heatmaps", "review_current",
                  "review_dicom_headers", "review_uploader_generation", "reviewer_name")


@dataclass(frozen=True)
class SignIn:
    """The mode, and in team mode the signed-in user's ID-token claims (None: nobody signed in)."""

    team: bool
    claims: dict | None = None


@functools.lru_cache(maxsize=1)
def _secrets_paths() -> tuple[Path, ...]:
    # Read once per process: Streamlit fixes its options when the server starts, and st.get_option costs
    # about 0.08 ms, which one upload's reruns paid some sixty times over through the identity checks.
    return tuple(Path(path) for path in (st.get_option("secrets.files") or []))


def _secrets_files() -> list[Path]:
    """The secrets files Streamlit reads (`secrets.files`) that exist on this machine (checked on every call)."""
    return [path for path in _secrets_paths() if path.is_file()]


def _declared_team() -> bool:
    """BRAINSCAN_MODE=team: this is a team's deployment, so sign-in or nothing, whatever the secrets say."""
    return os.environ.get("BRAINSCAN_MODE", "").strip().lower() == "team"


def _auth_configured() -> bool:
    """Team mode: an [auth] section, a secrets file that exists but cannot be read, or BRAINSCAN_MODE=team.

    Every doubt fails closed: Streamlit answers a secrets file that does not parse with "not loaded",
    and taking that for "no secrets" would give every visitor local mode, in which one reviewer
    holds every role.
    """
    if _declared_team():
        return True
    if not _secrets_files():
        return False
    try:
        return not st.secrets.load_if_toml_exists() or "auth" in st.secrets
    except Exception:
        return True


def sign_in_state() -> SignIn:
    """Local mode, or team mode with the signed-in user's claims from `st.user` (the one source of identity)."""
    if not _auth_configured():
        return SignIn(team=False)
    if not st.user.is_logged_in:
        return SignIn(team=True)
    return SignIn(team=True, claims=dict(st.user.to_dict()))


def team_mode() -> bool:
    """True when the app signs reviewers in (an `[auth]` section is configured)."""
    return sign_in_state().team


@st.cache_resource(show_spinner=False, max_entries=4)
def _roles_file(path: str, stamp: tuple[int, int]) -> dict:
    return load_roles_file(Path(path))


def _roles_mapping() -> dict | None:
    path = roles_file_path()
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        stat = None
    return _roles_file(str(path), (stat.st_mtime_ns, stat.st_size) if stat else (0, 0))


def current_identity() -> Identity | None:
    """The user of this run: the typed name in local mode; the signed-in user in team mode (None: not signed in)."""
    state = sign_in_state()
    if not state.team:
        return local_identity(st.session_state.get("reviewer_name") or "")
    if state.claims is None:
        return None
    return identity_from_claims(state.claims, roles_claim_name(), _roles_mapping())


def acting_identity(role: str | None = None) -> Identity:
    """The user a button callback records an event for, checked as the gate checks; raises `VerdictRejected`.

    Streamlit runs callbacks before the page's script, and so before `gate()`: a page left open
    after the token expired, or after a role was withdrawn, must not still save in that name.
    """
    try:
        identity = current_identity()
    except RolesFileError as error:
        raise VerdictRejected(f"sign-in is misconfigured ({error})") from None
    if identity is None:
        raise VerdictRejected("you are not signed in; reload the page and sign in")
    if identity.local:
        return identity
    if is_expired(identity, time.time()):
        raise VerdictRejected("your sign-in has expired; reload the page and sign in again")
    if not identity.roles or (role is not None and not identity.has(role)):
        raise VerdictRejected("your account's role does not allow this")
    return identity


def gate() -> Identity | None:
    """Every page's entry check: the user, or None after drawing the sign-in / no-access page (draw nothing else)."""
    try:
        identity = current_identity()
    except RolesFileError as error:
        st.title("BrainScan Review")
        st.error(f"**Sign-in is misconfigured**: {error}. Ask the administrator to fix it.", icon=":material/error:")
        return None
    if identity is None:
        _sign_in_page()
        return None
    if identity.local:
        return identity
    if is_expired(identity, time.time()):
        # Streamlit keeps its identity cookie for 30 days whatever the token says: the token's own expiry wins.
        st.logout()
        return None
    if not identity.roles:
        _no_access_page(identity)
        return None
    return identity


def _secrets_problem() -> str | None:
    """Why sign-in cannot start (unreadable secrets, or a declared team without [auth]); None when it can."""
    try:
        loaded = bool(_secrets_files()) and st.secrets.load_if_toml_exists()
        has_auth = loaded and "auth" in st.secrets
    except Exception as error:
        return f"the sign-in settings (.streamlit/secrets.toml) cannot be read ({type(error).__name__})"
    if _secrets_files() and not loaded:
        return "the sign-in settings (.streamlit/secrets.toml) cannot be read"
    if _declared_team() and not has_auth:
        return "BRAINSCAN_MODE=team, but no [auth] section is configured in .streamlit/secrets.toml"
    return None


def _sign_in_page() -> None:
    st.title("BrainScan Review")
    problem = _secrets_problem()
    if problem:
        st.error(f"**Sign-in cannot start**: {problem}. Ask the administrator to fix it.", icon=":material/error:")
        return
    st.markdown("Sign in with your organisation's account to review scans.")
    st.button("Sign in", type="primary", icon=":material/login:", key="sign_in", on_click=st.login)


def _no_access_page(identity: Identity) -> None:
    st.title("No access")
    st.error(f"You are signed in as **{_plain(identity.email or identity.display_name)}**, but your account has no "
             "role in BrainScan Review. Ask an administrator to give you the reviewer, second reader or admin role.",
             icon=":material/block:")
    st.button("Sign out", icon=":material/logout:", key="no_access_sign_out", on_click=st.logout)


def render_identity(identity: Identity) -> None:
    """The sidebar's who-am-I: the typed name in local mode, the signed-in user and a sign-out button in team mode."""
    if identity.local:
        address = str(st.get_option("server.address") or "")
        if config.team_demonstration():
            st.caption(":material/groups: Team set-up without sign-in, for a demonstration (`make team`): one shared "
                       "history and scan archive behind several replicas; names are typed, not signed in.")
        elif address in ("127.0.0.1", "localhost", "::1"):
            st.caption(":material/lock: Single-reviewer local mode: only this computer can reach the app.")
        else:
            st.warning(f"Single-reviewer local mode, listening on {_plain(address or 'every interface')}: anyone who "
                       "can reach this computer can review under any name. Use team mode for a team.",
                       icon=":material/warning:")
        st.text_input("Reviewer name", key="reviewer_name", max_chars=80, placeholder="Your name",
                      help="Kept while the app runs; recorded with every verdict you save.")
        # The field's own value, not `identity`'s: after a reload the name is restored into the field
        # during this run, after the identity was read, and the hint must not sit beside a filled name.
        if not str(st.session_state.get("reviewer_name") or "").strip():
            st.caption("Enter your name to save verdicts.")
        return
    st.markdown(f"**Signed in** {_plain(identity.display_name)}")
    st.caption(f"{_plain(identity.email)} · {', '.join(ROLE_NAMES[role] for role in identity.roles)}")
    st.button("Sign out", icon=":material/logout:", key="sign_out", on_click=st.logout)


def _plain(text: str) -> str:
    return escape_markdown(text)


def owner_key(identity: Identity) -> str:
    """A 32-hex-digit key of a signed-in user's worklist and history session (a hash of issuer and subject)."""
    return hashlib.sha256(identity.key.encode("utf-8")).hexdigest()[:32]


@st.cache_resource(show_spinner=False)
def _workspaces() -> dict[str, dict]:
    # Per server process, like Streamlit's own media store: a restart empties worklists, never the history.
    return {}


def restore_workspace(owner: str) -> None:
    """At the start of a run: a new session (a reload) takes up its owner's worklist where it was left."""
    if st.session_state.get("workspace_owner") == owner:
        return
    for name in WORKSPACE_KEYS:  # Another owner's worklist (a sign-out and in) never carries over.
        if name != "reviewer_name":
            st.session_state.pop(name, None)
    for name, value in _workspaces().get(owner, {}).items():
        st.session_state[name] = value
    st.session_state["workspace_owner"] = owner


def keep_workspace(owner: str) -> None:
    """At the end of a run: remember this owner's worklist (the same objects, not copies) for a later session."""
    _workspaces()[owner] = {name: st.session_state[name] for name in WORKSPACE_KEYS if name in st.session_state}
