"""The audio stage: a decoded track in, its `AudioResult` out (speech found, windows scored, verdict)."""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt

from service import metrics
from service.audio.judge import AudioPolicy, AudioVerdict, audio_policy, judge_audio, sigmoid
from service.audio.vad import FRAME_SAMPLES, SileroVad
from service.audio.windows import excerpts, place_windows, speech_mask, tile
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
        self.policy: AudioPolicy = audio_policy(
            model, settings.audio_review_threshold, settings.audio_flag_threshold
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
        samples = audio.samples()
        rate = audio.sample_rate
        mask, scanned = self._speech(samples, rate)
        size = self.model.window_samples
        placed = place_windows(mask, size, self.windows)
        extra = ["partially_decoded"] if audio.partial else []
        llrs: list[float] = []
        windows: list[AudioWindow] = []
        if placed.speech_samples >= self.min_speech * rate and placed.starts:
            if placed.tiled:
                batch = tile(samples, size)[None, :]
            else:
                batch = np.stack([samples[s : s + size] for s in placed.starts])
            llrs = self._score_windows(batch)
            for start, value in zip(placed.starts, llrs, strict=False):
                end = min(start + size, len(samples))
                windows.append(
                    AudioWindow(
                        start_s=round(start / rate, 3),
                        end_s=round(end / rate, 3),
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

    def _speech(self, samples: npt.NDArray[np.float32], rate: int) -> tuple[npt.NDArray[np.bool_], int]:
        """Per-sample speech mask (False outside the excerpts searched) and how many samples were searched."""
        mask = np.zeros(len(samples), dtype=bool)
        scanned = 0
        for start, end in excerpts(len(samples), int(self.scan_seconds * rate), _EXCERPT_SECONDS * rate):
            part = samples[start:end]
            mask[start:end] = speech_mask(
                self.vad.probabilities(part), self.vad_threshold, len(part), FRAME_SAMPLES
            )
            scanned += len(part)
        return mask, scanned

    def _score_windows(self, batch: npt.NDArray[np.float32]) -> list[float]:
        """Every window's llr; with early exit, the first window alone when it is clearly real speech."""
        if self.exit_llr is None or len(batch) == 1:
            return [float(x) for x in self.backend.predict_audio(batch)]
        first = float(self.backend.predict_audio(batch[:1])[0])
        if first < self.exit_llr:
            return [first]
        return [first, *(float(x) for x in self.backend.predict_audio(batch[1:]))]


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))
