"""Score real and synthetic clips with AASIST(-L) ONNX after codec round trips; windows (3) over VAD speech only.
Writes one JSON line per (model, condition, clip) to results/scores.jsonl (resumable)."""
import sys, glob, os, json, time
import numpy as np
sys.path.insert(0, "/work/research/issue16/scripts")
from audiolib import decode, encode_roundtrip, add_noise, session, windows, p_spoof, SR
from vadlib import Silero

def placed_windows(vad, y, n, WIN=64600):
    if len(y) <= WIN: return windows(y, 1)
    p, F = vad.probs(y); m = np.repeat(p >= 0.5, F)[:len(y)].astype(np.float32)
    cs = np.concatenate([[0], np.cumsum(m)])
    starts = np.arange(0, len(y) - WIN + 1, 1600)
    frac = (cs[starts + WIN] - cs[starts]) / WIN
    chosen = []
    for i in np.argsort(-frac, kind="stable"):
        if all(abs(starts[i] - c) >= 32000 for c in chosen): chosen.append(starts[i])
        if len(chosen) == n: break
    return np.stack([y[c:c + WIN] for c in sorted(chosen)])


R = "/work/research/issue16"; S = "/work/shared/data/speech"
clips = []
for f in sorted(glob.glob(f"{S}/librispeech/test-other/*/*.flac")):
    clips.append(dict(path=f, label=0, src="libri-test-other", spk=f.split("/")[-2]))
for f in sorted(glob.glob(f"{S}/librispeech/*.flac")):
    clips.append(dict(path=f, label=0, src="libri-train-clean", spk=os.path.basename(f).split("-")[0]))
for f in sorted(glob.glob(f"{S}/wavefake/LJ*.wav")):
    real = not f.endswith("_gen.wav")
    clips.append(dict(path=f, label=0 if real else 1, src="lj-real" if real else "wavefake", spk="LJ"))
for pre, n in [("piper", 30), ("espeak", 20), ("flite", 20)]:
    for i in range(n):
        f = f"{R}/synth/{pre}_{i}.wav"
        if os.path.exists(f): clips.append(dict(path=f, label=1, src=pre, spk=f"{pre}{i % 2}"))
rng = np.random.default_rng(7)
CONDS = {"clean": lambda x: x, "aac64": lambda x: encode_roundtrip(x, "aac", 64000),
         "opus32": lambda x: encode_roundtrip(x, "opus", 32000),
         "aac64_noise20": lambda x: encode_roundtrip(add_noise(x, 20, rng), "aac", 64000)}
plan = [(m, c) for m, c in [(a.split(":")[0], a.split(":")[1]) for a in sys.argv[1:]]]
os.makedirs(f"{R}/results", exist_ok=True)
out = f"{R}/results/scores.jsonl"
done = set()
if os.path.exists(out):
    for l in open(out):
        d = json.loads(l); done.add((d["model"], d["cond"], d["path"]))
vad = Silero(); sess = {}
for model, cond in plan:
    if model not in sess: sess[model] = session(model)
    t0 = time.time(); n = 0
    for c in clips:
        if (model, cond, c["path"]) in done: continue
        x = decode(c["path"])
        novad = cond.endswith("_novad")
        place = cond.endswith("_vadplace")
        y = CONDS[cond.replace("_novad", "").replace("_vadplace", "")](x)
        if place:  # windows of the original signal placed where speech is densest (no splicing)
            w = placed_windows(vad, y, 3); sp = y
        else:
            sp = y if novad else vad.speech_only(y)  # *_novad: raw windows over the whole track (silences kept)
            if len(sp) < SR: sp = y  # too little speech: fall back to the whole track
            w = windows(sp, 3)
        p, lg = p_spoof(sess[model], w)
        rec = dict(c, model=model, cond=cond, dur=len(x) / SR, speech_s=len(sp) / SR, nwin=len(w),
                   p=p.tolist(), llr=(lg[:, 0] - lg[:, 1]).tolist())
        with open(out, "a") as fh: fh.write(json.dumps(rec) + "\n")
        n += 1
    print(model, cond, n, "clips", f"{time.time()-t0:.0f}s", flush=True)
