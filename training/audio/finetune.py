"""`python -m training.audio.finetune --out DIR`: fit the shipped audio head and write the shipped model.

The product's audio model (`service/models/builtin/aasist-l-dfguard/model.onnx`) is the published AASIST-L
ONNX (clovaai/aasist, MIT, NAVER; `../shared/weights/aasist/AASIST-L.onnx`) with its final 160 -> 2 layer
replaced by a logistic-regression head fitted here on the frozen encoder's 160-d embedding. This module is
that fit, the research's "v2" head (`docs/research/audio/HEAD_FINETUNE.md`) made reproducible by the project:

1. the labelled clips and their split (`training.audio.clips`: real speech of `../shared/data/speech`, the
   synthetic clips of `--synth`);
2. crops and embeddings (`training.audio.embed`): plain AAC 64 VAD-placed windows of the train and calibration
   clips, 4 + 6 augmented crops per train clip; cached under DIR/cache, so a re-run only refits;
3. the head (`training.audio.head`): class- and source-balanced IRLS logistic regression on the train crops,
   L2 chosen on the calibration clips' AUC, exported into the published graph as DIR/model.onnx;
4. DIR/report.json: the head, the L2 search, the data counts, sha256 of the output and of its source, and the
   comparison with the shipped model (identical file? else the head's and the reference outputs' differences).

Thresholds are not fitted here (`training.audio.calibrate` fits them through the served path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.audio.clips import REPO, Clip, add_data_arguments, clips, data_dirs
from training.audio.embed import PHASES, WIN
from training.audio.head import (
    L2_GRID,
    L2_MARGIN,
    balanced_weights,
    export_head,
    read_head,
    select_l2,
    sha256,
)

__all__ = [
    "CACHE_VERSION",
    "Task",
    "compare",
    "embed_all",
    "finetune",
    "reference_inputs",
    "tasks",
    "train_set",
]

SHIPPED = REPO / "service" / "models" / "builtin" / "aasist-l-dfguard"
CACHE_VERSION = 1
TRAIN_PHASES = ("train_aug", "eval_aac64", "train_aug2")  # the order of the training rows (head.py)
REFERENCE_WAVS = ("espeak_16k.wav", "noise_16k.wav", "tone_16k.wav")
SEEDED = "seeded_normal_16"

Task = tuple[str, int, str]  # phase, clip id, path
Progress = Callable[[str], None] | None
F32 = npt.NDArray[np.float32]


def tasks(cs: Sequence[Clip]) -> list[Task]:
    """What the head needs: plain crops of the train and calibration clips, augmented crops of the train
    clips."""
    out: list[Task] = []
    for phase in PHASES:
        splits = ("train", "cal") if phase == "eval_aac64" else ("train",)
        out += [(phase, c.id, str(c.path)) for c in cs if c.split in splits]
    return out


def _cache_file(cache: Path, phase: str, clip_id: int) -> Path:
    return cache / phase / f"{clip_id}.npz"


def _work(cache: Path, published: Path, todo: list[Task], worker: int, quiet: bool) -> dict[str, Any]:
    """One worker: embed its tasks into the cache (each file written whole, then renamed)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from training.audio.embed import Embedder

    t0 = time.time()
    emb = Embedder(published)
    windows = 0
    try:
        for k, (phase, cid, path) in enumerate(todo):
            out = _cache_file(cache, phase, cid)
            if out.exists():
                continue
            e, lg, meta = emb.clip(phase, cid, Path(path))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.npz")
            np.savez(tmp, emb=e, lg=lg, meta=json.dumps(meta))
            tmp.replace(out)
            windows += len(e)
            if not quiet and (k + 1) % 25 == 0:
                print(
                    f"  worker {worker}: {k + 1}/{len(todo)} tasks, {time.time() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        emb.close()
    return {"worker": worker, "tasks": len(todo), "windows": windows, "seconds": time.time() - t0}


def _check_cache(cache: Path, key: dict[str, Any]) -> None:
    f = cache / "key.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != key:
            raise SystemExit(
                f"{cache} holds embeddings of other inputs ({old} != {key}): use another --out or delete it"
            )
    else:
        cache.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(key, indent=1) + "\n")


