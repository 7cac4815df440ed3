"""From recorded attention to a heatmap, a mask and boxes: pure functions on maps, no model and no files.

``maps`` holds the two operations every step uses (min-max normalisation, resizing a square map); ``refine``
propagates a map through self-attention; ``aggregate`` weights and averages layers and steps; ``bbm`` is
Generate-to-Ground's bias merging; ``threshold`` smooths and thresholds; ``boxes`` boxes the foreground.
"""
