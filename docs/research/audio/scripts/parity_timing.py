import json, time, sys
import numpy as np
sys.path.insert(0, "/work/research/issue16/scripts")
from audiolib import *
ref = json.load(open(f"{W}/reference/logits.json"))
for m in ["AASIST-L", "AASIST"]:
    s = session(m)
    print(m, "inputs", [(i.name, i.shape) for i in s.get_inputs()], "outputs", [(o.name, o.shape) for o in s.get_outputs()])
    for wav in ["espeak_16k.wav", "noise_16k.wav", "tone_16k.wav"]:
        import wave
        with wave.open(f"{W}/reference/{wav}") as w:
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        xb = windows(x[:WIN] if len(x) >= WIN else x, 1)
        _, lg = p_spoof(s, xb)
        d = np.abs(lg[0] - np.array(ref[m][wav]["logits"])).max()
        print(f"  {wav}: logits {lg[0]} maxabsdiff {d:.2e}")
    x = np.random.default_rng(0).standard_normal((3, WIN)).astype(np.float32) * 0.1
    for bs in (1, 3):
        p_spoof(s, x[:bs])
        ts = []
        for _ in range(8):
            t = time.perf_counter(); p_spoof(s, x[:bs]); ts.append(time.perf_counter() - t)
        print(f"  batch {bs}: median {np.median(ts)*1000:.1f} ms, min {min(ts)*1000:.1f} ms (1 thread)")
