"""Frame-level VAD accuracy on constructed tracks with known speech positions, and speed per 10 s.
Track = [non-speech A][speech clip][non-speech B][speech clip][non-speech C]; non-speech kinds: digital silence,
low white noise (-50 dBFS), pink-ish noise (-30 dBFS), street-like brown noise (-25 dBFS), a chord of tones
(music-like), clapping-like impulses. Speech clips: LibriSpeech test-other (real). Truth = the speech clip span
(its inner pauses count as speech: identical handicap for every VAD). Conditions: clean, speech+noise SNR 10 dB
over the whole track, and AAC 64 kb/s round trip. 32 tracks per condition."""
import sys, glob, time, importlib.util, os
import numpy as np
sys.path.insert(0, "/work/research/issue16/scripts")
from audiolib import decode, encode_roundtrip, add_noise, SR
import onnxruntime as ort
import webrtcvad

rng = np.random.default_rng(1)
spec = importlib.util.find_spec("silero_vad")  # locate the wheel's data WITHOUT importing it (it imports torch)
DATA = os.path.join(spec.submodule_search_locations[0], "data")


class Silero:
    """Torch-free: the wheel's sequence ONNX (one ORT call per <=512 frames of 32 ms)."""
    def __init__(self):
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.s = ort.InferenceSession(os.path.join(DATA, "silero_vad_16k_sequence.onnx"), so, providers=["CPUExecutionProvider"])
    def probs(self, x):
        F, C = 512, 64
        n = (len(x) + F - 1) // F
        fr = np.zeros((n, F), np.float32); fr.reshape(-1)[:len(x)] = x
        ctx = np.zeros((n, C), np.float32); ctx[1:] = fr[:-1, -C:]
        h = np.zeros((1, 1, 128), np.float32); c = np.zeros((1, 1, 128), np.float32); out = []
        blk = np.concatenate([ctx, fr], 1)
        for i in range(0, n, 512):
            p, h, c = self.s.run(["speech_probs", "hn", "cn"], {"input": blk[i:i + 512], "h": h, "c": c})
            out.append(p)
        return np.concatenate(out).reshape(-1), F


class Silero1:
    """The wheel's streaming silero_vad.onnx, frame by frame (for the speed comparison)."""
    def __init__(self):
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        self.s = ort.InferenceSession(os.path.join(DATA, "silero_vad.onnx"), so, providers=["CPUExecutionProvider"])
    def probs(self, x):
        F, C = 512, 64
        st = np.zeros((2, 1, 128), np.float32); ctx = np.zeros(C, np.float32); out = []
        sr = np.array(16000, np.int64)
        for i in range(0, len(x) - F + 1, F):
            fr = x[i:i + F]
            o, st = self.s.run(None, {"input": np.concatenate([ctx, fr])[None], "state": st, "sr": sr})
            ctx = fr[-C:]; out.append(float(o[0, 0]))
        return np.array(out), F


class WebRTC:
    def __init__(self, mode): self.v = webrtcvad.Vad(mode)
    def probs(self, x):
        F = 480
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        return np.array([float(self.v.is_speech(pcm[i:i + F].tobytes(), SR)) for i in range(0, len(pcm) - F + 1, F)]), F


class Energy:
    """Baseline: frame RMS above (track max - 30 dB)."""
    def probs(self, x):
        F = 480
        n = len(x) // F
        e = 10 * np.log10(np.mean(x[:n * F].reshape(n, F) ** 2, 1) + 1e-10)
        return (e > e.max() - 30).astype(float), F


