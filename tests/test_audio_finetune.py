"""The audio head's fit and export (`training.audio.finetune`, `.head`, `.embed`): the IRLS logistic
regression, the class/source balancing, writing the head into the final layer of an ONNX graph, and the
research's crops and augmentations (deterministic per seed, the research's random draws in its order).

A tiny stand-in graph is built with `onnx.helper`; the tests on the published AASIST-L graph need
`../shared/weights/aasist` and the pinned crops of a real clip `../shared/data/speech`, and skip without them.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.audio.clips import Clip
from training.audio.embed import (
    SR,
    WIN,
    add_noise,
    augment,
    augment2,
    pauses,
    phase_seed,
    phase_windows,
    placed_windows,
    silence,
    tile_window,
)
from training.audio.finetune import reference_inputs, tasks
from training.audio.head import (
    OUT_BIAS,
    OUT_WEIGHT,
    balanced_weights,
    clip_scores,
    export_head,
    fit_lr,
    read_head,
    select_l2,
)

onnx = pytest.importorskip("onnx")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AASIST = SHARED / "weights" / "aasist"
SPEECH = SHARED / "data" / "speech"
needs_aasist = pytest.mark.skipif(
    not (AASIST / "AASIST-L.onnx").is_file(),
    reason=f"needs ../shared/weights/aasist (the published AASIST-L.onnx), absent at {AASIST}",
)
needs_speech = pytest.mark.skipif(
    not SPEECH.is_dir(), reason=f"needs ../shared/data/speech (real speech), absent at {SPEECH}"
)


def _separable(seed: int = 0, n: int = 200, d: int = 6) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    X = rng.standard_normal((n, d)) * 2.0 + 3.0  # offset and scale: the fit standardises, then folds back
    margin = (X - 3.0) @ direction
    keep = np.abs(margin) > 0.5  # a clear gap between the classes
    X, y = X[keep].astype(np.float32), (margin[keep] > 0).astype(float)
    return X, y, direction


# --- the fit ----------------------------------------------------------------------------------------------


def test_irls_recovers_a_separating_direction_and_is_deterministic() -> None:
    X, y, direction = _separable()
    w = np.ones(len(y))
    W, c = fit_lr(X, y, w, l2=1.0)
    score = X @ W + c
    assert np.all((score > 0) == (y == 1))  # separates the training set
    assert W @ direction / np.linalg.norm(W) > 0.95  # along the true normal
    W2, c2 = fit_lr(X, y, w, l2=1.0)
    assert np.array_equal(W, W2) and c == c2  # bit for bit
    Wr, _ = fit_lr(X, y, w, l2=100.0)
    assert np.linalg.norm(Wr) < np.linalg.norm(W)  # the penalty shrinks


def test_irls_folds_the_standardisation_back() -> None:
    """score = X @ W + c on raw X equals the standardised model's logit."""
    X, y, _ = _separable(1)
    W, c = fit_lr(X, y, np.ones(len(y)), l2=10.0)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    b = W * sd
    np.testing.assert_allclose(((X - mu) / sd) @ b + (c + mu @ W), X @ W + c, rtol=1e-5, atol=1e-5)


def test_balancing_weights_halve_the_classes_and_share_them_by_source() -> None:
    y = np.array([0] * 6 + [1] * 4, float)
    src = ["libri"] * 5 + ["lj"] + ["espeak"] * 3 + ["wavefake"]
    w = balanced_weights(y, src)
    assert w.sum() == pytest.approx(len(y))
    assert w[y == 0].sum() == pytest.approx(len(y) / 2) and w[y == 1].sum() == pytest.approx(len(y) / 2)
    g = np.array(src)
    for _label, sources in ((0, ("libri", "lj")), (1, ("espeak", "wavefake"))):
        for s in sources:  # each source of a class gets an equal share, whatever its size
            assert w[g == s].sum() == pytest.approx(len(y) / 2 / len(sources))
    assert w[0] == w[4] and w[5] == pytest.approx(5 * w[0])


def test_l2_selection_keeps_the_larger_penalty_unless_a_smaller_one_is_clearly_better() -> None:
    X, y, _ = _separable(2)
    w = np.ones(len(y))
    cal = [X[i : i + 1] for i in range(len(X))]
    head, tried = select_l2(X, y, w, cal, list(y.astype(int)))
    assert [t["l2"] for t in tried] == [100.0, 10.0, 1.0, 0.1]
    assert all(t["cal_auc"] == 1.0 for t in tried)  # all separate: the first (largest) stays
    assert head.l2 == 100.0
    W, c = fit_lr(X, y, w, l2=100.0)
    assert np.array_equal(head.W, W) and head.c == c
    np.testing.assert_allclose(clip_scores(W, c, cal), X @ W + c, rtol=1e-12, atol=1e-12)


# --- the export -------------------------------------------------------------------------------------------


