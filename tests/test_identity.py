"""core.review.identity: ID-token claims and the roles file mapped to roles; expiry; the recorded actor."""

from __future__ import annotations

import pytest

from core.review.identity import (
    Identity,
    RolesFileError,
    identity_from_claims,
    is_expired,
    load_roles_file,
    local_identity,
    parse_roles_file,
    roles_from_claims,
)

ROLES_FILE = """
[roles]
"Ann@Example.org" = ["reviewer"]
"sam@example.org" = ["second_reader", "reviewer"]
"root@example.org" = "admin"
"odd@example.org" = ["surgeon"]
"""


def test_roles_come_from_the_claim_as_a_list_or_a_string_and_unknown_names_are_dropped():
    assert roles_from_claims({"roles": ["reviewer", "surgeon"]}) == ("reviewer",)
    assert roles_from_claims({"roles": "admin reviewer"}) == ("reviewer", "admin")
    assert roles_from_claims({"roles": "second_reader,reviewer"}) == ("reviewer", "second_reader")
    assert roles_from_claims({"groups": ["admin"]}, claim_name="groups") == ("admin",)
    assert roles_from_claims({"roles": 7}) == ()
    assert roles_from_claims({}) == ()


def test_the_claim_wins_over_the_roles_file_which_matches_verified_email_case_insensitively():
    mapping = parse_roles_file(ROLES_FILE)
    assert mapping["ann@example.org"] == ("reviewer",)
    verified = {"email_verified": True}
    assert roles_from_claims({"email": "ANN@example.org", **verified}, roles_file=mapping) == ("reviewer",)
    assert roles_from_claims({"email": "root@example.org", **verified}, roles_file=mapping) == ("admin",)
    assert roles_from_claims({"email": "odd@example.org", **verified}, roles_file=mapping) == ()
    assert roles_from_claims({"email": "nobody@example.org", **verified}, roles_file=mapping) == ()
    # An address the provider has not verified could be anyone's, and so could one it says nothing about
    # (some providers let users edit their e-mail and send no email_verified).
    assert roles_from_claims({"email": "root@example.org", "email_verified": False}, roles_file=mapping) == ()
    assert roles_from_claims({"email": "root@example.org"}, roles_file=mapping) == ()
    # A token that carries the claim is not topped up from the file.
    assert roles_from_claims({"email": "root@example.org", "roles": []}, roles_file=mapping) == ()


def test_a_malformed_or_missing_roles_file_is_refused_saying_why(tmp_path):
    with pytest.raises(RolesFileError, match="not valid TOML"):
        parse_roles_file("[roles\n")
    with pytest.raises(RolesFileError, match=r"\[roles\] table"):
        parse_roles_file("admins = []")
    with pytest.raises(RolesFileError, match="list of role names"):
        parse_roles_file("[roles]\n'a@b.c' = 3")
    with pytest.raises(RolesFileError, match="cannot be read"):
        load_roles_file(tmp_path / "missing.toml")
    path = tmp_path / "roles.toml"
    path.write_text(ROLES_FILE)
    assert load_roles_file(path)["sam@example.org"] == ("reviewer", "second_reader")


def test_identity_from_claims_records_issuer_and_subject_and_the_highest_role():
    claims = {"iss": "https://id.example.org", "sub": "u-1", "email": "sam@example.org", "name": "Sam Second",
              "roles": ["reviewer", "second_reader"], "exp": 2_000}
    identity = identity_from_claims(claims)
    assert identity.role == "second_reader"
    assert identity.actor() == {"issuer": "https://id.example.org", "subject": "u-1", "email": "sam@example.org",
                                "name": "Sam Second", "role": "second_reader"}
    assert identity.sees_every_read and identity.adjudicates and not identity.is_admin
    assert identity.display_name == "Sam Second"
    assert not is_expired(identity, now=1_999.0) and is_expired(identity, now=2_000.0)
    assert is_expired(identity_from_claims({**claims, "exp": "soon"}), now=0.0)
    assert not is_expired(identity_from_claims({"sub": "x"}), now=1e12)


def test_roles_rank_admin_over_second_reader_over_reviewer():
    reviewer = Identity("i", "s", roles=("reviewer",))
    admin = Identity("i", "s", roles=("admin",))
    nobody = Identity("i", "s")
    assert reviewer.has("reviewer") and not reviewer.has("second_reader") and not reviewer.sees_every_read
    assert admin.has("reviewer") and admin.has("second_reader") and admin.is_admin
    assert nobody.role == "" and not nobody.has("reviewer")


def test_the_local_reviewer_is_the_typed_name_with_every_role_and_no_signed_in_actor():
    local = local_identity("  Dr  Ann ")
    assert local.display_name == "Dr Ann" and local.is_admin and local.local
    assert local.actor() == {}
