"""A plain-language summary of a model card for clinicians: what the model was trained on, how often it
is right per class, what it is known to get wrong, and what the gate refuses.

Every sentence is built from figures in the card; a figure the card lacks leaves its sentence out,
never a guess. The Model page shows these lines above the engineering detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def _percent(value: float) -> str:
    """0.975 -> "97.5%", 0.9 -> "90%": one decimal, dropped when it is zero."""
    return f"{100 * float(value):.1f}".removesuffix(".0") + "%"


def _mapping(data: Mapping, key: str) -> Mapping:
    """`data[key]` when it is a mapping, else an empty one: a card's optional section, read safely."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count_matrix(matrix, size: int) -> bool:
    """True for a `size` x `size` list of lists of numbers, as a card's confusion matrix must be."""
    return isinstance(matrix, list) and len(matrix) == size and all(
        isinstance(row, list) and len(row) == size and all(map(_is_number, row)) for row in matrix)


def _count_phrase(count: int, total: int) -> str:
    return f"{count} of {total}"


def plain_summary(data: Mapping, display_names: Mapping[str, str], classes: tuple[str, ...]) -> dict[str, list[str]]:
    """{heading: [sentences]} for the sections "What it is", "How often it is right", "What it gets wrong",
    "What it refuses"; sections with nothing recorded are left out."""
    name = {key: display_names.get(key, key) for key in classes}
    sections: dict[str, list[str]] = {}
    training = data.get("training") or {}
    sources = [source for source in training.get("data") or [] if isinstance(source, Mapping)]
    trained_on = (training.get("split_counts") or {}).get("train")
    images = sum(value for value in trained_on.values() if _is_number(value)) if isinstance(trained_on, Mapping) else 0
    what = ["It reads one 2-D brain MRI slice and gives the probability of "
            + ", ".join(name[key].lower() for key in classes[:-1]) + f" and {name[classes[-1]].lower()}. "
            "It is a review aid, not a diagnosis: it sees no other slice, sequence or patient history."]
    if images:
        folders = ", ".join(str(source.get("folder")) for source in sources if source.get("folder"))
        what.append(f"It learnt from {int(images):,} labelled slices" + (f" of public collections ({folders})"
                    if folders else "") + "; the slices it is measured on below were kept apart from training, "
                    "near-duplicates included.")
    members = member_rows(data)
    if members:
        what.append(f"It is an ensemble of {len(members)} networks that each read the slice; its answer is the "
                    "mean of theirs: " + "; ".join(f"{row['Version']} ({row['Network']}, {row['Input']})"
                                                   for row in members) + ".")
    sections["What it is"] = what

    test = (data.get("metrics") or {}).get("test") or {}
    per_class = test.get("per_class") or {}
    matrix = test.get("confusion_matrix")
    if isinstance(per_class, Mapping) and per_class and _is_number(test.get("n")) and _is_number(test.get("accuracy")):
        right = [f"On {int(test['n']):,} held-out test slices it was right {_percent(float(test['accuracy']))} of "
                 "the time."]
        for key in classes:
            row = per_class.get(key) or {}
            if isinstance(row, Mapping) and _is_number(row.get("recall")) and _is_number(row.get("support")):
                found = round(float(row["recall"]) * int(row["support"]))
                sentence = f"{name[key]}: found {_count_phrase(found, int(row['support']))} ({_percent(row['recall'])})"
                if _is_number(row.get("precision")):
                    sentence += f"; when it says {name[key].lower()}, it is right {_percent(row['precision'])}"
                right.append(sentence + ".")
        sections["How often it is right"] = right
    if is_count_matrix(matrix, len(classes)):
        mistakes = sorted(((matrix[truth][guess], truth, guess) for truth in range(len(classes))
                           for guess in range(len(classes)) if truth != guess and matrix[truth][guess]),
                          reverse=True)[:3]
        wrong = [f"{name[classes[truth]]} read as {name[classes[guess]].lower()}: {_count_phrase(count, sum(matrix[truth]))} "
                 "test slices." for count, truth, guess in mistakes]
        robustness = data.get("robustness") or {}
        accuracy = robustness.get("accuracy") if isinstance(robustness, Mapping) else None
        measured = {key: value for key, value in accuracy.items() if _is_number(value)} \
            if isinstance(accuracy, Mapping) else {}
        if measured:
            worst_name, worst = min(measured.items(), key=lambda item: item[1])
            wrong.append(f"Slices that look as another scanner or export makes them are read less well: at worst "
                         f"({worst_name}) it was right {_percent(worst)} of the time.")
        wrong.append("Any finding outside the four classes (a bleed, a stroke, a metastasis) is forced into one "
                     "of them unless the gate refuses the image.")
        sections["What it gets wrong"] = wrong

    refuses = _refusal_sentences(data.get("ood") or {}, data.get("not_mri_manifest") or {})
    if refuses:
        sections["What it refuses"] = refuses
    return sections


