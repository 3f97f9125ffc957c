"""Training: data collection, fakes, metrics, a tiny deterministic and resumable run, export, evaluation.

The tiny run trains on the two packaged one-face photos (skimage astronaut, matplotlib Grace Hopper) for a few
steps at 64 px: it checks the mechanics (seeds, checkpoints, resume, ONNX parity, the evaluation report), not
the model's quality, which the committed default model's card reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.training

from training import collect as collect_mod  # noqa: E402
from training.blend import face_hull_mask, face_swap, self_blend  # noqa: E402
from training.metrics import accuracy_at, auc, bootstrap, clopper_pearson, log_loss  # noqa: E402
from training.sources import SOURCES  # noqa: E402


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc(y, s) == pytest.approx(pairwise, abs=1e-12)
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert np.isnan(auc([1, 1], [0.2, 0.3]))
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert accuracy_at([1, 0, 1], [0.9, 0.6, 0.4], 0.5) == pytest.approx(1 / 3)


def test_bootstrap_resamples_whole_identities() -> None:
    y = [0, 1] * 20
    s = [0.2, 0.8] * 20
    groups = [f"id{i // 4}" for i in range(40)]
    v, lo, hi = bootstrap(lambda a, b: auc(a, b), y, s, groups, reps=200)
    assert v == lo == hi == 1.0
    v, lo, hi = bootstrap(lambda a, b: float(np.mean(b)), y, np.arange(40.0), groups, reps=200)
    assert lo < v < hi


def test_splits_never_share_a_group() -> None:
    groups = {f"photo{i}": 1 + i % 4 for i in range(30)}
    splits = collect_mod._assign_splits(groups, seed=3)
    assert set(splits) == set(groups) and set(splits.values()) == {"train", "val", "test"}
    total = sum(groups.values())
    test_faces = sum(n for g, n in groups.items() if splits[g] == "test")
    share = collect_mod.SPLIT_SHARES["test"]
    assert share * total <= test_faces <= share * total + 4


def test_clopper_pearson_matches_known_intervals() -> None:
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)  # the "rule of three" region, exact
    lo, hi = clopper_pearson(5, 10)
    assert (lo, hi) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))
    assert clopper_pearson(10, 10) == (pytest.approx(0.6915, abs=1e-4), 1.0)


def test_thresholds_fit_validation_reals() -> None:
    from training.calibrate import fit_thresholds

    reals = [i / 100 for i in range(100)]  # 0.00 .. 0.99
    review, flag = fit_thresholds(reals, flag_margin=1.0)
    assert review == 0.95  # the 95th percentile (an observed score)
    assert 0.99 < flag <= 0.999  # above every validation real, by a logit margin, capped
    assert fit_thresholds([0.1] * 30, flag_margin=1.0)[1] == pytest.approx(0.232, abs=1e-3)
    with pytest.raises(ValueError, match="too few"):
        fit_thresholds([0.1] * 5)


def _save(path: Path, img: np.ndarray, quality: int = 95) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=quality)


def test_collect_deduplicates_across_sources_and_keeps_rendered_apart(tmp_path: Path) -> None:
    """A copy of a packaged photo in a folder (rescaled, re-encoded, mirrored) is found and merged; the other
    face stays; a rendered folder becomes its own split; folder rules name the same person."""
    import cv2
    from skimage import data

    from training.sources import FolderSpec, folder_source

    astronaut = np.ascontiguousarray(data.astronaut())
    copy = cv2.resize(astronaut, (400, 400), interpolation=cv2.INTER_AREA)
    _save(tmp_path / "photos" / "copy-of-astronaut.jpg", np.ascontiguousarray(copy[:, ::-1]), quality=70)
    hopper = [s for s in SOURCES if s.name == "matplotlib"]
    (_, hopper_bytes), *_ = list(hopper[0].read(tmp_path))
    (tmp_path / "photos" / "hopper-a.jpg").write_bytes(hopper_bytes)
    turned = cv2.warpAffine(  # another picture as far as dedup goes (thumbnails correlate ~0.6)
        astronaut, cv2.getRotationMatrix2D((256, 256), 12, 1.0), (512, 512), borderMode=cv2.BORDER_REFLECT
    )
    _save(tmp_path / "rendered" / "cgi-1.jpg", np.ascontiguousarray(turned))
    folders = [
        FolderSpec(
            name="mine",
            path=tmp_path / "photos",
            origin="test",
            licence="test",
            same_person={"hopper-": "gh"},
        ),
        FolderSpec(name="cgi", path=tmp_path / "rendered", origin="test", licence="test", kind="rendered"),
    ]
    local = [s for s in SOURCES if s.name in ("skimage", "matplotlib")]
    records = collect_mod.collect(
        tmp_path / "out", sources=[*local, *(folder_source(f) for f in folders)], shares={}
    )
    report = json.loads((tmp_path / "out" / "collect.json").read_text())
    real = [r for r in records if r.kind == "real"]
    by_source = {r.source: r for r in real}
    # The astronaut's larger copy (skimage, 512 px) is kept, the folder's copy dropped and recorded; Grace
    # Hopper's two identical files are one picture too (the first source's copy is kept).
    assert len(real) == 2 and set(by_source) == {"skimage", "matplotlib"}
    assert by_source["skimage"].duplicates == ("mine:photos/copy-of-astronaut.jpg",)
    assert by_source["matplotlib"].duplicates == ("mine:photos/hopper-a.jpg",)
    assert len(report["duplicates"]) == 2
    # Each kept face joined its copy's splitting group (named by the smallest member name).
    assert by_source["skimage"].group == "mine:photos/copy-of-astronaut.jpg"
    assert by_source["matplotlib"].group.startswith("matplotlib:")
    (rendered,) = [r for r in records if r.kind == "rendered"]
    assert rendered.split == collect_mod.RENDERED_SPLIT and rendered.source == "cgi"
    assert all(r.split == "train" for r in real)  # shares={}: every real group in train


def _photo(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    from service.faces import RetinaFaceDetector

    img = np.ascontiguousarray(data.astronaut())
    (dets,) = RetinaFaceDetector(threads=1).detect([img], 512)
    assert dets and dets[0].landmarks is not None
    return img, dets[0].landmarks


def test_self_blend_changes_only_the_face_region(tmp_path: Path) -> None:
    img, lm = _photo(tmp_path)
    fake, mask = self_blend(img, lm, np.random.default_rng(0))
    diff = np.abs(fake.astype(int) - img.astype(int)).max(axis=2)
    assert mask.max() > 0 and diff[mask > 0.05].mean() > 1.0  # the face is altered
    assert diff[mask == 0].max() <= 1  # and nothing else (rounding only)
    hull = face_hull_mask(img.shape, lm)
    eyes = lm[:2].mean(axis=0).astype(int)
    assert hull[eyes[1], eyes[0]] == 1 and hull[0, 0] == 0


def test_face_swap_replaces_the_face_and_keeps_the_background(tmp_path: Path) -> None:
    img, lm = _photo(tmp_path)
    other = np.ascontiguousarray(img[:, ::-1])  # mirrored: another face geometry, same photo statistics
    olm = lm.copy()
    olm[:, 0] = img.shape[1] - 1 - olm[:, 0]
    olm = olm[[1, 0, 2, 4, 3]]
    swapped = face_swap(other, olm, img, lm)
    diff = np.abs(swapped.astype(int) - img.astype(int)).max(axis=2)
    hull = face_hull_mask(img.shape, lm) > 0
    assert diff[hull].mean() > 5
    ys, xs = np.nonzero(hull)
    near = np.zeros_like(hull)  # Poisson blending works on the mask's bounding box
    near[ys.min() - 2 : ys.max() + 3, xs.min() - 2 : xs.max() + 3] = True
    assert np.count_nonzero(diff[~near]) == 0


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two packaged faces; for these mechanics checks each is in every split (real runs keep them apart)."""
    root = tmp_path_factory.mktemp("training")
    local = [s for s in SOURCES if s.name in ("skimage", "matplotlib")]
    records = collect_mod.collect(root, sources=local, shares={})
    assert len(records) == 2 and all(r.split == "train" for r in records)
    rows = json.loads((root / "faces.json").read_text())
    rows += [{**r, "split": split} for split in ("val", "test") for r in rows]
    (root / "faces.json").write_text(json.dumps(rows))
    return root


