"""The Model page's plain-language summary (core.model.summary) says only what the card's figures say."""

from __future__ import annotations

from core.classes import CLASS_NAMES, DISPLAY_NAMES
from core.model.summary import plain_summary, training_commands

CARD = {
    "training": {"data": [{"folder": "set-a", "images": 900}, {"folder": "set-b", "images": 100}]},
    "metrics": {"test": {
        "n": 200, "accuracy": 0.9,
        "per_class": {"glioma": {"recall": 0.96, "precision": 0.9, "support": 50},
                      "meningioma": {"recall": 0.8, "precision": 0.95, "support": 50},
                      "pituitary": {"recall": 1.0, "precision": 0.85, "support": 50},
                      "no_tumor": {"recall": 0.84, "precision": 0.91, "support": 50}},
        "confusion_matrix": [[48, 1, 1, 0], [3, 40, 7, 0], [0, 0, 50, 0], [2, 5, 1, 42]],
    }},
    "robustness": {"accuracy": {"gamma 0.6": 0.93, "resolution 64 px": 0.88}},
    "ood": {"evaluation": {"mri_pass_rate": 0.975, "non_mri_flag_rate": 0.99, "real_non_mri": {
        "flag_rate": 0.96, "by_category": {"head_ct": {"n": 25, "flagged": 24}, "xray": {"n": 22, "flagged": 22}},
        "other_plane_mri": {"n": 25, "passed": 23}}}},
}


def summary(card=CARD):
    return plain_summary(card, DISPLAY_NAMES, CLASS_NAMES)


def test_the_summary_gives_each_class_as_found_of_total_from_the_confusion_figures():
    right = summary()["How often it is right"]
    assert right[0] == "On 200 held-out test slices it was right 90% of the time."
    assert "Meningioma: found 40 of 50 (80%); when it says meningioma, it is right 95%." in right
    assert "Pituitary tumour: found 50 of 50 (100%); when it says pituitary tumour, it is right 85%." in right


def test_the_main_mistakes_are_the_largest_off_diagonal_counts():
    wrong = summary()["What it gets wrong"]
    assert wrong[0] == "Meningioma read as pituitary tumour: 7 of 50 test slices."
    assert wrong[1] == "No tumour read as meningioma: 5 of 50 test slices."
    assert any("resolution 64 px" in line and "88%" in line for line in wrong)


def test_the_gate_section_reports_real_images_per_category_and_other_planes_as_read():
    refuses = summary()["What it refuses"]
    assert any("97.5% of held-out brain MRI" in line for line in refuses)
    assert any("head ct 24 of 25" in line and "xray 22 of 22" in line for line in refuses)
    assert any("23 of 25 passed" in line for line in refuses)


def test_a_card_without_figures_gives_no_invented_sentence():
    sections = summary({})
    assert list(sections) == ["What it is"]
    assert "learnt from" not in " ".join(sections["What it is"])


def test_training_commands_follow_the_continuation_chain_earliest_first():
    training = {"command": "third", "continued_from": {"command": "second", "continued_from": {"command": "first"}}}
    assert training_commands(training) == ["first", "second", "third"]
