"""Export AASIST-L (published weights, reference class) to ONNX at 64,600 and 32,000 samples; ORT 1-thread timing
(interleaved), and how the published weights score 2-s windows (parity of the 64,600 export with the shipped ONNX)."""
import sys, time, numpy as np, torch, onnxruntime as ort
sys.path.insert(0, "/work/research/issue16/ref")
from aasist_model import Model
torch.set_num_threads(1)
cfg = dict(first_conv=128, filts=[70, [1, 32], [32, 32], [32, 24], [24, 24]], gat_dims=[24, 32],
           pool_ratios=[0.4, 0.5, 0.7, 0.5], temperatures=[2.0, 2.0, 100.0, 100.0])
m = Model(cfg); m.load_state_dict(torch.load("/work/shared/weights/aasist/AASIST-L.pth", map_location="cpu")); m.eval()
S = {}
for L in (64600, 32000):
    f = f"/tmp/aasistl_{L}.onnx"
    torch.onnx.export(m, torch.zeros(1, L), f, input_names=["waveform"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"waveform": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    S[L] = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
so = ort.SessionOptions(); so.intra_op_num_threads = 1
shipped = ort.InferenceSession("/work/shared/weights/aasist/AASIST-L.onnx", so, providers=["CPUExecutionProvider"])
x = (np.random.default_rng(0).standard_normal((1, 64600)) * 0.1).astype(np.float32)
print("re-export vs shipped ONNX max|d| logits:", float(np.abs(S[64600].run(None, {"waveform": x})[0] - shipped.run(None, {"waveform": x})[0]).max()))
ts = {L: [] for L in S}
for _ in range(6):
    for L, s in S.items():
        xx = x[:, :L]; t = time.perf_counter(); s.run(None, {"waveform": xx}); ts[L].append(time.perf_counter() - t)
for L in S: print(f"ORT 1 thread, 1 x {L}: median {np.median(ts[L])*1000:.0f} ms, min {min(ts[L])*1000:.0f} ms")
