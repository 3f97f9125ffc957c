"""Triton Python-backend member model: one ONNX file on ONNX Runtime, one session call per merged batch.

Copied into `<member>/1/model.py` by `dfguard triton build-repo --target cpu`. It runs inside Triton's stub
with the server's own environment (numpy<2), so it imports nothing of dfguard: inputs arrive already prepared
by the client (`service/inference/prepare.py`), exactly as the embedded backend feeds the same file.
Each request gets the last `prod(output dims)` values of its rows: a crop member's one score per crop (of an
ONNX output [batch] or [batch, k]), the audio member's two logits per window.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by the Triton stub


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_threads", {}).get("string_value", "1"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.width = int(np.prod([int(d) for d in config["output"][0]["dims"]]))

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        (y,) = self.session.run([self.output_name], {self.input_name: batch})
        y = np.asarray(y, dtype=np.float32).reshape(len(batch), -1)[:, -self.width :]
        responses, offset = [], 0
        for n in sizes:
            out = pb_utils.Tensor(self.output_name, np.ascontiguousarray(y[offset : offset + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            offset += n
        return responses
