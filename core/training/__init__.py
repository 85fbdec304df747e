"""Training: datasets, the leakage-free split, training, calibration runs, evaluation and its reports.

Owns reading labelled dataset folders (`dataset`), near-duplicate grouping and the split manifest
(`split`), training and re-calibration (`train`), metrics (`metrics`), evaluation and robustness
reports (`evaluate`, `robustness`), the offline non-MRI image set (`nonmri`) and the gate's
evaluation (`gate_evaluation`).

It may import `core.pipeline`, `core.model`, `core.scans` and the top-level basics; nothing
imports it but the CLI. The app never needs it.
"""
