"""AUC, score percentiles and threshold study per (model, condition) from results/scores.jsonl.
Split by speaker: calibration half vs held-out half (LibriSpeech speakers by sorted-id parity; LJ/wavefake and
synthetic clips by index parity). Score = mean p(spoof) over the windows (also mean llr)."""
import json, sys, collections
import numpy as np
R = "/work/research/issue16"
rows = [json.loads(l) for l in open(f"{R}/results/scores.jsonl")]

def half(r):
    if r["src"].startswith("libri"):
        return int(r["spk"]) % 2  # speaker split
    import re
    return int(re.findall(r"(\d+)", r["path"].split("/")[-1])[-1] if r["src"] in ("piper", "espeak", "flite") else
               sum(map(ord, r["path"]))) % 2

def auc(neg, pos):
    neg, pos = np.asarray(neg), np.asarray(pos)
    allv = np.concatenate([neg, pos]); ranks = allv.argsort().argsort() + 1.0
    # average ties
    from scipy.stats import rankdata
    ranks = rankdata(allv)
    return (ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos))

g = collections.defaultdict(list)
for r in rows: g[(r["model"], r["cond"])].append(r)
key = sys.argv[1] if len(sys.argv) > 1 else "p"  # p (mean of windows), llr (mean logit diff), p_mid (one window), p_max
only = sys.argv[2] if len(sys.argv) > 2 else None
for (m, c), rs in sorted(g.items()):
    if only and only not in f"{m}/{c}": continue
    if len(rs) < 250: print(f"\n(skipping {m}/{c}: {len(rs)} clips so far)"); continue
    for r in rs:
        r["s"] = float(np.mean(r[key])) if key in ("p", "llr") else float(r["p"][len(r["p"]) // 2]) if key == "p_mid" else float(np.max(r["p"]))
    real = [r for r in rs if r["label"] == 0]; fake = [r for r in rs if r["label"] == 1]
    print(f"\n=== {m} / {c}: {len(real)} real, {len(fake)} fake clips (score = mean {key})")
    libri = [r["s"] for r in real if r["src"].startswith("libri")]
    def pct(v): return " ".join(f"{np.percentile(v, q):.3f}" for q in (5, 25, 50, 75, 95)) if len(v) else "-"
    for src in sorted(set(r["src"] for r in rs)):
        v = [r["s"] for r in rs if r["src"] == src]
        print(f"  {src:18s} n={len(v):3d} p5/25/50/75/95 {pct(v)}  >0.5: {np.mean(np.array(v) > 0.5)*100:5.1f} %" if key != "llr" else
              f"  {src:18s} n={len(v):3d} p5/25/50/75/95 {pct(v)}  >0: {np.mean(np.array(v) > 0)*100:5.1f} %")
    fk = [r["s"] for r in fake]
    ho_real = [r["s"] for r in real if half(r) == 1 and r["src"].startswith("libri")]
    ho_fake = [r["s"] for r in fake if half(r) == 1]
    print(f"  AUC all real vs all fake {auc([r['s'] for r in real], fk):.3f}; LibriSpeech vs fake {auc(libri, fk):.3f}; "
          f"held-out-half Libri vs fake {auc(ho_real, ho_fake):.3f}; LJ real vs wavefake "
          f"{auc([r['s'] for r in real if r['src']=='lj-real'], [r['s'] for r in fake if r['src']=='wavefake']):.3f}")
    for src in sorted(set(r["src"] for r in fake)):
        print(f"    AUC Libri vs {src}: {auc(libri, [r['s'] for r in fake if r['src']==src]):.3f}")
    # thresholds fitted on calibration half of real (Libri only, and all real incl LJ), evaluated on held-out half
    for realset, name in [(lambda r: r["src"].startswith("libri"), "Libri"), (lambda r: True, "all real incl. LJ")]:
        cal = np.array([r["s"] for r in real if realset(r) and half(r) == 0])
        ho = np.array([r["s"] for r in real if realset(r) and half(r) == 1])
        if not len(cal) or not len(ho): continue
        t_review = np.quantile(cal, 0.95)
        t_flag = cal.max() if key != "p" else min(1.0, cal.max())
        hf = np.array([r["s"] for r in fake if half(r) == 1])
        print(f"  thresholds fitted on {name} cal half (n={len(cal)}): review>={t_review:.4f} flag>{t_flag:.4f}; held-out real "
              f"(n={len(ho)}): review {np.mean(ho >= t_review)*100:.1f} %, flagged {np.mean(ho > t_flag)*100:.1f} %; "
              f"held-out fakes (n={len(hf)}) caught {np.mean(hf >= t_review)*100:.1f} % (flagged {np.mean(hf > t_flag)*100:.1f} %)")
        for src in sorted(set(r["src"] for r in fake)):
            v = np.array([r["s"] for r in fake if r["src"] == src])
            print(f"      {src:9s} caught {np.mean(v >= t_review)*100:5.1f} %  flagged {np.mean(v > t_flag)*100:5.1f} %")
