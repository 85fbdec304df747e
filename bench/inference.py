"""Inference speed against the original demo's way, measured in one run on the same model and images.

    python bench/inference.py [--data DIR] [--model PATH] [--count 1000] [--json results.json]

The baseline is what the original demo did for every image: `cv2.imread`, resize, then
`model.predict(x[None])` and a softmax, on the same `.keras` file. The fast path is the project's:
`core.pipeline.analyse_bytes` for one scan (decode, screen, crop and preprocess, inference,
calibration, out-of-distribution gate) and `python -m core predict FOLDER` for many.

Rows (all wall-clock; "warm" means after load and a few warm-up calls):
- single scan, warm: one image at a time, baseline and fast path interleaved image by image;
- batch, in-process: per-image time over the whole folder with the model already loaded;
- batch, end to end: a fresh process each, from start to the last result (the baseline is this
  script in `--baseline-worker` mode; `--baseline-count` times it on a subset and extrapolates);
- cold load: a fresh process from start to a loaded, warmed classifier;
- Grad-CAM, warm: one heat-map for one prepared scan.
It also checks that the fast path's probabilities equal the baseline model's on the same tensors
within 1e-4, and that the CLI's CSV equals the in-process results; it exits 1 if either fails.

Where the card names an int8 network and this machine serves it (`core.model.inference`), the fast
path is int8, and the same model served in f32 (`BRAINSCAN_PRECISION=f32`) is timed beside it in
the same run (rows "f32"): single scan interleaved with the other two, inference alone, and the
CLI end to end. Int8 cannot equal Keras within 1e-4; for it the check is the class: the same top
class as Keras on at least 98% of the single-scan slices, and the largest probability difference
is reported.
Without --data it writes synthetic head-like scans (tests/synthetic.py), so it runs anywhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
EQUIVALENCE_TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder of scans (searched recursively); default: synthetic scans")
    parser.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or models/brainscan-default.keras)")
    parser.add_argument("--count", type=int, default=1000, help="scans in the batch runs")
    parser.add_argument("--single", type=int, default=100, help="scans in the single-scan run")
    parser.add_argument("--baseline-count", type=int, default=0,
                        help="time the end-to-end baseline on this many scans and extrapolate (0: all)")
    parser.add_argument("--runtime", default="auto", choices=("auto", "openvino", "tensorflow"))
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--baseline-worker", nargs=2, metavar=("LIST", "OUT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.baseline_worker:
        return _baseline_worker(Path(arguments.model), *map(Path, arguments.baseline_worker))

    from core import config

    with tempfile.TemporaryDirectory(prefix="brainscan-bench-") as scratch:
        scratch = Path(scratch)
        model_path, model_note = _model(arguments.model, config.model_path(), scratch)
        files, data_note = _scans(arguments.data, arguments.count, scratch / "scans")
        print(f"model: {model_path} ({model_note}); scans: {len(files)} {data_note}", flush=True)
        figures = {"machine": _machine(), "model": model_note, "data": data_note, "count": len(files)}
        failures = _run(arguments, model_path, files, scratch, figures)
    _print_table(figures)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _run(arguments, model_path: Path, files: list[Path], scratch: Path, figures: dict) -> list[str]:
    import keras

    from core.model.calibration import softmax
    from core.model.card import load_card
    from core.model.explain import gradcam
    from core.model.inference import Classifier
    from core.pipeline import analyse_bytes, analyse_many
    from core.scans.intake import load_scan
    from core.scans.preprocess import prepare_image
    from core.training.train import model_outputs

    failures = []
    # The first load ever of a model converts it and fills the runtime cache; time it apart.
    started = time.perf_counter()
    classifier = Classifier.load(model_path, runtime=arguments.runtime)
    figures["first_load_s"] = time.perf_counter() - started
    figures["runtime"] = classifier.runtime
    figures["precision"] = classifier.precision
    figures["mirror_averaged"] = classifier.mirror
    # With an int8 network served, the same model in f32 is timed beside it (see the docstring).
    f32 = None
    if classifier.precision == "int8":
        f32 = Classifier.load(model_path, runtime=arguments.runtime, precision="f32")
    temperature = load_card(model_path).temperature
    size = classifier.image_size
    model = keras.models.load_model(model_path, compile=False)

    # Cold load: a fresh process to a ready classifier, as the app and the CLI start.
    load_code = ("import sys, time; started = time.perf_counter(); from core.model.inference import Classifier; "
                 f"Classifier.load(sys.argv[1], runtime={arguments.runtime!r}); print(time.perf_counter() - started)")
    cold = _measured([sys.executable, "-c", load_code, str(model_path)])
    baseline_load_code = ("import sys, time; started = time.perf_counter(); import keras; "
                          "model = keras.models.load_model(sys.argv[1], compile=False); "
                          "import numpy; model.predict(numpy.zeros((1,) + model.input_shape[1:], 'float32'), verbose=0); "
                          "print(time.perf_counter() - started)")
    baseline_cold = _measured([sys.executable, "-c", baseline_load_code, str(model_path)])
    figures["cold_load"] = {"baseline_s": baseline_cold["wall_s"], "fast_s": cold["wall_s"],
                            "baseline_rss_mb": baseline_cold["max_rss_mb"], "fast_rss_mb": cold["max_rss_mb"]}

    # Single scan, warm: baseline and fast path alternate image by image, so both see the same load.
    singles = files[: arguments.single]
    contents = [path.read_bytes() for path in singles]

    def baseline_one(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        tensor = cv2.resize(image, (size, size)).astype(np.float32) / 255.0
        return softmax(model.predict(tensor[np.newaxis, :, :, np.newaxis], verbose=0), temperature)[0]

    for index in range(min(5, len(singles))):
        baseline_one(singles[index])
        analyse_bytes(classifier, contents[index], singles[index].name)
        if f32 is not None:
            analyse_bytes(f32, contents[index], singles[index].name)
    baseline_times, fast_times, f32_times = [], [], []
    for path, data in zip(singles, contents):
        started = time.perf_counter()
        baseline_one(path)
        baseline_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        analyse_bytes(classifier, data, path.name)
        fast_times.append(time.perf_counter() - started)
        if f32 is not None:
            started = time.perf_counter()
            analyse_bytes(f32, data, path.name)
            f32_times.append(time.perf_counter() - started)
    figures["single"] = {"n": len(singles), "baseline_median_ms": _ms(np.median(baseline_times)),
                         "baseline_p95_ms": _ms(np.percentile(baseline_times, 95)),
                         "fast_median_ms": _ms(np.median(fast_times)), "fast_p95_ms": _ms(np.percentile(fast_times, 95))}
    if f32 is not None:
        figures["single"].update(f32_median_ms=_ms(np.median(f32_times)), f32_p95_ms=_ms(np.percentile(f32_times, 95)))

    # Inference alone and equivalence, on the very same prepared tensors.
    tensors = np.stack([prepare_image(load_scan(data).image, size) for data in contents])
    # The card's contract computed by Keras' own predict (with mirror averaging when the card asks).
    _, logits = model_outputs(model, tensors, classifier.mirror, batch_size=32)
    reference = softmax(logits, temperature)
    fast = np.concatenate([classifier.predict_tensors(tensor[np.newaxis]).probabilities for tensor in tensors])
    batched = classifier.predict_tensors(tensors).probabilities
    gap = float(max(np.abs(fast - reference).max(), np.abs(batched - reference).max()))
    figures["equivalence_max_abs_difference"] = gap
    if f32 is None and gap > EQUIVALENCE_TOLERANCE:
        failures.append(f"fast-path probabilities differ from model.predict by {gap:.2g} > {EQUIVALENCE_TOLERANCE}")
    if f32 is not None:
        same = int((fast.argmax(1) == reference.argmax(1)).sum())
        figures["int8_same_class_as_keras"] = f"{same} of {len(reference)}"
        if same < 0.98 * len(reference):
            failures.append(f"the int8 network gives Keras's class on only {same} of {len(reference)} slices")
    predict_times, infer_times, f32_infer_times = [], [], []
    for tensor in tensors[:50]:
        started = time.perf_counter()
        model.predict(tensor[np.newaxis], verbose=0)
        predict_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        classifier.predict_tensors(tensor[np.newaxis])
        infer_times.append(time.perf_counter() - started)
        if f32 is not None:
            started = time.perf_counter()
            f32.predict_tensors(tensor[np.newaxis])
            f32_infer_times.append(time.perf_counter() - started)
    figures["inference_only"] = {"baseline_median_ms": _ms(np.median(predict_times)),
                                 "fast_median_ms": _ms(np.median(infer_times))}
    if f32 is not None:
        figures["inference_only"]["f32_median_ms"] = _ms(np.median(f32_infer_times))

    # Grad-CAM: the first call builds and traces the gradient function; then it is one call.
    started = time.perf_counter()
    gradcam(classifier, tensors[0])
    build_s = time.perf_counter() - started
    cam_times = []
    for tensor in tensors[:30]:
        started = time.perf_counter()
        gradcam(classifier, tensor)
        cam_times.append(time.perf_counter() - started)
    figures["gradcam"] = {"first_call_s": build_s, "median_ms": _ms(np.median(cam_times)),
                          "p95_ms": _ms(np.percentile(cam_times, 95))}

    # Batch in-process: the folder through analyse_many with the classifier already loaded.
    list(analyse_many(classifier, ((path.name, path.read_bytes) for path in files[:32])))
    started = time.perf_counter()
    in_process = list(analyse_many(classifier, ((str(path), path.read_bytes) for path in files)))
    batch_s = time.perf_counter() - started

    # Batch end to end: the CLI in a fresh process, then the baseline program in one.
    output_csv = scratch / "predictions.csv"
    cli = _measured([sys.executable, "-m", "core", "predict", str(files[0].parent), "--model", str(model_path),
                     "--csv", str(output_csv)], environment={"BRAINSCAN_RUNTIME": arguments.runtime})
    failures += _compare_csv(output_csv, in_process, classifier.classes)
    f32_cli = None
    if f32 is not None:
        f32_cli = _measured([sys.executable, "-m", "core", "predict", str(files[0].parent), "--model", str(model_path),
                             "--csv", str(scratch / "predictions-f32.csv")],
                            environment={"BRAINSCAN_RUNTIME": arguments.runtime, "BRAINSCAN_PRECISION": "f32"})
    baseline_files = files[: arguments.baseline_count] if arguments.baseline_count else files
    listing = scratch / "baseline-files.txt"
    listing.write_text("\n".join(str(path) for path in baseline_files), encoding="utf-8")
    worker_out = scratch / "baseline.json"
    worker = _measured([sys.executable, str(Path(__file__).resolve()), "--model", str(model_path),
                        "--baseline-worker", str(listing), str(worker_out)])
    worker_figures = json.loads(worker_out.read_text(encoding="utf-8"))
    baseline_per_image = worker_figures["loop_s"] / worker_figures["n"]
    baseline_end_to_end = worker["wall_s"] + baseline_per_image * (len(files) - worker_figures["n"])
    figures["batch"] = {
        "n": len(files), "baseline_timed_n": worker_figures["n"],
        "baseline_in_process_ms_per_scan": _ms(baseline_per_image),
        "fast_in_process_ms_per_scan": _ms(batch_s / len(files)),
        "baseline_end_to_end_s": baseline_end_to_end, "fast_end_to_end_s": cli["wall_s"],
        "baseline_rss_mb": worker["max_rss_mb"], "fast_rss_mb": cli["max_rss_mb"],
        "fast_rejected": sum(result.status != "ok" for result in in_process),
    }
    if f32_cli is not None:
        figures["batch"].update(f32_end_to_end_s=f32_cli["wall_s"], f32_rss_mb=f32_cli["max_rss_mb"])
    return failures


def _baseline_worker(model_path: Path, listing: Path, out: Path) -> int:
    """The original demo's loop over files, in its own process: imread, resize, predict, softmax."""
    import keras

    from core.model.calibration import softmax
    from core.model.card import load_card

    temperature = load_card(model_path).temperature
    model = keras.models.load_model(model_path, compile=False)
    size = int(model.input_shape[1])
    paths = listing.read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        tensor = cv2.resize(image, (size, size)).astype(np.float32) / 255.0
        softmax(model.predict(tensor[np.newaxis, :, :, np.newaxis], verbose=0), temperature)
    loop_s = time.perf_counter() - started
    out.write_text(json.dumps({"n": len(paths), "loop_s": loop_s}), encoding="utf-8")
    return 0


