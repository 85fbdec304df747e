"""core.review.reads: reads per reader, amendment, second reads, adjudication, final labels, Cohen's kappa."""

from __future__ import annotations

import pytest

from core.review.reads import (
    case_state,
    cohen_kappa,
    needs_second_read,
    reader_agreement,
    reader_key,
    reads_of,
    split_reads,
)

ANN = {"actor_issuer": "https://id", "actor_subject": "ann", "actor_name": "Ann", "reviewer": "Ann"}
BOB = {"actor_issuer": "https://id", "actor_subject": "bob", "actor_name": "Bob", "reviewer": "Bob"}
_ids = iter(range(1, 10_000))


def event(kind: str, who: dict | None = None, verdict: str | None = None, final_label: str | None = None) -> dict:
    return {"id": next(_ids), "kind": kind, "verdict": verdict, "final_label": final_label, "note": "",
            "reviewer": "", "actor_issuer": "", "actor_subject": "", **(who or {})}


def test_no_read_is_new_and_a_refused_file_is_rejected():
    assert case_state([event("prediction")]) == ("new", None)
    assert case_state([event("refusal")]) == ("rejected", None)


def test_one_confirm_gives_the_class_and_agreeing_reads_keep_it():
    assert case_state([event("prediction"), event("verdict", ANN, "confirm", "glioma")]) == ("reviewed", "glioma")
    both = [event("verdict", ANN, "confirm", "glioma"), event("verdict", BOB, "override", "glioma")]
    assert case_state(both) == ("reviewed", "glioma")


def test_disagreeing_reads_or_a_flag_await_a_second_read_which_an_adjudication_settles():
    disagree = [event("verdict", ANN, "confirm", "glioma"), event("verdict", BOB, "override", "meningioma")]
    status, label = case_state(disagree)
    assert (status, label) == ("flagged", None) and needs_second_read(status)
    assert case_state([event("verdict", ANN, "flag")]) == ("flagged", None)
    assert case_state([event("verdict", ANN, "confirm", "glioma"), event("verdict", BOB, "flag")]) == ("flagged", None)
    settled = [*disagree, event("adjudication", BOB, None, "meningioma")]
    assert case_state(settled) == ("adjudicated", "meningioma")
    # The latest adjudication counts.
    assert case_state([*settled, event("adjudication", ANN, None, "glioma")]) == ("adjudicated", "glioma")


def test_an_amended_read_replaces_the_readers_earlier_one_not_anyone_elses():
    events = [event("verdict", ANN, "confirm", "glioma"), event("verdict", BOB, "override", "meningioma"),
              event("verdict", BOB, "confirm", "glioma")]
    reads = reads_of(events)
    assert [(read["reader"], read["final_label"], read["amended"]) for read in reads] == [
        (reader_key(ANN), "glioma", 0), (reader_key(BOB), "glioma", 1)]
    assert case_state(events) == ("reviewed", "glioma")


def test_readers_are_issuer_and_subject_when_signed_in_and_the_typed_name_in_local_mode():
    assert reader_key(ANN) != reader_key({**ANN, "actor_issuer": "https://other"})
    assert reader_key({"reviewer": " Dr  Ann "}) == reader_key({"reviewer": "Dr Ann", "actor_subject": ""})
    reads = reads_of([event("verdict", ANN, "confirm", "glioma"), event("verdict", BOB, "flag")])
    own, others = split_reads(reads, reader_key(BOB))
    assert own["verdict"] == "flag" and [read["reader"] for read in others] == [reader_key(ANN)]
    assert split_reads(reads, "\nsomeone")[0] is None


def test_cohen_kappa_matches_the_textbook_figures():
    assert cohen_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)
    # 50 items: 20 yes/yes, 15 no/no, 5 yes/no, 10 no/yes (the usual worked example): kappa 0.4.
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is certain: kappa undefined


def test_reader_agreement_pairs_readers_over_the_scans_both_gave_a_class():
    cases = {
        "s1": reads_of([event("verdict", ANN, "confirm", "glioma"), event("verdict", BOB, "confirm", "glioma")]),
        "s2": reads_of([event("verdict", ANN, "confirm", "pituitary"), event("verdict", BOB, "override", "no_tumor")]),
        "s3": reads_of([event("verdict", ANN, "flag"), event("verdict", BOB, "confirm", "glioma")]),
        "s4": reads_of([event("verdict", ANN, "confirm", "glioma")]),
    }
    [row] = reader_agreement(cases)
    assert row["readers"] == ("Ann", "Bob") and row["scans"] == 2 and row["agreement"] == pytest.approx(0.5)
    assert row["kappa"] == pytest.approx(cohen_kappa(["glioma", "pituitary"], ["glioma", "no_tumor"]))
    assert reader_agreement({"s4": cases["s4"]}) == []
