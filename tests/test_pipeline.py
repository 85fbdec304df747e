import numpy as np
import pytest

from core.pipeline import analyse_bytes


def test_tiny_classifier_gives_four_probabilities(tiny_classifier, scan_png):
    result = analyse_bytes(tiny_classifier, scan_png, "scan.png")
    assert result.status == "ok", result.message
    assert set(result.probabilities) == {"glioma", "meningioma", "pituitary", "no_tumor"}
    assert abs(sum(result.probabilities.values()) - 1.0) < 1e-6


def test_a_classified_upload_carries_its_class_maps_for_the_heat_map(tiny_classifier, scan_png):
    from core.model.explain import gradcam

    result = analyse_bytes(tiny_classifier, scan_png, "scan.png")
    assert result.status == "ok", result.message
    if tiny_classifier.runtime != "openvino":
        pytest.skip("the maps come with the answer on OpenVINO only")
    assert result.class_maps is not None and result.class_maps.shape[-1] == len(tiny_classifier.classes)
    index = tiny_classifier.classes.index(result.label or tiny_classifier.classes[0])
    np.testing.assert_allclose(gradcam(tiny_classifier, result.tensor, index, class_maps=result.class_maps),
                               gradcam(tiny_classifier, result.tensor, index), atol=1e-5)
