"""Ship-shaped artefact: AASIST-L ONNX with the fine-tuned linear head written into its final Gemm
(m.out_layer.weight/bias replaced by [w/2; -w/2], [c/2; -c/2]) so the graph, input and output stay identical:
logits (batch, 2) = [spoof, bona fide], llr = logit0 - logit1 = head score, p(spoof) = softmax[:,0] = sigmoid(score).
Parity: new ONNX vs (published ONNX embedding @ W + c) on the reference inputs and on random cached windows;
published reference logits reproduced by the untouched graph; cost per window, published vs head model."""
import sys, os, json, time, hashlib
import numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # audiolib, vadlib of the earlier research
from audiolib import decode, windows, WIN
from embed import session as emb_session
R = "/work/research/issue16b"; A = "/work/shared/weights/aasist"
V = os.environ.get("HEAD_V", "2"); h = np.load(f"{R}/results/head_v{V}.npz"); W, c = h["W"].astype(np.float32), float(h["c"])
m = onnx.load(f"{A}/AASIST-L.onnx")
for init in m.graph.initializer:
    if init.name == "m.out_layer.weight":
        assert tuple(init.dims) == (2, 160); init.CopyFrom(numpy_helper.from_array(np.stack([W / 2, -W / 2]).astype(np.float32), init.name))
    if init.name == "m.out_layer.bias":
        init.CopyFrom(numpy_helper.from_array(np.array([c / 2, -c / 2], np.float32), init.name))
m.doc_string = "AASIST-L (clovaai/aasist, MIT, NAVER) encoder frozen; out_layer re-fitted (head-only) for dfguard issue 16 research"
onnx.checker.check_model(m)
out = f"{R}/results/AASIST-L-headft-v{V}.onnx"; onnx.save(m, out)
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
snew = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
spub = ort.InferenceSession(f"{A}/AASIST-L.onnx", so, providers=["CPUExecutionProvider"]); semb = emb_session()
ref = json.load(open(f"{A}/reference/logits.json"))["AASIST-L"]
rec = {"sha256": hashlib.sha256(open(out, "rb").read()).hexdigest(), "size": os.path.getsize(out), "reference": {}}
for f in ("espeak_16k.wav", "noise_16k.wav", "tone_16k.wav"):
    x = decode(f"{A}/reference/{f}"); w = windows(x[:WIN] if len(x) >= WIN else x, 1).astype(np.float32)
    lg_pub = spub.run(None, {"waveform": w})[0][0]; lg_e, e = semb.run(None, {"waveform": w}); lg_new = snew.run(None, {"waveform": w})[0][0]
    s_np = float(e[0] @ W + c)
    rec["reference"][f] = dict(published_logits=lg_pub.tolist(), published_vs_reference_maxabs=float(np.abs(lg_pub - ref[f]["logits"]).max()),
                               headft_logits=lg_new.tolist(), headft_llr=float(lg_new[0] - lg_new[1]), numpy_head_llr=s_np,
                               headft_vs_numpy_abs=abs(float(lg_new[0] - lg_new[1]) - s_np), headft_p_spoof=float(1 / (1 + np.exp(-s_np))))
    print(f, rec["reference"][f])
# timing, interleaved, 1 window of 64,600 samples
x = np.random.default_rng(0).standard_normal((1, WIN)).astype(np.float32) * 0.1
T = {"published": [], "headft": [], "published+emb_output": []}
for k in range(8):
    for nm, s in (("published", spub), ("headft", snew), ("published+emb_output", semb)):
        t = time.perf_counter(); s.run(None, {"waveform": x}); T[nm].append(time.perf_counter() - t)
rec["timing_ms"] = {k: dict(min=1000 * min(v[1:]), median=1000 * float(np.median(v[1:]))) for k, v in T.items()}
print(rec["timing_ms"])
t = time.perf_counter()
for _ in range(10000): _ = e[0] @ W + c
rec["numpy_head_us"] = (time.perf_counter() - t) / 10000 * 1e6
json.dump(rec, open(f"{R}/results/export_parity_v{V}.json", "w"), indent=1)
print("numpy head", rec["numpy_head_us"], "us; sha256", rec["sha256"])
