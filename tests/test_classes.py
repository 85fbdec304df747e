import pytest

from core.classes import CLASS_NAMES, DISPLAY_NAMES, canonical_class
from core.errors import DatasetError
from core.training.dataset import find_labelled_files
from tests.synthetic import write_class_folders


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("glioma_tumor", "glioma"), ("glioma", "glioma"),
        ("meningioma_tumor", "meningioma"), ("meningioma", "meningioma"),
        ("pituitary_tumor", "pituitary"), ("pituitary", "pituitary"),
        ("no_tumor", "no_tumor"), ("notumor", "no_tumor"), ("No Tumor", "no_tumor"),
    ],
)
def test_both_dataset_naming_schemes_map_to_canonical_classes(folder, expected):
    assert canonical_class(folder) == expected


def test_every_class_has_a_display_name():
    assert set(DISPLAY_NAMES) == set(CLASS_NAMES)
    assert DISPLAY_NAMES["pituitary"] == "Pituitary tumour"


def test_unknown_class_folder_is_rejected_with_its_name(tmp_path):
    write_class_folders(tmp_path / "data", per_class=1)
    (tmp_path / "data" / "astrocytoma").mkdir()
    with pytest.raises(DatasetError, match="astrocytoma"):
        find_labelled_files(tmp_path / "data")


def test_split_folders_are_searched_for_class_folders(tmp_path):
    write_class_folders(tmp_path / "set" / "Training", names=("glioma_tumor", "no_tumor"), per_class=2)
    write_class_folders(tmp_path / "set" / "Testing", names=("glioma_tumor", "no_tumor"), per_class=1)
    files = find_labelled_files(tmp_path / "set")
    assert sorted({item.label for item in files}) == ["glioma", "no_tumor"]
    assert len(files) == 6
    assert all(item.relative_path.startswith("set/") for item in files)


def test_empty_dataset_folder_is_an_error(tmp_path):
    (tmp_path / "glioma").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        find_labelled_files(tmp_path)
