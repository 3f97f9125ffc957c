"""Vocoder-proxy fakes: every LibriSpeech clip -> 80-band mel spectrogram -> pseudo-inverse -> Griffin-Lim (32 iters)
-> waveform. Same speaker, same split as the source clip (source 'gl'). Writes gl/<n>.wav + gl/manifest.jsonl."""
import sys, os, glob, json
import numpy as np, scipy.signal as ss
from scipy.io import wavfile
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # audiolib, vadlib of the earlier research
from audiolib import decode, SR
from clips import clips, R
def melfb(n_fft=1024, n_mels=80, sr=SR, fmin=0, fmax=8000):
    hz2m = lambda f: 2595 * np.log10(1 + f / 700); m2hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    pts = m2hz(np.linspace(hz2m(fmin), hz2m(fmax), n_mels + 2)); freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        l, c, r = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((freqs - l) / (c - l), (r - freqs) / (r - c)), 0, None)
    return fb
FB = melfb(); PI = np.linalg.pinv(FB)
def gl(x, it=32, rng=np.random.default_rng(0)):
    kw = dict(fs=SR, nperseg=1024, noverlap=768, window="hann")
    _, _, Z = ss.stft(x, **kw); mag = np.clip(PI @ (FB @ np.abs(Z)), 0, None)
    ph = np.exp(2j * np.pi * rng.random(mag.shape))
    for _ in range(it):
        _, y = ss.istft(mag * ph, **kw); _, _, Z2 = ss.stft(y, **kw)
        Z2 = Z2[:, :mag.shape[1]]; ph = np.exp(1j * np.angle(Z2))
    _, y = ss.istft(mag * ph, **kw); y = y[:len(x)]
    return (y / (np.abs(y).max() + 1e-6) * 0.9).astype(np.float32)
os.makedirs(f"{R}/gl", exist_ok=True); man = []
for c in clips():
    if not c["src"].startswith("libri"): continue
    out = f"{R}/gl/gl_{c['id']}.wav"
    if not os.path.exists(out): wavfile.write(out, SR, (gl(decode(c["path"])) * 32767).astype(np.int16))
    man.append(dict(path=out, gen="gl", voice=c["spk"], split=c["split"], source_clip=c["path"]))
with open(f"{R}/gl/manifest.jsonl", "w") as fh:
    for m in man: fh.write(json.dumps(m) + "\n")
print(len(man))
