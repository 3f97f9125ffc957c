"""The regression guard of `python -m bench compare` (a pure function over two result documents)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import compare, main

BASE = {
    "pipeline": {"p50_ms": 500.0, "videos_per_s": 2.0},
    "triton": {"average_batch_under_concurrency": 6.0},
}


def test_slower_beyond_noise_is_a_regression() -> None:
    latest = {
        "pipeline": {"p50_ms": 650.0, "videos_per_s": 1.5},
        "triton": {"average_batch_under_concurrency": 6.5},
    }
    lines, regressions = compare(latest, BASE, noise=0.2)
    assert regressions == 2  # p50 up 30 %, throughput down 25 %
    text = "\n".join(lines)
    assert "pipeline.p50_ms" in text and "REGRESSION" in text
    assert "missing" in text  # figures absent from either run are listed, not guessed


def test_within_noise_and_better_are_not_regressions() -> None:
    latest = {
        "pipeline": {"p50_ms": 540.0, "videos_per_s": 3.0},
        "triton": {"average_batch_under_concurrency": 6.0},
    }
    lines, regressions = compare(latest, BASE, noise=0.2)
    assert regressions == 0
    assert any("better" in ln for ln in lines) and any("within noise" in ln for ln in lines)


def test_fail_flag_sets_the_exit_code(tmp_path: Path) -> None:
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    (tmp_path / "latest.json").write_text(json.dumps({"pipeline": {"p50_ms": 1000.0, "videos_per_s": 2.0}}))
    args = ["compare", "--latest", str(tmp_path / "latest.json"), "--baseline", str(tmp_path / "base.json")]
    assert main(args) == 0
    assert main([*args, "--fail"]) == 1
