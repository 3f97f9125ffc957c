"""The audio stage: a decoded track in, its `AudioResult` out (speech found, windows scored, verdict)."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from service import metrics
from service.audio.judge import AudioPolicy, AudioVerdict, audio_policy, judge_audio, logit, sigmoid
from service.audio.vad import FRAME_SAMPLES, SileroVad
from service.audio.windows import excerpts, place_windows, tile
from service.config import Settings
from service.inference import InferenceBackend
from service.media.types import AudioFailure, AudioTrack
from service.models import AudioModelManifest
from service.schemas import AudioResult, AudioWindow, ErrorDetail, ModelRef, UsedThresholds

__all__ = ["AudioStage"]

log = logging.getLogger("dfguard.audio")

_EXCERPT_SECONDS = 10  # long tracks are searched for speech in excerpts this long (>= one window)


class AudioStage:
    """Scores the speech of audio tracks with the backend's audio model. Thread-compatible."""

    def __init__(self, settings: Settings, vad: SileroVad, backend: InferenceBackend) -> None:
        model = backend.audio_model
        if model is None:
            raise ValueError("the backend serves no audio model")
        self.model: AudioModelManifest = model
        self.vad = vad
        self.backend = backend
        self.policy: AudioPolicy = audio_policy(
            model, settings.audio_review_threshold, settings.audio_flag_threshold
        )
        self.windows = settings.audio_windows
        if self.windows != model.thresholds.windows and settings.audio_review_threshold is None:
            log.warning(
                "DFG_AUDIO_WINDOWS=%d but %s's thresholds were fitted on %d windows per track: scores are "
                "averaged unlike when they were fitted (refit: python -m training.audio.calibrate)",
                self.windows,
                model.name,
                model.thresholds.windows,
            )
        self.vad_threshold = settings.audio_vad_threshold
        self.min_speech = settings.audio_min_speech_seconds
        self.scan_seconds = settings.audio_scan_seconds
        exit_below = model.thresholds.early_exit_below
        self.exit_llr = logit(exit_below) if settings.audio_early_exit and exit_below else None
        if (
            self.exit_llr is not None
            and exit_below is not None
            and self.policy.thresholds.review <= exit_below
        ):
            log.warning(
                "the audio review threshold %.4f is at or below the early exit %.4f: a first window between "
                "them is decided alone although it would be sent to review (set DFG_AUDIO_EARLY_EXIT=false)",
                self.policy.thresholds.review,
                exit_below,
            )
        self.model_ref = ModelRef(name=model.name, version=model.version)
        t = self.policy.thresholds
        self.used_thresholds = UsedThresholds(review=t.review, flag=t.flag, source=self.policy.source)

    def score(self, audio: AudioTrack | AudioFailure) -> AudioResult:
        """The track's result; a track the decoder could not read gives a result with `error` and no score."""
        if isinstance(audio, AudioFailure):
            metrics.AUDIO_TRACKS.labels(outcome="error").inc()
            return AudioResult(
                score=None,
                decision=None,
                reasons=[f"audio_error:{audio.code}"],
                speech_seconds=0.0,
                scanned_seconds=0.0,
                duration_s=0.0,
                sample_rate=audio.source_sample_rate,
                channels=audio.channels,
                codec=audio.codec,
                windows=[],
                model=self.model_ref,
                thresholds=self.used_thresholds,
                error=ErrorDetail(code=audio.code, message=audio.message),
            )
        rate = audio.sample_rate
        n = len(audio.pcm)
        speech, scanned = self._speech(audio.pcm, rate)
        size = self.model.window_samples
        placed = place_windows(speech, FRAME_SAMPLES, n, size, self.windows)
        extra = ["partially_decoded"] if audio.partial else []
        llrs: list[float] = []
        windows: list[AudioWindow] = []
        if placed.speech_samples >= self.min_speech * rate and placed.starts:
            if placed.tiled:
                batch = tile(_floats(audio.pcm), size)[None, :]
            else:
                batch = np.stack([_floats(audio.pcm[s : s + size]) for s in placed.starts])
            llrs = self._score_windows(batch)
            for start, value in zip(placed.starts, llrs, strict=False):
                windows.append(
                    AudioWindow(
                        start_s=round(start / rate, 3),
                        end_s=round(min(start + size, n) / rate, 3),
                        score=round(sigmoid(value), 6),
                    )
                )
        verdict: AudioVerdict = judge_audio(llrs, self.policy, extra)
        metrics.AUDIO_TRACKS.labels(outcome=verdict.decision or "no_speech").inc()
        metrics.AUDIO_WINDOWS.inc(len(llrs))
        return AudioResult(
            score=None if verdict.score is None else round(verdict.score, 6),
            decision=verdict.decision,
            reasons=verdict.reasons,
            speech_seconds=round(placed.speech_samples / rate, 3),
            scanned_seconds=round(scanned / rate, 3),
            duration_s=round(audio.duration_s, 3),
            sample_rate=audio.source_sample_rate,
            channels=audio.channels,
            codec=audio.codec,
            windows=windows,
            model=self.model_ref,
            thresholds=self.used_thresholds,
        )

    def _speech(self, pcm: npt.NDArray[np.int16], rate: int) -> tuple[npt.NDArray[np.bool_], int]:
        """Speech per detector frame (False outside the excerpts searched) and how many samples were searched.
        Only the excerpts are converted to float: a 30-min track stays 16-bit."""
        speech = np.zeros(-(-len(pcm) // FRAME_SAMPLES), dtype=bool)
        scanned = 0
        budget = int(self.scan_seconds * rate)
        for start, end in excerpts(len(pcm), budget, _EXCERPT_SECONDS * rate, FRAME_SAMPLES):
            probabilities = self.vad.probabilities(_floats(pcm[start:end]))
            first = start // FRAME_SAMPLES
            speech[first : first + len(probabilities)] = probabilities >= self.vad_threshold
            scanned += end - start
        return speech, scanned

    def _score_windows(self, batch: npt.NDArray[np.float32]) -> list[float]:
        """Every window's llr; with early exit, the first window alone when it is clearly real speech."""
        if self.exit_llr is None or len(batch) == 1:
            return [float(x) for x in self.backend.predict_audio(batch)]
        first = float(self.backend.predict_audio(batch[:1])[0])
        if first < self.exit_llr:
            return [first]
        return [first, *(float(x) for x in self.backend.predict_audio(batch[1:]))]


def _floats(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """16-bit PCM as the float32 in [-1, 1) the models take."""
    return pcm.astype(np.float32) / np.float32(32768.0)
