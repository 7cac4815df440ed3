"""Specific exceptions: each names the offending value and what would fix it."""

from __future__ import annotations


class MedgroundError(Exception):
    """Base class of every error medground raises on purpose."""


class ImageError(MedgroundError, ValueError):
    """An image that cannot be read or used (missing, unreadable, transparent, too small)."""


class PhraseError(MedgroundError, ValueError):
    """A phrase that cannot be grounded (empty, or longer than the text encoder accepts)."""


class BoxError(MedgroundError, ValueError):
    """A bounding box that is malformed or lies outside the image."""


class ConfigError(MedgroundError, ValueError):
    """A grounding configuration that is inconsistent or names something the model lacks."""


class ModelLoadError(MedgroundError):
    """A model directory, checkpoint or component that cannot be loaded as described."""


class WeightsNotFoundError(ModelLoadError, FileNotFoundError):
    """Weights that are not where the model description says they are."""


class ModelOutputError(MedgroundError):
    """A model that ran but produced unusable numbers (NaN or infinite attention)."""


class RunDirError(MedgroundError, ValueError):
    """A run folder that cannot be used: another run's, locked by a live writer, corrupt, or not writable."""


class DatasetError(MedgroundError, ValueError):
    """A dataset file that is missing, not in the expected layout, or holds rows that cannot be used."""


class ReportError(MedgroundError, ValueError):
    """A radiology report that cannot be read (not text, empty, missing file)."""


class ExtraNotInstalledError(MedgroundError, ImportError):
    """An optional part of medground whose dependencies are not installed (the message names the pip extra)."""


class ServeError(MedgroundError, OSError):
    """The web app cannot start (the port is taken, the host is not an address of this machine)."""
