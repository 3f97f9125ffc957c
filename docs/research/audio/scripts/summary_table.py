"""Markdown summary per (model, condition): AUCs and threshold study on mean p(spoof) and mean llr (3 windows)."""
import json, collections, re, sys
import numpy as np
from scipy.stats import rankdata
rows = [json.loads(l) for l in open("/work/research/issue16/results/scores.jsonl")]
def auc(n, p):
    n, p = np.asarray(n), np.asarray(p)
    if not len(n) or not len(p): return float("nan")
    r = rankdata(np.concatenate([n, p])); return (r[len(n):].sum() - len(p) * (len(p) + 1) / 2) / (len(n) * len(p))
def half(r):
    if r["src"].startswith("libri"): return int(r["spk"]) % 2
    m = re.findall(r"(\d+)", r["path"].split("/")[-1]); return int(m[-1]) % 2 if r["src"] in ("piper", "espeak", "flite") else int(m[0]) % 2
g = collections.defaultdict(dict)
for r in rows: g[(r["model"], r["cond"])][r["path"]] = r
print("| model | condition | score | Libri >0.5 (p) | AUC Libri vs all fakes | held-out half | vs piper | vs wavefake | vs flite | LJ real vs wavefake | review thr (cal half, 95th pct) | held-out real to review | held-out real flagged | held-out fakes caught | piper caught |")
print("|" + "---|" * 15)
for (m, c), d in sorted(g.items()):
    rs = list(d.values())
    if len(rs) < 250: continue
    for key in ("p", "llr"):
        for r in rs: r["s"] = float(np.mean(r[key]))
        lib = [r for r in rs if r["src"].startswith("libri")]; fk = [r for r in rs if r["label"] == 1]
        S = lambda xs: [x["s"] for x in xs]
        cal = np.array(S([r for r in lib if half(r) == 0])); ho = np.array(S([r for r in lib if half(r) == 1]))
        hf = np.array(S([r for r in fk if half(r) == 1])); pip = np.array(S([r for r in fk if r["src"] == "piper"]))
        tr = np.quantile(cal, 0.95); tf = cal.max()
        share = np.mean([np.mean(r["p"]) > 0.5 for r in lib]) * 100
        print(f"| {m} | {c} | mean {key} | {share:.0f} % | {auc(S(lib), S(fk)):.3f} | {auc(ho, hf):.3f} | "
              f"{auc(S(lib), pip):.3f} | {auc(S(lib), S([r for r in fk if r['src']=='wavefake'])):.3f} | "
              f"{auc(S(lib), S([r for r in fk if r['src']=='flite'])):.3f} | "
              f"{auc(S([r for r in rs if r['src']=='lj-real']), S([r for r in fk if r['src']=='wavefake'])):.3f} | "
              f"{tr:.4g} | {np.mean(ho >= tr)*100:.1f} % | {np.mean(ho > tf)*100:.1f} % | {np.mean(hf >= tr)*100:.0f} % | {np.mean(pip >= tr)*100:.0f} % |")
