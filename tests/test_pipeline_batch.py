"""A folder goes through `analyse_many` in order, bad files become rows, and memory stays bounded."""

from __future__ import annotations

import numpy as np
import pytest

from core.pipeline import analyse_bytes, analyse_many
from tests.synthetic import encode, synthetic_slice


def _colour_photo() -> bytes:
    rng = np.random.default_rng(3)
    return encode(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))


def _unreadable() -> bytes:
    raise PermissionError(13, "Permission denied")


def _broken_reader() -> bytes:
    raise RuntimeError("the share went away")


def _folder() -> list[tuple[str, object]]:
    """Eleven files: good scans with five kinds of bad file in between, some mid-batch."""
    good = {f"scan{index}.png": encode(synthetic_slice(index, 96, index % 4)) for index in range(6)}
    items = [(name, (lambda data=data: data)) for name, data in good.items()]
    items.insert(1, ("empty.png", lambda: b""))
    items.insert(3, ("notes.txt", lambda: b"not an image at all"))
    items.insert(5, ("holiday.png", _colour_photo))
    items.insert(7, ("locked.png", _unreadable))
    items.insert(9, ("gone.png", _broken_reader))
    return items


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_results_come_in_order_with_rejects_in_place(tiny_classifier, batch_size):
    items = _folder()
    results = list(analyse_many(tiny_classifier, items, batch_size=batch_size))
    assert [result.filename for result in results] == [name for name, _ in items]
    statuses = {result.filename: result.status for result in results}
    assert [name for name, status in statuses.items() if status == "rejected"] == \
        ["empty.png", "notes.txt", "holiday.png", "locked.png", "gone.png"]
    by_name = {result.filename: result for result in results}
    assert "empty" in by_name["empty.png"].message
    assert "colour" in by_name["holiday.png"].message
    assert "could not be read" in by_name["locked.png"].message
    assert "RuntimeError" in by_name["gone.png"].message
    for name, read in items:
        if by_name[name].status == "ok":
            single = analyse_bytes(tiny_classifier, read(), name)
            assert by_name[name].sha256 == single.sha256 and by_name[name].label == single.label
            for class_name, probability in single.probabilities.items():
                assert by_name[name].probabilities[class_name] == pytest.approx(probability, abs=1e-5)


def test_no_more_than_two_batches_are_in_flight(tiny_classifier):
    batch_size = 4
    pulled = 0
    scan = encode(synthetic_slice(1, 96))

    def items():
        nonlocal pulled
        for index in range(40):
            pulled += 1
            yield f"scan{index}.png", lambda: scan

    for position, _ in enumerate(analyse_many(tiny_classifier, items(), batch_size=batch_size)):
        assert pulled <= (position // batch_size + 2) * batch_size, (position, pulled)
    assert pulled == 40


def test_stopping_early_reads_no_further_files(tiny_classifier):
    reads = []
    scan = encode(synthetic_slice(2, 96))

    def reader(index):
        def read():
            reads.append(index)
            return scan
        return read

    results = analyse_many(tiny_classifier, ((f"scan{index}.png", reader(index)) for index in range(200)), batch_size=8)
    next(results)
    results.close()
    assert len(reads) <= 16


def test_decoded_scans_are_dropped_unless_kept(tiny_classifier):
    items = _folder()[:3]
    dropped = list(analyse_many(tiny_classifier, items, batch_size=2))
    kept = list(analyse_many(tiny_classifier, items, batch_size=2, keep_scans=True))
    assert all(result.scan is None for result in dropped)
    assert kept[0].scan is not None and kept[0].scan.image.ndim == 2


def test_batch_size_must_be_positive(tiny_classifier):
    with pytest.raises(ValueError, match="batch_size"):
        list(analyse_many(tiny_classifier, _folder(), batch_size=0))
