"""The audio evaluation's pure parts (`training.audio`): the research's split, the synthetic-speech plan,
the cluster-bootstrap AUC, decision counting, the upload encodings, and the report's wiring with a stand-in
scorer. Tests that read real speech need `../shared/data/speech` and skip without it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest

from training.audio.clips import Clip, clips, real_splits, synthetic_rows
from training.audio.codecs import CONDITIONS, SR, add_noise, decode, encode, prepend_silence, write_condition
from training.audio.evaluate import (
    ClipScore,
    condition_report,
    first_per_source,
    score_all,
    score_clip,
    silence_report,
)
from training.audio.stats import cluster_bootstrap_auc, decision_shares, rate
from training.audio.synth import ESPEAK_VOICES, FLITE_VOICES, POOLS, command, plan, sentences
from training.metrics import clopper_pearson

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"
needs_speech = pytest.mark.skipif(
    not SPEECH.is_dir(), reason=f"needs ../shared/data/speech (real speech), absent at {SPEECH}"
)


# --- split ------------------------------------------------------------------------------------------------


def _toy_inputs() -> tuple[list[str], list[str], list[str]]:
    return (
        [f"{s}" for s in range(100, 110)],
        [f"/x/{s}-1-0000.flac" for s in range(200, 260)],
        [f"LJ0{i}-0001" for i in range(10)],
    )


def test_real_split_is_deterministic_with_the_research_sizes() -> None:
    a = real_splits(*_toy_inputs())
    assert a == real_splits(*_toy_inputs())
    by_speaker, clean, by_utt = a

    def count(xs: Iterable[str]) -> dict[str, int]:
        c = Counter(xs)
        return {s: c[s] for s in ("train", "cal", "test")}

    assert count(by_speaker.values()) == {"train": 4, "cal": 3, "test": 3}
    assert count(s for _, s in clean) == {"train": 24, "cal": 18, "test": 18}
    assert count(by_utt.values()) == {"train": 5, "cal": 2, "test": 3}
    assert sorted(f for f, _ in clean) == _toy_inputs()[1]  # every file once, in shuffled order
    assert [f for f, _ in clean] != _toy_inputs()[1]
    assert real_splits(*_toy_inputs(), seed=1) != a


@needs_speech
def test_shared_split_is_the_research_one_and_speaker_disjoint() -> None:
    cs = clips(SPEECH, None)
    assert [c.id for c in cs] == list(range(len(cs))) and len(cs) == 180
    splits_of: dict[str, set[str]] = {}
    for c in cs:
        splits_of.setdefault(c.cluster, set()).add(c.split)
    assert all(len(v) == 1 for v in splits_of.values())  # a speaker / LJ utterance lives in one split
    test = [c for c in cs if c.split == "test"]
    assert sum(c.label == 0 for c in test) == 51 and sum(c.label == 1 for c in test) == 3
    # the research's held-out speakers (HEAD_FINETUNE.md: fit and thresholds never saw them)
    assert {c.cluster for c in test if c.source == "libri-test-other"} == {"L1998", "L3331", "L367"}
    assert {c.cluster for c in test if c.source == "lj-real"} == {
        "LJLJ040-0073",
        "LJLJ044-0233",
        "LJLJ045-0182",
    }
    assert [c.path.name for c in clips(SPEECH, None)] == [c.path.name for c in cs]


def test_synthetic_manifest_paths_and_clusters(tmp_path: Path) -> None:
    rows = [
        {"path": "espeak_9.wav", "gen": "espeak", "voice": "en-us+f5", "split": "test"},
        {"path": "/gone/elsewhere/piper_30.wav", "gen": "piper", "voice": "joe", "split": "test"},
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (p0, l0, g0, c0, s0), (p1, _, _, c1, _) = synthetic_rows(tmp_path)
    assert (p0, l0, g0, c0, s0) == (tmp_path / "espeak_9.wav", 1, "espeak", "espeak:en-us+f5", "test")
    assert p1 == tmp_path / "piper_30.wav" and c1 == "piper:piper_30.wav"  # one voice: clip = cluster


# --- synthetic speech plan ------------------------------------------------------------------------------


def test_synth_plan_is_the_research_draw() -> None:
    jobs = plan(sentences())
    assert len(sentences()) == 60 and len(jobs) == 120 and plan(sentences()) == jobs
    first = jobs[0]  # the research manifest's first line
    assert (first.gen, first.voice, first.split, first.sent, first.params["rate"]) == (
        "espeak",
        "en-us",
        "train",
        (15, 17),
        157,
    )
    for j in jobs:
        assert set(j.sent) <= set(POOLS[j.split])  # sentences from the split's own pool
    by_voice: dict[str, set[str]] = {}
    for j in jobs:
        if j.gen != "piper":
            by_voice.setdefault(j.gen + j.voice, set()).add(j.split)
    assert all(len(v) == 1 for v in by_voice.values())  # espeak / flite split by voice
    assert {j.voice for j in jobs if j.gen == "espeak" and j.split == "test"} == set(ESPEAK_VOICES[9:])
    assert {j.voice for j in jobs if j.gen == "flite" and j.split == "test"} == {
        v for v, s in FLITE_VOICES.items() if s == "test"
    }
    assert [j.split for j in jobs if j.gen == "piper"].count("test") == 12
    assert command(first, Path("o.wav"))[:3] == ["espeak-ng", "-v", "en-us"]


# --- statistics -----------------------------------------------------------------------------------------


def test_cluster_bootstrap_auc_intervals() -> None:
    labels = [0] * 6 + [1] * 6
    clusters = ["r1", "r1", "r2", "r2", "r3", "r3", "f1", "f1", "f2", "f2", "f3", "f3"]
    sep = cluster_bootstrap_auc(labels, [0.1] * 6 + [0.9] * 6, clusters, reps=200)
    assert (sep.value, sep.low, sep.high, sep.real_clusters, sep.fake_clusters) == (1.0, 1.0, 1.0, 3, 3)
    # one synthetic cluster scored like the real ones: 29 of 36 pairs ordered (ties half), a wide interval
    scores = [0.1, 0.2, 0.15, 0.25, 0.3, 0.05, 0.2, 0.1, 0.9, 0.8, 0.95, 0.85]
    a = cluster_bootstrap_auc(labels, scores, clusters, reps=500, seed=3)
    assert a.value == pytest.approx(29 / 36)
    assert 0.0 <= a.low < a.value < a.high <= 1.0
    assert a == cluster_bootstrap_auc(labels, scores, clusters, reps=500, seed=3)  # seeded
    assert a.as_dict()["ci95"] == [round(a.low, 4), round(a.high, 4)]
    # a class without clusters: no interval
    assert np.isnan(cluster_bootstrap_auc([0, 0], [0.1, 0.2], ["a", "b"], reps=10).low)


def test_cluster_bootstrap_resamples_within_each_class() -> None:
    # one real and many synthetic clusters: an unstratified draw would often miss the real class entirely
    labels = [0, 0] + [1] * 20
    clusters = ["r", "r"] + [f"f{i}" for i in range(20)]
    scores = [0.5, 0.6, *np.linspace(0.0, 1.0, 20).tolist()]
    a = cluster_bootstrap_auc(labels, scores, clusters, reps=300)
    assert not np.isnan(a.low) and a.real_clusters == 1 and a.fake_clusters == 20


def test_decision_shares_counts_and_bounds() -> None:
    d = decision_shares(["allow", "review", "flag", None, "review", "allow"])
    assert d["n"] == 6 and d["counts"] == {"allow": 2, "review": 2, "flag": 1, "none": 1}
    assert d["review"]["k"] == 2 and d["flag"]["k"] == 1 and d["review_or_flag"]["k"] == 3
    lo, hi = clopper_pearson(3, 6)
    assert d["review_or_flag"]["share"] == 0.5 and d["review_or_flag"]["cp95"] == [round(lo, 4), round(hi, 4)]
    assert rate(0, 51)["cp95"][0] == 0.0 and rate(0, 51)["cp95"][1] == pytest.approx(0.0698, abs=1e-4)
    assert rate(0, 0)["share"] is None


# --- encodings ------------------------------------------------------------------------------------------


def _tone(seconds: float = 1.0) -> np.ndarray[Any, np.dtype[np.float32]]:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "container", "codec"), [("aac64", "mp4", "aac"), ("opus32", "webm", "opus")]
)
def test_upload_encoding_is_an_audio_only_file(tmp_path: Path, name: str, container: str, codec: str) -> None:
    cond = CONDITIONS[name]
    path = write_condition(_tone(), cond, tmp_path / "clip")
    assert path.suffix == cond.suffix
    with av.open(str(path)) as f:
        assert container in f.format.name
        assert [s.type for s in f.streams] == ["audio"]
        st = f.streams.audio[0]
        assert st.codec_context.name == codec and st.rate == 48000 and st.channels == 1
    y = decode(path)
    assert abs(len(y) - SR) < 0.1 * SR  # about the second that went in
    assert np.sqrt(np.mean(y**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.15)


def test_noise_and_silence_lead_in() -> None:
    x = _tone()
    noisy = add_noise(x, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
    assert snr == pytest.approx(20.0, abs=0.01)
    y = prepend_silence(x, np.random.default_rng(0))
    assert len(y) == len(x) + SR and np.array_equal(y[SR:], x)
    assert 20 * np.log10(np.sqrt(np.mean(y[:SR] ** 2))) == pytest.approx(-60.0, abs=0.5)
    with pytest.raises(ValueError, match="random generator"):
        write_condition(x, CONDITIONS["aac64+noise20"], Path("unused"))


# --- the report with a stand-in scorer --------------------------------------------------------------------


def _toy_clips(tmp_path: Path) -> list[Clip]:
    out = []
    for i, (label, src, cluster) in enumerate(
        [
            (0, "libri-test-other", "L1"),
            (0, "libri-train-clean", "L2"),
            (1, "espeak", "e:a"),
            (1, "flite", "f:b"),
        ]
    ):
        p = encode(_tone(0.5), tmp_path / f"src{i}.m4a", "aac", 64000)
        out.append(Clip(i, p, label, src, cluster, "test"))
    return out


def test_report_wiring_with_a_stand_in_scorer(tmp_path: Path) -> None:
    chosen = _toy_clips(tmp_path)
    seen: list[str] = []

    def scorer(path: Path) -> ClipScore:
        seen.append(path.name)
        clip_id, key = path.stem.split("_", 1)
        k = int(clip_id)
        if k == 1 and key == "opus32":
            return ClipScore(None, None, ("no_speech_found",))
        silent_drop = key == "silence" and k == 3
        score = 0.9 if chosen[k].label and not silent_drop else 0.1 + 0.05 * k
        decision = "flag" if score > 0.8 else "allow"
        return ClipScore(score, decision, windows=2, timings_ms={"audio": 100.0 + k})

    scored = score_all(chosen, [CONDITIONS["aac64"], CONDITIONS["opus32"]], scorer, tmp_path)
    assert sorted(scored) == ["aac64", "opus32", "silence"]
    assert len(scored["aac64"]) == 4 and len(scored["silence"]) == 2  # the check runs on synthetic clips only
    assert {n.rsplit(".", 1)[1] for n in seen} == {"m4a", "webm"} and not list(tmp_path.glob("*_*.*"))
    rep = condition_report(scored["aac64"], reps=50)
    assert rep["auc"]["value"] == 1.0 and rep["real"]["review_or_flag"]["k"] == 0
    assert rep["synthetic"]["flag"]["k"] == 2 and rep["timings_ms_mean"] == {"audio": 101.5}
    assert (
        rep["per_source"]["espeak"]["auc_vs_real"] == 1.0
        and "auc_vs_real" not in rep["per_source"]["libri-test-other"]
    )
    opus = condition_report(scored["opus32"], reps=50)
    assert opus["no_speech"] == {"real": 1, "synthetic": 0}
    assert opus["per_source"]["libri-train-clean"]["counts"]["none"] == 1
    sil = silence_report(scored["aac64"], scored["silence"])
    assert (sil["n"], sil["caught_before"], sil["caught_after"], sil["dropped"]) == (2, 2, 1, 1)
    assert sil["dropped_clips"][0]["source"] == "flite"
    assert [c.source for c in first_per_source(chosen + chosen, 1)] == [c.source for c in chosen]


def test_score_clip_reads_the_audio_result(tmp_path: Path) -> None:
    from service.errors import NoVideoStream

    audio = SimpleNamespace(
        score=0.75,
        decision="review",
        reasons=["synthetic_speech_suspected"],
        speech_seconds=6.5,
        windows=[object(), object()],
        model=SimpleNamespace(name="aasist-l-headft", version="2"),
        thresholds={"review": 0.67, "flag": 0.99, "source": "model"},
    )
    timings = SimpleNamespace(decode=10.0, detect=0.0, classify=0.0, audio=250.0, total=270.0)

    class Stub:
        def __init__(self, result: Any) -> None:
            self.result = result

        def score_file(self, path: Path) -> Any:
            if self.result is None:
                raise NoVideoStream("audio only")
            return self.result

    s = score_clip(Stub(SimpleNamespace(audio=audio, timings_ms=timings)), tmp_path / "a.m4a")
    assert (s.score, s.decision, s.windows, s.speech_seconds) == (0.75, "review", 2, 6.5)
    assert s.timings_ms == {"decode": 10.0, "audio": 250.0, "total": 270.0}
    assert s.model == {"name": "aasist-l-headft", "version": "2"} and s.thresholds is not None
    assert score_clip(Stub(SimpleNamespace(audio=None)), tmp_path / "a.m4a").reasons == ("no_audio_result",)
    refused = score_clip(Stub(None), tmp_path / "a.m4a")
    assert refused.score is None and refused.reasons == ("error:no_video_stream",)


# --- through the product ----------------------------------------------------------------------------------


@needs_speech
def test_score_clip_through_the_served_pipeline(tmp_path: Path) -> None:
    """One held-out WaveFake clip, uploaded as AAC 64 in .m4a, scored by the product (1 window: quick)."""
    from training.audio.evaluate import build_scorer

    clip = next(c for c in clips(SPEECH, None) if c.split == "test" and c.source == "wavefake")
    path = write_condition(decode(clip.path), CONDITIONS["aac64"], tmp_path / "fake")
    scorer, used = build_scorer(threads=1, windows=1)
    s = scorer(path)
    assert used["audio_windows"] == 1
    assert s.reasons[:1] != ("error:no_video_stream",), "the product does not score audio-only uploads"
    assert s.score is not None and 0.0 <= s.score <= 1.0 and s.windows == 1
    assert s.decision in ("allow", "review", "flag") and s.model is not None and s.thresholds is not None
    assert s.thresholds["review"] <= s.thresholds["flag"] and s.speech_seconds and s.speech_seconds > 1.0


# --- calibration ----------------------------------------------------------------------------------------


def test_calibration_fit_is_the_documented_rule() -> None:
    from training.audio.calibrate import fit

    def clip(i: int, label: int) -> Clip:
        return Clip(i, Path(f"{i}.wav"), label, "espeak" if label else "libri-test-other", f"c{i}", "cal")

    real_scores = [0.01 * (k + 1) for k in range(40)]  # 0.01 .. 0.40
    rows = [(clip(k, 0), s, [s / 2, s]) for k, s in enumerate(real_scores)]
    rows += [
        (clip(100, 1), 0.9, [0.5, 0.99]),
        (clip(101, 1), 0.8, [0.7, 0.85]),
        (clip(102, 1), 0.2, [0.2, 0.2]),
    ]
    f = fit(rows, windows=2)
    # just above the 95th percentile, an observed real score (verdicts compare with >=)
    assert f["review"] == pytest.approx(np.quantile(real_scores, 0.95, method="higher") + 1e-6)
    assert f["figures"]["real_review"] == sum(x >= f["review"] for x in real_scores) == 1
    assert f["flag"] == pytest.approx(1 / (1 + np.exp(-(np.log(0.40 / 0.60) + 1.0))), abs=1e-6)
    # the lowest first window of the fakes caught with every window (0.5, not the missed one's 0.2) minus one
    # logit, and at least one logit below review (which binds here: review 0.39)
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    exit_llr = min(logit(0.5) - 1.0, logit(f["review"]) - 1.0)
    assert exit_llr == logit(f["review"]) - 1.0
    assert f["early_exit_below"] == pytest.approx(1 / (1 + np.exp(-exit_llr)), abs=1e-6)
    # a caught fake whose first window looked real (0.05) pulls the exit down below it
    low = fit([(c, s, [0.05, *ws[1:]]) if c.id == 100 else (c, s, ws) for c, s, ws in rows], windows=2)
    assert low["early_exit_below"] == pytest.approx(1 / (1 + np.exp(-(logit(0.05) - 1.0))), abs=1e-6)
    assert f["figures"]["fakes_caught"] == 2 and f["windows"] == 2
    assert f["figures"]["real_exiting_early"] == sum(s / 2 < f["early_exit_below"] for s in real_scores)
    with pytest.raises(ValueError, match="too few"):
        fit(rows[:10], windows=2)
