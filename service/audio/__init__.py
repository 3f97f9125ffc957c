"""The speech track: find speech, cut model windows over it, score them, judge the track.

Pure functions (`windows.py`, `judge.py`) in the middle; the voice-activity detector (`vad.py`) and the model
(through the `InferenceBackend`) at the edge. The decoder (`service.media.audio`) hands over 16 kHz mono PCM.
"""

from service.audio.judge import AudioVerdict, audio_policy, judge_audio, overall
from service.audio.stage import AudioStage
from service.audio.vad import SileroVad
from service.audio.windows import SpeechWindows, place_windows

__all__ = [
    "AudioStage",
    "AudioVerdict",
    "SileroVad",
    "SpeechWindows",
    "audio_policy",
    "judge_audio",
    "overall",
    "place_windows",
]