def _stand_in(path: Path, d: int = 160) -> Path:
    """waveform (N, 8) -> a linear encoder -> /m/Concat_output_0 (N, d) -> m.out_layer (Gemm) -> logits."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, d)).astype(np.float32), "enc"),
        numpy_helper.from_array(rng.standard_normal((2, d)).astype(np.float32), OUT_WEIGHT),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), OUT_BIAS),
    ]
    nodes = [
        helper.make_node("MatMul", ["waveform", "enc"], ["/m/Concat_output_0"]),
        helper.make_node("Gemm", ["/m/Concat_output_0", OUT_WEIGHT, OUT_BIAS], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "stand_in",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["N", 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("/m/Concat_output_0", TensorProto.FLOAT, ["N", d]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_export_writes_the_head_so_that_the_logit_difference_is_its_score(tmp_path: Path) -> None:
    import onnxruntime as ort

    src = _stand_in(tmp_path / "stand_in.onnx")
    rng = np.random.default_rng(3)
    W, c = rng.standard_normal(160), float(rng.standard_normal())
    info = export_head(src, W, c, tmp_path / "out" / "model.onnx")
    assert info["sha256"] != info["source_sha256"]
    s = ort.InferenceSession(info["file"], providers=["CPUExecutionProvider"])
    x = rng.standard_normal((5, 8)).astype(np.float32)
    logits, emb = s.run(["logits", "/m/Concat_output_0"], {"waveform": x})
    expected = emb.astype(np.float64) @ W.astype(np.float32).astype(np.float64) + np.float32(c)
    np.testing.assert_allclose(logits[:, 0] - logits[:, 1], expected, rtol=1e-4, atol=1e-3)
    Wr, cr = read_head(Path(info["file"]))
    np.testing.assert_array_equal(Wr, W.astype(np.float32).astype(np.float64))
    assert cr == pytest.approx(c, abs=1e-6)
    # everything else untouched
    before = {t.name: t for t in onnx.load(str(src)).graph.initializer}
    after = {t.name: t for t in onnx.load(info["file"]).graph.initializer}
    assert before.keys() == after.keys() and before["enc"] == after["enc"]
    # the same head gives the same file
    again = export_head(src, W, c, tmp_path / "again.onnx")
    assert again["sha256"] == info["sha256"]


def test_export_refuses_a_graph_without_the_final_layer(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    with pytest.raises(ValueError, match="out_layer"):
        export_head(tmp_path / "g.onnx", np.zeros(160), 0.0, tmp_path / "o.onnx")


@needs_aasist
def test_export_into_the_published_graph_scores_its_embedding(tmp_path: Path) -> None:
    import onnxruntime as ort

    from training.audio.embed import Embedder

    rng = np.random.default_rng(11)
    W, c = rng.standard_normal(160) * 0.3, 0.7
    info = export_head(AASIST / "AASIST-L.onnx", W, c, tmp_path / "model.onnx")
    x = reference_inputs(tmp_path)["seeded_normal_16"][None, :]
    embedder = Embedder(AASIST / "AASIST-L.onnx")
    try:
        emb, published_logits = embedder.run(x)
    finally:
        embedder.close()
    (logits,) = ort.InferenceSession(info["file"], providers=["CPUExecutionProvider"]).run(
        ["logits"], {"waveform": x}
    )
    expected = float(emb[0].astype(np.float64) @ W.astype(np.float32) + np.float32(c))
    assert float(logits[0, 0] - logits[0, 1]) == pytest.approx(expected, abs=1e-4)
    assert not np.allclose(logits, published_logits)


# --- crops and augmentations ------------------------------------------------------------------------------


def _voice(seconds: float = 3.0) -> Any:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_augmentations_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    x = _voice()
    for fn in (augment, augment2):
        for seed in (1, 2, 3):
            a, ia = fn(x, np.random.default_rng(seed), tmp_path)
            b, ib = fn(x, np.random.default_rng(seed), tmp_path)
            assert ia == ib and np.array_equal(a, b) and a.dtype == np.float32
            assert np.abs(a).max() <= 1.0
    outs = [augment(x, np.random.default_rng(s), tmp_path)[0] for s in (4, 5)]
    assert len(outs[0]) != len(outs[1]) or not np.array_equal(*outs)
    for fn2 in (lambda r: pauses(x, r), lambda r: silence(1000, r), lambda r: add_noise(x, 20, r)):
        assert np.array_equal(fn2(np.random.default_rng(9)), fn2(np.random.default_rng(9)))


def test_silence_and_pauses() -> None:
    kinds = [silence(800, np.random.default_rng(s)) for s in range(30)]
    zeros = [k for k in kinds if not k.any()]
    assert 0 < len(zeros) < len(kinds)  # a third digital zero, the rest quiet noise
    assert all(np.sqrt(np.mean(k**2)) < 10 ** (-45 / 20) for k in kinds)
    x = _voice(6.0)
    y = pauses(x, np.random.default_rng(0))
    assert len(y) >= len(x) + int(0.5 * SR) + 2 * int(0.3 * SR)  # lead-in and at least two pauses


def test_windows_are_tiled_or_placed_on_the_densest_speech() -> None:
    short = np.arange(1000, dtype=np.float32)
    t = tile_window(short)
    assert t.shape == (1, WIN) and np.array_equal(t[0, 1000:2000], short)
    n = 16000 * 12
    y = np.arange(n, dtype=np.float32)
    speech = np.zeros(n // 512 + 1, np.float32)
    speech[(16000 * 6) // 512 : (16000 * 11) // 512] = 1.0  # speech from 6 s to 11 s

    def probs(a: Any) -> Any:
        assert len(a) == n
        return speech[: -(-n // 512)]

    w, starts = placed_windows(probs, y, 3)
    assert starts == sorted(starts) and all(b - a >= 32000 for a, b in pairwise(starts))
    assert len(starts) == 3
    # the first start (0.1-s grid) whose window lies wholly in speech frames [187, 343)
    assert placed_windows(probs, y, 1)[1] == [96000] and 96000 in starts
    assert np.array_equal(w[0], y[starts[0] : starts[0] + WIN])
    w1, s1 = placed_windows(probs, y[:WIN], 3)
    assert s1 == [0] and w1.shape == (1, WIN)


def test_the_research_seeds_and_tasks() -> None:
    assert phase_seed(17, "train_aug") == 17009 and phase_seed(17, "train_aug2") == 17010
    assert phase_seed(0, "eval_aac64") == 10
    cs = [
        Clip(0, Path("a"), 0, "libri", "s0", "train"),
        Clip(1, Path("b"), 1, "espeak", "v", "cal"),
        Clip(2, Path("c"), 1, "espeak", "v2", "test"),
    ]
    assert tasks(cs) == [
        ("eval_aac64", 0, "a"),
        ("eval_aac64", 1, "b"),
        ("train_aug", 0, "a"),
        ("train_aug2", 0, "a"),
    ]


@needs_speech
def test_crops_of_a_real_clip_are_the_researchs(tmp_path: Path) -> None:
    """Clip 0 (the first LibriSpeech test-other file, a train clip): what the research recorded for it
    (its embed.py metadata: the window starts and each crop's random augmentation). Pins the rng order."""
    from service.audio.vad import SileroVad
    from training.audio.codecs import decode

    first = sorted((SPEECH / "librispeech" / "test-other").glob("*/*.flac"))[0]
    x = decode(first)
    vad = SileroVad()
    w, meta = phase_windows("eval_aac64", 0, x, vad.probabilities, tmp_path)
    assert meta == {"starts": [9600, 65600, 126400]} and w.shape == (3, WIN)
    _, meta = phase_windows("train_aug", 0, x, vad.probabilities, tmp_path)
    assert meta["aug"] == [
        {"codec": "none", "place": "random"},
        {"bl8k": 1, "codec": "aac64", "place": "vad"},
        {"noise20": 1, "codec": "none", "place": "vad"},
        {"bl8k": 1, "noise20": 1, "codec": "aac64", "place": "random"},
    ]
    w, meta = phase_windows("train_aug2", 0, x, vad.probabilities, tmp_path)
    assert [m["mode"] for m in meta["aug"]] == ["inner_pauses"] * 4 + ["lead_window0"] * 2
    assert [m["codec"] for m in meta["aug"]] == ["opus32", "none", "none", "opus32", "none", "aac64"]
    assert [m.get("noise", 0) for m in meta["aug"]] == [0, 1, 0, 1, 0, 1]
    assert w.shape == (6, WIN) and w.dtype == np.float32


@needs_aasist
@needs_speech
def test_the_cache_is_the_same_whatever_the_number_of_workers(tmp_path: Path) -> None:
    """Two worker processes (clip id modulo 2) write what one process computes in place."""
    from training.audio.embed import Embedder
    from training.audio.finetune import embed_all

    flac = sorted((SPEECH / "librispeech").glob("*.flac"))[:2]
    todo = [("eval_aac64", 100 + k, str(f)) for k, f in enumerate(flac)]
    runs = embed_all(tmp_path, AASIST / "AASIST-L.onnx", todo, workers=2)
    assert sorted(r["worker"] for r in runs) == [0, 1] and sum(r["tasks"] for r in runs) == 2
    assert embed_all(tmp_path, AASIST / "AASIST-L.onnx", todo, workers=2) == []  # all cached
    embedder = Embedder(AASIST / "AASIST-L.onnx")
    try:
        for phase, cid, path in todo:
            e, lg, _ = embedder.clip(phase, cid, Path(path))
            with np.load(tmp_path / phase / f"{cid}.npz") as z:
                assert np.array_equal(z["emb"], e) and np.array_equal(z["lg"], lg)
    finally:
        embedder.close()
