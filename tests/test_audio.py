"""The speech track: sniffing, isolated decoding within bounds, speech finding, window placement, the
bundled model's parity, verdicts and how they combine with the faces'.

Real speech comes from `../shared/data/speech` (LibriSpeech, LJSpeech and WaveFake's re-syntheses of it); the
tests that need it skip, naming it, where it is absent. Tones and silence are made here.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from devtools import media_factory as mf
from devtools.media_factory import Sound
from service.audio import SileroVad, place_windows
from service.audio.judge import AudioPolicy, judge_audio, overall
from service.audio.vad import FRAME_SAMPLES
from service.audio.windows import MIN_GAP, tile
from service.config import Settings
from service.decision import Thresholds
from service.errors import CorruptMedia, MediaTooLong, UnsupportedAudio, UnsupportedMedia
from service.events import FlagAudio, FlagEvent, encode_flag_event, parse_flag_event
from service.inference import OnnxRuntimeBackend
from service.media import AudioFailure, AudioTrack, load_media
from service.media.sniff import sniff
from service.models import DEFAULT_AUDIO_MODEL, UNTRAINED_MANIFEST, load_audio_manifest
from service.pipeline import Pipeline

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPEECH = SHARED / "data" / "speech"
AASIST = SHARED / "weights" / "aasist"
INLINE = Settings(decode_isolation="inline")
WINDOW = 64_600
needs_speech = pytest.mark.skipif(not SPEECH.is_dir(), reason=f"needs ../shared/data/speech ({SPEECH})")
needs_aasist = pytest.mark.skipif(not AASIST.is_dir(), reason=f"needs ../shared/weights/aasist ({AASIST})")


def _libri(i: int = 0) -> Path:
    return sorted((SPEECH / "librispeech").glob("*.flac"))[i]


def _wavefake(i: int = 0) -> Path:
    return sorted((SPEECH / "wavefake").glob("*_gen.wav"))[i]


# --------------------------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02\x00\x00", "ogg"),
        (b"ID3\x04\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00\x00", "mp3"),
        (b"\xff\xf1\x50\x80\x02\x1f", "aac"),
    ],
)
def test_audio_formats_are_sniffed_from_magic_bytes(head: bytes, fmt: str) -> None:
    found = sniff(head)
    assert (found.kind, found.format) == ("audio", fmt)


def test_bytes_that_only_look_like_an_mpeg_sync_are_refused() -> None:
    from service.errors import UnsupportedMedia

    with pytest.raises(UnsupportedMedia):
        sniff(b"\xff\xff\xff\xff\x00\x00")  # reserved layer and bitrate: not an MP3 frame


# --------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("suffix", ["m4a", "mp4", "webm", "wav", "mp3", "ogg", "mkv"])
def test_audio_only_media_decodes_to_16k_mono(media_dir: Path, suffix: str) -> None:
    path = mf.make_audio_only(media_dir / f"tone.{suffix}", seconds=1.5, sample_rate=44_100)
    media = load_media(path, INLINE)
    assert media.header.kind == "audio"
    assert media.frames.shape[0] == 0
    track = media.audio
    assert isinstance(track, AudioTrack)
    assert track.sample_rate == 16_000 and track.pcm.dtype == np.int16
    assert abs(track.duration_s - 1.5) < 0.1  # codec priming and padding only
    # the 440 Hz tone survives: its spectrum peaks there
    spectrum = np.abs(np.fft.rfft(track.samples()))
    assert abs(np.argmax(spectrum) * 16_000 / len(track.samples()) - 440) < 5


def test_flac_and_the_video_track_of_a_clip(media_dir: Path) -> None:
    clip = mf.make_face_clip(media_dir / "tone_face.mp4", seconds=1.0, width=320, height=240, audio=True)
    media = load_media(clip, INLINE)
    assert media.header.kind == "video" and len(media.frames) > 0
    assert isinstance(media.audio, AudioTrack) and media.audio.codec == "aac"
    silent = mf.make_face_clip(media_dir / "silent_face.mp4", seconds=1.0, width=320, height=240)
    assert load_media(silent, INLINE).audio is None  # no track: no audio block
    assert load_media(clip, Settings(decode_isolation="inline", audio_enabled=False)).audio is None


def test_hostile_audio_bounds(media_dir: Path) -> None:
    fast = mf.make_audio_only(media_dir / "fast.wav", seconds=0.2, sample_rate=96_000)
    with pytest.raises(UnsupportedAudio, match="96000 Hz"):
        load_media(fast, Settings(decode_isolation="inline", audio_max_sample_rate=48_000))
    long = mf.make_audio_only(media_dir / "long.m4a", seconds=3.0)
    with pytest.raises(MediaTooLong):
        load_media(long, Settings(decode_isolation="inline", max_duration_seconds=2))


def test_a_videos_unreadable_track_is_reported_not_fatal(media_dir: Path) -> None:
    clip = mf.make_face_clip(media_dir / "fast_face.mkv", seconds=1.0, width=320, height=240, audio=True)
    media = load_media(clip, Settings(decode_isolation="inline", audio_max_sample_rate=22_050))
    assert len(media.frames) > 0  # the faces are still analysed
    assert isinstance(media.audio, AudioFailure) and media.audio.code == "unsupported_audio"


def test_cover_art_is_not_a_video_and_ogg_video_is_refused(media_dir: Path) -> None:
    covered = load_media(mf.make_audio_with_cover(media_dir / "cover.m4a"), INLINE)
    assert covered.header.kind == "audio" and isinstance(covered.audio, AudioTrack)
    assert abs(covered.audio.duration_s - 1.5) < 0.1
    with pytest.raises(UnsupportedMedia, match="video stream"):  # its pictures would go unchecked
        load_media(mf.make_ogg_video(media_dir / "video.ogg"), INLINE)


def test_sample_rate_and_channel_changes_mid_stream_decode_whole(media_dir: Path) -> None:
    media = load_media(mf.make_adts_with_format_changes(media_dir / "changes.aac"), INLINE)
    track = media.audio
    assert media.header.kind == "audio" and isinstance(track, AudioTrack)
    assert abs(track.duration_s - 3.0) < 0.2 and not track.partial
    # one tone throughout: the resampled signal keeps 440 Hz across the three parts
    for part in np.array_split(track.samples()[1600:-1600], 3):
        spectrum = np.abs(np.fft.rfft(part))
        assert abs(np.argmax(spectrum) * 16_000 / len(part) - 440) < 5
    over = Settings(decode_isolation="inline", audio_max_channels=1)
    with pytest.raises(UnsupportedAudio, match="2 audio channels"):  # the stereo part, checked per frame
        load_media(media_dir / "changes.aac", over)


def test_a_videos_track_stops_with_its_picture(media_dir: Path) -> None:
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(48_000 * 6) / 48_000)).astype(np.float32)
    clip = mf.make_face_clip(
        media_dir / "short_pic.mp4",
        seconds=1.0,
        width=320,
        height=240,
        audio=Sound(tone, 48_000),
        audio_seconds=6.0,  # a 6-s track beside a 1-s picture
    )
    media = load_media(clip, INLINE)
    assert media.header.kind == "video" and isinstance(media.audio, AudioTrack)
    picture = media.header.duration_s or 0.0
    assert picture < 2.0 and media.audio.duration_s <= picture + 1.05 and media.audio.partial


def test_a_track_still_decoding_at_its_deadline_fails_alone(media_dir: Path) -> None:
    from service.media import MediaLimits, decode_media

    clip = mf.make_face_clip(media_dir / "deadline.mp4", seconds=1.0, width=320, height=240, audio=True)
    media = decode_media(clip, MediaLimits(audio=True, time_limit_seconds=1e-6))  # already past it
    assert len(media.frames) > 0  # the pictures are kept
    assert isinstance(media.audio, AudioFailure) and media.audio.code == "decode_failed"
    assert "not decoded in time" in media.audio.message
    assert isinstance(decode_media(clip, MediaLimits(audio=True, time_limit_seconds=120)).audio, AudioTrack)


def test_garbage_after_an_audio_header_is_corrupt(media_dir: Path) -> None:
    good = mf.make_audio_only(media_dir / "to_break.wav", seconds=0.5)
    broken = media_dir / "broken.flac"
    broken.write_bytes(b"fLaC" + good.read_bytes()[4:200] + bytes(range(256)) * 8)
    with pytest.raises(CorruptMedia):
        load_media(broken, INLINE)


# --------------------------------------------------------------------------------------------- windows


F = FRAME_SAMPLES  # the detector's frame: speech is given per frame of 512 samples


def _frames(seconds: float) -> int:
    return round(seconds * 16_000 / F)


def test_windows_go_where_the_speech_is_and_spread_out() -> None:
    speech = np.zeros(_frames(30), dtype=bool)
    speech[_frames(2) : _frames(8)] = True  # 6 s of speech at 2-8 s
    speech[_frames(20) : _frames(27)] = True  # 7 s at 20-27 s
    mask = np.repeat(speech, F)
    placed = place_windows(speech, F, len(mask), WINDOW, 2)
    assert placed.speech_samples == int(speech.sum()) * F
    assert len(placed.starts) == 2
    for start in placed.starts:  # each window is mostly speech
        assert mask[start : start + WINDOW].mean() > 0.9
    assert placed.starts[0] < 16_000 * 8 < 16_000 * 20 <= placed.starts[1] + WINDOW
    assert abs(placed.starts[1] - placed.starts[0]) >= MIN_GAP


def test_no_window_over_silence_short_tracks_are_tiled_and_sparse_speech_gets_one() -> None:
    n = 16_000 * 10
    assert place_windows(np.zeros(_frames(10), dtype=bool), F, n, WINDOW, 3).starts == []
    sparse = np.zeros(_frames(60), dtype=bool)
    for k in range(12):  # a 0.96-s phrase every 5 s: no window is a quarter speech
        sparse[_frames(5 * k) : _frames(5 * k) + 30] = True
    placed = place_windows(sparse, F, 16_000 * 60, WINDOW, 3)
    assert len(placed.starts) == 1 and sparse[placed.starts[0] // F]  # its densest window, on speech
    short = place_windows(np.ones(_frames(2), dtype=bool), F, 16_000 * 2, WINDOW, 3)
    assert short.starts == [0] and short.tiled
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(tile(x, 25), np.concatenate([x, x, x[:5]]))


def test_a_track_with_room_for_fewer_windows_gets_fewer() -> None:
    # 6 s of speech: a second 4.04-s window would start 2 s after the first and end past the track
    placed = place_windows(np.ones(_frames(6), dtype=bool), F, 16_000 * 6, WINDOW, 5)
    assert placed.starts == [0]


def test_windows_start_on_speech_unless_the_track_leaves_no_room() -> None:
    speech = np.zeros(_frames(9), dtype=bool)
    onset = 32  # frames: 1.024 s of quiet, then speech
    speech[onset:] = True
    placed = place_windows(speech, F, 16_000 * 9, WINDOW, 2)
    assert placed.starts and all(speech[s // F] for s in placed.starts)
    assert placed.starts[0] == onset * F  # exactly at the onset, not on the 0.1-s grid before it
    n = WINDOW + 8000
    late = np.zeros(-(-n // F), dtype=bool)
    late[24:] = True  # speech starts (12,288) after the last possible window start (8,000)
    assert place_windows(late, F, n, WINDOW, 2).starts == [8000]


def test_long_tracks_are_searched_in_spread_excerpts() -> None:
    from service.audio.windows import excerpts

    assert excerpts(16_000 * 100, 16_000 * 300, 16_000 * 10, F) == [(0, 16_000 * 100)]
    parts = excerpts(16_000 * 1800, 16_000 * 300, 16_000 * 10, F)
    assert len(parts) == 30 and parts[0][0] == 0 and parts[-1][1] >= 16_000 * 1800 - F
    assert all(a % F == 0 and b - a == 16_000 * 10 for a, b in parts)


# --------------------------------------------------------------------------------------------- verdicts


POLICY = AudioPolicy(Thresholds(review=0.6, flag=0.95), "model")


def test_judge_audio_thresholds_and_no_speech() -> None:
    assert judge_audio([], POLICY).reasons == ["no_speech_found"]
    assert judge_audio([], POLICY).decision is None
    low = judge_audio([-3.0, -1.0], POLICY)
    assert low.decision == "allow" and low.score == pytest.approx(1 / (1 + np.exp(2.0)))
    mid = judge_audio([0.0, 2.0], POLICY)  # sigmoid(1) = 0.73
    assert mid.decision == "review" and mid.reasons[0] == "synthetic_speech_suspected"
    assert judge_audio([4.0, 3.0], POLICY).decision == "flag"


def test_the_stricter_decision_wins_and_says_why() -> None:
    video = ("allow", ["score_below_review_threshold"])
    assert overall(video, ("review", ["synthetic_speech_suspected"])) == (  # type: ignore[arg-type]
        "review",
        ["synthetic_speech_suspected", "score_below_review_threshold"],
    )
    assert overall(("flag", ["x"]), ("review", ["synthetic_speech_suspected"])) == (  # type: ignore[arg-type]
        "flag",
        ["x", "synthetic_speech_suspected"],
    )
    assert overall(video, ("allow", ["speech_score_below_review_threshold"])) == video  # type: ignore[arg-type]
    assert overall(video, None) == video  # type: ignore[arg-type]
    assert overall(video, (None, ["no_speech_found"])) == (  # type: ignore[arg-type]
        "allow",
        ["score_below_review_threshold", "no_speech_found"],
    )
    assert overall(None, (None, ["no_speech_found"])) == ("allow", ["no_speech_found"])
    assert overall(None, ("flag", ["synthetic_speech_suspected"])) == ("flag", ["synthetic_speech_suspected"])


# --------------------------------------------------------------------------------------------- the models


def _wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def audio_backend() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1, audio=DEFAULT_AUDIO_MODEL)


def test_bundled_model_reproduces_its_recorded_outputs(audio_backend: OnnxRuntimeBackend) -> None:
    manifest, _ = load_audio_manifest(DEFAULT_AUDIO_MODEL)
    assert manifest.reference_outputs is not None
    recorded = json.loads((DEFAULT_AUDIO_MODEL.parent / manifest.reference_outputs).read_text())
    assert recorded["model_sha256"] == manifest.sha256
    seeded = (np.random.default_rng(16).standard_normal(WINDOW) * 0.05).astype(np.float32)
    got = float(audio_backend.predict_audio(seeded[None, :])[0])
    assert abs(got - recorded["inputs"]["seeded_normal_16"]["llr"]) < 1e-4
    if AASIST.is_dir():
        for name in ("espeak_16k.wav", "noise_16k.wav", "tone_16k.wav"):
            x = _wav(AASIST / "reference" / name)
            x = x[:WINDOW] if len(x) >= WINDOW else tile(x, WINDOW)
            got = float(audio_backend.predict_audio(x[None, :])[0])
            assert abs(got - recorded["inputs"][name]["llr"]) < 1e-4, name


@needs_aasist
def test_published_weights_reproduce_the_reference_logits() -> None:
    import onnxruntime as ort

    reference = json.loads((AASIST / "reference" / "logits.json").read_text())["AASIST-L"]
    session = ort.InferenceSession(str(AASIST / "AASIST-L.onnx"), providers=["CPUExecutionProvider"])
    for name in ("espeak_16k.wav", "noise_16k.wav", "tone_16k.wav"):
        x = _wav(AASIST / "reference" / name)
        x = x[:WINDOW] if len(x) >= WINDOW else tile(x, WINDOW)
        (logits,) = session.run(["logits"], {"waveform": x[None, :]})
        np.testing.assert_allclose(logits[0], reference[name]["logits"], atol=1e-4)


@needs_aasist
def test_bundled_model_differs_from_the_published_one_only_in_its_final_layer() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    def weights(path: Path) -> dict[str, np.ndarray]:
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}

    published = weights(AASIST / "AASIST-L.onnx")
    bundled = weights(DEFAULT_AUDIO_MODEL.parent / "model.onnx")
    assert published.keys() == bundled.keys()
    changed = {k for k in published if not np.array_equal(published[k], bundled[k])}
    assert changed == {"m.out_layer.weight", "m.out_layer.bias"}
    assert (DEFAULT_AUDIO_MODEL.parent / "LICENSE").is_file() and (
        DEFAULT_AUDIO_MODEL.parent / "NOTICE"
    ).is_file()


@needs_speech
def test_vad_finds_speech_and_not_a_tone() -> None:
    vad = SileroVad()
    speech = Sound.read(_libri()).samples  # LibriSpeech is 16 kHz already
    p = vad.probabilities(speech)
    assert len(p) == -(-len(speech) // FRAME_SAMPLES)
    assert (p >= 0.5).mean() > 0.5
    t = np.arange(16_000 * 3) / 16_000
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    assert (vad.probabilities(tone) >= 0.5).mean() < 0.1
    assert (vad.probabilities(np.zeros(16_000, np.float32)) >= 0.5).sum() == 0


# --------------------------------------------------------------------------------------------- the whole path


def test_a_tone_only_upload_is_scored_with_no_speech_found(pipeline: Pipeline, media_dir: Path) -> None:
    result = pipeline.score_file(mf.make_audio_only(media_dir / "tone_only.m4a", seconds=2.0))
    assert result.media.kind == "audio" and result.frames_sampled == 0
    assert result.decision == "allow" and result.reasons == ["no_speech_found"]
    assert result.audio is not None and result.audio.score is None and result.audio.windows == []
    assert result.score is None


@needs_speech
def test_real_speech_after_aac_is_allowed_and_a_vocoder_fake_is_caught(
    pipeline: Pipeline, media_dir: Path
) -> None:
    real = mf.make_audio_only(media_dir / "real.m4a", sound=Sound.read(_libri(3)), bit_rate=64_000)
    r = pipeline.score_file(real)
    assert r.audio is not None and r.audio.decision == "allow", r.audio
    assert r.audio.speech_seconds > 3 and 1 <= len(r.audio.windows) <= pipeline.settings.audio_windows
    assert r.audio.model.name == "dfguard-aasist-l" and r.audio.thresholds.source == "model"
    fake = mf.make_audio_only(media_dir / "fake.m4a", sound=Sound.read(_wavefake(0)), bit_rate=64_000)
    f = pipeline.score_file(fake)
    assert f.audio is not None and f.audio.decision in ("review", "flag"), f.audio
    assert f.decision == f.audio.decision and f.reasons[0] == "synthetic_speech_suspected"
    assert f.timings_ms.audio > 0


@needs_speech
def test_leading_silence_does_not_hide_a_fake(pipeline: Pipeline, media_dir: Path) -> None:
    sound = Sound.read(_wavefake(0)).with_silence_before(1.0)
    f = pipeline.score_file(mf.make_audio_only(media_dir / "fake_silence.m4a", sound=sound, bit_rate=64_000))
    assert f.audio is not None and f.audio.decision in ("review", "flag"), f.audio
    assert all(w.start_s >= 0.9 for w in f.audio.windows)  # the windows moved onto the speech


@needs_speech
def test_a_face_video_with_a_cloned_voice_is_sent_to_review(pipeline: Pipeline, media_dir: Path) -> None:
    # Plumbing, not accuracy (training.audio.evaluate measures that): a fake the model scores clearly.
    sound = Sound.read(_wavefake(0))
    seconds = len(sound.samples) / sound.rate
    clip = mf.make_face_clip(
        media_dir / "face_fake_voice.mp4", seconds=seconds, width=640, height=360, audio=sound
    )
    r = pipeline.score_file(clip)
    assert r.faces_detected > 0 and r.score is not None  # the faces were scored as before
    assert r.audio is not None and r.audio.decision in ("review", "flag")
    assert r.decision in ("review", "flag") and "synthetic_speech_suspected" in r.reasons


def test_flag_events_carry_the_audio_block_in_v2_only() -> None:
    from datetime import UTC, datetime

    from service.events import FlagTimings
    from service.schemas import AudioWindow, ModelRef

    audio = FlagAudio(
        score=0.9,
        decision="review",
        reasons=["synthetic_speech_suspected"],
        speech_seconds=5.0,
        windows=[AudioWindow(start_s=0.5, end_s=4.5, score=0.9)],
        model=ModelRef(name="dfguard-aasist-l", version="1.0.0"),
    )
    event = FlagEvent(
        event_id="e",
        video_id="v",
        tenant="t",
        decision="review",
        score=None,
        reasons=["synthetic_speech_suspected"],
        model=ModelRef(name="m", version="1"),
        top_frames=[],
        timings_ms=FlagTimings(fetch=1.0, total=2.0),
        decided_at=datetime.now(UTC),
        source_event_id="s",
        audio=audio,
    )
    assert parse_flag_event(encode_flag_event(event, 2)).audio == audio
    v1 = json.loads(encode_flag_event(event, 1))
    assert "audio" not in v1 and parse_flag_event(encode_flag_event(event, 1)).audio is None


@needs_speech
def test_clear_real_speech_is_decided_on_its_first_window(media_dir: Path) -> None:
    from service.compose import build_pipeline

    manifest, _ = load_audio_manifest(DEFAULT_AUDIO_MODEL)
    assert manifest.thresholds.early_exit_below is not None, "the bundled model has a fitted early exit"
    real = mf.make_audio_only(media_dir / "real_exit.m4a", sound=Sound.read(_libri(5)), bit_rate=64_000)
    results = {}
    for early in (True, False):
        p = build_pipeline(Settings(decode_isolation="inline", audio_early_exit=early), batching=False)
        results[early] = p.score_file(real).audio
    on, off = results[True], results[False]
    assert on is not None and off is not None
    assert len(off.windows) == 2 and len(on.windows) == 1
    assert on.windows[0] == off.windows[0] and on.windows[0].score < manifest.thresholds.early_exit_below
    assert on.decision == off.decision == "allow"


def test_the_stage_warns_about_settings_that_contradict_its_fit(caplog: pytest.LogCaptureFixture) -> None:
    from service.audio import AudioStage

    backend = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1, audio=DEFAULT_AUDIO_MODEL)
    with caplog.at_level("WARNING", logger="dfguard.audio"):
        AudioStage(Settings(), SileroVad(), backend)
    assert not caplog.records, "the shipped settings are the ones the thresholds were fitted with"
    with caplog.at_level("WARNING", logger="dfguard.audio"):
        AudioStage(Settings(audio_windows=3), SileroVad(), backend)
        AudioStage(Settings(audio_review_threshold=0.1, audio_early_exit=True), SileroVad(), backend)
    messages = [r.getMessage() for r in caplog.records]
    assert any("fitted on 2 windows" in m for m in messages)
    assert any("at or below the early exit" in m for m in messages)
