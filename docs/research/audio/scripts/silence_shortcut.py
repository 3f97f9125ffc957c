"""Does silence make AASIST-L say 'bona fide'? One window from the start of each clip, AAC 64 kb/s round trip,
as is vs with 1.0 s of near-silence (-60 dBFS noise) prepended (fakes) / with leading+trailing silence trimmed
by the VAD (reals)."""
import sys, glob, numpy as np
sys.path.insert(0, "/work/research/issue16/scripts")
from audiolib import decode, encode_roundtrip, session, windows, p_spoof, SR, WIN
from vadlib import Silero
rng = np.random.default_rng(3); s = session("AASIST-L"); vad = Silero()
def first(x): return windows(x[:WIN] if len(x) >= WIN else x, 1)
def score(x): return float(p_spoof(s, first(encode_roundtrip(x, "aac", 64000)))[0][0])
R = "/work/research/issue16/synth"
print("fakes: p(spoof) as is -> with 1 s leading near-silence")
for pre in ["piper", "flite"]:
    a, b = [], []
    for i in range(10):
        x = decode(f"{R}/{pre}_{i}.wav")
        sil = (rng.standard_normal(SR) * 1e-3).astype(np.float32)
        a.append(score(x)); b.append(score(np.concatenate([sil, x])))
    print(f"  {pre}: median {np.median(a):.3f} -> {np.median(b):.3f}; share >0.5 {np.mean(np.array(a)>.5):.2f} -> {np.mean(np.array(b)>.5):.2f}")
a, b = [], []
for f in sorted(glob.glob("/work/shared/data/speech/librispeech/*.flac"))[:20]:
    x = decode(f); p, F = vad.probs(x); idx = np.where(p >= 0.5)[0]
    xt = x[idx[0] * F: (idx[-1] + 1) * F] if len(idx) else x
    a.append(score(x)); b.append(score(xt))
print(f"real LibriSpeech train-clean (20): as is -> leading/trailing silence trimmed: median {np.median(a):.3f} -> {np.median(b):.3f}; "
      f"share >0.5 {np.mean(np.array(a)>.5):.2f} -> {np.mean(np.array(b)>.5):.2f}")
