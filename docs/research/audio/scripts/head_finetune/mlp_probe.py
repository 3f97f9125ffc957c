"""Comparison: a small MLP head (160 -> 32 -> 1, ReLU) on the same cached embeddings and the same splits as head.py
(HEAD_V selects the training set). Would ship as MatMul+Add+Relu+MatMul+Add. Selection (weight decay) on the cal split."""
import os, sys
import numpy as np, torch
torch.set_num_threads(1); torch.manual_seed(0)
sys.path.insert(0, os.path.dirname(__file__))
import head as H
def fit_mlp(X, y, w, wd=1e-3, hid=32, ep=300):
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xt = torch.tensor((X - mu) / sd, dtype=torch.float32); yt = torch.tensor(y, dtype=torch.float32); wt = torch.tensor(w, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hid), torch.nn.ReLU(), torch.nn.Linear(hid, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=wd)
    for _ in range(ep):
        opt.zero_grad(); l = (wt * torch.nn.functional.binary_cross_entropy_with_logits(net(Xt)[:, 0], yt, reduction="none")).mean()
        l.backward(); opt.step()
    net.eval()
    def f(E):
        with torch.no_grad(): return net(torch.tensor((E - mu) / sd, dtype=torch.float32))[:, 0].numpy()
    return f
def scores(f, ph, ids): return np.array([f(H.E[ph][i][0]).mean() for i in ids])
cal = H.ids_of("cal"); cl = np.array([H.BY[i]["label"] for i in cal]); best = None
for wd in (1e-1, 1e-2, 1e-3):
    f = fit_mlp(*H.train_set(), wd=wd); s = scores(f, "eval_aac64", cal); a = H.auc(s[cl == 0], s[cl == 1])
    print(f"wd={wd}: cal AUC {a:.3f}")
    if best is None or a > best[0] + 0.005: best = (a, wd)
wd = best[1]; f = fit_mlp(*H.train_set(), wd=wd)
rev, flag = H.thresholds(scores(f, "eval_aac64", H.ids_of("cal", label=0)))
print("chosen wd", wd, "thresholds", round(rev, 3), round(flag, 3))
for ph in [p for p in ("eval_aac64", "test_opus32", "test_noise20", "pause_attack") if H.ids_of("test", p)]:
    print(H.fmt(H.evaluate(f"MLP head v{H.HEAD_V} mean3", lambda p, ids: scores(f, p, ids), rev, flag, ph=ph)))
for g in ("wavefake", "piper", "flite"):
    fg = fit_mlp(*H.train_set(exclude_gen=g), wd=wd); rv, fl = H.thresholds(scores(fg, "eval_aac64", H.ids_of("cal", label=0)))
    gi = [c["id"] for c in H.CS if c["src"] == g]; tr = scores(fg, "eval_aac64", H.ids_of("test", label=0)); gs = scores(fg, "eval_aac64", gi)
    print(f"MLP unseen {g}: AUC {H.auc(tr, gs):.3f}, caught {100*np.mean(gs >= rv):.0f} % (n={len(gi)}), test real review {100*np.mean(tr >= rv):.1f} %")
