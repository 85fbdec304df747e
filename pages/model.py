"""Model: the loaded model's card - classes, input contract, training data, metrics, calibration, limits.

Every section but the header reads optional card keys and says "not recorded" when one is absent,
so an older or partial card still renders.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import support as app_support
from core.model.summary import (
    describe_architecture,
    describe_source,
    gate_facts,
    is_count_matrix,
    member_rows,
    plain_summary,
    robustness_rows,
    serving_section,
    training_commands,
)

NOT_RECORDED = "not recorded in the card"


def _text(value) -> str:
    return app_support.escape_markdown(str(value))


def _number(value, style: str = "{:.3f}") -> str:
    return style.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _section(title: str) -> None:
    st.subheader(title, divider="gray")


def render_overview(data: dict, card) -> None:
    """Name, version, intended use and limitations: what a reviewer must know first."""
    st.title(f"{card.name} · version {card.version}")
    st.caption(f"Model file {data.get('model_file', card.model_path.name)} · "
               f"sha256 {str(data.get('model_sha256', ''))[:12]}…")
    members = member_rows(data)
    if members:
        _section("The networks in this model")
        st.caption("An ensemble: every scan is read by each network below, and the model's answer (and its heat "
                   "map) is the mean of theirs. Each network's accuracy alone was measured on the same splits.")
        st.dataframe(pd.DataFrame(members), hide_index=True, key="model_members")
    _section("Intended use")
    st.markdown(_text(data["intended_use"]) if data.get("intended_use") else NOT_RECORDED)
    _section("Limitations")
    limitations = data.get("limitations") or []
    if isinstance(limitations, str):
        limitations = [limitations]
    st.markdown("\n".join(f"- {_text(item)}" for item in limitations) if limitations else NOT_RECORDED)


def render_summary(data: dict, card) -> None:
    """The plain-language summary for clinicians, built from the card's own figures."""
    try:
        sections = plain_summary(data, card.display_names, card.classes)
    except Exception as error:  # A card the summary cannot read must not hide the rest of the page.
        st.caption(f"No plain-language summary: the card could not be read for it ({type(error).__name__}).")
        return
    columns = st.columns(2, gap="large")
    for index, (heading, sentences) in enumerate(sections.items()):
        with columns[index % 2]:
            st.markdown(f"**{heading}**\n" + "\n".join(f"- {_text(sentence)}" for sentence in sentences))


def render_contract(data: dict, card) -> None:
    """Class order and display names, and the input the model expects."""
    _section("Classes and input")
    left, right = st.columns(2, gap="large")
    left.dataframe(pd.DataFrame({"Output": range(len(card.classes)), "Class": list(card.classes),
                                 "Shown as": [card.display_names.get(name, name) for name in card.classes]}),
                   hide_index=True, key="model_classes")
    contract = data.get("input") or {}
    facts = {"Image size": f"{contract['image_size']} × {contract['image_size']} pixels"
             if "image_size" in contract else "-",
             "Colour": contract.get("color_mode", "-"), "Value range": contract.get("value_range", "-"),
             "Preprocessing": contract.get("preprocessing", "-"), "Output": data.get("output", "-"),
             "Architecture": describe_architecture(data.get("architecture", "-"))}
    # A list rather than a table: the preprocessing and architecture texts are long and must wrap.
    right.markdown("\n".join(f"- **{name}**: {_text(_flat(value))}" for name, value in facts.items()))


def _flat(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key.replace('_', ' ')}: {_flat(item)}" for key, item in value.items())
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def render_training(data: dict) -> None:
    """Training data, the split and the command that produced the model."""
    _section("Training data and split")
    training = data.get("training") or {}
    if not training:
        st.markdown(NOT_RECORDED)
        return
    sources = training.get("data") or []
    if isinstance(sources, (str, dict)):
        sources = [sources]
    st.markdown("**Data**: " + (", ".join(_text(describe_source(source)) for source in sources) if sources else NOT_RECORDED))
    if training.get("split_manifest"):
        st.markdown(f"**Split manifest**: {_text(training['split_manifest'])}")
    if training.get("split_rule"):
        st.markdown(f"**Split rule**: {_text(training['split_rule'])}")
    counts = training.get("split_counts") or {}
    if counts and all(isinstance(value, dict) for value in counts.values()):
        st.dataframe(pd.DataFrame(counts).fillna(0).astype(int, errors="ignore"), key="model_split_counts")
    elif counts:
        st.dataframe(pd.DataFrame({"Split": list(counts), "Scans": [_flat(value) for value in counts.values()]}),
                     hide_index=True, key="model_split_counts")
    commands = training_commands(training)
    if len(commands) == 1:
        st.markdown("**Command**")
    elif commands:
        st.markdown("**Commands**, in order (each later run continued from the weights of the one before)")
    if commands:
        st.code("\n".join(commands), language="bash")
    shown = {"data", "split_manifest", "split_rule", "split_counts", "command"}
    rest = {key: value for key, value in training.items() if key not in shown}
    if rest:
        st.markdown("**Other training settings**")
        st.json(rest, expanded=False)