def embed_all(
    cache: Path, published: Path, todo: list[Task], workers: int = 1, progress: Progress = None
) -> list[dict[str, Any]]:
    """Embed every task not yet in the cache, in `workers` processes (clip id modulo workers, as the
    research sharded them; the result does not depend on the sharding)."""
    missing = [t for t in todo if not _cache_file(cache, t[0], t[1]).exists()]
    if progress:
        progress(f"embedding: {len(missing)} of {len(todo)} clip crops to compute, {workers} worker(s)")
    if not missing:
        return []
    shards = [[t for t in missing if t[1] % workers == k] for k in range(workers)]
    quiet = progress is None
    if workers == 1:
        return [_work(cache, published, shards[0], 0, quiet)]
    # spawned, not forked: the parent may hold ONNX Runtime thread pools
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_work, cache, published, s, k, quiet) for k, s in enumerate(shards) if s]
        return [f.result() for f in futures]


def _load(cache: Path, phase: str, clip_id: int) -> F32:
    with np.load(_cache_file(cache, phase, clip_id)) as z:
        return np.asarray(z["emb"], np.float32)


def train_set(cache: Path, cs: Sequence[Clip]) -> tuple[F32, npt.NDArray[np.float64], list[str]]:
    """The training rows in the research's order: per train clip (by id), its train_aug, eval_aac64 and
    train_aug2 crops. Returns (X, y, source of each row)."""
    X: list[F32] = []
    y: list[int] = []
    grp: list[str] = []
    for c in cs:
        if c.split != "train":
            continue
        for phase in TRAIN_PHASES:
            e = _load(cache, phase, c.id)
            X.append(e)
            y += [c.label] * len(e)
            grp += [c.source] * len(e)
    return np.concatenate(X), np.array(y, float), grp


def _read_wav(path: Path) -> F32:
    """int16 PCM / 32768, the first window or tiled (as `scripts/record_audio_reference.py` reads them)."""
    from service.audio.windows import tile

    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = pcm.astype(np.float32) / 32768.0
    return x[:WIN] if len(x) >= WIN else tile(x, WIN)


def reference_inputs(shared: Path) -> dict[str, F32]:
    """The shipped model's reference inputs (`reference_outputs.json`): the seeded signal, and the published
    reference WAVs where `shared` has them."""
    out = {SEEDED: (np.random.default_rng(16).standard_normal(WIN) * 0.05).astype(np.float32)}
    ref = shared / "weights" / "aasist" / "reference"
    for name in REFERENCE_WAVS:
        if (ref / name).is_file():
            out[name] = _read_wav(ref / name)
    return out


def _llrs(model: Path, inputs: dict[str, F32]) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    out = {}
    for name, x in inputs.items():
        (lg,) = s.run(["logits"], {"waveform": x[None, :]})
        out[name] = float(lg[0, 0] - lg[0, 1])
    return out


def compare(model: Path, reference: Path, shared: Path) -> dict[str, Any]:
    """`model` against the shipped one (`reference`, a model.onnx beside its reference_outputs.json):
    identical file? else max |delta| of the head's W and c and of the llr on the reference inputs."""
    same = sha256(model) == sha256(reference)
    W, c = read_head(model)
    Wr, cr = read_head(reference)
    inputs = reference_inputs(shared)
    mine, theirs = _llrs(model, inputs), _llrs(reference, inputs)
    out: dict[str, Any] = {
        "reference": str(reference),
        "reference_sha256": sha256(reference),
        "identical": same,
        "head_W_max_abs_diff": float(np.abs(W - Wr).max()),
        "head_c_abs_diff": abs(c - cr),
        "llr": {
            k: {"new": mine[k], "shipped": theirs[k], "abs_diff": abs(mine[k] - theirs[k])} for k in mine
        },
        "llr_max_abs_diff": max(abs(mine[k] - theirs[k]) for k in mine),
    }
    recorded = reference.parent / "reference_outputs.json"
    if recorded.is_file():
        rec = json.loads(recorded.read_text())["inputs"]
        out["llr_vs_recorded_max_abs_diff"] = max(abs(mine[k] - rec[k]["llr"]) for k in mine if k in rec)
    return out


