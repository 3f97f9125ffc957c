import glob, av, collections, numpy as np
S = "/work/shared/data/speech"
groups = collections.defaultdict(list)
for f in sorted(glob.glob(f"{S}/**/*.*", recursive=True)):
    if not f.endswith((".flac", ".wav")): continue
    with av.open(f) as c:
        st = c.streams.audio[0]
        d = float(c.duration / 1e6) if c.duration else float(st.duration * st.time_base)
        key = ("libri-test-other" if "test-other" in f else "libri-train-clean" if "librispeech" in f else
               "lj-real" if not f.endswith("_gen.wav") else "wavefake-gen")
        groups[key].append((d, st.codec_context.name, st.rate, st.channels, st.format.name))
for k, v in groups.items():
    ds = np.array([x[0] for x in v])
    print(f"{k:18s} n={len(v):3d} fmt={set((x[1], x[2], x[3], x[4]) for x in v)} dur total {ds.sum():.0f}s min {ds.min():.1f} median {np.median(ds):.1f} max {ds.max():.1f}")
