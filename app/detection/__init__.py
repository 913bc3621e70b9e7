"""Detection jobs: queued by the API, claimed and run by workers."""
