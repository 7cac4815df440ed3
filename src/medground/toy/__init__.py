"""The toy world's tooling: training and shipping the toy models, the demo, and their held-out tables.

The shipped models are in ``model/`` (MONAI family, ``toy``) and ``model-sd/`` (diffusers family, ``toy-sd``); the
phantoms they learn from are a dataset (``medground.datasets.phantoms``).
"""

TOY_METHODS = ("ldm", "uniform", "centre", "prior", "untrained")
"""What ``medground toy eval`` compares: the model, position-only baselines, and the same model untrained."""
DEMO_SEED = 7_000_000
"""The demo's first phantom: held out from training (0..199999) and validation (5000000..)."""
