"""Evaluation of the base model and an adapter with lm-eval, offline."""
