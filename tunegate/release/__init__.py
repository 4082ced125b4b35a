"""Release: gates, promotion, the adapter registry and export."""
