"""What one web query and one visitor may cost: the bounds that keep a shared server up under careless or hostile
use. Plain constants, so the command line's help reads them without importing the app."""

MAX_UPLOAD_MB = 20
"""Largest upload (refused by the upload itself, before anything is decoded)."""
MAX_IMAGE_PIXELS = 25_000_000
"""Largest decoded image (5000 x 5000; radiographs are at most about 4300 x 3500). A larger one would cost a
hundred MB per phrase in heatmaps; the command line keeps the general limit (``images.max_image_pixels``)."""
MAX_PHRASES = 10
"""Phrases (or report findings) per query: each is a conditional pass and a full-size heatmap on disk."""
MAX_TEXT_CHARS = 20_000
"""Longer text is not a chest X-ray report (MIMIC-CXR's longest are a few thousand characters)."""
MAX_VISITORS = 32
"""Visitors whose last answer is kept on disk; the oldest is removed beyond this (and each on leaving)."""
STATE_SECONDS = 3600
"""A visitor's drawing (display-size) is dropped after this long without a query."""
UPLOAD_CACHE = (600, 3600)
"""Gradio's upload cache: every 10 minutes, uploads older than an hour are deleted."""
STRAY_FILES = (5, 120)
"""Every 5 seconds, files lying directly in the server's temporary folder that nothing wrote to for 2 minutes are
deleted: Gradio keeps uploads and served files in sub-folders, and leaves there only partial uploads whose client
went away and the empty file its File component makes on every query (both otherwise kept until the server stops)."""
STOP_WAIT_S = 30
"""On Ctrl-C or SIGTERM the running query gets this long to finish (its results are deleted with the rest); past it
the server stops without it."""
