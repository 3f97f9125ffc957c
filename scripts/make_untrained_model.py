"""Build the placeholder classifier `dfguard-untrained-mini`: a tiny CNN with seeded random weights.

It exists so the whole pipeline runs end to end before a trained model lands; its scores mean nothing and the
service says so (`trained: false` in the manifest, reason `untrained_model` on every verdict). The graph takes
raw uint8 RGB crops (NHWC) and normalises inside the graph, as trained models will. Needs `onnx` (dev extra).
Usage: python scripts/make_untrained_model.py [OUT_DIR]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OUT = Path(__file__).resolve().parents[1] / "service" / "models" / "builtin" / "untrained-mini"


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array(MEAN, np.float32).reshape(1, 3, 1, 1) * 255, "mean255"),
        numpy_helper.from_array(np.array(STD, np.float32).reshape(1, 3, 1, 1) * 255, "std255"),
    ]
    nodes = [
        helper.make_node("Cast", ["input"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["x_nchw", "mean255"], ["x_c"]),
        helper.make_node("Div", ["x_c", "std255"], ["x0"]),
    ]
    prev, cin = "x0", 3
    for i, cout in enumerate((16, 32, 64, 96)):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node(
                "Conv",
                [prev, f"w{i}", f"b{i}"],
                [f"c{i}"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev, cin = f"r{i}", cout
    wf = rng.normal(0, np.sqrt(1.0 / cin), (cin, 1)).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(np.zeros(1, np.float32), "bf")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["feat"], axis=1),
        helper.make_node("Gemm", ["feat", "wf", "bf"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob2d"]),
        helper.make_node("Reshape", ["prob2d", "shape_n"], ["output"]),
    ]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "shape_n"))
    graph = helper.make_graph(
        nodes,
        "dfguard_untrained_mini",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dfguard")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = build().SerializeToString()
    (out / "model.onnx").write_bytes(data)
    manifest = {
        "schema_version": 1,
        "name": "dfguard-untrained-mini",
        "version": "0.0.0-untrained",
        "trained": False,
        "file": "model.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_name": "input",
        "output_name": "output",
        "input_size": SIZE,
        "input_dtype": "uint8",
        "input_layout": "NHWC",
        "mean": list(MEAN),
        "std": list(STD),
        "normalization_in_graph": True,
        "crop_margin": 0.3,
        "resize": "linear",
        "output": "probability",
        "output_meaning": "probability that the face is manipulated (fake); UNTRAINED: meaningless",
        "thresholds": None,
        "description": "Placeholder 4-layer CNN with seeded random weights (scripts/make_untrained_model.py)."
        " Not trained: its scores carry no information about manipulation.",
        "licence": "Proprietary (dfguard)",
    }
    (out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {out / 'model.onnx'} ({len(data)} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
