"""Is the published AASIST-L representation separable once silence is gone? Extract the 160-d pre-logit embedding
(ONNX '/m/Concat_output_0') of silence-free windows (VAD-spliced: pauses removed) after AAC 64 kb/s, fit a logistic
regression on the calibration half (LibriSpeech speakers with even id + even-index fakes), evaluate on the held-out
half. A cheap proxy for 'head-only fine-tuning' (no codec/noise augmentation, tiny data)."""
import sys, glob, os, re, json
import numpy as np, onnx, onnxruntime as ort
sys.path.insert(0, "/work/research/issue16/scripts")
from audiolib import decode, encode_roundtrip, windows, SR
from vadlib import Silero
from scipy.stats import rankdata
m = onnx.load("/work/shared/weights/aasist/AASIST-L.onnx")
m.graph.output.append(onnx.helper.make_tensor_value_info("/m/Concat_output_0", onnx.TensorProto.FLOAT, None))
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
R = "/work/research/issue16"; S = "/work/shared/data/speech"
clips = [(f, 0, "libri", f.split("/")[-2]) for f in sorted(glob.glob(f"{S}/librispeech/test-other/*/*.flac"))]
clips += [(f, 0, "libri", os.path.basename(f).split("-")[0]) for f in sorted(glob.glob(f"{S}/librispeech/*.flac"))]
clips += [(f, 1, "wavefake", re.findall(r"\d+", os.path.basename(f))[0]) for f in sorted(glob.glob(f"{S}/wavefake/*_gen.wav"))]
for pre, n in [("piper", 30), ("espeak", 20), ("flite", 20)]:
    clips += [(f"{R}/synth/{pre}_{i}.wav", 1, pre, str(i)) for i in range(n)]
vad = Silero(); X, y, half, src = [], [], [], []
cache = f"{R}/results/embed_aac64_spliced.npz"
if os.path.exists(cache):
    d = np.load(cache); X, y, half, src = d["X"], d["y"], d["half"], d["src"]
else:
    for f, lab, sr_, spk in clips:
        x = encode_roundtrip(decode(f), "aac", 64000); sp = vad.speech_only(x)
        if len(sp) < SR: sp = x
        w = windows(sp, 3)
        lg, e = s.run(None, {"waveform": w})
        X.append(e.mean(0)); y.append(lab); half.append(int(spk) % 2); src.append(sr_)
    X, y, half, src = map(np.array, (X, y, half, src)); np.savez(cache, X=X, y=y, half=half, src=src)
def auc(n, p):
    r = rankdata(np.concatenate([n, p])); return (r[len(n):].sum() - len(p) * (len(p) + 1) / 2) / (len(n) * len(p))
from numpy.linalg import solve
def fit_lr(X, y, l2=1.0, it=300):
    mu, sd = X.mean(0), X.std(0) + 1e-6; Z = (X - mu) / sd; Z1 = np.c_[Z, np.ones(len(Z))]
    w = np.zeros(Z1.shape[1]); cw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(it):  # Newton / IRLS with class weights
        p = 1 / (1 + np.exp(-Z1 @ w)); g = Z1.T @ (cw * (p - y)) + l2 * np.r_[w[:-1], 0]
        H = (Z1 * (cw * p * (1 - p))[:, None]).T @ Z1 + l2 * np.diag(np.r_[np.ones(len(w) - 1), 0])
        w -= solve(H, g)
    return lambda Xn: np.c_[(Xn - mu) / sd, np.ones(len(Xn))] @ w
tr, te = half == 0, half == 1
for l2 in (1.0, 10.0, 100.0):
    f = fit_lr(X[tr], y[tr].astype(float), l2)
    sc = f(X[te]); rl = sc[y[te] == 0]; fk = sc[y[te] == 1]
    cal = f(X[tr & (y == 0)]); t = np.quantile(cal, 0.95)
    print(f"l2={l2}: held-out AUC {auc(rl, fk):.3f}; review thr from cal-real 95th pct: held-out real to review "
          f"{np.mean(rl >= t)*100:.1f} %, fakes caught {np.mean(fk >= t)*100:.0f} %; by source " +
          ", ".join(f"{k} {np.mean(sc[(y[te]==1) & (src[te]==k)] >= t)*100:.0f} %" for k in ("piper", "wavefake", "flite", "espeak")))
print("n train", tr.sum(), "n test", te.sum(), "(real/fake test:", (y[te] == 0).sum(), (y[te] == 1).sum(), ")")
# leave one generator out: train on calibration half without generator k, test held-out real vs generator k (all clips)
for k in ("piper", "wavefake", "flite", "espeak"):
    trk = tr & (src != k)
    f = fit_lr(X[trk], y[trk].astype(float), 10.0)
    rl = f(X[te & (y == 0)]); fk = f(X[src == k]); t = np.quantile(f(X[tr & (y == 0)]), 0.95)
    print(f"unseen generator {k}: AUC {auc(rl, fk):.3f}, caught at cal-95th-pct {np.mean(fk >= t)*100:.0f} %")
