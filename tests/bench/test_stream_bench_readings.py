"""bench/stream_bench.py's readings of the worker's metrics."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import stream_bench  # noqa: E402


def _stage(name: str, stage: str) -> str:
    return f'hup_batch_stage_seconds_{name}{{stage="{stage}"}}'


def test_stage_means_are_per_batch_between_two_scrapes() -> None:
    before = {_stage("count", "process"): 10.0, _stage("sum", "process"): 1.0}
    after = {
        _stage("count", "process"): 14.0,
        _stage("sum", "process"): 1.2,
        _stage("count", "confirm"): 2.0,
        _stage("sum", "confirm"): 0.03,
    }
    means = stream_bench.stage_means_ms(after, before)
    assert list(means) == list(stream_bench.STAGES)
    assert means["process"] == pytest.approx(50.0)  # 0.2 s over 4 batches
    assert means["confirm"] == pytest.approx(15.0)
    assert math.isnan(means["deliver"]) and math.isnan(means["write"])  # no batch seen


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    series = {
        'hup_processing_seconds_bucket{le="0.1"}': 50.0,
        'hup_processing_seconds_bucket{le="0.2"}': 100.0,
        'hup_processing_seconds_bucket{le="+Inf"}': 100.0,
    }
    assert stream_bench.histogram_quantile(series, "hup_processing_seconds", 0.75) == (
        pytest.approx(0.15)
    )
