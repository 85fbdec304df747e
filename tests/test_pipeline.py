from core.pipeline import analyse_bytes


def test_tiny_classifier_gives_four_probabilities(tiny_classifier, scan_png):
    result = analyse_bytes(tiny_classifier, scan_png, "scan.png")
    assert result.status == "ok", result.message
    assert set(result.probabilities) == {"glioma", "meningioma", "pituitary", "no_tumor"}
    assert abs(sum(result.probabilities.values()) - 1.0) < 1e-6
