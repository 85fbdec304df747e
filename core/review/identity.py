"""Who is reviewing and what they may do: ID-token claims (plus an optional roles file) mapped to roles.

Plain functions over plain values, no Streamlit and no network. The app's sign-in (app/identity.py,
Streamlit's `st.login` / `st.user`) hands the signed-in user's ID-token claims here; nothing here
ever reads session state or query parameters, which a browser can write.

Roles (as MONAI Label's reviewer / annotator / admin):

| role            | may                                                                          |
| --------------- | ---------------------------------------------------------------------------- |
| `reviewer`      | upload, read scans, save and amend their own reads, export their own reads   |
| `second_reader` | also work the second-read queue, see every read of a scan, adjudicate        |
| `admin`         | also see every read and event, export everything, see the tamper check       |

Roles come from the ID-token claim named by `BRAINSCAN_ROLES_CLAIM` (default `roles`; a list or
a space- or comma-separated string), else from the roles file named by `BRAINSCAN_ROLES_FILE`
(TOML: a `[roles]` table mapping an e-mail address to a list of roles), used only for an e-mail
address the provider did not mark unverified. Unknown role names are ignored; a user with no
known role has no access. The audit actor is the token's issuer plus subject (OpenID Connect
Core 1.0 section 5.7): e-mail addresses and names change and may be reassigned.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROLES: tuple[str, ...] = ("reviewer", "second_reader", "admin")
ROLE_NAMES: dict[str, str] = {"reviewer": "Reviewer", "second_reader": "Second reader", "admin": "Admin"}
DEFAULT_ROLES_CLAIM = "roles"
# The issuer recorded for the single reviewer of local mode, who types a name and signs in nowhere.
LOCAL_ISSUER = ""


class RolesFileError(ValueError):
    """The roles file cannot be read or is not a `[roles]` table of e-mail address -> list of roles."""


@dataclass(frozen=True)
class Identity:
    """A reviewer: issuer + subject identify them; e-mail and name are as the provider gave them at sign-in."""

    issuer: str
    subject: str
    email: str = ""
    name: str = ""
    roles: tuple[str, ...] = ()
    expires_at: float | None = None  # the ID token's `exp` (seconds since the epoch), None when it had none
    local: bool = field(default=False)

    @property
    def role(self) -> str:
        """The highest of the user's roles ("" when none), as recorded with each event."""
        return next((role for role in reversed(ROLES) if role in self.roles), "")

    @property
    def display_name(self) -> str:
        """The name shown and recorded as `reviewer`: the token's name, else its e-mail, else its subject."""
        return self.name or self.email or self.subject

    @property
    def key(self) -> str:
        """A stable, unique key of this reviewer: issuer and subject (local mode: the typed name)."""
        return f"{self.issuer}\n{self.subject}"

    def has(self, role: str) -> bool:
        """True when the user holds `role` or a role above it (admin > second_reader > reviewer)."""
        return role in ROLES and any(ROLES.index(held) >= ROLES.index(role) for held in self.roles if held in ROLES)

    @property
    def sees_every_read(self) -> bool:
        """Second readers and admins see every read of a scan, with its reader and note."""
        return self.has("second_reader")

    @property
    def adjudicates(self) -> bool:
        """Second readers and admins work the second-read queue."""
        return self.has("second_reader")

    @property
    def is_admin(self) -> bool:
        """Admins see every event, export everything and see the audit."""
        return self.has("admin")

    def actor(self) -> dict[str, str]:
        """The fields the history records for this identity (`actor=` of the store's record_* methods)."""
        if self.local:
            return {}
        return {"issuer": self.issuer, "subject": self.subject, "email": self.email, "name": self.name,
                "role": self.role}


def roles_claim_name() -> str:
    """The ID-token claim holding roles: BRAINSCAN_ROLES_CLAIM, default `roles`."""
    return os.environ.get("BRAINSCAN_ROLES_CLAIM", "").strip() or DEFAULT_ROLES_CLAIM


def roles_file_path() -> Path | None:
    """The roles file named by BRAINSCAN_ROLES_FILE, or None."""
    value = os.environ.get("BRAINSCAN_ROLES_FILE", "").strip()
    return Path(value).expanduser() if value else None


def parse_roles_file(text: str) -> dict[str, tuple[str, ...]]:
    """A roles file's TOML text as {lower-case e-mail: roles}; raise `RolesFileError` saying what is wrong."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RolesFileError(f"the roles file is not valid TOML ({error})") from None
    table = document.get("roles")
    if not isinstance(table, Mapping):
        raise RolesFileError("the roles file needs a [roles] table mapping an e-mail address to a list of roles")
    mapping: dict[str, tuple[str, ...]] = {}
    for email, roles in table.items():
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise RolesFileError(f"the roles of {email!r} must be a list of role names")
        mapping[str(email).strip().lower()] = known_roles(roles)
    return mapping


def load_roles_file(path: Path) -> dict[str, tuple[str, ...]]:
    """Read and parse a roles file; raise `RolesFileError` when it is missing or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RolesFileError(f"the roles file {path} cannot be read ({error.strerror or error})") from None
    return parse_roles_file(text)


def known_roles(values: Iterable[str]) -> tuple[str, ...]:
    """The known role names among `values`, in `ROLES` order, without repeats."""
    wanted = {str(value).strip() for value in values}
    return tuple(role for role in ROLES if role in wanted)


def roles_from_claims(claims: Mapping, claim_name: str = DEFAULT_ROLES_CLAIM,
                      roles_file: Mapping[str, Iterable[str]] | None = None) -> tuple[str, ...]:
    """The user's roles: from the claim `claim_name` when the token has it, else from the roles file by a verified e-mail."""
    value = claims.get(claim_name)
    if value is not None:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, (list, tuple)):
            return known_roles(str(item) for item in value)
        return ()
    email = str(claims.get("email") or "").strip().lower()
    # Only an address the provider vouches for: some providers (Microsoft Entra ID among them) send no
    # email_verified and let users edit their e-mail, so a missing flag must not count as verified.
    if not email or roles_file is None or claims.get("email_verified") is not True:
        return ()
    return known_roles(roles_file.get(email, ()))


def identity_from_claims(claims: Mapping, claim_name: str = DEFAULT_ROLES_CLAIM,
                         roles_file: Mapping[str, Iterable[str]] | None = None) -> Identity:
    """The identity an ID token's claims name (`iss`, `sub`, `email`, `name`, `exp`), with its roles."""
    expires = claims.get("exp")
    try:
        expires_at = float(expires) if expires is not None else None
    except (TypeError, ValueError):
        expires_at = 0.0  # An `exp` that is not a number is treated as expired, never as "no expiry".
    return Identity(
        issuer=str(claims.get("iss") or ""), subject=str(claims.get("sub") or ""),
        email=str(claims.get("email") or ""), name=str(claims.get("name") or ""),
        roles=roles_from_claims(claims, claim_name, roles_file), expires_at=expires_at,
    )


def is_expired(identity: Identity, now: float) -> bool:
    """True when the ID token's `exp` has passed (Streamlit itself ignores it and keeps its cookie 30 days)."""
    return identity.expires_at is not None and identity.expires_at <= now


def local_identity(name: str) -> Identity:
    """The single reviewer of local mode: the typed name, every role (nobody else can reach a loopback app)."""
    name = " ".join(str(name or "").split())
    return Identity(issuer=LOCAL_ISSUER, subject=name, name=name, roles=ROLES, local=True)
