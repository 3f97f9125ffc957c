"""`python -m training.audio.splice [--seconds 4.5] --json`: partial fakes, real speech spliced before a fake.

A cloned voice can hide behind a real opening: the track's score is the mean over its windows, and with early
exit a clearly real first window decides alone. This measures how often: every synthetic clip of the held-out
split, with the first `--seconds` of a real held-out clip (a different speaker each, in turn) before it, is
encoded as an AAC 64 kb/s upload and scored by the served pipeline, with early exit (the default) and without.
The plain clips are scored the same way for reference. Nothing here changes the product; it reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training.audio.clips import add_data_arguments, clips, data_dirs
from training.audio.codecs import CONDITIONS, SR, decode, encode
from training.audio.evaluate import score_clip, served_pipeline

__all__ = ["main", "splice_report"]


def splice_report(speech: Path, synth: Path, seconds: float, split: str = "test") -> dict[str, Any]:
    chosen = [c for c in clips(speech, synth) if c.split == split]
    real = [c for c in chosen if c.label == 0]
    fakes = [c for c in chosen if c.label == 1]
    pipelines = {early: served_pipeline(1, audio_early_exit=early) for early in (True, False)}
    cond = CONDITIONS["aac64"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dfg-splice-") as tmp:
        for k, fake in enumerate(fakes):
            prefix = decode(real[k % len(real)].path)[: int(seconds * SR)]
            x = decode(fake.path)
            row: dict[str, Any] = {
                "file": fake.path.name,
                "source": fake.source,
                "prefix": real[k % len(real)].path.name,
            }
            for name, signal in (("plain", x), ("spliced", np.concatenate([prefix, x]).astype(np.float32))):
                path = encode(signal, Path(tmp) / f"{fake.id}_{name}{cond.suffix}", cond.codec, cond.bit_rate)
                for early, pipeline in pipelines.items():
                    s = score_clip(pipeline, path)
                    key = f"{name}_{'early_exit' if early else 'every_window'}"
                    row[key] = {
                        "score": s.score,
                        "caught": s.decision in ("review", "flag"),
                        "windows": s.windows,
                    }
                path.unlink(missing_ok=True)
            rows.append(row)
            print(f"{k + 1}/{len(fakes)} {fake.path.name}", file=sys.stderr, flush=True)
    keys = ("plain_early_exit", "plain_every_window", "spliced_early_exit", "spliced_every_window")
    return {
        "split": split,
        "seconds_of_real_speech_before": seconds,
        "fakes": len(rows),
        "caught": {k: sum(r[k]["caught"] for r in rows) for k in keys},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--seconds", type=float, default=4.5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    speech, synth = data_dirs(p, args)
    report = splice_report(speech, synth, args.seconds)
    print(json.dumps(report if args.json else report["caught"], indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
