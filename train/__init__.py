"""train: fusion heads trained from the cached feature store only."""
