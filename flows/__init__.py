"""Prefect flows and tasks: thin wrappers over tunegate's library stages."""