def nonspeech(kind, n):
    if kind == "silence": return np.zeros(n, np.float32)
    if kind == "white": return (rng.standard_normal(n) * 10 ** (-50 / 20)).astype(np.float32)
    if kind == "pink":
        w = rng.standard_normal(n); f = np.fft.rfft(w); f /= np.sqrt(np.arange(1, len(f) + 1))
        y = np.fft.irfft(f, n); return (y / y.std() * 10 ** (-30 / 20)).astype(np.float32)
    if kind == "brown":
        y = np.cumsum(rng.standard_normal(n)); y -= np.convolve(y, np.ones(801) / 801, "same")
        return (y / y.std() * 10 ** (-25 / 20)).astype(np.float32)
    if kind == "chord":
        t = np.arange(n) / SR
        y = sum(np.sin(2 * np.pi * f0 * t) for f0 in (261.6, 329.6, 392.0, 523.3)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
        return (0.05 * y).astype(np.float32)
    if kind == "claps":
        y = np.zeros(n, np.float32)
        for s in rng.integers(0, n - 800, n // 4000):
            y[s:s + 800] += (rng.standard_normal(800) * np.exp(-np.arange(800) / 120) * 0.2).astype(np.float32)
        return y
KINDS = ["silence", "white", "pink", "brown", "chord", "claps"]

clips = sorted(glob.glob("/work/shared/data/speech/librispeech/test-other/*/*.flac"))
rng.shuffle(clips)
tracks = []
for i in range(32):
    a, b = decode(clips[2 * i]), decode(clips[2 * i + 1])
    a = a[:int(4 * SR)] if len(a) > 4 * SR else a
    b = b[:int(4 * SR)] if len(b) > 4 * SR else b
    ks = [KINDS[(i + j) % len(KINDS)] for j in range(3)]
    lens = [int(rng.uniform(1.0, 2.5) * SR) for _ in range(3)]
    parts = [nonspeech(ks[0], lens[0]), a, nonspeech(ks[1], lens[1]), b, nonspeech(ks[2], lens[2])]
    truth = np.concatenate([np.zeros(lens[0]), np.ones(len(a)), np.zeros(lens[1]), np.ones(len(b)), np.zeros(lens[2])])
    kindlab = np.concatenate([np.full(lens[0], KINDS.index(ks[0])), np.full(len(a), -1), np.full(lens[1], KINDS.index(ks[1])),
                              np.full(len(b), -1), np.full(lens[2], KINDS.index(ks[2]))])
    tracks.append((np.concatenate(parts).astype(np.float32), truth, kindlab))

conds = {"clean": lambda x: x, "noise_snr10": lambda x: add_noise(x, 10, rng),
         "aac64": lambda x: encode_roundtrip(x, "aac", 64000)[:len(x)]}
vads = {"silero_seq@0.5": (Silero(), 0.5), "silero_seq@0.35": (None, 0.35), "webrtc0": (WebRTC(0), .5), "webrtc2": (WebRTC(2), .5),
        "webrtc3": (WebRTC(3), .5), "energy-30dB": (Energy(), .5)}
vads["silero_seq@0.35"] = (vads["silero_seq@0.5"][0], 0.35)
print(f"{'cond':12s} {'vad':16s} {'prec':>6s} {'recall':>6s} {'F1':>6s}  FPR per non-speech kind " + " ".join(KINDS))
for cn, fn in conds.items():
    ct = [(fn(x), t, k) for x, t, k in tracks]
    cache = {}
    for vn, (v, th) in vads.items():
        TP = FP = FN = 0; fpk = np.zeros(len(KINDS)); nk = np.zeros(len(KINDS))
        for x, t, k in ct:
            key = (id(v), id(x))
            if key not in cache: cache[key] = v.probs(x)
            p, F = cache[key]
            pred = p >= th
            nf = min(len(pred), len(t) // F)
            ft = t[:nf * F].reshape(nf, F).mean(1) > 0.5
            fk = k[:nf * F].reshape(nf, F)[:, F // 2]
            pred = pred[:nf]
            TP += np.sum(pred & ft); FP += np.sum(pred & ~ft); FN += np.sum(~pred & ft)
            for j in range(len(KINDS)):
                m = fk == j; fpk[j] += np.sum(pred[m]); nk[j] += m.sum()
        pr, rc = TP / max(TP + FP, 1), TP / max(TP + FN, 1)
        print(f"{cn:12s} {vn:16s} {pr:6.3f} {rc:6.3f} {2*pr*rc/(pr+rc):6.3f}  " + " ".join(f"{a/max(b,1):.2f}" for a, b in zip(fpk, nk)))
# speed per 10 s
x = tracks[0][0]; x10 = np.tile(x, 3)[:10 * SR]
for vn, v in [("silero_seq (1 ORT call)", Silero()), ("silero streaming (per 32 ms frame)", Silero1()), ("webrtc mode 3", WebRTC(3)), ("energy", Energy())]:
    v.probs(x10); ts = []
    for _ in range(5):
        t0 = time.perf_counter(); v.probs(x10); ts.append(time.perf_counter() - t0)
    print(f"speed {vn}: median {np.median(ts)*1000:.1f} ms per 10 s of 16 kHz audio")
# parity: sequence vs streaming model
p1, _ = Silero().probs(x10); p2, _ = Silero1().probs(x10)
n = min(len(p1), len(p2)); print("silero sequence vs streaming max |dp| =", float(np.abs(p1[:n] - p2[:n]).max()))
