"""Interleaved timing of AASIST-L / AASIST ONNX at ORT graph optimisation levels (1 thread, spinning off)."""
import time, numpy as np, onnxruntime as ort
x = np.random.default_rng(0).standard_normal((1, 64600)).astype(np.float32) * 0.1
S = {}
for m in ["AASIST-L", "AASIST"]:
    for name, lvl in [("ALL", ort.GraphOptimizationLevel.ORT_ENABLE_ALL), ("EXTENDED", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)]:
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.graph_optimization_level = lvl
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        S[(m, name)] = ort.InferenceSession(f"/work/shared/weights/aasist/{m}.onnx", so, providers=["CPUExecutionProvider"])
ref = {}
for k, s in S.items(): ref[k] = s.run(None, {"waveform": x})[0]
ts = {k: [] for k in S}
for _ in range(5):
    for k, s in S.items():
        t = time.perf_counter(); s.run(None, {"waveform": x}); ts[k].append(time.perf_counter() - t)
for k in S:
    print(k, f"median {np.median(ts[k])*1000:.0f} ms min {min(ts[k])*1000:.0f} ms", "max|d| vs ALL", float(np.abs(ref[k] - ref[(k[0], 'ALL')]).max()))