def _compare_csv(path: Path, results, classes) -> list[str]:
    """The CLI's rows must be the in-process results: same files, statuses and probabilities."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != len(results):
        return [f"the CLI wrote {len(rows)} rows for {len(results)} scans"]
    worst = 0.0
    for row, result in zip(rows, results):
        # The CLI classifies byte-identical files once; a later copy repeats the first one's row.
        if row["file"] != result.filename or row["status"] != result.status:
            return [f"the CLI's row for {row['file']} ({row['status']}) differs from in-process ({result.status})"]
        if result.status == "ok":
            worst = max(worst, max(abs(float(row[f"p_{name}"]) - result.probabilities[name]) for name in classes))
    # The CSV rounds to 6 decimals.
    return [f"the CLI's probabilities differ from in-process by {worst:.2g}"] if worst > 2e-6 else []


def _measured(command: list[str], environment: dict | None = None, timeout_s: float = 1800) -> dict:
    """Run a command to its end: wall time and its peak resident memory (VmHWM, polled every 5 ms)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(environment or {}))
    peak_kb = 0
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        # Not getrusage: a forked child's ru_maxrss includes the parent's memory before exec.
        while process.poll() is None:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            if time.perf_counter() - started > timeout_s:
                process.kill()
                raise RuntimeError(f"{command[:4]} ran over {timeout_s} s")
            time.sleep(0.005)
        wall = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read().decode(), stderr.read().decode()
    if process.returncode not in (0, 1):  # the CLI exits 1 when some scans were rejected
        raise RuntimeError(f"{command[:4]} failed ({process.returncode}): {errors[-2000:]}")
    return {"wall_s": wall, "max_rss_mb": peak_kb / 1024, "stdout": output}