def render_metrics(data: dict, card) -> None:
    """Test (and validation) metrics, per-class table and confusion matrix."""
    _section("Measured performance")
    metrics = data.get("metrics") or {}
    if not metrics:
        st.markdown(NOT_RECORDED)
        return
    if data.get("metrics_data"):
        st.caption(f"Measured on: {_text(_flat(data['metrics_data']))}")
    splits = [split for split in ("test", "validation") if isinstance(metrics.get(split), dict)]
    summary = pd.DataFrame({
        "Split": splits,
        "Scans": [_number(metrics[split].get("n"), "{:.0f}") for split in splits],
        "Accuracy": [_number(metrics[split].get("accuracy"), "{:.1%}") for split in splits],
        "Macro F1": [_number(metrics[split].get("macro_f1")) for split in splits],
        "ECE (calibrated)": [_number(metrics[split].get("ece")) for split in splits],
    })
    st.dataframe(summary, hide_index=True, key="model_metrics")
    test = metrics.get("test") or metrics.get(splits[0] if splits else "", {}) or {}
    per_class = test.get("per_class") or {}
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Per class (test)**")
        if per_class:
            names = [name for name in card.classes if name in per_class]
            st.dataframe(pd.DataFrame({
                "Class": [card.display_names.get(name, name) for name in names],
                "Precision": [_number(per_class[name].get("precision")) for name in names],
                "Recall": [_number(per_class[name].get("recall")) for name in names],
                "F1": [_number(per_class[name].get("f1")) for name in names],
                "Support": [_number(per_class[name].get("support"), "{:.0f}") for name in names],
            }), hide_index=True, key="model_per_class")
        else:
            st.markdown(NOT_RECORDED)
    with right:
        st.markdown("**Confusion matrix (test)**")
        matrix = test.get("confusion_matrix")
        if is_count_matrix(matrix, len(card.classes)):
            st.altair_chart(app_support.confusion_heatmap(
                matrix, [card.display_names.get(name, name) for name in card.classes], rows="True class",
                columns="Model's class"), width="stretch")
        else:
            st.markdown(NOT_RECORDED)


def render_serving(data: dict, classifier) -> None:
    """Which network answers on this machine (f32, or the card's int8 network), and the figures measured as served."""
    section = serving_section(data, getattr(classifier, "precision", "f32"))
    if section is not None:
        _section("How this machine serves it")
        st.markdown(section.status)
        st.dataframe(pd.DataFrame(section.rows), hide_index=True, key="model_serving")
        st.caption(section.note)


def render_calibration(data: dict) -> None:
    """Temperature scaling and its effect, and the out-of-distribution gate."""
    _section("Calibration and out-of-distribution gate")
    test = (data.get("metrics") or {}).get("test") or {}
    facts = {
        "Temperature": _number(data.get("temperature")),
        "ECE before calibration (test)": _number(test.get("ece_uncalibrated")),
        "ECE after calibration (test)": _number(test.get("ece")),
    }
    facts.update(gate_facts(data.get("ood") or {}))
    if "ood_pass_rate" in test:
        facts["MRI test scans passing the gate"] = _number(test.get("ood_pass_rate"), "{:.1%}")
    st.dataframe(pd.DataFrame({"Measure": list(facts), "Value": list(facts.values())}), hide_index=True,
                 key="model_calibration")
    st.caption("Probabilities shown on the Review page are calibrated by temperature scaling; ECE is the expected "
               "calibration error (lower is better).")


def render_robustness(data: dict) -> None:
    """Accuracy when slices look as other scanners and exports make them (`python -m core robustness`)."""
    robustness = data.get("robustness")
    if not isinstance(robustness, dict) or not isinstance(robustness.get("accuracy"), dict):
        return
    _section("Other scanners and exports")
    st.dataframe(pd.DataFrame(robustness_rows(robustness)), hide_index=True, key="model_robustness")
    measured_on = robustness.get("data", NOT_RECORDED)
    measured_on = ", ".join(map(str, measured_on)) if isinstance(measured_on, list) else measured_on
    st.caption(f"Each held-out slice changed as another scanner or export would change it, then classified; "
               f"measured on {_text(measured_on)} "
               f"(n = {_number(robustness.get('n'), '{:.0f}')}) by {_text(robustness.get('command', NOT_RECORDED))}.")


def render() -> None:
    """Draw the Model page: the loaded model's card, or why no model is loaded."""
    status = app_support.model_status()
    if status.classifier is None:
        st.title("Model")
        st.error(f"**The model is not available**: {app_support.escape_markdown(status.error)}.",
                 icon=":material/error:")
        return
    card = status.classifier.card
    data = card.data
    render_overview(data, card)
    render_summary(data, card)
    render_metrics(data, card)
    render_serving(data, status.classifier)
    render_robustness(data)
    # Function names, thresholds, commands and the raw card are for engineers and auditors: one closed
    # expander, so what a clinician reads above stays in a clinician's words.
    with st.expander("Engineering detail: input, training, calibration and the gate, the whole card",
                     icon=":material/engineering:"):
        render_contract(data, card)
        render_training(data)
        render_calibration(data)
        _section("The whole card (JSON)")
        st.json(data, expanded=False)


if __name__ == "__main__":
    # Only Streamlit's pages-folder fallback runs this file as a script (see pages/__init__.py).
    app_support.hand_over_to_front_door()
