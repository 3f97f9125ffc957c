"""Classifier backends behind `InferenceBackend`; the embedded ONNX Runtime one is the default."""

from service.inference.base import BackendUnavailable, InferenceBackend
from service.inference.onnx import OnnxRuntimeBackend

__all__ = ["BackendUnavailable", "InferenceBackend", "OnnxRuntimeBackend"]
