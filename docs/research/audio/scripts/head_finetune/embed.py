"""Worker: compute AASIST-L logits + 160-d pre-logit embedding (/m/Concat_output_0) for tasks, cached per task.
usage: embed.py WORKER NWORKERS PHASE...   phases: eval_aac64 train_aug sil test_opus32 test_noise20
Each task -> cache/<phase>/<clip id>.npz (emb (n,160), lg (n,2), meta)."""
import sys, os, json, time
import numpy as np, onnx, onnxruntime as ort
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # audiolib, vadlib of the earlier research
from audiolib import decode, encode_roundtrip, add_noise, windows, SR, WIN
from vadlib import Silero
from clips import clips, R
import av, audiolib
AWIN = int(os.environ.get("AWIN", "64600")); SUF = "" if AWIN == 64600 else f"_{AWIN}"
if AWIN != 64600: audiolib.WIN = AWIN; WIN = AWIN   # shorter windows: the ONNX input dim is freed in session()

def placed_windows(vad, y, n, WIN=None):
    WIN = WIN or AWIN
    if len(y) <= WIN: return windows(y, 1), [0]
    p, F = vad.probs(y); m = np.repeat(p >= 0.5, F)[:len(y)].astype(np.float32)
    cs = np.concatenate([[0], np.cumsum(m)])
    starts = np.arange(0, len(y) - WIN + 1, 1600)
    frac = (cs[starts + WIN] - cs[starts]) / WIN
    chosen = []
    for i in np.argsort(-frac, kind="stable"):
        if all(abs(starts[i] - c) >= 32000 for c in chosen): chosen.append(int(starts[i]))
        if len(chosen) == n: break
    chosen = sorted(chosen)
    return np.stack([y[c:c + WIN] for c in chosen]), chosen

def session():
    m = onnx.load("/work/shared/weights/aasist/AASIST-L.onnx")
    m.graph.output.append(onnx.helper.make_tensor_value_info("/m/Concat_output_0", onnx.TensorProto.FLOAT, None))
    if AWIN != 64600:
        d = m.graph.input[0].type.tensor_type.shape.dim[1]; d.ClearField("dim_value"); d.dim_param = "samples"
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

def resample(x, sr_from, sr_to):
    fr = av.AudioFrame.from_ndarray(x.reshape(1, -1).astype(np.float32), format="flt", layout="mono"); fr.sample_rate = sr_from
    rs = av.AudioResampler(format="flt", layout="mono", rate=sr_to)
    o = rs.resample(fr) + rs.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in o]).astype(np.float32)

def silence(n, rng):
    kind = rng.integers(3)
    if kind == 0: return np.zeros(n, np.float32)
    lvl = 10 ** (rng.uniform(-75, -50) / 20)
    return (rng.standard_normal(n) * lvl).astype(np.float32)

def augment(x, rng):
    """Random pauses on both classes, optional band-limit via 8 kHz, gain, noise 20 dB, codec AAC64/Opus32/none."""
    info = {}
    if rng.random() < 0.7:
        lead = int(rng.uniform(0.1, 1.5) * SR); parts = [silence(lead, rng)]
        cuts = sorted(rng.integers(0, len(x), rng.integers(0, 3)))
        prev = 0
        for c in cuts:
            parts += [x[prev:c], silence(int(rng.uniform(0.2, 0.8) * SR), rng)]; prev = c
        parts += [x[prev:], silence(int(rng.uniform(0, 0.8) * SR), rng)]
        x = np.concatenate(parts); info["pauses"] = 1 + len(cuts)
    if rng.random() < 0.15: x = resample(resample(x, SR, 8000), 8000, SR); info["bl8k"] = 1
    x = x * (10 ** (rng.uniform(-8, 2) / 20)) / (np.abs(x).max() + 1e-6) * 0.9
    if rng.random() < 0.35: x = add_noise(x, 20, rng); info["noise20"] = 1
    r = rng.random()
    if r < 0.4: x = encode_roundtrip(x, "aac", 64000); info["codec"] = "aac64"
    elif r < 0.7: x = encode_roundtrip(x, "opus", 32000); info["codec"] = "opus32"
    else: info["codec"] = "none"
    return np.clip(x, -1, 1).astype(np.float32), info

def pauses(x, rng, every=(1.0, 2.5), dur=(0.3, 1.0), lead=(0.5, 2.0)):
    """Insert a leading silence and a pause every 1-2.5 s of signal (the pause-insertion attack / augmentation)."""
    parts = [silence(int(rng.uniform(*lead) * SR), rng)]; i = 0
    while i < len(x):
        j = min(len(x), i + int(rng.uniform(*every) * SR)); parts += [x[i:j], silence(int(rng.uniform(*dur) * SR), rng)]; i = j
    return np.concatenate(parts)

