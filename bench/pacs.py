"""Pulling a series from the PACS: a 24-slice MR series read over DICOMweb and classified, against disk.

    python bench/pacs.py [--data ../shared/datasets/nickparvar-brain-mri] [--slices 24] [--repeat 5] [--json F]

An Orthanc of its own (deploy.team.LocalOrthanc, loopback, its DICOMweb plugin) is given one MR
series: `--slices` brain MRI slices of `--data` (every image file under it, sorted, the first N;
synthetic heads when the folder is missing), each at its own resolution as 16-bit MONOCHROME2 MR
image storage. Then, `--repeat` times each, with the bundled model loaded once:

- baseline: the same DICOM files read from a local folder and classified as one batch
  (`core.pipeline.analyse_many`), what `python -m core predict FOLDER` does;
- pull: what the Studies page and `python -m core pacs predict` do: list the series' instances
  (QIDO-RS), read each (WADO-RS) and classify them as one batch (`core.review.uploads.take_pulled`).

Prints the medians and exits 1 when the pull's median is 5 s or more (the issue's floor).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOOR_SECONDS = 5.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def pictures(data: Path, count: int) -> list[np.ndarray]:
    """`count` greyscale uint8 slices: the first image files under `data`, or synthetic heads without it."""
    import cv2

    files = sorted(path for path in data.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES) if data.is_dir() else []
    if files:
        return [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in files[:count]]
    rng = np.random.default_rng(0)
    grid = np.mgrid[:256, :256]
    heads = []
    for index in range(count):
        head = (((grid[0] - 128) / 100) ** 2 + ((grid[1] - 128) / 85) ** 2 < 1).astype(np.float64)
        heads.append(np.clip(head * (110 + 40 * np.sin(grid[1] / (9 + index))) + rng.normal(0, 8, head.shape),
                             0, 255).astype(np.uint8))
    return heads


def series_files(images: list[np.ndarray]) -> list[bytes]:
    """One MR series (one study) of 16-bit slices, in instance order."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    study, series = uid.generate_uid(), uid.generate_uid()
    files = []
    for number, image in enumerate(images, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = uid.MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid.generate_uid()
        meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        dataset = Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID, dataset.SOPInstanceUID = uid.MRImageStorage, meta.MediaStorageSOPInstanceUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.PatientID, dataset.PatientName, dataset.Modality = "BENCH-PACS", "Bench^Series", "MR"
        dataset.SeriesNumber, dataset.InstanceNumber, dataset.SeriesDescription = 2, number, "AX T1 POST"
        dataset.Rows, dataset.Columns = image.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
        dataset.PixelData = (image.astype(np.uint16) * 16).tobytes()
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "nickparvar-brain-mri"))
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    arguments = parser.parse_args(argv)

    from core.archive.dicomweb import DicomWebArchive
    from core.archive.objects import ArchiveObject, reference_of
    from core.archive.pacs import series_instances
    from core.model.inference import Classifier
    from core.pipeline import analyse_many
    from core.review.uploads import take_pulled
    from deploy.team import LocalOrthanc

    files = series_files(pictures(Path(arguments.data), arguments.slices))
    reference = reference_of(files[0])
    classifier = Classifier.load(None)
    scratch = Path(tempfile.mkdtemp(prefix="brainscan-bench-pacs-"))
    figures: dict = {"slices": len(files), "data": arguments.data, "model": classifier.version,
                     "bytes": sum(map(len, files))}
    try:
        folder = scratch / "series"
        folder.mkdir()
        for number, data in enumerate(files, start=1):
            (folder / f"IM{number:04d}.dcm").write_bytes(data)
        with LocalOrthanc(scratch / "orthanc") as orthanc:
            archive = DicomWebArchive(orthanc.url, orthanc.user, orthanc.password, 30.0)
            for data in files:
                archive.store(ArchiveObject(data, reference_of(data)))
            list(analyse_many(classifier, [(path.name, path.read_bytes) for path in sorted(folder.iterdir())]))  # warm
            disk, pulled, answers = [], [], None
            for _ in range(arguments.repeat):
                started = time.perf_counter()
                from_disk = list(analyse_many(classifier, [(path.name, path.read_bytes)
                                                           for path in sorted(folder.iterdir())]))
                disk.append(time.perf_counter() - started)
                started = time.perf_counter()
                instances = series_instances(archive, reference.study_uid, reference.series_uid)
                taken = take_pulled(classifier, archive, instances, 2)
                pulled.append(time.perf_counter() - started)
                answers = ([result.label for result in from_disk], [item.result.label for item in taken])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures.update({"disk_median_s": statistics.median(disk), "pull_median_s": statistics.median(pulled),
                    "pull_max_s": max(pulled), "runs": arguments.repeat,
                    "same_answers": answers[0] == answers[1], "classified": sum(label is not None
                                                                                for label in answers[1])})
    print(f"{figures['slices']} slices ({figures['bytes'] / 1e6:.1f} MB), model {figures['model']}, "
          f"median of {arguments.repeat}")
    print(f"  baseline, read from disk and classified: {figures['disk_median_s']:.2f} s")
    print(f"  pulled over DICOMweb and classified:    {figures['pull_median_s']:.2f} s (max {figures['pull_max_s']:.2f})")
    print(f"  same classes both ways: {figures['same_answers']}; classified {figures['classified']} of "
          f"{figures['slices']}")
    met = figures["pull_median_s"] < FLOOR_SECONDS and figures["same_answers"]
    print(f"floor (pull median < {FLOOR_SECONDS:g} s, same answers): " + ("met" if met else "MISSED"))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
