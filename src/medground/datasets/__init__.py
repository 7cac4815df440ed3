"""Datasets for evaluation; each reader yields the same ``Sample`` record (see ``base``)."""

from medground.datasets.base import DatasetLoad, Sample, load_dataset

__all__ = ["DatasetLoad", "Sample", "load_dataset"]