def augment2(x, rng):
    """Silence-heavy augmentation for both classes: leading silence inside the window, or dense inner pauses."""
    info = {}
    if rng.random() < 0.5:
        x = np.concatenate([silence(int(rng.uniform(0.5, 2.0) * SR), rng), x]); info["mode"] = "lead_window0"
    else:
        x = pauses(x, rng); info["mode"] = "inner_pauses"
    x = x * (10 ** (rng.uniform(-8, 2) / 20)) / (np.abs(x).max() + 1e-6) * 0.9
    if rng.random() < 0.5: x = add_noise(x, float(rng.uniform(15, 30)), rng); info["noise"] = 1
    r = rng.random()
    if r < 0.4: x = encode_roundtrip(x, "aac", 64000); info["codec"] = "aac64"
    elif r < 0.7: x = encode_roundtrip(x, "opus", 32000); info["codec"] = "opus32"
    else: info["codec"] = "none"
    return np.clip(x, -1, 1).astype(np.float32), info

def main():
    wk, nw = int(sys.argv[1]), int(sys.argv[2]); phases = sys.argv[3:]
    cs = clips(); sess = session(); vad = Silero()
    for ph in phases:
        os.makedirs(f"{R}/cache/{ph}{SUF}", exist_ok=True)
        if ph == "eval_aac64": todo = cs
        elif ph in ("train_aug", "train_aug2"): todo = [c for c in cs if c["split"] == "train"]
        elif ph == "pause_attack": todo = [c for c in cs if c["split"] == "test"]
        elif ph == "sil": todo = [c for c in cs if c["split"] in ("test", "cal") and c["label"] == 1]
        elif ph in ("test_opus32", "test_noise20"): todo = [c for c in cs if c["split"] == "test"]
        todo = [c for c in todo if c["id"] % nw == wk and not (SUF and c["src"] == "gl")]
        t0 = time.time(); nwin = 0; tinf = 0.0
        for c in todo:
            out = f"{R}/cache/{ph}{SUF}/{c['id']}.npz"
            if os.path.exists(out): continue
            rng = np.random.default_rng(1000 * c["id"] + len(ph))
            x = decode(c["path"]); meta = {}
            if ph == "eval_aac64":
                y = encode_roundtrip(x, "aac", 64000); w, st = placed_windows(vad, y, 3); meta["starts"] = st
            elif ph == "test_opus32":
                y = encode_roundtrip(x, "opus", 32000); w, st = placed_windows(vad, y, 3)
            elif ph == "test_noise20":
                y = encode_roundtrip(add_noise(x, 20, rng), "aac", 64000); w, st = placed_windows(vad, y, 3)
            elif ph == "sil":  # 1 s of near-silence (-60 dBFS) prepended, AAC 64: placed windows + the raw first window
                y = encode_roundtrip(np.concatenate([(rng.standard_normal(SR) * 1e-3).astype(np.float32), x]), "aac", 64000)
                wp, st = placed_windows(vad, y, 3); w = np.concatenate([wp, windows(y[:WIN] if len(y) >= WIN else y, 1)])
                meta["n_placed"] = len(wp)
            elif ph == "pause_attack":  # 0.5-2 s leading silence + a 0.3-1 s pause every 1-2.5 s, AAC 64, placed windows
                y = encode_roundtrip(pauses(x, rng), "aac", 64000); w, st = placed_windows(vad, y, 3)
            elif ph == "train_aug2":
                ws, infos = [], []
                for k in range(6):
                    y, info = augment2(x, rng)
                    if info["mode"] == "lead_window0": ww = windows(y[:WIN] if len(y) >= WIN else y, 1)
                    else: ww, st = placed_windows(vad, y, 1)
                    ws.append(ww[0]); infos.append(info)
                w = np.stack(ws); meta["aug"] = infos
            elif ph == "train_aug":
                ws, infos = [], []
                for k in range(4):
                    y, info = augment(x, rng)
                    if rng.random() < 0.5: ww, st = placed_windows(vad, y, 1); info["place"] = "vad"
                    else:
                        s0 = int(rng.integers(0, max(1, len(y) - WIN + 1))); ww = windows(y[s0:s0 + WIN] if len(y) >= WIN else y, 1)
                        info["place"] = "random"
                    ws.append(ww[0]); infos.append(info)
                w = np.stack(ws); meta["aug"] = infos
            t1 = time.time()
            lg, e = sess.run(None, {"waveform": w.astype(np.float32)})
            tinf += time.time() - t1; nwin += len(w)
            np.savez(out, emb=e, lg=lg, meta=json.dumps(meta))
        print(ph, "worker", wk, "clips", len(todo), "windows", nwin, f"total {time.time()-t0:.0f}s, inference {tinf:.0f}s "
              f"({tinf/max(nwin,1)*1000:.0f} ms/window)", flush=True)

if __name__ == "__main__":
    main()
