"""Start-up refusals: one line on stderr and exit status 2, before anything starts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream import startup
from stream.metrics import Metrics
from stream.settings import Settings
from stream.startup import WorkerContext
from stream.topics import topic_specs


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listening socket on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _no_topics(*args: object, **kwargs: object) -> list[str]:
    raise AssertionError("topics created although the worker should have stopped before")


@pytest.mark.parametrize("which", ["web", "metrics"])
def test_a_busy_port_is_refused_in_one_line_before_the_topics(
    which: str,
    busy_port: int,
    checkpoint_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(startup, "ensure_topics", _no_topics)
    ports = {"web_port": 0, "metrics_port": 0, f"{which}_port": busy_port}
    settings = Settings(model=checkpoint_dir, datadir=tmp_path / "data", **ports)
    with pytest.raises(SystemExit) as refused:
        WorkerContext(settings, Metrics(CollectorRegistry()), []).prepare()
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"the {which} port 127.0.0.1:{busy_port}" in line
    assert f"HUP_{which.upper()}_PORT" in line


def test_an_unreachable_broker_is_one_line_within_the_timeout(
    checkpoint_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(
        model=checkpoint_dir,
        datadir=tmp_path / "data",
        kafka_bootstrap_servers=nowhere,
        startup_timeout_s=2,
        web_port=0,
        metrics_port=0,
    )
    started = time.monotonic()
    with pytest.raises(SystemExit) as refused:
        WorkerContext(settings, Metrics(CollectorRegistry()), topic_specs(settings)).prepare()
    elapsed = time.monotonic() - started
    assert refused.value.code == 2
    captured = capfd.readouterr()  # file descriptors: librdkafka writes to fd 2 itself
    [line] = captured.err.splitlines()
    assert f"no Kafka broker answered at {nowhere} within 2 s" in line
    assert "KAFKA_BOOTSTRAP_SERVERS" in line
    assert captured.out == ""
    assert elapsed < 10, elapsed


def test_the_metrics_server_listens_on_its_bind_address(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = []
    monkeypatch.setattr(startup, "ensure_topics", lambda *args, **kwargs: [])
    monkeypatch.setattr(startup, "is_embedded_broker", lambda *args, **kwargs: False)
    monkeypatch.setattr(
        startup, "start_http_server", lambda port, addr, registry: served.append((addr, port))
    )
    for bind in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 - the setting's documented opt-in
        settings = Settings(
            model=checkpoint_dir,
            datadir=tmp_path / "data",
            web_port=0,
            metrics_port=9999,
            metrics_bind=bind,
        )
        WorkerContext(settings, Metrics(CollectorRegistry()), []).prepare()
    assert served == [("127.0.0.1", 9999), ("0.0.0.0", 9999)]  # noqa: S104


def test_a_second_prepare_does_nothing(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # faust sends on_worker_init twice under app.main(): the metrics server starts once.
    served = []
    detected = []
    monkeypatch.setattr(startup, "ensure_topics", lambda *args, **kwargs: [])
    monkeypatch.setattr(
        startup, "is_embedded_broker", lambda bootstrap, **kwargs: detected.append(bootstrap)
    )
    monkeypatch.setattr(
        startup, "start_http_server", lambda port, addr, registry: served.append(port)
    )
    settings = Settings(model=checkpoint_dir, datadir=tmp_path / "data", web_port=0)
    context = WorkerContext(settings, Metrics(CollectorRegistry()), [])
    context.prepare()
    context.prepare()
    assert served == [settings.metrics_port]
    assert detected == [settings.bootstrap_servers]
