"""Head-only fine-tune of AASIST-L on cached 160-d embeddings; thresholds fitted on the calibration speaker split;
evaluation on the test split. usage: head.py [--json out.json]  (reads cache/, writes results/head_*.txt/json)"""
import sys, os, json
import numpy as np
from scipy.stats import rankdata, beta
sys.path.insert(0, os.path.dirname(__file__))
from clips import clips, R

HEAD_V = int(os.environ.get("HEAD_V", "2"))  # 1: aug + plain crops; 2: + silence-heavy aug2 crops
SUF = os.environ.get("SUF", "")  # "" = 64,600-sample windows, "_32000" = 2-s windows
CS = clips(); BY = {c["id"]: c for c in CS}
def load(ph):
    d = {}
    for c in CS:
        f = f"{R}/cache/{ph}{SUF}/{c['id']}.npz"
        if os.path.exists(f):
            z = np.load(f); d[c["id"]] = (z["emb"], z["lg"], json.loads(str(z["meta"])))
    return d
E = {ph: load(ph) for ph in ("eval_aac64", "train_aug", "train_aug2", "sil", "test_opus32", "test_noise20", "pause_attack")}

def auc(neg, pos):
    neg, pos = np.asarray(neg), np.asarray(pos)
    if len(neg) == 0 or len(pos) == 0: return float("nan")
    r = rankdata(np.concatenate([neg, pos])); return float((r[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))

def boot_auc(scores, ids, reps=1000, seed=0):
    """Speaker-level bootstrap: resample speakers (clusters) with replacement within each class."""
    rng = np.random.default_rng(seed); lab = np.array([BY[i]["label"] for i in ids]); spk = np.array([BY[i]["spk"] for i in ids])
    groups = {}
    for k, (l, s) in enumerate(zip(lab, spk)): groups.setdefault((l, s), []).append(k)
    g0 = [v for (l, s), v in groups.items() if l == 0]; g1 = [v for (l, s), v in groups.items() if l == 1]
    out = []
    for _ in range(reps):
        i0 = np.concatenate([g0[j] for j in rng.integers(0, len(g0), len(g0))])
        i1 = np.concatenate([g1[j] for j in rng.integers(0, len(g1), len(g1))])
        out.append(auc(scores[i0], scores[i1]))
    return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5)), len(g0), len(g1)

def cp(k, n, a=0.05):
    lo = 0.0 if k == 0 else beta.ppf(a / 2, k, n - k + 1); hi = 1.0 if k == n else beta.ppf(1 - a / 2, k + 1, n - k)
    return float(lo), float(hi)

