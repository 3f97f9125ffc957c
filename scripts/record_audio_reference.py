"""Record the bundled audio model's outputs on fixed inputs (the parity test compares against them).

    .venv/bin/python scripts/record_audio_reference.py [--shared ../shared]

Inputs: the three reference WAVs of `../shared/weights/aasist/reference/` (int16 / 32768, the first 64,600
samples or tiled, as the published reference forward reads them) and a seeded signal that needs no
`../shared` (numpy's PCG64, seed 16, 0.05 x standard normal). Run it only when the model file changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import wave
from pathlib import Path

import numpy as np

from service.audio.windows import tile
from service.inference import OnnxRuntimeBackend
from service.models import DEFAULT_AUDIO_MODEL, UNTRAINED_MANIFEST, load_audio_manifest

REFERENCE_WAVS = ("espeak_16k.wav", "noise_16k.wav", "tone_16k.wav")
SEEDED = "seeded_normal_16"


def read_wav(path: Path, size: int) -> np.ndarray:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = pcm.astype(np.float32) / 32768.0
    return x[:size] if len(x) >= size else tile(x, size)


def seeded(size: int) -> np.ndarray:
    return (np.random.default_rng(16).standard_normal(size) * 0.05).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    args = ap.parse_args()
    manifest, model_path = load_audio_manifest(DEFAULT_AUDIO_MODEL)
    backend = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1, audio=DEFAULT_AUDIO_MODEL)
    size = manifest.window_samples
    inputs = {SEEDED: seeded(size)}
    ref = args.shared / "weights" / "aasist" / "reference"
    for name in REFERENCE_WAVS:
        inputs[name] = read_wav(ref / name, size)
    out: dict[str, object] = {
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "output": "llr = logit[synthetic] - logit[bona fide], ONNX Runtime CPU",
        "inputs": {},
    }
    for name, x in inputs.items():
        value = float(backend.predict_audio(x[None, :])[0])
        out["inputs"][name] = {"llr": round(value, 6)}  # type: ignore[index]
    (DEFAULT_AUDIO_MODEL.parent / manifest.reference_outputs).write_text(json.dumps(out, indent=2) + "\n")  # type: ignore[operator]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
