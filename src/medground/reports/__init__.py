"""Radiology reports: finding mentions and their status (medspaCy), and grounding every finding a report asserts."""
