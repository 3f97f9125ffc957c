"""Audio stage cost: its share of `bench.pipeline`'s p50 on a 10-s 720p face clip with a speech track.

    python -m bench.audio --speech FILE [--windows 1 2 3] [--runs 11] [--json]

The clip is made here (the media factory's 1280x720 H.264 face clip, its audio track the first 10 s of
`--speech`, AAC 48 kHz, as uploads carry it); by default `--speech` is a LibriSpeech recording from
`../shared/data/speech` (measurement only: the product never reads `../shared`). For each window count the
whole pipeline runs as served (`bench.pipeline.run`), without early exit (the default) and with it (opt-in:
clear real speech is decided on its first window). `audio_share` is the median audio stage time over the
median end-to-end time, the issue's budget being 0.25; `audio_decode_ms` is the audio track's own decode and
resampling (inside the isolated decoder, so counted in the `decode` stage), measured alone in-process, and
`audio_share_with_decode` adds it. `without_audio_p50_ms` is the same clip scored with
`DFG_AUDIO_ENABLED=false` (measured before the others, so drift shows in `added_to_p50_ms`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import platform_info
from bench.pipeline import run as run_pipeline
from devtools import media_factory as mf
from service.config import Settings
from service.media import MediaLimits
from service.media.audio import decode_audio_stream

_SHARED_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "librispeech"


def default_speech() -> Path:
    files = sorted(_SHARED_SPEECH.glob("*.flac"))
    if not files:
        raise SystemExit(f"no --speech given and no LibriSpeech files under {_SHARED_SPEECH}")
    return max(files, key=lambda p: p.stat().st_size)  # the longest: a full 10 s of speech


def run(speech: Path, windows: list[int], runs: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dfguard-bench-audio-") as tmp:
        sound = mf.Sound.read(speech)
        clip = mf.make_face_clip(Path(tmp) / "speech720p.mp4", seconds=10.0, audio=sound)
        base = run_pipeline(clip, runs, warmup, 0, Settings(audio_enabled=False))
        limits = MediaLimits.from_settings(Settings())
        decode_ms = []
        for _ in range(runs):
            t = time.perf_counter()
            decode_audio_stream(clip, "mov", limits, max_seconds=limits.max_duration_seconds, strict=False)
            decode_ms.append((time.perf_counter() - t) * 1000)
        audio_decode = statistics.median(decode_ms)
        out: dict[str, Any] = {
            "without_audio_p50_ms": base["p50_ms"],
            "without_audio_stage_ms": base["stage_ms"],
            "audio_decode_ms": round(audio_decode, 1),
            "by_windows": {},
        }
        for n in windows:
            for early in (True, False):
                r = run_pipeline(clip, runs, warmup, 0, Settings(audio_windows=n, audio_early_exit=early))
                audio_ms = r["stage_ms"]["audio"]
                key = f"{n}" + ("_early_exit" if early else "")
                out["by_windows"][key] = {
                    "p50_ms": r["p50_ms"],
                    "audio_stage_p50_ms": audio_ms,
                    "audio_share": round(audio_ms / r["p50_ms"], 3),
                    "audio_share_with_decode": round((audio_ms + audio_decode) / r["p50_ms"], 3),
                    "added_to_p50_ms": round(r["p50_ms"] - base["p50_ms"], 1),
                    "windows_scored": r["result"]["audio_windows"],
                    "stage_ms": r["stage_ms"],
                }
        out["parameters"] = {"speech": str(speech), "runs": runs, "warmup": warmup, "clip": "10 s 1280x720"}
        out["platform"] = platform_info()
        return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speech", type=Path, default=None)
    p.add_argument("--windows", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print JSON only (default: JSON too, indented)")
    args = p.parse_args(argv)
    out = run(args.speech or default_speech(), args.windows, args.runs, args.warmup)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
