"""Hugging Face hub conventions: what a model declares about its own lineage."""
