"""Radiology reports: finding mentions and their status (medSpaCy), and grounding every finding a report asserts.

``ground_report(grounder, image, text)`` is the entry point; it needs ``pip install 'medground[reports]'``.
"""

from medground.reports.grounding import ground_phrases, ground_report

__all__ = ["ground_phrases", "ground_report"]