def fit_lr(X, y, w, l2=1.0, it=50):
    mu, sd = X.mean(0), X.std(0) + 1e-6; Z = np.c_[(X - mu) / sd, np.ones(len(X))]; b = np.zeros(Z.shape[1])
    reg = l2 * np.r_[np.ones(Z.shape[1] - 1), 0]
    for _ in range(it):
        p = 1 / (1 + np.exp(-np.clip(Z @ b, -30, 30))); g = Z.T @ (w * (p - y)) + reg * b
        H = (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(reg + 1e-9); step = np.linalg.solve(H, g); b -= step
        if np.abs(step).max() < 1e-8: break
    W = b[:-1] / sd; c = b[-1] - (mu / sd) @ b[:-1]   # folded: score = emb @ W + c  (logit of p(spoof))
    return W, float(c)

def train_set(exclude_gen=None, use_aug=True, use_eval=True, use_aug2=None):
    if use_aug2 is None: use_aug2 = HEAD_V >= 2
    X, y, grp = [], [], []
    for c in CS:
        if c["split"] != "train" or c["src"] == exclude_gen: continue
        if c["src"] == "gl" and HEAD_V < 3: continue
        for ph, ok in (("train_aug", use_aug), ("eval_aac64", use_eval), ("train_aug2", use_aug2)):
            if ok and c["id"] in E[ph]:
                e = E[ph][c["id"]][0]; X.append(e); y += [c["label"]] * len(e); grp += [c["src"]] * len(e)
    X = np.concatenate(X); y = np.array(y, float); grp = np.array(grp)
    # class-balanced, and within each class each source gets equal total weight (LJ real / WaveFake are few)
    w = np.zeros(len(y))
    for l in (0, 1):
        srcs = sorted(set(grp[y == l]))
        for s in srcs:
            m = (y == l) & (grp == s); w[m] = 0.5 / len(srcs) / m.sum()
    return X, y, w * len(y)

def clip_scores(W, c0, ph, ids, agg="mean", which=None):
    out = []
    for i in ids:
        e = E[ph][i][0]
        if which is not None: e = e[which(E[ph][i][2])]
        s = e @ W + c0; out.append(s.mean() if agg == "mean" else s[0] if agg == "first" else s.max())
    return np.array(out)

def pub_scores(ph, ids, sl=slice(None)):
    return np.array([(E[ph][i][1][sl, 0] - E[ph][i][1][sl, 1]).mean() for i in ids])

EXCL = {"gl"}  # the vocoder proxy is kept out of the headline test/cal sets so that all head versions share them
def ids_of(split, ph="eval_aac64", label=None, src=None):
    return [c["id"] for c in CS if c["split"] == split and c["id"] in E[ph] and (label is None or c["label"] == label)
            and (src is None or c["src"] == src) and (c["src"] not in EXCL or src == c["src"])]

def thresholds(cal_real, q=0.95, flag_margin=1.0):
    return float(np.quantile(cal_real, q, method="higher")), float(cal_real.max() + flag_margin)

def decisions(sc, ids, rev, flag):
    lab = np.array([BY[i]["label"] for i in ids]); r = sc[lab == 0]; f = sc[lab == 1]
    kr, kf, kc = int((r >= rev).sum()), int((r >= flag).sum()), int((f >= rev).sum())
    return dict(n_real=int(len(r)), real_review=kr, real_review_share=kr / max(len(r), 1), real_review_cp95=cp(kr, len(r)),
                real_flagged=kf, real_flagged_cp95=cp(kf, len(r)), n_fake=int(len(f)), fake_caught=kc,
                fake_caught_share=kc / max(len(f), 1), fake_caught_cp95=cp(kc, len(f)),
                fake_flagged=int((f >= flag).sum()))

def evaluate(name, score_fn, rev, flag, ph="eval_aac64", split="test", reps=1000):
    ids = ids_of(split, ph); sc = score_fn(ph, ids); lab = np.array([BY[i]["label"] for i in ids])
    a = auc(sc[lab == 0], sc[lab == 1]); lo, hi, ns0, ns1 = boot_auc(sc, ids, reps)
    res = dict(name=name, cond=ph, split=split, auc=a, auc_boot95=(lo, hi), real_clusters=ns0, fake_clusters=ns1,
               **decisions(sc, ids, rev, flag))
    src = np.array([BY[i]["src"] for i in ids]); real = sc[lab == 0]
    res["per_source"] = {s: dict(n=int((src == s).sum()), review_or_caught_share=float(np.mean(sc[src == s] >= rev)),
                                 flagged_share=float(np.mean(sc[src == s] >= flag)),
                                 auc_vs_all_real=(auc(real, sc[src == s]) if BY[ids[list(src).index(s)]]["label"] == 1 else None))
                         for s in sorted(set(src))}
    return res

def fmt(r):
    s = (f"{r['name']:<34} {r['cond']:<13} AUC {r['auc']:.3f} [{r['auc_boot95'][0]:.3f}, {r['auc_boot95'][1]:.3f}] "
         f"(clusters {r['real_clusters']}/{r['fake_clusters']}) | real review {r['real_review']}/{r['n_real']} "
         f"= {100*r['real_review_share']:.1f} % (CP95 {100*r['real_review_cp95'][0]:.1f}-{100*r['real_review_cp95'][1]:.1f}) "
         f"flagged {r['real_flagged']}/{r['n_real']} (CP95 <= {100*r['real_flagged_cp95'][1]:.1f} %) | caught "
         f"{r['fake_caught']}/{r['n_fake']} = {100*r['fake_caught_share']:.1f} % (CP95 {100*r['fake_caught_cp95'][0]:.1f}-"
         f"{100*r['fake_caught_cp95'][1]:.1f}) flagged fakes {r['fake_flagged']}\n      per source: " +
         "; ".join(f"{k} n={v['n']} {'review' if v['auc_vs_all_real'] is None else 'caught'} {100*v['review_or_caught_share']:.0f} %"
                   + (f" AUC {v['auc_vs_all_real']:.3f}" if v['auc_vs_all_real'] is not None else "") for k, v in r["per_source"].items()))
    return s

if __name__ == "__main__":
    out = {}; L = []
    def P(*a):
        s = " ".join(str(x) for x in a); print(s, flush=True); L.append(s)
    from collections import Counter
    P("== split sizes (clips with eval_aac64 embeddings) ==")
    for sp in ("train", "cal", "test"):
        ids = ids_of(sp); cnt = Counter(BY[i]["src"] for i in ids)
        P(sp, len(ids), dict(cnt), "real speakers/clusters", len({BY[i]["spk"] for i in ids if BY[i]["label"] == 0}),
          "fake clusters", len({BY[i]["spk"] for i in ids if BY[i]["label"] == 1}))
    P("head version", HEAD_V, "train windows: aug", sum(len(v[0]) for v in E["train_aug"].values()), "+ aug2 (used if v2)",
      sum(len(v[0]) for v in E["train_aug2"].values()), "+ plain aac64 placed",
      sum(len(E["eval_aac64"][i][0]) for i in ids_of("train")))
    # model selection on the calibration split (AUC), never on test
    cal_ids = ids_of("cal"); cal_lab = np.array([BY[i]["label"] for i in cal_ids])
    P("== l2 selection on the calibration split ==")
    best = None
    for l2 in (100.0, 10.0, 1.0, 0.1):
        W, c0 = fit_lr(*train_set(), l2=l2)
        s = clip_scores(W, c0, "eval_aac64", cal_ids); a = auc(s[cal_lab == 0], s[cal_lab == 1])
        rev, fl = thresholds(s[cal_lab == 0]); caught = np.mean(s[cal_lab == 1] >= rev)
        P(f"l2={l2}: cal AUC {a:.3f}, cal fakes >= cal-95th-pct {100*caught:.0f} %")
        if best is None or a > best[0] + 0.005: best = (a, l2)
    l2 = best[1]; W, c0 = fit_lr(*train_set(), l2=l2); P("chosen l2", l2)
    np.savez(f"{R}/results/head_v{HEAD_V}{SUF}.npz", W=W, c=c0, l2=l2)
    cal_real = clip_scores(W, c0, "eval_aac64", ids_of("cal", label=0))
    rev, flag = thresholds(cal_real)
    P(f"thresholds from cal real (n={len(cal_real)}): review = 95th pct = {rev:.3f}, flag = max + 1.0 = {flag:.3f}")
    FT = lambda ph, ids: clip_scores(W, c0, ph, ids)
    res = [evaluate("head mean3", FT, rev, flag)]
    # single-window variant (first placed window in time order; thresholds refit on the cal split likewise)
    cr1 = clip_scores(W, c0, "eval_aac64", ids_of("cal", label=0), agg="first"); rev1, flag1 = thresholds(cr1)
    res.append(evaluate("head 1 window", lambda ph, ids: clip_scores(W, c0, ph, ids, agg="first"), rev1, flag1))
    for ph in ("test_opus32", "test_noise20", "pause_attack"):
        if ids_of("test", ph): res.append(evaluate("head mean3 (AAC64 thresholds)", FT, rev, flag, ph=ph))
    # ablations: no augmentation crops (plain AAC64 train windows only); published head
    Wn, cn = fit_lr(*train_set(use_aug=False), l2=l2); crn = clip_scores(Wn, cn, "eval_aac64", ids_of("cal", label=0))
    revn, flagn = thresholds(crn)
    res.append(evaluate("head, no aug/silence crops", lambda ph, ids: clip_scores(Wn, cn, ph, ids), revn, flagn))
    crp = pub_scores("eval_aac64", ids_of("cal", label=0)); revp, flagp = thresholds(crp)
    res.append(evaluate("published head (llr) mean3", pub_scores, revp, flagp))
    for ph in ("test_opus32", "test_noise20", "pause_attack"):
        if ids_of("test", ph): res.append(evaluate("published head (llr) mean3", pub_scores, revp, flagp, ph=ph))
    glt = ids_of("test", src="gl")
    if glt:
        gs = FT("eval_aac64", glt); tr_ = FT("eval_aac64", ids_of("test", label=0))
        P(f"vocoder proxy (Griffin-Lim of test-split LibriSpeech clips, not in headline): n={len(glt)}, AUC vs test real "
          f"{auc(tr_, gs):.3f}, caught {100*np.mean(gs >= rev):.0f} %, flagged {100*np.mean(gs >= flag):.0f} %")
        out["gl_test"] = dict(n=len(glt), auc=auc(tr_, gs), caught=float(np.mean(gs >= rev)))
    P("== test split (held-out speakers / voices / sentence pool) ==")
    for r in res: P(fmt(r))
    out["thresholds"] = dict(review=rev, flag=flag, review_1win=rev1, flag_1win=flag1, published_review=revp, published_flag=flagp)
    out["results"] = res
    # threshold sensitivity
    P("== threshold sensitivity (test, head mean3) ==")
    tids = ids_of("test"); ts = FT("eval_aac64", tids); tl = np.array([BY[i]["label"] for i in tids])
    for q in (0.90, 0.95, 0.98, 1.0):
        rv = float(np.quantile(cal_real, q, method="higher"))
        P(f"review at cal q{q:.2f} = {rv:.3f}: real review {100*np.mean(ts[tl==0] >= rv):.1f} %, caught {100*np.mean(ts[tl==1] >= rv):.1f} %")
    P("score quantiles p5/p50/p95: cal real", np.round(np.quantile(cal_real, [.05, .5, .95]), 2), "test real",
      np.round(np.quantile(ts[tl == 0], [.05, .5, .95]), 2), "test fake", np.round(np.quantile(ts[tl == 1], [.05, .5, .95]), 2))
    # leave one generator out
    P("== leave-one-generator-out (train without generator G in any split; thresholds from cal real; test real vs ALL clips of G) ==")
    out["logo"] = {}
    for g in ("wavefake", "piper", "espeak", "flite") + (("gl",) if HEAD_V >= 3 else ()):
        Wg, cg = fit_lr(*train_set(exclude_gen=g), l2=l2)
        rv, fl = thresholds(clip_scores(Wg, cg, "eval_aac64", ids_of("cal", label=0)))
        gi = [c["id"] for c in CS if c["src"] == g and c["id"] in E["eval_aac64"]]
        tr = clip_scores(Wg, cg, "eval_aac64", ids_of("test", label=0)); gs = clip_scores(Wg, cg, "eval_aac64", gi)
        d = dict(auc=auc(tr, gs), n=len(gi), caught=float(np.mean(gs >= rv)), caught_cp95=cp(int((gs >= rv).sum()), len(gi)),
                 real_review=float(np.mean(tr >= rv)), real_flagged=int((tr >= fl).sum()))
        out["logo"][g] = d
        P(f"unseen {g:<9} n={d['n']:>2}: AUC vs test real {d['auc']:.3f}, caught {100*d['caught']:.0f} % (CP95 "
          f"{100*d['caught_cp95'][0]:.0f}-{100*d['caught_cp95'][1]:.0f}), test real review {100*d['real_review']:.1f} %, flagged {d['real_flagged']}")
    # silence shortcut
    if E["sil"]:
        P("== silence shortcut: 1 s near-silence (-60 dBFS) prepended to cal+test fakes, AAC 64 ==")
        si = [i for i in E["sil"] if i in E["eval_aac64"]]; out["silence"] = {}
        base = clip_scores(W, c0, "eval_aac64", si)
        placed = np.array([(E["sil"][i][0][:E["sil"][i][2]["n_placed"]] @ W + c0).mean() for i in si])
        raw1 = np.array([(E["sil"][i][0][-1:] @ W + c0).mean() for i in si])
        pb = pub_scores("eval_aac64", si); pp = np.array([(E["sil"][i][1][-1, 0] - E["sil"][i][1][-1, 1]) for i in si])
        for nm, s_, r_ in (("fine-tuned head, placed windows (served)", placed, rev), ("fine-tuned head, raw first window", raw1, rev1),
                           ("published head, raw first window", pp, revp)):
            b_ = base if "fine" in nm else pb
            drop = int(((b_ >= (rev if "fine" in nm else revp)) & (s_ < r_)).sum())
            P(f"{nm}: caught without silence {100*np.mean(b_ >= (rev if 'fine' in nm else revp)):.0f} % -> with 1 s silence "
              f"{100*np.mean(s_ >= r_):.0f} % (n={len(si)}); caught->missed {drop}; median score {np.median(b_):.2f} -> {np.median(s_):.2f}")
            out["silence"][nm] = dict(n=len(si), before=float(np.mean(b_ >= (rev if 'fine' in nm else revp))), after=float(np.mean(s_ >= r_)), dropped=drop)
        for g in ("piper", "espeak", "flite", "wavefake"):
            gi = [k for k, i in enumerate(si) if BY[i]["src"] == g]
            if gi: P(f"   {g}: placed {100*np.mean(placed[gi] >= rev):.0f} %, raw first window {100*np.mean(raw1[gi] >= rev1):.0f} % caught with silence (n={len(gi)})")
        P("   caught->missed (served):", [(BY[i]["src"], os.path.basename(BY[i]["path"]), round(float(base[k]), 2), round(float(placed[k]), 2))
                                         for k, i in enumerate(si) if base[k] >= rev and placed[k] < rev])
    out["head"] = dict(version=HEAD_V, l2=l2, W=W.tolist(), c=c0)
    json.dump(out, open(f"{R}/results/head_v{HEAD_V}{SUF}_results.json", "w"), indent=1, default=float)
    open(f"{R}/results/head_v{HEAD_V}{SUF}_results.txt", "w").write("\n".join(L) + "\n")
