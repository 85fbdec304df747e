"""BrainScan Review's plain-Python core, one package per stage of a scan's flow.

    scans/     bytes -> Scan: formats, DICOM, size and shape checks, the one preprocessing path
    model/     the card, the network, inference runtimes, calibration, explanation, the gate
    pipeline   the one orchestrator: a file (or a folder) -> a ScanResult, never an exception
    review/    the history store, the record's rules, the worklist, CSV export
    training/  datasets, split, training, evaluation, robustness, metrics, the non-MRI set
    cli        `python -m core ...`

`config`, `classes`, `errors` and `progress` are the basics every stage may use. A stage may
import the stages listed before it here, never one after it; `review` and `training` know nothing
of each other. Nothing in this package imports Streamlit. The contracts in `pyproject.toml`
(checked by `lint-imports` in `make test`) enforce all three.
"""
