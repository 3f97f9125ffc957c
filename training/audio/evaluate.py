"""`python -m training.audio.evaluate --json`: the served audio stage on held-out real and synthetic speech.

Every clip of the held-out split (`training.audio.clips`: the research's split, so the test split took no part
in fitting the audio head or its thresholds) is encoded as an audio-only upload (`training.audio.codecs`: AAC
64 kb/s in .m4a, the headline; Opus 32 kb/s in .webm; AAC 64 after noise at 20 dB SNR) and scored by the
product itself, `Pipeline.score_file`, which decodes, places its VAD windows and classifies them as in
serving; the figures are read from `ScoreResult.audio`. Nothing is re-implemented here, so the numbers are
those of the deployed model, windows and thresholds.

Figures per condition: AUC real vs synthetic on the clip scores with a 95 % cluster bootstrap interval
(speakers / voices / LJ utterances resampled within each class, `training.audio.stats`); decision shares at
the thresholds the pipeline applied, overall and per source, with Clopper-Pearson 95 % bounds; clips where no
speech was found. The silence check prepends 1 s of -60 dBFS noise to each synthetic clip (AAC 64) and counts
the clips that were caught without it and are not with it: a detector that reads silence as "real" would drop.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.evaluation import auc
from training.audio.clips import SOURCES, SPLITS, Clip, add_data_arguments, clips, data_dirs
from training.audio.codecs import CONDITIONS, Condition, decode, write_condition
from training.audio.stats import cluster_bootstrap_auc, decision_shares

if TYPE_CHECKING:
    from service.pipeline import Pipeline

__all__ = [
    "ClipScore",
    "Row",
    "condition_report",
    "evaluate",
    "score_clip",
    "served_pipeline",
    "silence_report",
]

NO_SPEECH_SCORE = (
    0.5  # an unscored clip counts as undecided in the AUC (as `training.evaluate`'s no-face items)
)
# Per-clip generators seeded as the research's embed.py did: 1000 * clip id + len(phase name)
NOISE_SEED_OFFSET = len("test_noise20")
SILENCE_SEED_OFFSET = len("sil")
SILENCE_CONDITION = "aac64"


@dataclass(frozen=True)
class ClipScore:
    """What the audio stage said about one file (`ScoreResult.audio`); `score` None: no speech, no result."""

    score: float | None
    decision: str | None
    reasons: tuple[str, ...] = ()
    speech_seconds: float | None = None
    windows: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, Any] | None = None
    model: dict[str, Any] | None = None

    @property
    def no_speech(self) -> bool:
        """The stage found too little speech to score (not an error: those are listed apart)."""
        return "no_speech_found" in self.reasons


Scorer = Callable[[Path], ClipScore]
Row = tuple[Clip, ClipScore]


def _plain(obj: Any) -> dict[str, Any] | None:
    """A pydantic model, dataclass-like object or mapping as a plain dict."""
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump())
    if isinstance(obj, dict):
        return dict(obj)
    return dict(vars(obj))


def score_clip(pipeline: Any, path: Path) -> ClipScore:
    """Score `path` with the served pipeline and keep its audio verdict. A media error (the product refusing
    the file) becomes an unscored clip whose reason names the error code."""
    from service.errors import MediaError

    try:
        r = pipeline.score_file(path)
    except MediaError as e:
        return ClipScore(None, None, (f"error:{e.code}",))
    a = getattr(r, "audio", None)
    if a is None:
        return ClipScore(None, None, ("no_audio_result",))
    # the whole request's timings (`audio`: finding and scoring speech), then any the audio result has itself
    whole = _plain(getattr(r, "timings_ms", None)) or {}
    timings: dict[str, Any] = {k: whole[k] for k in ("decode", "audio", "total") if k in whole}
    timings.update(_plain(getattr(a, "timings_ms", None)) or {})
    return ClipScore(
        score=None if a.score is None else float(a.score),
        decision=a.decision,
        reasons=tuple(getattr(a, "reasons", ()) or ()),
        speech_seconds=getattr(a, "speech_seconds", None),
        windows=len(getattr(a, "windows", ()) or ()),
        timings_ms={k: float(v) for k, v in timings.items() if isinstance(v, int | float)},
        thresholds=_plain(getattr(a, "thresholds", None)),
        model=_plain(getattr(a, "model", None)),
    )


def score_all(
    chosen: Sequence[Clip],
    conditions: Sequence[Condition],
    scorer: Scorer,
    workdir: Path,
    *,
    silence: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[Row]]:
    """Each clip under each condition (and, for synthetic clips, the silence check), keyed by condition
    name (the silence check under "silence"). Each clip is decoded once; each file is removed once scored."""
    out: dict[str, list[Row]] = {c.name: [] for c in conditions}
    if silence:
        out["silence"] = []
    for k, clip in enumerate(chosen):
        x = decode(clip.path)
        jobs: list[tuple[str, Condition, np.random.Generator | None, bool]] = [
            (
                c.name,
                c,
                np.random.default_rng(1000 * clip.id + NOISE_SEED_OFFSET) if c.snr_db else None,
                False,
            )
            for c in conditions
        ]
        if silence and clip.label == 1:
            lead_rng = np.random.default_rng(1000 * clip.id + SILENCE_SEED_OFFSET)
            jobs.append(("silence", CONDITIONS[SILENCE_CONDITION], lead_rng, True))
        for key, cond, rng, lead in jobs:
            path = write_condition(x, cond, workdir / f"{clip.id}_{key.replace('+', '_')}", rng, silence=lead)
            try:
                out[key].append((clip, scorer(path)))
            finally:
                path.unlink(missing_ok=True)
        if progress:
            progress(f"{k + 1}/{len(chosen)} {clip.source} {clip.path.name}")
    return out


def _score(s: ClipScore) -> float:
    return NO_SPEECH_SCORE if s.score is None else s.score


def _mean_timings(scores: Iterable[ClipScore]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for s in scores:
        for k, v in s.timings_ms.items():
            acc.setdefault(k, []).append(v)
    return {k: round(float(np.mean(v)), 1) for k, v in acc.items()}


def condition_report(rows: Sequence[Row], *, reps: int = 1000) -> dict[str, Any]:
    """AUC with its cluster interval, decisions by class and by source, no-speech clips, misses, timings."""
    labels = [c.label for c, _ in rows]
    scores = [_score(s) for _, s in rows]
    interval = cluster_bootstrap_auc(labels, scores, [c.cluster for c, _ in rows], reps=reps)
    real = [_score(s) for c, s in rows if c.label == 0]
    per_source: dict[str, Any] = {}
    for src in [s for s in SOURCES if any(c.source == s for c, _ in rows)]:
        sub = [(c, s) for c, s in rows if c.source == src]
        entry: dict[str, Any] = {
            "label": sub[0][0].label,
            **decision_shares([s.decision for _, s in sub]),
            "no_speech": sum(s.no_speech for _, s in sub),
        }
        if sub[0][0].label == 1 and real:
            mine = [_score(s) for _, s in sub]
            entry["auc_vs_real"] = round(auc([0] * len(real) + [1] * len(mine), real + mine), 4)
        per_source[src] = entry
    return {
        "n": len(rows),
        "auc": interval.as_dict(),
        "real": decision_shares([s.decision for c, s in rows if c.label == 0]),
        "synthetic": decision_shares([s.decision for c, s in rows if c.label == 1]),
        "no_speech": {
            "real": sum(s.no_speech for c, s in rows if c.label == 0),
            "synthetic": sum(s.no_speech for c, s in rows if c.label == 1),
        },
        "errors": sorted({r for _, s in rows for r in s.reasons if r.startswith(_ERRORS)}),
        "per_source": per_source,
        "misses": {
            "real_review_or_flag": [_brief(c, s) for c, s in rows if c.label == 0 and _caught(s)],
            "synthetic_allowed": [_brief(c, s) for c, s in rows if c.label == 1 and not _caught(s)],
        },
        "mean_windows": round(float(np.mean([s.windows for _, s in rows])), 2) if rows else None,
        "mean_speech_seconds": _mean_or_none([s.speech_seconds for _, s in rows]),
        "timings_ms_mean": _mean_timings(s for _, s in rows),
    }


_ERRORS = ("error:", "audio_error:", "no_audio_result", "partially_decoded")


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 2) if v else None


def _caught(s: ClipScore) -> bool:
    return s.decision in ("review", "flag")


def _brief(c: Clip, s: ClipScore) -> dict[str, Any]:
    return {
        "source": c.source,
        "file": c.path.name,
        "score": None if s.score is None else round(s.score, 4),
        "decision": s.decision,
    }


def silence_report(before: Sequence[Row], after: Sequence[Row]) -> dict[str, Any]:
    """Synthetic clips caught without the 1 s lead-in and not with it (`dropped`), overall and per source."""
    prior = {c.id: s for c, s in before if c.label == 1}
    was = {k: _caught(s) for k, s in prior.items()}
    pairs = [(c, was[c.id], s) for c, s in after if c.id in was]
    dropped = [(c, s) for c, w, s in pairs if w and not _caught(s)]
    per_source = {
        src: {
            "n": sum(c.source == src for c, _, _ in pairs),
            "caught_before": sum(w for c, w, _ in pairs if c.source == src),
            "caught_after": sum(_caught(s) for c, _, s in pairs if c.source == src),
        }
        for src in SOURCES
        if any(c.source == src for c, _, _ in pairs)
    }
    return {
        "condition": SILENCE_CONDITION,
        "n": len(pairs),
        "caught_before": sum(w for _, w, _ in pairs),
        "caught_after": sum(_caught(s) for _, _, s in pairs),
        "dropped": len(dropped),
        "dropped_clips": [{**_brief(c, s), "score_before": prior[c.id].score} for c, s in dropped],
        "per_source": per_source,
    }


def _first(rows: Iterable[Row], attr: str) -> Any:
    return next((getattr(s, attr) for _, s in rows if getattr(s, attr) is not None), None)


def first_per_source(chosen: Sequence[Clip], limit: int) -> list[Clip]:
    """The first `limit` clips of each source, in order."""
    seen: dict[str, int] = {}
    out = []
    for c in chosen:
        seen[c.source] = seen.get(c.source, 0) + 1
        if seen[c.source] <= limit:
            out.append(c)
    return out


def evaluate(
    speech: Path,
    synth: Path,
    scorer: Scorer,
    *,
    split: str = "test",
    conditions: Sequence[str] = tuple(CONDITIONS),
    reps: int = 1000,
    silence: bool = True,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The report (see the module docstring) for `split`'s clips; `limit`: at most that many per source."""
    chosen = [c for c in clips(speech, synth) if c.split == split]
    if limit is not None:
        chosen = first_per_source(chosen, limit)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfg-audio-eval-") as tmp:
        scored = score_all(
            chosen, [CONDITIONS[n] for n in conditions], scorer, Path(tmp), silence=silence, progress=progress
        )
    every = [r for rows in scored.values() for r in rows]
    report: dict[str, Any] = {
        "split": split,
        "clips": len(chosen),
        "sources": {
            s: sum(c.source == s for c in chosen) for s in SOURCES if any(c.source == s for c in chosen)
        },
        "model": _first(every, "model"),
        "thresholds": _first(every, "thresholds"),
        "conditions": {n: condition_report(scored[n], reps=reps) for n in conditions},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if silence:
        report["silence_check"] = silence_report(scored.get(SILENCE_CONDITION, []), scored["silence"])
        if SILENCE_CONDITION not in scored:
            report["silence_check"]["note"] = (
                f"{SILENCE_CONDITION} not among the conditions: nothing to compare"
            )
    return report


def _pct(r: dict[str, Any]) -> str:
    if r["share"] is None:
        return f"{r['k']}/{r['n']}"
    return (
        f"{r['k']}/{r['n']} = {100 * r['share']:.1f} % [{100 * r['cp95'][0]:.1f}, {100 * r['cp95'][1]:.1f}]"
    )


def _table(report: dict[str, Any]) -> str:
    th = report.get("thresholds") or {}
    model = report.get("model") or {}
    windows = report.get("settings", {}).get("audio_windows")
    lines = [
        f"audio model {model.get('name')} {model.get('version')}, {windows} windows; split {report['split']} "
        f"({report['clips']} clips)",
        f"thresholds review {th.get('review')} / flag {th.get('flag')} ({th.get('source')})",
    ]
    for name, e in report["conditions"].items():
        a, real, fake, ns = e["auc"], e["real"], e["synthetic"], e["no_speech"]
        lines += [
            f"== {name}: AUC {a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] (clusters "
            f"{a['real_clusters']} real / {a['fake_clusters']} synthetic); no speech {ns['real']} real / "
            f"{ns['synthetic']} synthetic; mean timings ms {e['timings_ms_mean']}",
            f"   real to review or flag {_pct(real['review_or_flag'])}; real flagged {_pct(real['flag'])}",
            f"   synthetic caught {_pct(fake['review_or_flag'])}; flagged {_pct(fake['flag'])}",
            f"   {'source':<18} {'n':>3} {'allow':>5} {'review':>6} {'flag':>4} {'none':>4}  "
            "review+flag  AUC vs real",
        ]
        for src, p in e["per_source"].items():
            c = p["counts"]
            auc_s = f"{p['auc_vs_real']:.3f}" if "auc_vs_real" in p else ""
            lines.append(
                f"   {src:<18} {p['n']:>3} {c['allow']:>5} {c['review']:>6} {c['flag']:>4} {c['none']:>4}  "
                f"{100 * (p['review_or_flag']['share'] or 0):>9.1f} %  {auc_s}"
            )
    s = report.get("silence_check")
    if s:
        lines.append(
            f"== silence check (1 s of -60 dBFS before each synthetic clip, {s['condition']}): caught "
            f"{s['caught_before']}/{s['n']} -> {s['caught_after']}/{s['n']}, dropped {s['dropped']}"
        )
    return "\n".join(lines)


def served_pipeline(threads: int = 1, **settings: Any) -> Pipeline:
    """The pipeline as served (`build_pipeline`), for one caller: inline decoding, no batching, `threads`
    ONNX Runtime threads; `settings` override others (`audio_windows`, `audio_early_exit`, ...)."""
    from service.compose import build_pipeline
    from service.config import Settings

    return build_pipeline(
        Settings(decode_isolation="inline", inference_threads=threads, **settings), batching=False
    )


def build_scorer(threads: int = 1, windows: int | None = None) -> tuple[Scorer, dict[str, Any]]:
    """The served pipeline, built once, as a scorer, with the settings that matter for audio."""
    pipeline = served_pipeline(threads, **({} if windows is None else {"audio_windows": windows}))
    used = {
        "audio_windows": pipeline.settings.audio_windows,
        "inference_threads": threads,
        "decode_isolation": "inline",
    }
    return (lambda path: score_clip(pipeline, path)), used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--split", choices=SPLITS[1:], default="test", help="held-out split to score")
    parser.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated subset of {', '.join(CONDITIONS)}",
    )
    parser.add_argument("--no-silence", action="store_true", help="skip the silence check")
    parser.add_argument("--reps", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--limit", type=int, help="at most N clips per source (a quick look, not a figure)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--windows", type=int, help="override of DFG_AUDIO_WINDOWS")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    speech, synth = data_dirs(parser, args)
    names = [n for n in args.conditions.split(",") if n]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        parser.error(f"unknown condition(s) {', '.join(unknown)}")
    scorer, used = build_scorer(args.threads, args.windows)
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    report = evaluate(
        speech,
        synth,
        scorer,
        split=args.split,
        conditions=names,
        reps=args.reps,
        silence=not args.no_silence,
        limit=args.limit,
        progress=progress,
    )
    report["settings"] = used
    report["data"] = {"speech": str(speech), "synth": str(synth)}
    sys.stdout.write((json.dumps(report) if args.json else _table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