def finetune(
    out: Path,
    speech: Path,
    synth: Path,
    published: Path,
    *,
    workers: int = 1,
    reference: Path | None = None,
    shared: Path | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Everything: clips, embeddings (cached), head, export, report. Returns the report (also written to
    DIR/report.json)."""
    t0 = time.time()
    cs = clips(speech, synth)
    cache = out / "cache"
    _check_cache(
        cache,
        {
            "version": CACHE_VERSION,
            "published_sha256": sha256(published),
            "synth_manifest_sha256": hashlib.sha256((synth / "manifest.jsonl").read_bytes()).hexdigest(),
            "clips": len(cs),
        },
    )
    todo = tasks(cs)
    runs = embed_all(cache, published, todo, workers, progress)
    t_embed = time.time() - t0

    X, y, grp = train_set(cache, cs)
    w = balanced_weights(y, grp)
    cal = [c for c in cs if c.split == "cal"]
    t1 = time.time()
    head, tried = select_l2(X, y, w, [_load(cache, "eval_aac64", c.id) for c in cal], [c.label for c in cal])
    np.savez(out / "head.npz", W=head.W, c=head.c, l2=head.l2)
    exported = export_head(published, head.W, head.c, out / "model.onnx")
    t_fit = time.time() - t1
    if progress:
        progress(
            f"head: l2 {head.l2}, cal AUC {[round(t['cal_auc'], 4) for t in tried]}; {exported['sha256']}"
        )

    train = [c for c in cs if c.split == "train"]
    rows = {ph: sum(len(_load(cache, ph, c.id)) for c in train) for ph in TRAIN_PHASES}
    report: dict[str, Any] = {
        "model": {k: exported[k] for k in ("file", "sha256", "size")},
        "source": {"file": exported["source"], "sha256": exported["source_sha256"]},
        "head": {
            "l2": head.l2,
            "cal_auc": next(t["cal_auc"] for t in tried if t["l2"] == head.l2),
            "l2_search": tried,
            "l2_rule": f"grid {list(L2_GRID)} in order; a smaller L2 replaces the choice only if its "
            f"calibration AUC is higher by more than {L2_MARGIN}",
            "W_norm": float(np.linalg.norm(head.W)),
            "c": head.c,
            "W_float32_norm": exported["W_norm"],
            "c_float32": exported["c"],
            "file": str(out / "head.npz"),
        },
        "data": {
            "speech": str(speech),
            "synth": str(synth),
            "train_clips": dict(Counter(c.source for c in train)),
            "cal_clips": dict(Counter(c.source for c in cal)),
            "train_windows": rows,
            "train_rows": len(y),
        },
        "timing_s": {
            "embedding": round(t_embed, 1),
            "fit_and_export": round(t_fit, 1),
            "workers": runs,
        },
    }
    if reference is not None and (reference / "model.onnx").is_file():
        report["compare"] = compare(out / "model.onnx", reference / "model.onnx", shared or speech.parents[1])
    report["timing_s"]["total"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _summary(r: dict[str, Any]) -> str:
    h = r["head"]
    lines = [
        f"model  {r['model']['file']}  sha256 {r['model']['sha256']}",
        f"source {r['source']['file']}  sha256 {r['source']['sha256']}",
        f"head   l2 {h['l2']} (cal AUC "
        + ", ".join(f"{t['l2']}: {t['cal_auc']:.4f}" for t in h["l2_search"])
        + f"), |W| {h['W_norm']:.6f}, c {h['c']:.6f}",
        f"data   train rows {r['data']['train_rows']} {r['data']['train_windows']}",
        f"time   {r['timing_s']['total']} s (embedding {r['timing_s']['embedding']} s)",
    ]
    cmp = r.get("compare")
    if cmp:
        lines.append(
            f"shipped {cmp['reference']}: identical {cmp['identical']}; "
            f"max |dW| {cmp['head_W_max_abs_diff']:.3g}, |dc| {cmp['head_c_abs_diff']:.3g}, "
            f"max |d llr| {cmp['llr_max_abs_diff']:.3g}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (model.onnx, report.json, cache/)"
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--published", type=Path, help="the published ONNX (default SHARED/weights/aasist/AASIST-L.onnx)"
    )
    parser.add_argument("--workers", type=int, default=1, help="embedding processes (default 1)")
    parser.add_argument(
        "--compare",
        type=Path,
        default=SHIPPED,
        help="folder of the model to compare with (default: the shipped one); '' for none",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    speech, synth = data_dirs(parser, args)
    published = args.published or args.shared / "weights" / "aasist" / "AASIST-L.onnx"
    if not published.is_file():
        parser.exit(
            2, f"published AASIST-L not found at {published} (../shared/weights/aasist; --published)\n"
        )
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    report = finetune(
        args.out,
        speech,
        synth,
        published,
        workers=args.workers,
        reference=args.compare if str(args.compare) not in ("", ".") else None,
        shared=args.shared,
        progress=progress,
    )
    sys.stdout.write((json.dumps(report) if args.json else _summary(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
