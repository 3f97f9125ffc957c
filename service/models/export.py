"""Write a PyTorch classifier as ONNX plus its manifest, and prove the two compute the same numbers.

Used by `training.export` (the model trained here) and `service.models.importer` (published weights). Every
exported graph takes raw uint8 RGB crops (N, S, S, 3) and returns one probability per crop, with the model's
own normalisation inside the graph, so serving only has to cut crops as the manifest says. PyTorch is imported
inside the functions: serving never needs it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from service.models.manifest import ModelManifest

if TYPE_CHECKING:
    import torch

__all__ = ["ParityError", "check_parity", "export_onnx", "write_manifest"]

OPSET = 17
PARITY_ATOL = 1e-4


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree on the same crops by more than the tolerance."""


def export_onnx(module: torch.nn.Module, size: int, path: Path) -> bytes:
    """Export `module` ((N, size, size, 3) uint8 -> (N,) float) to `path` with a dynamic batch axis."""
    import torch

    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path.read_bytes()


def check_parity(
    module: torch.nn.Module, onnx_path: Path, crops: npt.NDArray[np.uint8], *, threads: int = 2
) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on `crops`; raises ParityError past 1e-4."""
    import torch

    from service.faces.detector import ort_session

    session = ort_session(onnx_path, threads)
    (onnx_out,) = session.run(["output"], {"input": crops})
    module.eval()
    with torch.no_grad():
        torch_out = module(torch.from_numpy(crops)).numpy()
    diff = float(np.max(np.abs(np.asarray(onnx_out, np.float64).reshape(-1) - torch_out.reshape(-1))))
    if not diff < PARITY_ATOL:
        raise ParityError(f"ONNX vs PyTorch max abs diff {diff:.3g} >= {PARITY_ATOL}")
    return diff


def write_manifest(onnx_path: Path, **fields: Any) -> Path:
    """Validate and write `model.json` beside `onnx_path` (uint8 NHWC input, probability output)."""
    data = onnx_path.read_bytes()
    manifest = ModelManifest.model_validate(
        {
            "file": onnx_path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "input_name": "input",
            "output_name": "output",
            "input_dtype": "uint8",
            "input_layout": "NHWC",
            "normalization_in_graph": True,
            "output": "probability",
            **fields,
        }
    )
    out = onnx_path.parent / "model.json"
    out.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return out
