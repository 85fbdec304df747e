"""The Performance page through AppTest: an admin sees the alert, the chart and the tables; a reviewer only their own."""

from __future__ import annotations

from pathlib import Path

from core.classes import CLASS_NAMES
from core.review.store import HistoryStore
from tests.navigate import open_page
from tests.test_app_team import ADA, ANN, as_user, everything, signed_in  # noqa: F401  (fixture)
from tests.test_monitor import Clock, clock, probabilities  # noqa: F401  (fixture)

MODEL = "0.0.1-test"  # the tiny model's card: every class's test recall and precision 0.25


def seed(history_path: Path, clock: Clock) -> None:
    """Three months of Ann's reads; in March the model calls none of the 40 meningiomas meningioma."""
    store = HistoryStore(history_path)
    number = 0
    ann = {"issuer": ANN["iss"], "subject": ANN["sub"], "email": ANN["email"], "name": ANN["name"], "role": "reviewer"}
    for month in ("2026-01-05", "2026-02-05", "2026-03-05"):
        clock.at(month)
        for truth in CLASS_NAMES:
            for index in range(40):
                number += 1
                predicted = "glioma" if truth == "meningioma" and month.startswith("2026-03") else truth
                case = {"session_id": "p" * 32, "file_name": f"scan-{number}.png", "sha256": f"{number:064x}",
                        "model_version": MODEL, "predicted_class": predicted,
                        "probabilities": probabilities(predicted)}
                store.record_prediction(reviewer=ANN["name"], actor=ann, **case)
                store.record_verdict(reviewer=ANN["name"], actor=ann, verdict="confirm" if predicted == truth else
                                     "override", override_label=None if predicted == truth else truth,
                                     reason="" if predicted == truth else "meningioma on review", **case)


def test_an_admin_sees_the_alert_and_the_chart_and_a_reviewer_only_their_own_reads(signed_in, history_path, clock):
    seed(history_path, clock)

    admin = as_user(signed_in, ADA)
    open_page(admin, "performance")
    alerts = [str(element.value).replace("\\", "") for element in admin.error if "Alert" in str(element.value)]
    # The performance alert, and March's input alerts: no meningioma predicted, twice the glioma.
    assert len(alerts) == 3, alerts
    assert "meningioma sensitivity 0.0%" in alerts[0] and "2026-03" in alerts[0] and "card's 25.0%" in alerts[0]
    assert {alert.split(" in ")[0] for alert in alerts[1:]} == {"**Alert**: share meningioma 0.0%",
                                                               "**Alert**: share glioma 50.0%"}
    assert admin.get("vega_lite_chart"), "no chart drawn"
    sidebar = [str(element.value) for element in admin.sidebar.error]
    assert any("3 performance alerts" in text and "meningioma sensitivity" in text for text in sidebar), sidebar
    assert "480 cases, 480 with a final label" in everything(admin)
    readers = admin.dataframe[-1].value
    assert set(readers["Reader"]) == {"Ann Reader"}

    reviewer = as_user(signed_in, ANN)
    open_page(reviewer, "performance")
    shown = everything(reviewer)
    assert "Your own reads only" in shown and "Alert" not in shown and "performance alert" not in shown
    assert not reviewer.get("vega_lite_chart")
    table = reviewer.dataframe[0].value
    assert set(table["Reader"]) == {"Ann Reader"} and set(table["Period"]) == {"2026-01", "2026-02", "2026-03", "All"}
