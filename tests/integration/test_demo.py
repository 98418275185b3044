"""`python -m stream.devtools.demo` end to end (reduced), its failure path, and the numbers it prints."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from hup.exceptions import EventValidationError
from hup.schema import parse_event_json
from stream.devtools.demo import malformed_messages
from stream.devtools.demo_stats import DemoStats, percentile

ROOT = Path(__file__).resolve().parents[2]


def _run_demo(tmp_path: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUP_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [
        sys.executable,
        "-m",
        "stream.devtools.demo",
        "--run-dir",
        str(tmp_path / "run"),
        *args,
    ]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
@pytest.mark.integration
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = _run_demo(
        tmp_path,
        "--train-data",
        "synthetic:users=40,seed=7",
        "--epochs",
        "1",
        "--model-dir",
        str(tmp_path / "model"),
        "--replay-data",
        "synthetic:users=4,seed=8",
        "--limit",
        "200",
        "--rate",
        "0",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    profiles = re.search(r"profiles received\s+(\d+)", output)
    dead = re.search(r"dead letters\s+(\d+)", output)
    assert profiles and dead, output
    assert int(profiles.group(1)) > 0
    assert int(dead.group(1)) > 0
    assert "events sent          200" in output
    assert "p50" in output and "top categories" in output and "top items" in output
    assert "worker: stopped (exit code 0)" in output
    assert (tmp_path / "model" / "VERSION").is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_demo_fails_clearly_when_the_worker_cannot_start(tmp_path: Path) -> None:
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "VERSION").write_text("hup-broken\n")  # reused as is, unreadable by the worker
    result = _run_demo(tmp_path, "--model-dir", str(model), timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "error: worker: exited with code" in output
    assert "last lines of" in output and "cannot start" in output
    assert "Traceback" not in result.stdout


# --- the demo's pieces, no broker needed ----------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 99) == 4.0
    assert percentile([5.0], 1) == 5.0
    assert math.isnan(percentile([], 50))


def test_stats_match_profiles_to_sends_and_ignore_others() -> None:
    now = [100.0]
    stats = DemoStats(clock=lambda: now[0])
    stats.on_sent("u1", "u1:0", 99.0)
    stats.on_sent("u1", "u1:1", 99.5)

    def profile(event_id: str, seq: int) -> bytes:
        return orjson.dumps(
            {
                "user_id": "u1",
                "event_id": event_id,
                "event_ts": 99.0,
                "published_ts": 99.2,
                "model_version": "hup-x",
                "seq": seq,
                "profile": {"micro": None, "item": [0.1, 0.2], "category": [[1.0]]},
                "top_categories": [{"id": "c1", "score": 0.5}],
                "top_items": [{"id": "sku-9", "score": 0.25}, {"id": "sku-3", "score": 0.125}],
            }
        )

    assert stats.on_profile(profile("u1:0", 1))
    assert not stats.on_profile(profile("other:7", 1))  # not sent by this run
    assert not stats.on_profile(b"junk")
    stats.on_dead_letter(orjson.dumps({"reason": "field 'ts': bad"}))
    stats.on_dead_letter(b"not json")
    assert (stats.sent, stats.profiles, stats.foreign, stats.dlq) == (2, 1, 2, 2)
    assert stats.e2e_latency == [1.0]
    assert stats.worker_latency == [pytest.approx(0.2)]
    report = "\n".join(stats.report())
    assert "profiles received    1 (+2 not from this replay), 0 profiles/s" in report
    assert "dead letters         2, e.g. \"field 'ts': bad\"" in report
    assert "profile of u1: model hup-x, seq 1" in report
    assert "[+0.100, +0.200, ...]" in report
    assert "top items          sku-9 0.25, sku-3 0.12" in report
    assert "profiles 1" in stats.line()


def test_malformed_messages_are_each_rejected_by_the_parser() -> None:
    # The processor dead-letters exactly what parse_event_json rejects.
    messages = malformed_messages(8)
    assert len(messages) == 8
    reasons = set()
    for _, value in messages:
        with pytest.raises(EventValidationError) as caught:
            parse_event_json(value)
        reasons.add(str(caught.value).split(":")[0])
    assert len(reasons) >= 4  # wrong in different ways
