"""Curation: every input row ends accepted or rejected, with a reason code."""
