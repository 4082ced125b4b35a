"""QLoRA training of an adapter on a curated snapshot."""
