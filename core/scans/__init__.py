"""Scans: file bytes -> an upright 8-bit greyscale `Scan`, or a specific `ScanRejected` reason.

Owns format recognition by content (`intake`), DICOM decoding with an allow-list of
non-identifying fields (`dicom`), the `Scan` type and the size and shape checks every decoder
shares (`scan`), the one preprocessing path that turns a scan into a model input (`preprocess`),
and the model-free image measurements the pipeline screens with (`statistics`).

It may import only `core.config`, `core.errors` and `core.classes`; it knows nothing of models,
history or training.
"""