def _config(root: Path, out: Path, steps: int) -> object:
    from training.config import TrainConfig

    return TrainConfig(
        name="tiny",
        arch="mobilenetv3_small_050",
        input_size=64,
        data_root=root,
        out=out,
        steps=steps,
        pairs_per_batch=2,
        warmup_steps=2,
        eval_every=3,
        val_pairs=4,
        workers=0,
        threads=1,
    )


def test_tiny_training_is_deterministic_resumable_and_exports_with_parity(tiny_root: Path) -> None:
    import torch

    from service.inference import OnnxRuntimeBackend
    from training.export import export_run
    from training.train import train

    once = train(_config(tiny_root, tiny_root / "once", 6), progress=False)  # type: ignore[arg-type]
    train(_config(tiny_root, tiny_root / "twice", 6), progress=False, until=4)  # type: ignore[arg-type]
    train(_config(tiny_root, tiny_root / "twice", 6), resume=True, progress=False)  # type: ignore[arg-type]
    a = torch.load(tiny_root / "once" / "last.pt", weights_only=True)["model"]
    b = torch.load(tiny_root / "twice" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    rows = [json.loads(line) for line in (tiny_root / "once" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(0 <= r["val_auc"] <= 1 for r in rows)

    summary = export_run(once.parent, tiny_root / "model", crops=4)
    assert summary["onnx_vs_torch_max_abs_diff"] < 1e-4
    manifest = json.loads((tiny_root / "model" / "model.json").read_text())
    assert manifest["trained"] is True and manifest["input_size"] == 64 and manifest["crop_margin"] == 0.3
    backend = OnnxRuntimeBackend([tiny_root / "model" / "model.json"], threads=1)
    probs = backend.predict("tiny", np.zeros((3, 64, 64, 3), np.uint8))
    assert probs.shape == (3,) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.slow
def test_evaluation_report_on_generated_clips(tiny_root: Path) -> None:
    from training.evaluate import evaluate
    from training.fakes import make_eval_set

    index = make_eval_set(tiny_root, "test", per_face=1)
    items = json.loads(index.read_text())
    assert {(i["kind"], i["quality"]) for i in items} == {
        (k, q) for k in ("real", "sbi", "swap") for q in ("png", "c23", "c35")
    }
    from service.models import DEFAULT_MODEL

    report = evaluate([DEFAULT_MODEL], tiny_root, "test", reps=50)
    assert report["no_face_items"] == 0  # every generated still and clip shows its face to the detector
    for name in ("sbi/c23", "sbi/c35", "swap/c23", "swap/c35"):
        for level in ("frame", "video"):
            fig = report["sets"][name][level]
            assert fig["n"] > 0 and 0 <= fig["auc"]["value"] <= 1
            lo, hi = fig["auc"]["ci95"]
            assert lo <= fig["auc"]["value"] <= hi
    assert set(report["real"]) == {"png", "c23", "c35"}