# The real non-MRI categories as a clinician would name them.
CATEGORY_WORDS = {
    "head_ct": "head CT", "ct_body": "body CT", "xray": "X-rays", "ultrasound": "ultrasound",
    "dermoscopy_or_photo": "photographs", "photo_or_dermoscopy": "photographs", "histopathology": "histology slides",
    "spine_or_body_mri": "MRI of the spine, joints or body", "mammography": "mammograms", "drawing": "drawings",
}


def _words(category: str) -> str:
    return CATEGORY_WORDS.get(category, category.replace("_", " "))


def _refusal_sentences(ood: Mapping, not_mri: Mapping) -> list[str]:
    """What the gate refuses and what it learnt that from, in a reader's words, from the card's figures."""
    refuses = []
    evaluation = ood.get("evaluation") or {}
    real = evaluation.get("real_non_mri") or {}
    if isinstance(real, Mapping) and isinstance(real.get("by_category"), Mapping) and _is_number(real.get("flag_rate")):
        parts = [f"{_words(category)} {row['flagged']} of {row['n']}" for category, row in real["by_category"].items()
                 if isinstance(row, Mapping)]
        refuses.append(f"Images that are not brain MRI slices are refused, not classified: of {real.get('n')} real "
                       f"ones from sources it never learnt from, it refused {_percent(real['flag_rate'])} "
                       f"({', '.join(parts)}).")
    if _is_number(evaluation.get("mri_pass_rate")):
        refuses.append(f"It lets {_percent(evaluation['mri_pass_rate'])} of held-out brain MRI slices through; the "
                       "others are refused as 'not recognised' and need a manual read.")
    if isinstance(real, Mapping):
        other = real.get("other_plane_mri") or {}
        if isinstance(other, Mapping) and other.get("n"):
            refuses.append(f"Brain MRI in other planes (sagittal, coronal) from those sources: {other['passed']} of "
                           f"{other['n']} were read, the rest refused.")
    filed = evaluation.get("filed_as_mri") or {}
    left_out = (not_mri.get("left_out_of_the_mri_classes") or {}) if isinstance(not_mri, Mapping) else {}
    total = sum(value for value in left_out.values() if _is_number(value)) if isinstance(left_out, Mapping) else 0
    if total:
        sentence = (f"The public collections file {total} head CT slices as MRI, most under 'no tumour'; they were "
                    "taken out of the MRI classes, so the model did not learn that a CT means no tumour")
        head_ct = filed.get("head_ct") if isinstance(filed, Mapping) else None
        if isinstance(head_ct, Mapping) and head_ct.get("n"):
            sentence += f", and the gate refused {head_ct.get('refused')} of the {head_ct['n']} in the test split"
        refuses.append(sentence + ".")
    if _is_number(evaluation.get("non_mri_flag_rate")):
        refuses.append(f"It refused {_percent(evaluation['non_mri_flag_rate'])} of a synthetic set of photographs, "
                       "documents, drawings and imitations of other scans.")
    head = ood.get("modality_head") or {}
    negatives = ((head.get("training_data") or {}).get("negatives") or {}) if isinstance(head, Mapping) else {}
    if isinstance(negatives, Mapping) and negatives:
        count = sum(row.get("n", 0) for row in negatives.values() if isinstance(row, Mapping))
        kinds = ", ".join(_words(kind) for kind in negatives)
        refuses.append(f"It learnt what is not a brain MRI slice from {count:,} images ({kinds}), and says what a "
                       "refused image looks like when it can tell (a CT image, an X-ray, a photograph, ...).")
    return refuses


