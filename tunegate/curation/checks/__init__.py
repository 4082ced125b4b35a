"""Row checks of the curation funnel, one module per check."""
