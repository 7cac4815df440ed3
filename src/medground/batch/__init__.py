"""Dataset-scale grounding: a manifest of (image, phrases) in, one Parquet row per (image, phrase) out.

``manifest`` streams the rows and cuts them into fixed work units (phrases of one image always in one unit),
``work`` grounds a unit, ``store`` keeps the output folder (atomic Parquet parts, resume by unit), ``runner`` ties
them together on the local machine or on Ray (``medground.cluster``).
"""
