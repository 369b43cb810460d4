"""Offline evaluation of labels: planted concepts, real SAE features, baselines, scale selection,
calibrated failure thresholds, an optional LLM judge, and a report (no Prefect imports here).

Modules: `matching` (does a text name a word), `stats` (Wilson, AUROC, summaries), `wordlists`
(DEV/TEST words and class concepts), `planted`, `baselines`, `real`, `scale_quality`, `thresholds`,
`judge`, `report`, `suite` (what `selfexplain evaluate` runs).
"""
