"""BrainScan Review's plain-Python core: intake, preprocessing, model, inference, history, export.

Nothing in this package imports Streamlit; every feature of the app can be driven from
`python -m core`.
"""
