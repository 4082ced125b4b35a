"""A pipeline run as a whole: preflight, crash guard, summary, history across nights."""
