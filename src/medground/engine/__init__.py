"""The inversion engine: noise schedule math, attention recording, the inversion loop."""
