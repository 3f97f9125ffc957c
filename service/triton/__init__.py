"""Triton Inference Server support: the model repository generated from the manifests (`repo`)."""
