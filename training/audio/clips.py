"""The labelled speech clips and their train / calibrate / test split, exactly as the issue-16 research
drew it.

Real speech is split by speaker and synthetic speech by voice or sentence pool, so that nothing of the
calibration or test split was seen when the audio head was fitted (`docs/research/audio/HEAD_FINETUNE.md`,
`scripts/head_finetune/clips.py`). The split must stay the research's clip for clip: one `numpy` generator
seeded 1616 shuffles the LibriSpeech test-other speakers, then the train-clean files, then the LJSpeech
utterance ids, in that order. Clip ids are positions in the list (real, LJSpeech/WaveFake, then the synthetic
manifest's order); the evaluation seeds its per-clip noise from them, as the research did.

LJSpeech is one speaker, so no speaker split is possible there: an utterance and its WaveFake re-synthesis
stay in one split and the bootstrap cluster is the utterance.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "REPO",
    "SEED",
    "SOURCES",
    "SPLITS",
    "Clip",
    "Split",
    "add_data_arguments",
    "clips",
    "data_dirs",
    "real_splits",
    "synthetic_rows",
]

Split = Literal["train", "cal", "test"]
SPLITS: tuple[Split, ...] = ("train", "cal", "test")
SEED = 1616
REPO = Path(__file__).resolve().parents[2]
# real sources first, then the generators; the report keeps this order
SOURCES = ("libri-test-other", "libri-train-clean", "lj-real", "espeak", "flite", "piper", "wavefake")

_LJ = re.compile(r"LJ\d+-\d+")


@dataclass(frozen=True)
class Clip:
    """One labelled clip. `cluster` is the bootstrap unit: a speaker, a synthetic voice, an LJ utterance."""

    id: int
    path: Path
    label: int  # 1 = synthetic
    source: str
    cluster: str
    split: Split


def _by_rank(rank: int, train: int, cal: int) -> Split:
    return "train" if rank < train else "cal" if rank < cal else "test"


def real_splits(
    test_other_speakers: list[str], train_clean: list[str], lj_utterances: list[str], seed: int = SEED
) -> tuple[dict[str, Split], list[tuple[str, Split]], dict[str, Split]]:
    """The research's split of the real material, from its sorted inputs: (test-other speaker -> split,
    train-clean items in the research's (shuffled) order with their split, LJ utterance -> split).

    test-other: 10 speakers shuffled 4 / 3 / 3; train-clean: 60 one-clip speakers 24 / 18 / 18; LJ: 10
    utterances 5 / 2 / 3. One generator draws all three shuffles, in this order.
    """
    rng = np.random.default_rng(seed)
    speakers = list(test_other_speakers)
    rng.shuffle(speakers)
    by_speaker = {s: _by_rank(i, 4, 7) for i, s in enumerate(speakers)}
    order = list(range(len(train_clean)))
    rng.shuffle(order)
    clean = [(train_clean[i], _by_rank(rank, 24, 42)) for rank, i in enumerate(order)]
    utterances = list(lj_utterances)
    rng.shuffle(utterances)
    by_utterance = {u: _by_rank(i, 5, 7) for i, u in enumerate(utterances)}
    return by_speaker, clean, by_utterance


_Row = tuple[Path, int, str, str, Split]  # path, label, source, cluster, split


def _real_rows(speech: Path) -> list[_Row]:
    test_other = speech / "librispeech" / "test-other"
    speakers = sorted(d.name for d in test_other.iterdir() if d.is_dir())
    clean = sorted(str(f) for f in speech.glob("librispeech/*.flac"))
    lj_files = sorted(speech.glob("wavefake/LJ*.wav"))
    lj_ids = sorted({_LJ.findall(f.name)[0] for f in lj_files})
    by_speaker, clean_order, by_utterance = real_splits(speakers, clean, lj_ids)
    rows: list[_Row] = []
    for f in sorted(test_other.glob("*/*.flac")):
        rows.append((f, 0, "libri-test-other", "L" + f.parent.name, by_speaker[f.parent.name]))
    for name, split in clean_order:
        f = Path(name)
        rows.append((f, 0, "libri-train-clean", "L" + f.name.split("-")[0], split))
    for f in lj_files:
        u = _LJ.findall(f.name)[0]
        fake = f.name.endswith("_gen.wav")
        rows.append((f, int(fake), "wavefake" if fake else "lj-real", "LJ" + u, by_utterance[u]))
    return rows


def synthetic_rows(synth: Path) -> list[_Row]:
    """The clips of `synth/manifest.jsonl` (from `training.audio.synth` or the research's make_synth.py).

    A relative path is taken from `synth`; an absolute one that no longer exists (the research's manifest
    names /work/research/...) falls back to its file name in `synth`. Cluster: generator and voice; piper
    has one voice, so each piper clip is its own cluster (the research's choice).
    """
    rows: list[_Row] = []
    for line in (synth / "manifest.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        p = Path(m["path"])
        if not p.is_absolute():
            p = synth / p
        elif not p.exists():
            p = synth / p.name
        gen = str(m["gen"])
        cluster = gen + ":" + (p.name if gen == "piper" else str(m["voice"]))
        rows.append((p, 1, gen, cluster, m["split"]))
    return rows


def clips(speech: Path, synth: Path | None) -> list[Clip]:
    """All labelled clips: real speech and WaveFake under `speech` (`../shared/data/speech`), then the
    synthetic clips of `synth` (none when None). Ids are list positions, as in the research."""
    rows = _real_rows(speech) + (synthetic_rows(synth) if synth is not None else [])
    return [Clip(i, p, label, src, cluster, split) for i, (p, label, src, cluster, split) in enumerate(rows)]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """`--shared` and `--synth`, as every audio training command takes them."""
    parser.add_argument(
        "--shared",
        type=Path,
        default=REPO.parent / "shared",
        help="the shared data folder (default ../shared); speech is read from DIR/data/speech",
    )
    parser.add_argument(
        "--synth",
        type=Path,
        default=REPO / ".cache" / "audio" / "synth",
        help="synthetic clips with manifest.jsonl (python -m training.audio.synth --out DIR)",
    )


def data_dirs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, Path]:
    """The real-speech folder and the synthetic-clip folder the arguments name; exits 2 with a message
    naming what is missing."""
    speech: Path = args.shared / "data" / "speech"
    if not speech.is_dir():
        parser.exit(2, f"speech data not found at {speech} (../shared/data/speech; pass --shared DIR)\n")
    synth: Path = args.synth
    if not (synth / "manifest.jsonl").is_file():
        parser.exit(
            2,
            f"no {synth / 'manifest.jsonl'}: run python -m training.audio.synth --out {synth}, "
            "or pass --synth DIR\n",
        )
    return speech, synth
