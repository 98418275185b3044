"""The Procfile run twice, as a process manager runs it: the second run works like the first.

Its broker keeps everything in memory, so each run starts with empty topics and input
offsets from 0 again. A worker that kept its data dir would find state ahead of the
new, empty changelogs and skip the new events as duplicates (or faust would refuse the
store). The commands run through ``sh -c`` as honcho and foreman run them, in a scratch
directory with the repository's .venv and a test model as ``runs/demo-model``, on a
free port given only as HUP_BROKER_PORT (which the producer must follow too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from harness import REPO, START_TIMEOUT_S, Reader, free_port

from stream.devtools.broker import wait_for_broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 40  # appended to the producer's command as --limit


def procfile() -> dict[str, str]:
    """Process name -> command line (tests/test_procfile.py checks the file's structure)."""
    lines = (REPO / "Procfile").read_text().splitlines()
    pairs = (line.partition(":") for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip(): command.strip() for name, _, command in pairs}


class _Process:
    """One Procfile line under ``sh -c``, in its own process group (signals reach it all)."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["sh", "-c", command],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (exit {self.process.poll()})\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        return self.process.returncode


def _env(port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HUP_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    # The port is the only thing a run is told; metrics off so nothing else binds a port.
    env.update({"HUP_BROKER_PORT": str(port), "HUP_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    return env


def _run_once(workdir: Path, run: int) -> list[dict]:
    """Start the three processes, wait for the profiles of the events sent; stop them."""
    commands = procfile()
    port = free_port()
    env = _env(port)
    logs = workdir / f"logs-{run}"
    logs.mkdir()
    broker = _Process(commands["broker"], workdir, env, logs / "broker.log")
    worker = None
    try:
        wait_for_broker(f"127.0.0.1:{port}", 30)
        worker = _Process(commands["worker"], workdir, env, logs / "worker.log")
        worker.wait_for("[^Worker]: Ready", START_TIMEOUT_S)
        producer = subprocess.run(
            ["sh", "-c", f"{commands['producer']} --limit {EVENTS}"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert producer.returncode == 0, producer.stdout + producer.stderr
        assert f"sent {EVENTS} events" in producer.stdout, producer.stdout
        reader = Reader(f"127.0.0.1:{port}", "user-profiles")
        try:
            # Every user's events were sent in order: wait until the output is quiet.
            quiet_since, count = time.monotonic(), 0
            deadline = time.monotonic() + 90
            while time.monotonic() - quiet_since < 4 or not reader.messages:
                assert time.monotonic() < deadline, f"run {run}: no profiles\n{worker.log()}"
                assert worker.process.poll() is None, f"worker exited\n{worker.log()}"
                reader.poll_for(0.5)
                if len(reader.messages) != count:
                    quiet_since, count = time.monotonic(), len(reader.messages)
        finally:
            reader.close()
        assert worker.stop() == 0, worker.log()
        return [orjson.loads(value) for _, value in reader.messages]
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


def test_the_procfile_runs_twice_from_a_clean_state(it_model: Path, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo-model").symlink_to(it_model)

    first = _run_once(tmp_path, 1)
    leftover = tmp_path / "data" / "procfile-worker" / "left-by-run-1"
    leftover.write_text("the worker's data dir must be emptied at start")
    second = _run_once(tmp_path, 2)

    assert not leftover.exists()
    assert first, "the first run published nothing"

    def sequences(messages: list[dict]) -> dict[str, list[int]]:
        seqs: dict[str, list[int]] = defaultdict(list)
        for message in messages:
            seqs[message["user_id"]].append(message["seq"])
        return dict(seqs)

    # The same events, the same profiles: each user's seq from 1, nothing skipped.
    assert sequences(second) == sequences(first)
    for seqs in sequences(first).values():
        assert seqs == list(range(1, len(seqs) + 1))
