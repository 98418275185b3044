"""stream.guards.internals: the faust internals the guards patch are checked before the worker starts."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import faust
import pytest
from faust.transport.consumer import Consumer
from prometheus_client import CollectorRegistry

from stream.guards import internals
from stream.metrics import Metrics
from stream.settings import Settings
from stream.startup import WorkerContext

REPO = Path(__file__).resolve().parents[3]


def test_the_installed_faust_has_every_internal_the_guards_patch() -> None:
    assert internals.missing() == []
    internals.check()  # does not raise


def test_the_check_sees_what_a_real_consumer_instance_has() -> None:
    # Instance attributes count through the class's annotations; a live consumer
    # (never started, nothing connects) confirms each one the check accepts.
    app = faust.App("internals-test", broker="kafka://127.0.0.1:1")
    consumer = app.consumer
    for internal in internals.REQUIRED:
        if internal.owner == "faust.transport.drivers.aiokafka:Consumer":
            assert isinstance(
                consumer, importlib.import_module("faust.transport.drivers.aiokafka").Consumer
            )
            assert hasattr(consumer, internal.name), internal
    assert hasattr(app.flow_control, "_queues")


def test_a_missing_internal_is_refused_with_the_faust_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Consumer, "_add_gap")  # the base class of the kafka driver's consumer
    absent = internals.missing()
    assert [str(i) for i in absent] == ["Consumer._add_gap"]
    with pytest.raises(internals.FaustInternalsError) as refused:
        internals.check()
    message = str(refused.value)
    assert "\n" not in message
    assert f"faust-streaming {version('faust-streaming')}" in message
    assert "Consumer._add_gap (stream.guards.acks" in message


def test_an_instance_attribute_declared_nowhere_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    annotations = dict(vars(Consumer)["__annotations__"])
    del annotations["_unacked_messages"]
    monkeypatch.setattr(Consumer, "__annotations__", annotations)
    assert [str(i) for i in internals.missing()] == ["Consumer._unacked_messages"]


def test_a_module_level_internal_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(importlib.import_module("faust.streams"), "_current_event")
    assert [str(i) for i in internals.missing()] == ["faust.streams._current_event"]


def test_prepare_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(Consumer, "_add_gap")
    context = WorkerContext(Settings(model=tmp_path / "model"), Metrics(CollectorRegistry()), [])
    with pytest.raises(SystemExit) as refused:
        context.prepare()
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert re.match(r"hup worker: cannot start: faust-streaming .* Consumer\._add_gap", line)


def test_the_worker_refuses_before_importing_the_app(tmp_path: Path) -> None:
    # faust without _current_event: stream.guards.tables could not even be imported, so
    # the check must come first, and end the process with one line.
    code = (
        "import faust.streams, sys; del faust.streams._current_event; "
        "from stream.worker import main; main([])"
    )
    env = {"PATH": "/usr/bin:/bin", "HUP_MODEL": str(tmp_path / "model"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("hup worker: cannot start: faust-streaming ")
    assert "faust.streams._current_event" in line


def test_the_tested_versions_are_the_pinned_ones() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, pinned = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = pinned.strip()
    for package, tested in internals.TESTED.items():
        assert pins[package] == tested, package
