"""Training, evaluation and import of face-manipulation classifiers (needs the `training` extra: PyTorch)."""
