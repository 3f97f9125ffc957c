"""Aggregation over the first k placed windows (time order), k = 1, 2, 3; thresholds refit on the cal split each time."""
import os, sys
import numpy as np
sys.path.insert(0, os.path.dirname(__file__))
import head as H
z = np.load(f"{H.R}/results/head_v{H.HEAD_V}{H.SUF}.npz"); W, c = z["W"], float(z["c"])
def sc(ph, ids, k): return np.array([(H.E[ph][i][0][:k] @ W + c).mean() for i in ids])
for k in (1, 2, 3):
    rev, flag = H.thresholds(sc("eval_aac64", H.ids_of("cal", label=0), k))
    for ph in [p for p in ("eval_aac64", "test_noise20", "pause_attack") if H.ids_of("test", p)]:
        r = H.evaluate(f"v{H.HEAD_V}{H.SUF} first {k} window(s)", lambda p, ids: sc(p, ids, k), rev, flag, ph=ph, reps=300)
        print(H.fmt(r).split("\n")[0])
