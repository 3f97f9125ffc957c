"""`python -m training.audio.calibrate [--windows N] [--write]`: the audio model's thresholds, fitted through
the served path on the calibration split.

Every clip of the calibration split (`training.audio.clips`: speakers, voices and sentences disjoint from the
head's training split and from the test split) is encoded as an AAC 64 kb/s upload, as most uploaded audio
arrives, and scored by `Pipeline.score_file` with every window scored (early exit off), so the fit sees the
decoder, the voice-activity detector and the window placement that serving uses. From the track scores:

* review: just above the 95th percentile of the real clips' scores (`method="higher"`, an observed score,
  plus one unit of the scores' sixth decimal, since verdicts compare with `>=`), so at most one real clip in
  20 like these would go to review;
* flag: the highest real score plus one logit, so no calibration real clip is flagged and a margin remains;
* early_exit_below: a track whose first window scores below this is decided on that window alone. It is the
  lowest first-window score of the synthetic clips caught with every window, minus one logit (and at least one
  logit below review), so no calibration fake caught with every window would be lost to the exit.

`--write` stores them in the bundled manifest (`service/models/builtin/aasist-l-dfguard/model.json`); the
test split is never read. Figures land in the model card (`MODEL_CARD.md`) via `training.audio.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from service.audio.judge import logit, sigmoid
from service.config import Settings
from service.models import DEFAULT_AUDIO_MODEL
from training.audio.clips import Clip, add_data_arguments, clips, data_dirs
from training.audio.codecs import CONDITIONS, decode, write_condition
from training.audio.evaluate import served_pipeline

__all__ = ["Scored", "fit", "main"]

CONDITION = "aac64"


Scored = tuple[Clip, float | None, list[float]]  # clip, track score, window scores (track order)


def fit(rows: list[Scored], windows: int) -> dict[str, Any]:
    """Thresholds from scored calibration clips (pure)."""
    real = [s for c, s, _ in rows if c.label == 0 and s is not None]
    if len(real) < 20:
        raise ValueError(f"{len(real)} scored real clips: too few to fit a 95th percentile")
    review = round(float(np.quantile(real, 0.95, method="higher")) + 1e-6, 6)
    flag = sigmoid(logit(max(real)) + 1.0)
    caught_first = [w[0] for c, s, w in rows if c.label == 1 and s is not None and s >= review and w]
    exit_llr = min(logit(review) - 1.0, min((logit(p) for p in caught_first), default=-math.inf) - 1.0)
    exit_below = sigmoid(exit_llr) if math.isfinite(exit_llr) else None
    real_first = [w[0] for c, s, w in rows if c.label == 0 and w]
    return {
        "review": round(review, 6),
        "flag": round(flag, 6),
        "early_exit_below": None if exit_below is None else round(exit_below, 6),
        "method": "review: just above the 95% quantile of calibration-split real track scores (AAC 64 "
        "kb/s, served path); flag: their maximum + 1.0 logit; early exit: the lowest first-window score "
        "of calibration fakes caught with every window, minus 1.0 logit",
        "fitted_on": f"{len(real)} real clips of the calibration split (LibriSpeech and LJSpeech speakers "
        f"disjoint from the head's training and test splits), {sum(c.label == 1 for c, _, _ in rows)} "
        "synthetic clips",
        "windows": windows,
        "figures": {
            "real_n": len(real),
            "real_review": sum(s >= review for s in real),
            "fakes_n": sum(c.label == 1 for c, _, _ in rows),
            "fakes_caught": len(caught_first),
            "real_exiting_early": sum(exit_below is not None and p < exit_below for p in real_first),
        },
    }


def score_split(speech: Path, synth: Path, windows: int, threads: int) -> list[Scored]:
    pipeline = served_pipeline(threads, audio_windows=windows, audio_early_exit=False)
    chosen = [c for c in clips(speech, synth) if c.split == "cal"]
    out: list[Scored] = []
    with tempfile.TemporaryDirectory(prefix="dfguard-calibrate-") as tmp:
        for k, clip in enumerate(chosen):
            path = write_condition(decode(clip.path), CONDITIONS[CONDITION], Path(tmp) / f"{clip.id}")
            try:
                audio = pipeline.score_file(path).audio
            finally:
                path.unlink(missing_ok=True)
            if audio is None:
                raise RuntimeError(f"{clip.path}: no audio result")
            out.append((clip, audio.score, [w.score for w in audio.windows]))
            print(f"{k + 1}/{len(chosen)} {clip.source} {clip.path.name} {audio.score}", file=sys.stderr)
    return out


def write(fitted: dict[str, Any], manifest: Path = DEFAULT_AUDIO_MODEL) -> None:
    data = json.loads(manifest.read_text())
    data["thresholds"] = {k: fitted[k] for k in ("review", "flag", "method", "fitted_on", "windows")}
    data["thresholds"]["early_exit_below"] = fitted["early_exit_below"]
    manifest.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--windows", type=int, default=Settings().audio_windows)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="store the thresholds in the bundled manifest")
    args = p.parse_args(argv)
    speech, synth = data_dirs(p, args)
    rows = score_split(speech, synth, args.windows, args.threads)
    fitted = fit(rows, args.windows)
    print(json.dumps(fitted, indent=2))
    if args.write:
        write(fitted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