def describe_source(source) -> str:
    """One training data source: "folder (N images)" when the card says so, else its fields."""
    if isinstance(source, dict) and "folder" in source:
        return f"{source['folder']} ({source['images']} images)" if "images" in source else str(source["folder"])
    if isinstance(source, dict):
        return ", ".join(f"{key}: {value}" for key, value in source.items())
    return str(source)


def training_commands(training: Mapping) -> list[str]:
    """The commands that produced the weights, earliest first, following `continued_from` links."""
    commands, run, seen = [], training, 0
    while isinstance(run, dict) and seen < 20:  # a hand-edited card must not loop forever
        if run.get("command"):
            commands.append(str(run["command"]))
        run, seen = run.get("continued_from"), seen + 1
    return commands[::-1]


def member_rows(data: Mapping) -> list[dict[str, str]]:
    """An ensemble card's members, one row each (version, network, input side, sha256, figures alone); [] otherwise."""
    architecture = data.get("architecture")
    members = architecture.get("members") if isinstance(architecture, Mapping) else None
    rows = []
    for member in members if isinstance(members, list) else []:
        if not isinstance(member, Mapping):
            continue
        alone = _mapping(member, "alone")
        figures = {split: (alone.get(split) or {}).get("accuracy") for split in ("validation", "test")}
        size = member.get("image_size")
        rows.append({
            "Version": str(member.get("version", "-")),
            "Network": str(member.get("type") or member.get("architecture") or "-"),
            "Input": f"{size} px" if _is_number(size) else "-",
            "sha256": str(member.get("sha256") or "-")[:12],
            "Validation accuracy alone": _percent(figures["validation"]) if _is_number(figures["validation"]) else "-",
            "Test accuracy alone": _percent(figures["test"]) if _is_number(figures["test"]) else "-",
        })
    return rows


def describe_architecture(value) -> str:
    """The card's architecture as one line: "EfficientNet-Lite0 ..., 3,418,148 parameters" (older cards: as is)."""
    if isinstance(value, Mapping):
        parameters = value.get("parameters")
        return str(value.get("type", "-")) + (f", {parameters:,} parameters" if isinstance(parameters, int) else "")
    return str(value)


def gate_facts(ood: Mapping) -> dict[str, str]:
    """The gate's engineering facts for the Model page's table: {measure: value}, from the card's `ood` section."""
    facts: dict[str, str] = {}
    if not ood:
        return facts
    threshold = ood.get("threshold", "-")
    facts["Distance threshold"] = f"{threshold:.1f}" if _is_number(threshold) else str(threshold)
    for key, value in ood.items():
        if isinstance(value, (str, int, float)) and key not in {"file", "sha256", "threshold"}:
            facts[f"Gate: {key.replace('_', ' ')}"] = str(value)
    head = ood.get("modality_head") or {}
    for key in ("method", "threshold_rule"):
        if key in head:
            facts[f"Modality head: {key.replace('_', ' ')}"] = str(head[key])
    negatives = (head.get("training_data") or {}).get("negatives") or {}
    if isinstance(negatives, Mapping) and negatives:
        facts["Modality head: learnt from"] = ", ".join(
            f"{_words(kind)} {row.get('n')}" for kind, row in negatives.items() if isinstance(row, Mapping))
    validation = head.get("cross_validation") or {}
    if isinstance(validation, Mapping) and isinstance(validation.get("by_kind"), Mapping):
        facts["Modality head: refused from sources it never saw (cross-validation)"] = ", ".join(
            f"{_words(kind)} {row.get('refused')}/{row.get('n')}" for kind, row in validation["by_kind"].items())
    evaluation = ood.get("evaluation") or {}
    if "meets_floors" in evaluation:
        facts["Gate floors met (ood-eval)"] = "yes" if evaluation["meets_floors"] else "no"
    return facts



