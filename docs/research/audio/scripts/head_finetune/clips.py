"""Clip list with train / cal / test split by speaker (or by voice / sentence pool for synthetic speech)."""
import glob, os, json, re
import numpy as np
R = "/work/research/issue16b"; S = "/work/shared/data/speech"

def clips():
    rng = np.random.default_rng(1616)
    out = []
    to = sorted(d for d in os.listdir(f"{S}/librispeech/test-other") if os.path.isdir(f"{S}/librispeech/test-other/{d}")); rng.shuffle(to)
    sp_to = {s: ("train" if i < 4 else "cal" if i < 7 else "test") for i, s in enumerate(to)}
    for f in sorted(glob.glob(f"{S}/librispeech/test-other/*/*.flac")):
        s = f.split("/")[-2]; out.append(dict(path=f, label=0, src="libri-test-other", spk="L" + s, split=sp_to[s]))
    tc = sorted(glob.glob(f"{S}/librispeech/*.flac")); tcs = [os.path.basename(f).split("-")[0] for f in tc]
    order = list(range(len(tc))); rng.shuffle(order)
    for k, i in enumerate(order):
        out.append(dict(path=tc[i], label=0, src="libri-train-clean", spk="L" + tcs[i],
                        split="train" if k < 24 else "cal" if k < 42 else "test"))
    ids = sorted({re.findall(r"LJ\d+-\d+", f)[0] for f in glob.glob(f"{S}/wavefake/LJ*.wav")}); rng.shuffle(ids)
    sp_lj = {u: ("train" if i < 5 else "cal" if i < 7 else "test") for i, u in enumerate(ids)}
    for f in sorted(glob.glob(f"{S}/wavefake/LJ*.wav")):
        u = re.findall(r"LJ\d+-\d+", f)[0]; real = not f.endswith("_gen.wav")
        # LJ is one speaker: speaker split impossible; utterance pairs stay together. Bootstrap cluster = utterance.
        out.append(dict(path=f, label=0 if real else 1, src="lj-real" if real else "wavefake", spk="LJ" + u, split=sp_lj[u]))
    for l in open(f"{R}/synth/manifest.jsonl"):
        m = json.loads(l)
        spk = m["gen"] + ":" + (m["voice"] if m["gen"] != "piper" else os.path.basename(m["path"]))
        out.append(dict(path=m["path"], label=1, src=m["gen"], spk=spk, split=m["split"]))
    if os.path.exists(f"{R}/gl/manifest.jsonl"):  # vocoder-proxy fakes (Griffin-Lim of each LibriSpeech clip), appended last
        for l in open(f"{R}/gl/manifest.jsonl"):
            m = json.loads(l); out.append(dict(path=m["path"], label=1, src="gl", spk="gl:" + m["voice"], split=m["split"]))
    for i, c in enumerate(out): c["id"] = i
    return out

if __name__ == "__main__":
    from collections import Counter
    cs = clips()
    print(Counter((c["split"], c["src"]) for c in cs))
    for sp in ("train", "cal", "test"):
        sub = [c for c in cs if c["split"] == sp]
        print(sp, "clips", len(sub), "real", sum(c["label"] == 0 for c in sub), "fake", sum(c["label"] == 1 for c in sub),
              "real speakers", len({c["spk"] for c in sub if c["label"] == 0 and c["spk"].startswith("L") and not c["spk"].startswith("LJ")}))
