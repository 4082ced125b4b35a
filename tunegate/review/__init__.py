"""Synthetic-data review: automatic triage, a human review queue, its web page and files."""
