"""Ensemble manifests: members, aggregation and thresholds belong to the ensemble; settings override them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.compose import build_pipeline
from service.config import Settings
from service.decision import choose_policy
from service.models import UNTRAINED_MANIFEST, EnsembleManifest, resolve_models
from service.pipeline import Pipeline


def _member(tmp: Path, name: str, thresholds: dict[str, float] | None = None) -> Path:
    """A copy of the untrained model under another name (optionally with its own calibrated thresholds)."""
    d = tmp / name
    d.mkdir()
    shutil.copy(UNTRAINED_MANIFEST.parent / "model.onnx", d / "model.onnx")
    data = json.loads(UNTRAINED_MANIFEST.read_text())
    data.update(name=name, thresholds=thresholds)
    (d / "model.json").write_text(json.dumps(data))
    return d / "model.json"


def _ensemble(tmp: Path, members: list[str], **extra: object) -> Path:
    data = {"kind": "ensemble", "name": "ens", "version": "2.0.0", "members": members, "aggregation": "mean"}
    path = tmp / "ensemble.json"
    path.write_text(json.dumps({**data, **extra}))
    return path


FITTED = {"review": 0.31, "flag": 0.77, "method": "validation reals: p95 / max + 0.05", "fitted_on": "val"}


def test_policy_precedence() -> None:
    kw = {"aggregation": None, "ensemble_aggregation": "mean", "model": (0.2, 0.3)}
    p = choose_policy(review=None, flag=None, ensemble=(0.31, 0.77), **kw)  # type: ignore[arg-type]
    assert (p.thresholds.review, p.thresholds.flag, p.source, p.aggregation) == (
        0.31,
        0.77,
        "ensemble",
        "mean",
    )
    p = choose_policy(review=0.4, flag=None, ensemble=(0.31, 0.77), **kw)  # type: ignore[arg-type]
    assert (p.thresholds.review, p.thresholds.flag, p.source) == (0.4, 0.77, "settings")
    p = choose_policy(review=None, flag=None, ensemble=None, **kw)  # type: ignore[arg-type]
    assert (p.thresholds.review, p.thresholds.flag, p.source) == (0.2, 0.3, "model")
    p = choose_policy(
        review=None, flag=None, aggregation=None, ensemble=None, ensemble_aggregation=None, model=None
    )
    assert (p.thresholds.review, p.thresholds.flag, p.source, p.aggregation) == (
        0.5,
        0.8,
        "default",
        "confident",
    )
    with pytest.raises(ValueError, match="above flag"):
        choose_policy(review=0.9, flag=None, ensemble=(0.31, 0.77), **kw)  # type: ignore[arg-type]


def test_ensemble_resolves_members_relative_to_itself(tmp_path: Path) -> None:
    a, b = _member(tmp_path, "m-a"), _member(tmp_path, "m-b")
    ens = _ensemble(tmp_path, ["m-a/model.json", "m-b/model.json"], thresholds=FITTED)
    models = resolve_models([ens])
    assert models.member_paths == [a.resolve(), b.resolve()]
    assert models.ensemble is not None and models.ensemble.thresholds is not None
    assert resolve_models([a, b]).ensemble is None  # plain manifests: an ad-hoc ensemble
    with pytest.raises(ValueError, match="name it alone"):
        resolve_models([ens, a])
    with pytest.raises(FileNotFoundError, match="m-c"):
        resolve_models([_ensemble(tmp_path, ["m-c/model.json"])])
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "inner.json").write_text(ens.read_text().replace("m-a/", "../m-a/"))
    with pytest.raises(ValueError, match=r"inner\.json named by .* is an ensemble manifest"):
        resolve_models([_ensemble(tmp_path, ["nested/inner.json"])])
    with pytest.raises(ValidationError):
        EnsembleManifest.model_validate({**json.loads(ens.read_text()), "members": []})


def _pipeline(settings: Settings) -> Pipeline:
    return build_pipeline(settings, batching=False)


def test_pipeline_records_the_thresholds_it_applied(tmp_path: Path, face_clip: Path) -> None:
    _member(tmp_path, "m-a", {"review": 0.1, "flag": 0.2})
    _member(tmp_path, "m-b", {"review": 0.6, "flag": 0.9})
    ens = _ensemble(tmp_path, ["m-a/model.json", "m-b/model.json"], thresholds=FITTED)
    base = {"decode_isolation": "inline", "inference_threads": 1}

    result = _pipeline(Settings(model_paths=[ens], **base)).score_file(face_clip)  # type: ignore[arg-type]
    assert result.model.name == "ens" and result.model.version == "2.0.0"
    assert (result.thresholds.review, result.thresholds.flag, result.thresholds.source) == (
        0.31,
        0.77,
        "ensemble",
    )
    assert result.aggregation == "mean"  # the ensemble's own, not the settings default

    explicit = Settings(model_paths=[ens], review_threshold=0.05, aggregation="confident", **base)  # type: ignore[arg-type]
    result = _pipeline(explicit).score_file(face_clip)
    assert (result.thresholds.review, result.thresholds.flag, result.thresholds.source) == (
        0.05,
        0.77,
        "settings",
    )
    assert result.aggregation == "confident"
    assert result.decision != "allow"  # the untrained net scores ~0.5: above the overridden review threshold

    # Members calibrated alone do not make ensemble thresholds: an ad-hoc ensemble gets the defaults.
    adhoc = _pipeline(
        Settings(model_paths=[tmp_path / "m-a/model.json", tmp_path / "m-b/model.json"], **base)
    )  # type: ignore[arg-type]
    assert (adhoc.thresholds.review, adhoc.thresholds.flag, adhoc.policy.source) == (0.5, 0.8, "default")
    lone = _pipeline(Settings(model_paths=[tmp_path / "m-b/model.json"], **base))  # type: ignore[arg-type]
    assert (lone.thresholds.review, lone.thresholds.flag, lone.policy.source) == (0.6, 0.9, "model")
