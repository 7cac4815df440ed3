"""The toy world: synthetic chest-X-ray phantoms and a small LDM trained on them, shipped as ``toy``."""
