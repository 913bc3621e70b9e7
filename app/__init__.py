"""lineage: model-hub provenance from the weights themselves."""

__version__ = "0.1.0"
