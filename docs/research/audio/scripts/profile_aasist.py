"""ORT op-type profile of AASIST-L (1 thread), and cost of shorter windows if the graph allowed it."""
import json, sys, collections, glob, os
import numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.enable_profiling = True
so.profile_file_prefix = "/tmp/aasistl_prof"
s = ort.InferenceSession("/work/shared/weights/aasist/AASIST-L.onnx", so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 64600)).astype(np.float32) * 0.1
for _ in range(3): s.run(None, {"waveform": x})
f = s.end_profiling()
ev = json.load(open(f)); agg = collections.Counter()
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        agg[e["args"]["op_name"]] += e["dur"]
tot = sum(agg.values())
for k, v in agg.most_common(8): print(f"{k:20s} {v/3/1000:7.1f} ms/run  {v/tot*100:5.1f} %")
os.remove(f)
