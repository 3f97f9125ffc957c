"""Local Triton Inference Server tooling: a launcher for the CPU tritonserver bundled in nvidia-pytriton."""

from service.triton.server import TritonServer, find_pytriton

__all__ = ["TritonServer", "find_pytriton"]
