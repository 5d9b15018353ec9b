"""Training datasets (registered in DATASETS)."""