def _high_water_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _model(requested: str | None, default: Path, scratch: Path) -> tuple[Path, str]:
    from core.model.card import load_card

    path = Path(requested) if requested else default
    if path.is_file():
        card = load_card(path)
        return path, f"{card.name} {card.version}, sha256 {card.data['model_sha256'][:12]}"
    if requested:
        raise SystemExit(f"error: model {path} does not exist")
    return _untrained_model(scratch / "model"), "untrained model of the production architecture (no trained model found)"


def _untrained_model(folder: Path) -> Path:
    """The production architecture with random weights and a valid card, for runs without a trained model."""
    import keras

    from core.classes import CLASS_NAMES, DISPLAY_NAMES
    from core.config import IMAGE_SIZE
    from core.model.card import write_card
    from core.model.network import build_model

    keras.utils.set_random_seed(0)
    folder.mkdir(parents=True)
    path = folder / "untrained.keras"
    build_model(IMAGE_SIZE).save(path)
    write_card(path, {"name": "untrained", "version": "bench", "classes": list(CLASS_NAMES),
                      "display_names": {name: DISPLAY_NAMES[name] for name in CLASS_NAMES},
                      "input": {"image_size": IMAGE_SIZE, "color_mode": "grayscale", "value_range": [0.0, 1.0]},
                      "temperature": 1.0})
    return path


