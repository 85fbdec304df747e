"""Model: the card, the network, inference runtimes, calibration, Grad-CAM explanation and the gate.

Owns everything that knows what a trained classifier is: the card that is the model's contract
(`card`), the network definition (`network`), loading and fast inference (`inference`),
temperature scaling (`calibration`), heat-maps (`explain`) and the Mahalanobis not-a-brain-MRI
gate on the network's features (`gate`).

It may import `core.scans` (for the shared preprocessing) and the top-level basics (`config`,
`classes`, `errors`); never `core.pipeline`, `core.review`, `core.training` or the CLI.
"""