@dataclass(frozen=True)
class ServingSection:
    """The Model page's "How this machine serves it": a sentence (Markdown, no card text in it), the figures
    by the network that produced them, and how often the two networks agree."""

    status: str
    rows: list[dict[str, str]]
    note: str


def serving_section(data: Mapping, precision: str) -> ServingSection | None:
    """Which network answers here and what it measured, or None when the card names no int8 network and
    records no served figures."""
    serving = _mapping(data, "serving")
    if not serving and not isinstance(data.get("served_metrics"), Mapping):
        return None
    if precision == "int8":
        status = ("The answers come from the **int8 network** the card names (8-bit arithmetic), which this machine "
                  "reproduces exactly as it was recorded. The figures above are the full-precision network's; the "
                  "table below gives both as served.")
    elif serving.get("precision") == "int8":
        status = ("The card names an int8 network, but this machine serves the **full-precision (f32)** network: its "
                  "processor does not reproduce the int8 network's recorded answers (or it was switched off with "
                  "BRAINSCAN_PRECISION=f32). The figures above are the ones that apply.")
    else:
        status = "The answers come from the **full-precision (f32)** network."
    validation = _mapping(serving, "validation")
    same, f32 = validation.get("same_class"), validation.get("f32")
    note = (f"On validation the two networks give the same class on {same} of {f32['n']:.0f} slices."
            if _is_number(same) and isinstance(f32, Mapping) and _is_number(f32.get("n")) else "")
    return ServingSection(status, serving_rows(data), note)


def _serving_row(network, split: str, figures: Mapping, lowest: str, command) -> dict[str, str]:
    number = lambda value, style: style.format(value) if _is_number(value) else "-"  # noqa: E731
    return {"Network": str(network), "Split": split, "Scans": number(figures.get("n"), "{:.0f}"),
            "Accuracy": number(figures.get("accuracy"), "{:.1%}"), "Macro F1": number(figures.get("macro_f1"), "{:.3f}"),
            "ECE": number(figures.get("ece"), "{:.3f}"), "Lowest class recall": lowest,
            "Measured by": str(command or "not recorded in the card")}


def serving_rows(data: Mapping) -> list[dict[str, str]]:
    """Rows of figures by the network that produced them: quantize's validation figures of f32 and int8, then
    each split recorded as served (`evaluate --write-card`), with its lowest class recall."""
    serving = _mapping(data, "serving")
    served = _mapping(data, "served_metrics")
    names = _mapping(data, "display_names")
    validation = _mapping(serving, "validation")
    rows = [_serving_row(name, "validation", validation[name], "-", serving.get("command"))
            for name in ("f32", "int8") if isinstance(validation.get(name), Mapping)]
    for split in ("validation", "test"):
        figures = served.get(split)
        if not isinstance(figures, Mapping):
            continue
        recall = _mapping(figures, "recall")
        lowest = min(((value, name) for name, value in recall.items() if _is_number(value)), default=None)
        shown = "-" if lowest is None else f"{lowest[0]:.3f} ({names.get(lowest[1], lowest[1])})"
        rows.append(_serving_row(figures.get("precision", "-"), split, figures, shown, figures.get("command")))
    return rows


def robustness_rows(robustness: Mapping) -> list[dict[str, str]]:
    """The Model page's robustness table: accuracy as exported, then under each condition with its change."""
    clean = robustness.get("clean_accuracy")
    accuracy = _mapping(robustness, "accuracy")
    shown = lambda value: f"{100 * value:.1f}%" if _is_number(value) else "-"  # noqa: E731
    rows = [{"Condition": "as exported", "Accuracy": shown(clean), "Change": ""}]
    for name, value in accuracy.items():
        if _is_number(value):
            rows.append({"Condition": str(name), "Accuracy": shown(value),
                         "Change": f"{(value - clean) * 100:+.1f} points" if _is_number(clean) else "-"})
    return rows