def _scans(data: str | None, count: int, folder: Path) -> tuple[list[Path], str]:
    """`count` scan files in one flat folder (links to --data files, or synthetic JPEGs)."""
    folder.mkdir(parents=True)
    if data:
        found = sorted(path for path in Path(data).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise SystemExit(f"error: no images under {data}")
        # Evenly spaced over the sorted list, so every class folder is represented.
        chosen = [found[int(index * len(found) / count) % len(found)] for index in range(count)]
        files = []
        for index, source in enumerate(chosen):
            link = folder / f"{index:05d}{source.suffix.lower()}"
            link.symlink_to(source.resolve())
            files.append(link)
        return files, f"from {data} ({len(found)} found, {len(set(chosen))} distinct used)"
    from tests.synthetic import encode, synthetic_slice

    sizes = (224, 256, 512)  # the sizes public MRI exports come in
    files = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        path.write_bytes(encode(synthetic_slice(index, sizes[index % 3], index % 4), ".jpg"))
        files.append(path)
    return files, "synthetic head-like slices (224, 256, 512 px JPEG)"


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import tensorflow

    versions = {"python": platform.python_version(), "tensorflow": tensorflow.__version__, "keras": keras.__version__}
    try:
        import openvino

        versions["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gb": round(os.sysconf("SC_PHYS_PAGES")
            * os.sysconf("SC_PAGE_SIZE") / 2**30, 1), "load_average_1min": os.getloadavg()[0], **versions}


def _ms(seconds: float) -> float:
    return float(seconds) * 1000.0


def _print_table(figures: dict) -> None:
    machine = figures["machine"]
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; "
          f"load average at start {machine['load_average_1min']:.2f}")
    print("versions: " + ", ".join(f"{key} {value}" for key, value in machine.items()
                                   if key not in ("cpu", "cores", "memory_gb", "load_average_1min")))
    print(f"model: {figures['model']}; runtime: {figures['runtime']} {figures['precision']}; data: {figures['data']}")
    if figures["mirror_averaged"]:
        print("the card asks for mirror averaging: the fast path runs two forward passes per scan (slice and mirror),"
              " the baseline one")
    print()
    single, batch, cold, only = figures["single"], figures["batch"], figures["cold_load"], figures["inference_only"]
    extrapolated = "" if batch["baseline_timed_n"] == batch["n"] else \
        f" (timed on {batch['baseline_timed_n']}, extrapolated)"
    rows = [
        (f"single scan, warm, median of {single['n']} (decode+preprocess+infer+calibrate)",
         f"{single['baseline_median_ms']:.1f} ms", f"{single['fast_median_ms']:.1f} ms",
         single["baseline_median_ms"] / single["fast_median_ms"]),
        (f"single scan, warm, p95 of {single['n']}", f"{single['baseline_p95_ms']:.1f} ms",
         f"{single['fast_p95_ms']:.1f} ms", single["baseline_p95_ms"] / single["fast_p95_ms"]),
        ("inference only, one prepared tensor, median", f"{only['baseline_median_ms']:.1f} ms",
         f"{only['fast_median_ms']:.1f} ms", only["baseline_median_ms"] / only["fast_median_ms"]),
        (f"batch of {batch['n']}, in-process, per scan", f"{batch['baseline_in_process_ms_per_scan']:.1f} ms",
         f"{batch['fast_in_process_ms_per_scan']:.1f} ms",
         batch["baseline_in_process_ms_per_scan"] / batch["fast_in_process_ms_per_scan"]),
        (f"batch of {batch['n']}, end to end (fresh process){extrapolated}", f"{batch['baseline_end_to_end_s']:.1f} s",
         f"{batch['fast_end_to_end_s']:.1f} s", batch["baseline_end_to_end_s"] / batch["fast_end_to_end_s"]),
        ("cold load: fresh process to a ready model", f"{cold['baseline_s']:.1f} s", f"{cold['fast_s']:.1f} s",
         cold["baseline_s"] / cold["fast_s"]),
    ]
    print("| measurement | baseline: model.predict per image | fast path | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, baseline, fast, ratio in rows:
        print(f"| {name} | {baseline} | {fast} | {ratio:.1f}x |")
    cam = figures["gradcam"]
    print(f"| Grad-CAM, one scan, warm, median (p95) | - | {cam['median_ms']:.1f} ms ({cam['p95_ms']:.1f} ms) | - |")
    print(f"\nfirst load of this model in this run: {figures['first_load_s']:.1f} s (includes conversion when the "
          f"runtime cache was empty); Grad-CAM first call {cam['first_call_s']:.2f} s")
    if "int8_same_class_as_keras" in figures:
        print(f"int8 against model.predict on the same tensors: same class on {figures['int8_same_class_as_keras']}, "
              f"largest probability difference {figures['equivalence_max_abs_difference']:.2g}")
        print(f"the same model served in f32, same run: single scan median {single['f32_median_ms']:.1f} ms "
              f"(p95 {single['f32_p95_ms']:.1f} ms), inference only {only['f32_median_ms']:.1f} ms, end to end "
              f"{batch['f32_end_to_end_s']:.1f} s ({batch['baseline_end_to_end_s'] / batch['f32_end_to_end_s']:.1f}x)")
    else:
        print(f"equivalence: max |fast - model.predict| probability on the same tensors = "
              f"{figures['equivalence_max_abs_difference']:.2g} (limit {EQUIVALENCE_TOLERANCE})")
    print(f"batch end-to-end peak RSS: fast {batch['fast_rss_mb']:.0f} MB, baseline {batch['baseline_rss_mb']:.0f} MB; "
          f"rejected by the fast path's checks: {batch['fast_rejected']} of {batch['n']} (the baseline has no checks; "
          "the gate that rejects synthetic scans runs after inference, so their timings include it)")


if __name__ == "__main__":
    sys.exit(main())
