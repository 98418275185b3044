"""bench/stream_bench.py runs end to end at a tiny size (figures are checked for sense, not speed)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_stream_bench_measures_every_phase(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUP_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "stream_bench.py"),
            "--users",
            "30",
            "--events-per-user",
            "5",
            "--rate-seconds",
            "3",
            # The suite cannot tell whether this broker is tansu (broker notes T1).
            "--producer-max-batch-size",
            "1",
            # Phases of a second or two: a save after every batch, so each phase has saves.
            "--save-interval-s",
            "0",
            "--out",
            str(out),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = orjson.loads(out.read_bytes())
    assert figures["users"] == 30
    rates = ("worker_events_per_s", "noop_events_per_s", "core_events_per_s", "step_events_per_s")
    # The Quix peer runs from its own venv (BENCH_QUIX_PYTHON); without one it is skipped.
    quix = os.environ.get("BENCH_QUIX_PYTHON")
    peers = ("quix_events_per_s", "raw_events_per_s") if quix else ("raw_events_per_s",)
    step = ("step_us_per_event_256", "step_ms_per_call_1")
    sizes = ("state_bytes_per_user", "state_bytes_full_window", "bytes_written_per_event")
    for name in rates + peers + step + sizes + ("fixed_rate_p50_ms", "fixed_rate_p99_ms"):
        assert math.isfinite(figures[name]) and figures[name] > 0, (name, figures[name])
    # A state at full windows is the largest a state of these users can be.
    assert figures["state_bytes_full_window"] > figures["state_bytes_per_user"]
    # Every applied event writes at least its profile (over 1 KB of JSON).
    assert figures["bytes_written_per_event"] > 1000
    assert figures["fixed_rate_p50_ms"] <= figures["fixed_rate_p99_ms"]
    assert figures["changelog_records"] >= 30  # every user's state was written at least once
    # Every stage (per batch, per save) took some time in both phases (hup_batch_stage_seconds).
    for phase in ("stage_ms_full_speed", "stage_ms_fixed_rate"):
        stages = figures[phase]
        assert list(stages) == ["process", "deliver", "write", "confirm"], stages
        assert all(math.isfinite(v) and v > 0 for v in stages.values()), (phase, stages)
    assert figures["fixed_rate_events_per_batch"] >= 1
    assert math.isfinite(figures["recovery_s"])
    assert "(c) no-op faust worker" in run.stdout
    assert "(c) Quix Streams" in run.stdout
    if not quix:
        assert figures["quix_events_per_s"] is None  # NaN, written as null
        assert "Quix Streams peer skipped: BENCH_QUIX_PYTHON" in run.stdout
