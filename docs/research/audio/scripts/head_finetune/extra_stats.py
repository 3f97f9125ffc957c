"""Extra numbers for the write-up: window counts per split/phase, v2 head score extremes vs thresholds."""
import os, sys, json
import numpy as np
sys.path.insert(0, os.path.dirname(__file__))
import head as H
for ph, d in H.E.items():
    for sp in ("train", "cal", "test"):
        ids = [i for i in d if H.BY[i]["split"] == sp and H.BY[i]["src"] != "gl"]
        if ids: print(f"{ph:<13} {sp:<5} clips {len(ids):>3} windows {sum(len(d[i][0]) for i in ids):>4}")
z = np.load(f"{H.R}/results/head_v{H.HEAD_V}{H.SUF}.npz"); W, c = z["W"], float(z["c"])
cal_real = H.clip_scores(W, c, "eval_aac64", H.ids_of("cal", label=0)); rev, flag = H.thresholds(cal_real)
for ph in ("eval_aac64", "test_opus32", "test_noise20", "pause_attack"):
    ids = H.ids_of("test", ph)
    if not ids: continue
    s = H.clip_scores(W, c, ph, ids); lab = np.array([H.BY[i]["label"] for i in ids])
    print(f"{ph}: review {rev:.2f} flag {flag:.2f}; test real max {s[lab==0].max():.2f} (margin to flag {flag - s[lab==0].max():.2f}), "
          f"missed fakes: " + ", ".join(f"{os.path.basename(H.BY[i]['path'])} {s[k]:.2f}" for k, i in enumerate(ids) if lab[k] == 1 and s[k] < rev))
tot = sum(1 for c in H.CS if c["src"] != "gl"); print("clips (no gl)", tot, "gl", sum(1 for c in H.CS if c["src"] == "gl"))
print("head |W|", np.linalg.norm(W), "c", c, "l2", float(z["l2"]))
