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
    assert any("head CT 24 of 25" in line and "X-rays 22 of 22" in line for line in refuses)
    assert any("23 of 25 were read" in line for line in refuses)


def test_a_card_without_figures_gives_no_invented_sentence():
    sections = summary({})
    assert list(sections) == ["What it is"]
    assert "learnt from" not in " ".join(sections["What it is"])


def test_training_commands_follow_the_continuation_chain_earliest_first():
    training = {"command": "third", "continued_from": {"command": "second", "continued_from": {"command": "first"}}}
    assert training_commands(training) == ["first", "second", "third"]


def card_with_gate_figures() -> dict:
    return {
        "ood": {
            "evaluation": {
                "mri_pass_rate": 0.9812, "mri_n": 1327,
                "filed_as_mri": {"head_ct": {"n": 19, "refused": 19}},
                "non_mri_flag_rate": 1.0,
                "real_non_mri": {"n": 132, "flagged": 130, "flag_rate": 130 / 132, "by_category": {
                    "head_ct": {"n": 25, "flagged": 25}, "dermoscopy_or_photo": {"n": 14, "flagged": 14}},
                    "other_plane_mri": {"n": 25, "passed": 23}},
            },
            "modality_head": {"training_data": {"negatives": {"head_ct": {"n": 420}, "xray": {"n": 86}}}},
        },
        "not_mri_manifest": {"left_out_of_the_mri_classes": {"train": 75, "validation": 28, "test": 19}},
    }


def test_what_it_refuses_names_the_kinds_and_the_head_ct_the_collections_file_as_mri():
    sentences = summary(card_with_gate_figures())["What it refuses"]
    text = " ".join(sentences)
    assert "head CT 25 of 25" in text and "photographs 14 of 14" in text and "98.5%" in text
    assert "98.1% of held-out brain MRI slices" in text
    assert "file 122 head CT slices as MRI" in text and "refused 19 of the 19 in the test split" in text
    assert "from 506 images (head CT, X-rays)" in text
    assert "23 of 25 were read" in text
    # Engineering names stay off this part of the page.
    assert "core." not in text and "_" not in text


def test_a_card_without_gate_figures_says_nothing_about_refusals():
    assert "What it refuses" not in summary({})


def test_an_ensemble_card_names_its_networks_and_each_ones_figures_alone():
    from core.model.summary import member_rows

    card = dict(CARD, architecture={"name": "ensemble", "members": [
        {"version": "2.2.0", "type": "EfficientNet-Lite0", "image_size": 160, "sha256": "ab" * 32,
         "alone": {"validation": {"accuracy": 0.975}, "test": {"accuracy": 0.96}}},
        {"version": "1.2.0", "type": "residual CNN from scratch", "image_size": 128, "sha256": "cd" * 32,
         "alone": {"validation": {"accuracy": 0.97}}},
        "not a member"]})
    rows = member_rows(card)
    assert [row["Version"] for row in rows] == ["2.2.0", "1.2.0"]
    assert rows[0]["Input"] == "160 px" and rows[0]["sha256"] == "ab" * 6
    assert (rows[0]["Test accuracy alone"], rows[1]["Test accuracy alone"]) == ("96%", "-")
    assert summary(card)["What it is"][-1] == (
        "It is an ensemble of 2 networks that each read the slice; its answer is the mean of theirs: "
        "2.2.0 (EfficientNet-Lite0, 160 px); 1.2.0 (residual CNN from scratch, 128 px).")
    assert member_rows(CARD) == [] and not any("ensemble" in line for line in summary()["What it is"])


def test_the_serving_section_is_absent_without_an_int8_network_and_says_which_network_answers():
    from core.model.summary import serving_section

    assert serving_section({"metrics": {}}, "f32") is None
    card = {"serving": {"precision": "int8", "validation": {"f32": {"n": 10, "accuracy": 0.9}, "same_class": 9}}}
    served = serving_section(card, "int8")
    assert "**int8 network**" in served.status and served.note.endswith("same class on 9 of 10 slices.")
    assert [row["Network"] for row in served.rows] == ["f32"] and served.rows[0]["Accuracy"] == "90.0%"
    assert "**full-precision (f32)**" in serving_section(card, "f32").status
