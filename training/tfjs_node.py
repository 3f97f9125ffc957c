"""Run a TF.js graph model under node (`@tensorflow/tfjs`, pure-JavaScript CPU backend): the parity reference.

`scripts/setup_pretrained.sh` installs the package into `.cache/tfjs/node_modules`;
`scripts/tfjs_features.mjs` does the work. Slow (seconds per 224 px image): meant for proofs, never for
training or serving.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["SCRIPT", "TFJS_DIR", "TfjsUnavailable", "missing", "run_graph"]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "tfjs_features.mjs"
TFJS_DIR = ROOT / ".cache" / "tfjs"
TFJS_VERSION = "4.22.0"


class TfjsUnavailable(RuntimeError):
    """node or @tensorflow/tfjs is not installed where the runner looks."""


def missing(tfjs_dir: Path = TFJS_DIR) -> str | None:
    """Why the reference cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    package = tfjs_dir / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
    if not package.exists():
        return f"@tensorflow/tfjs is not installed in {tfjs_dir}"
    version = json.loads(package.read_text()).get("version")
    if version != TFJS_VERSION:
        return f"@tensorflow/tfjs {version} in {tfjs_dir}, expected {TFJS_VERSION}"
    return None


def run_graph(
    model_json: Path,
    inputs: npt.NDArray[np.float32],
    outputs: list[str],
    *,
    tfjs_dir: Path = TFJS_DIR,
    timeout: float = 600.0,
) -> list[npt.NDArray[np.float32]]:
    """The values of graph nodes `outputs` for NHWC float32 `inputs`, computed by TF.js."""
    reason = missing(tfjs_dir)
    if reason is not None:
        raise TfjsUnavailable(f"{reason}: run scripts/setup_pretrained.sh")
    x = np.ascontiguousarray(inputs, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="tfjs-") as tmp:
        src, dst = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        src.write_bytes(x.tobytes())
        cmd = [
            "node",
            str(SCRIPT),
            "--tfjs",
            str(tfjs_dir),
            "--model",
            str(model_json),
            "--input",
            str(src),
            "--shape",
            ",".join(str(d) for d in x.shape),
            "--outputs",
            ",".join(outputs),
            "--out",
            str(dst),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tfjs_features.mjs failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        shapes = json.loads(done.stdout.strip().splitlines()[-1])["shapes"]
        flat = np.frombuffer(dst.read_bytes(), dtype="<f4")
    result, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        result.append(flat[offset : offset + n].reshape(shape).astype(np.float32))
        offset += n
    return result
