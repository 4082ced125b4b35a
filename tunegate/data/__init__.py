"""Data in: canonical records and verdicts, ingest of raw files, curated snapshots."""
