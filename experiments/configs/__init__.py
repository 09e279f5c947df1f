"""Experiment configs: one `get_config()` (ml_collections) per modality/dataset."""
